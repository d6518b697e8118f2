"""The hit journal: a hit is answered once it is in a local append-only file; the database follows.

Tracking hits (`/o`, `/c`) are appended as JSON lines to this process's journal, all the hits of one
event-loop iteration with one `write` (and, with `MAILTRACK_JOURNAL_FSYNC=true`, one `fdatasync` off the
loop: group commit), before any of them is answered. The applier (`tracking/journal_applier.py`, a
child process or a thread) then writes the journal to the database in batches as large as the backlog,
through `ingest_batch` (events, message states, customer aggregates and rollups in one transaction).

Why not answer after the database commit, as the first version did: at 32 concurrent clients a batch
held at most 32 hits, so every hit paid a share of a ten-statement transaction and the server answered
a seventh of a bare app's rate. The applier's batches grow with the load instead, and a database
outage loses nothing: hits wait in the journal. The price: the dashboard sees a hit a few tens of
milliseconds after it was answered.

Exactly once: the applier stores how far it got (`journal_progress`: segment and byte offset) in the
same transaction as the events. After a crash the next process started on the host adopts every journal
whose locks nobody holds and applies the rest from there.

Layout: `<journal_dir>/<host>-<pid>-<random>/` holds `writer.lock` and `applier.lock` (flock) and the
segments `00000001.log`, `00000002.log`, …; an applied segment is deleted, the directory once applied
after a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import secrets
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine

from mailtrack.db import write_transaction
from mailtrack.tracking.ingest import EventIn
from mailtrack.tracking.journal_applier import (
    STAT_FIELDS,
    WRITER_LOCK,
    JournalApplier,
    applier_process_main,
    run_in_thread,
    shared_counters,
    shared_flag,
    try_lock,
)
from mailtrack.tracking.journal_records import (
    DO_NOT_TRACK,
    JournalStats,
    encode,
    save_position,
    segment_path,
)

__all__ = ["DO_NOT_TRACK", "HitJournal", "JournalFullError", "JournalStats", "JournalStoppedError"]

log = logging.getLogger(__name__)

SEGMENT_BYTES = 64 * 1024 * 1024
# A thread applier holds the GIL for whole batches; at the default 5 ms switch interval the event loop
# (answering hits) would wait that long behind it, so the GIL changes hands more often.
SWITCH_INTERVAL = 0.0005
_WATCH_SECONDS = 1.0
_SEGMENT, _OFFSET = STAT_FIELDS.index("segment"), STAT_FIELDS.index("offset")


class JournalFullError(RuntimeError):
    """The journal already holds `max_bytes` the database has not caught up with; the hit is refused."""


class JournalStoppedError(RuntimeError):
    """The journal is not accepting hits (not started, or shutting down)."""


class HitJournal:
    """This process's journal of tracking hits, and the applier that writes it to the database."""

    def __init__(
        self,
        engine: Engine,
        root: Path,
        *,
        fsync: bool = False,
        batch_max: int = 5000,
        max_bytes: int = 1 << 30,
        segment_bytes: int = SEGMENT_BYTES,
        applier: Literal["thread", "process"] = "thread",
        database_url: str | None = None,
    ) -> None:
        if applier == "process" and database_url is None:
            raise ValueError("an applier process needs the database URL")
        self.engine, self.root, self.batch_max = engine, root, batch_max
        self.name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.directory = root / self.name
        self.stopping = False
        self._applier_kind, self._database_url = applier, database_url
        self._fsync, self._max_bytes, self._segment_bytes = fsync, max_bytes, segment_bytes
        self._stats = JournalStats()  # the writer's own counters; the applier's are merged in `stats`
        self._applier_stats = JournalStats()
        self._lines: list[bytes] = []
        self._waiters: list[asyncio.Future[None]] = []  # resolved once their lines are durable
        self._written_bytes = 0
        # Bytes the journal may still take before refusing hits, as of the last flush: the applier's
        # position is read once per flush, not once per hit.
        self._room = max_bytes
        self._segment_starts = {1: 0}  # bytes written before each segment
        self._flush_scheduled = False
        self._syncing = False
        self._segment, self._segment_size = 1, 0
        self._sync_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-sync")
        self._finished = threading.Event()
        self._context: Any = multiprocessing.get_context("spawn")
        self._process_finished: Any = None
        self._counters: Any = None
        self._applier: Any = None  # a Thread, or a multiprocessing Process
        self._watcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: int | None = None
        self._segment_fd: int | None = None

    @property
    def stats(self) -> JournalStats:
        """The writer's counters with the applier's (read from the applier process when there is one)."""
        applier = self._applier_stats
        if self._counters is not None:
            applier = JournalStats(**dict(zip(STAT_FIELDS, self._counters[:], strict=True)))
        mine = self._stats
        return JournalStats(
            appended=mine.appended,
            dropped=mine.dropped,
            applied=applier.applied,
            segment=applier.segment,
            offset=applier.offset,
            refused=applier.refused,
            adopted=applier.adopted,
            batches=applier.batches,
            last_batch_size=applier.last_batch_size,
        )

    @property
    def pending_bytes(self) -> int:
        """Journal bytes accepted but not yet in the database."""
        return max(self._written_bytes + sum(map(len, self._lines)) - self._applied_bytes(), 0)

    def _applied_bytes(self) -> int:
        # Called for every hit: reads the two numbers it needs, not the whole `stats`.
        if self._counters is not None:
            segment, offset = self._counters[_SEGMENT], self._counters[_OFFSET]
        else:
            segment, offset = self._applier_stats.segment, self._applier_stats.offset
        start = self._segment_starts.get(segment)
        return 0 if start is None else start + offset

    async def start(self) -> None:
        """Create this process's journal and start its applier."""
        self._loop = asyncio.get_running_loop()
        self.directory.mkdir(parents=True)
        self._lock = try_lock(self.directory / WRITER_LOCK)
        self._segment_fd = self._open_segment(1)
        await asyncio.to_thread(self._register)
        if self._applier_kind == "process":
            self._counters = shared_counters(self._context)
            self._process_finished = shared_flag(self._context)
            self._applier = self._spawn()
            self._watcher = asyncio.create_task(self._watch(), name="journal-applier-watch")
        else:
            sys.setswitchinterval(SWITCH_INTERVAL)
            self._applier = run_in_thread(
                JournalApplier(
                    self.engine,
                    self.root,
                    self.name,
                    batch_max=self.batch_max,
                    stats=self._applier_stats,
                    finished=self._finished.is_set,
                    wait=self._finished.wait,
                )
            )

    async def append(self, event: EventIn) -> None:
        """Return once the event is durable in the journal."""
        await self.append_line(encode(event))

    def append_line(self, line: bytes) -> asyncio.Future[None]:
        """Queue one encoded record; the future is done once it is durable (a plain function: no coroutine).

        Raises JournalStoppedError, or JournalFullError when the database is too far behind.
        """
        if self._loop is None or self.stopping:
            raise JournalStoppedError("the hit journal is not running")
        if self._room < 0:  # known only as of the last flush: look again before refusing
            self._room = self._max_bytes - (self._written_bytes - self._applied_bytes())
            if self._room < 0:
                self._stats.dropped += 1
                raise JournalFullError(f"{self._max_bytes} journal bytes wait for the database")
        durable: asyncio.Future[None] = self._loop.create_future()
        self._lines.append(line)
        self._waiters.append(durable)
        if not self._flush_scheduled:  # one flush for everything appended in this loop iteration
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return durable

    def wait_until_applied(self, timeout: float = 60.0) -> None:
        """Block until everything appended so far is in the database (for tests; not on the event loop)."""
        deadline = time.monotonic() + timeout
        while (pending := self.pending_bytes) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"journal {self.name}: {pending} bytes not applied")
            time.sleep(0.002)

    async def stop(self, timeout: float = 60.0) -> None:
        """Write what is queued and let the applier finish the journal; an unreachable database keeps it."""
        if self._loop is None:
            return
        self.stopping = True
        deadline = time.monotonic() + timeout
        while (self._lines or self._syncing) and time.monotonic() < deadline:
            self._flush()
            await asyncio.sleep(0.001)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self._finished.set()
        if self._process_finished is not None:
            self._process_finished.value = 1
        if self._applier is not None:
            await asyncio.to_thread(self._applier.join, max(deadline - time.monotonic(), 0.0))
        self._sync_thread.shutdown(wait=True)
        if self.directory.exists():
            log.warning("journal %s: %d bytes wait for the next start", self.name, self.pending_bytes)
        for descriptor in (self._segment_fd, self._lock):
            if descriptor is not None:
                os.close(descriptor)  # a later process adopts whatever is left
        self._segment_fd = self._lock = None
        self._loop = None

    def _spawn(self) -> Any:
        assert self._database_url is not None
        process = self._context.Process(
            target=applier_process_main,
            args=(
                self._database_url,
                str(self.root),
                self.name,
                self.batch_max,
                os.getpid(),
                self._counters,
                self._process_finished,
            ),
            name="mailtrack-journal-applier",
        )
        process.start()
        return process

    async def _watch(self) -> None:
        # A dead applier process is replaced; the new one resumes from the stored position.
        while True:
            await asyncio.sleep(_WATCH_SECONDS)
            if not self.stopping and not self._applier.is_alive():
                log.error(
                    "journal %s: applier process exited (%s); starting another",
                    self.name,
                    self._applier.exitcode,
                )
                self._applier = self._spawn()

    # --- on the event loop: one write (+ fdatasync) for everything appended meanwhile -----------------

    def _open_segment(self, segment: int) -> int:
        descriptor = os.open(
            segment_path(self.directory, segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        if self._fsync:  # the new file's directory entry must survive a power cut too
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        return descriptor

    def _flush(self) -> None:
        # On the event loop: the write takes microseconds; the fdatasync runs on its own thread, and
        # whatever is appended meanwhile waits for the next flush (group commit). Keeping the write on
        # the loop avoids handing the GIL to a thread for every flush, which capped the hit rate.
        self._flush_scheduled = False
        if self._syncing or not self._lines or self._loop is None:
            return  # a running sync flushes again when it completes
        lines, waiters = self._lines, self._waiters
        self._lines, self._waiters = [], []
        data = b"".join(lines)
        try:
            self._write(data)
        except OSError as exc:
            log.error("journal %s: %d hits not written: %s", self.name, len(lines), exc)
            _settle(waiters, exc)
            return
        if not self._fsync:
            self._durable(len(lines), len(data), waiters)
            return
        self._syncing = True
        descriptor = self._segment_fd
        assert descriptor is not None
        sync = self._loop.run_in_executor(self._sync_thread, os.fdatasync, descriptor)

        def synced(done: asyncio.Future[None]) -> None:
            self._syncing = False
            error = done.exception()
            if isinstance(error, OSError):
                log.error("journal %s: %d hits not synced: %s", self.name, len(lines), error)
                _settle(waiters, error)
            else:
                self._durable(len(lines), len(data), waiters)
            if self._lines:
                self._flush()

        sync.add_done_callback(synced)

    def _durable(self, count: int, size: int, waiters: list[asyncio.Future[None]]) -> None:
        self._stats.appended += count
        self._written_bytes += size
        self._room = self._max_bytes - (self._written_bytes - self._applied_bytes())
        _settle(waiters, None)

    def _write(self, data: bytes) -> None:
        assert self._segment_fd is not None
        segment, size = self._segment, self._segment_size
        if size and size + len(data) > self._segment_bytes:
            os.close(self._segment_fd)
            self._segment_starts[segment + 1] = self._segment_starts[segment] + size
            segment, size = segment + 1, 0
            self._segment_fd = self._open_segment(segment)
            self._segment, self._segment_size = segment, 0
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._segment_fd, view) :]
        except OSError:
            os.ftruncate(self._segment_fd, size)  # no torn line in front of the next write
            raise
        self._segment_size = size + len(data)

    def _register(self) -> None:
        with write_transaction(self.engine) as conn:
            save_position(conn, self.name, (1, 0))


def _settle(waiters: list[asyncio.Future[None]], error: OSError | None) -> None:
    """Wake the hits of one flush: durable, or failed with the error."""
    for future in waiters:
        if not future.done():  # its request was cancelled (the client went away)
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
