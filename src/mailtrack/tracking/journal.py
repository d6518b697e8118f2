"""The hit journal: a hit is answered once it is in a local append-only file; the database follows.

Tracking hits (`/o`, `/c`, `/u`) are appended as JSON lines to this process's journal and made durable
together, one `write` and one `fdatasync` for everything that arrived meanwhile (group commit, about
0.2 ms here), before any of them is answered. An applier thread then writes the journal to the
database in batches as large as the backlog, through `ingest_batch` (events, message states, customer
aggregates and rollups in one transaction).

Why not answer after the database commit, as the first version did: at 32 concurrent clients a batch
held at most 32 hits, so every hit paid a share of a ten-statement transaction and the server answered
a seventh of a bare app's rate. The applier's batches grow with the load instead (thousands of hits per
transaction under a burst), and a database outage loses nothing: hits wait in the journal. The price:
the dashboard sees a hit a few milliseconds after it was answered.

Exactly once: the applier stores how far it got (`journal_progress`: segment and byte offset) in the
same transaction as the events. After a crash the next process started on the host adopts every journal
whose lock nobody holds and applies the rest from there.

Layout: `<journal_dir>/<host>-<pid>-<random>/` holds `lock` (flock, held while the process lives) and
segments `00000001.log`, `00000002.log`, …; an applied segment is deleted, the directory on a clean stop.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import Engine, select

from mailtrack.db import write_transaction
from mailtrack.tracking.ingest import EventIn
from mailtrack.tracking.journal_records import (
    DO_NOT_TRACK,
    JournalStats,
    Position,
    SegmentApplier,
    encode,
    remove_files,
    remove_journal,
    save_position,
    segment_path,
)
from mailtrack.tracking.tables import journal_progress

__all__ = ["DO_NOT_TRACK", "HitJournal", "JournalFullError", "JournalStats", "JournalStoppedError"]

log = logging.getLogger(__name__)

SEGMENT_BYTES = 64 * 1024 * 1024
_ADOPT_INTERVAL_SECONDS = 60.0
_LOCK_FILE = "lock"
SWITCH_INTERVAL = 0.0005
# After a batch smaller than the maximum the applier is ahead of the hits: it gives the next batch this
# long to fill, so that under load a transaction carries hundreds of hits rather than a handful (the
# fixed cost per transaction dominated otherwise). It is also the most a hit waits for the database.
APPLY_LINGER_SECONDS = 0.05


class JournalFullError(RuntimeError):
    """The journal already holds `max_bytes` the database has not caught up with; the hit is refused."""


class JournalStoppedError(RuntimeError):
    """The journal is not accepting hits (not started, or shutting down)."""


class RecordRefusedError(RuntimeError):
    """The database refused this record (it was logged and skipped)."""


def _try_lock(directory: Path) -> int | None:
    """An open descriptor holding the journal's lock, or None when a live process holds it."""
    descriptor = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


class HitJournal:
    """This process's journal of tracking hits, and the thread that applies it to the database."""

    def __init__(
        self,
        engine: Engine,
        root: Path,
        *,
        fsync: bool = True,
        batch_max: int = 5000,
        max_bytes: int = 1 << 30,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        self.engine, self.root, self.batch_max = engine, root, batch_max
        self.name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.directory = root / self.name
        self.stats = JournalStats()
        self.stopping = False
        self._fsync, self._max_bytes, self._segment_bytes = fsync, max_bytes, segment_bytes
        self._cond = threading.Condition()
        self._lines: list[bytes] = []
        self._waiters: list[asyncio.Future[int]] = []  # resolved with the record's number once durable
        self._applied_waiters: dict[int, asyncio.Future[None]] = {}
        self._refused: set[int] = set()  # numbers of refused records (rare), for late `until_applied`
        self._written: Position = (1, 0)
        self._unapplied_bytes = 0
        self._flush_scheduled = False
        self._syncing = False
        self._segment, self._segment_size = 1, 0
        self._sync_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-sync")
        self._flushed_all = threading.Event()
        self._wake_applier = threading.Event()
        self._applier: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: int | None = None
        self._segment_fd: int | None = None
        self._caught_up = False

    @property
    def pending(self) -> int:
        """Records accepted but not yet applied to the database."""
        return self.stats.appended + len(self._lines) - self.stats.applied

    async def start(self) -> None:
        """Create this process's journal and start the applier thread."""
        # The applier thread holds the GIL for whole batches; at the default 5 ms switch interval the
        # event loop (answering hits) would wait that long behind it, so hand the GIL over more often.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._loop = asyncio.get_running_loop()
        self.directory.mkdir(parents=True)
        self._lock = _try_lock(self.directory)
        self._segment_fd = self._open_segment(1)
        await asyncio.to_thread(self._register)
        self._applier = threading.Thread(target=self._apply_loop, name="journal-applier", daemon=True)
        self._applier.start()

    async def append(self, event: EventIn, *, until_applied: bool = False) -> None:
        """Return once the event is durable in the journal (or, if asked, stored in the database)."""
        if self._loop is None or self.stopping:
            raise JournalStoppedError("the hit journal is not running")
        if self._unapplied_bytes > self._max_bytes:
            self.stats.dropped += 1
            raise JournalFullError(f"{self._unapplied_bytes} journal bytes wait for the database")
        durable: asyncio.Future[int] = self._loop.create_future()
        self._lines.append(encode(event))
        self._waiters.append(durable)
        if not self._flush_scheduled:  # one flush for everything appended in this loop iteration
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        number = await durable
        if until_applied:
            applied: asyncio.Future[None] = self._loop.create_future()
            with self._cond:
                if number in self._refused:
                    raise RecordRefusedError("the database refused this record")
                if number <= self.stats.applied:
                    return
                self._applied_waiters[number] = applied
            await applied

    def wait_until_applied(self, timeout: float = 60.0) -> None:
        """Block until everything appended so far is in the database (for tests; not on the event loop)."""
        target, deadline = self.stats.appended + len(self._lines), time.monotonic() + timeout
        while self.stats.applied < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"journal {self.name}: {target - self.stats.applied} records not applied")
            time.sleep(0.002)

    async def stop(self, timeout: float = 60.0) -> None:
        """Write what is queued, apply the journal, and remove it; an unreachable database keeps it."""
        if self._loop is None:
            return
        self.stopping = True
        deadline = time.monotonic() + timeout
        while (self._lines or self._syncing) and time.monotonic() < deadline:
            self._flush()
            await asyncio.sleep(0.001)
        self._flushed_all.set()
        self._wake_applier.set()
        if self._applier is not None:
            await asyncio.to_thread(self._applier.join, max(deadline - time.monotonic(), 0.0))
        self._sync_thread.shutdown(wait=True)
        if self._caught_up:
            await asyncio.to_thread(self._remove)
        else:
            log.warning("journal %s: %d records wait for the next start", self.name, self.pending)
            self._close()  # a later process adopts the journal
        self._loop = None

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
            written = self._write(data)
        except OSError as exc:
            log.error("journal %s: %d hits not written: %s", self.name, len(lines), exc)
            _settle(waiters, exc)
            return
        if not self._fsync:
            self._durable(len(lines), len(data), written, waiters)
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
                self._durable(len(lines), len(data), written, waiters)
            if self._lines:
                self._flush()

        sync.add_done_callback(synced)

    def _durable(self, count: int, size: int, written: Position, waiters: list[asyncio.Future[int]]) -> None:
        first = self.stats.appended + 1
        with self._cond:
            self.stats.appended += count
            self._unapplied_bytes += size
            self._written = written
        self._wake_applier.set()
        _settle(waiters, first)

    def _write(self, data: bytes) -> Position:
        assert self._segment_fd is not None
        segment, size = self._segment, self._segment_size
        if size and size + len(data) > self._segment_bytes:
            os.close(self._segment_fd)
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
        return segment, self._segment_size

    # --- the applier thread ----------------------------------------------------------------------------

    def _segment_applier(self, name: str, directory: Path, position: Position) -> SegmentApplier:
        return SegmentApplier(
            self.engine,
            name,
            directory,
            position,
            batch_max=self.batch_max,
            stats=self.stats,
            stopping=lambda: self.stopping,
        )

    def _register(self) -> None:
        with write_transaction(self.engine) as conn:
            save_position(conn, self.name, (1, 0))

    def _apply_loop(self) -> None:
        self._adopt_orphans()
        next_adoption = time.monotonic() + _ADOPT_INTERVAL_SECONDS
        own = self._segment_applier(self.name, self.directory, (1, 0))
        while True:
            self._wake_applier.clear()
            with self._cond:
                written, flushed_all = self._written, self._flushed_all.is_set()
            before = own.position
            try:
                progressed = own.step(written, self._applied)
            except Exception:
                log.exception("journal %s: applier step failed; retrying", self.name)
                time.sleep(1.0)
                continue
            if progressed is None:
                return
            if own.position[0] == before[0]:  # a commit never spans segments
                with self._cond:
                    self._unapplied_bytes -= own.position[1] - before[1]
            if progressed:
                if own.ahead:
                    own.ahead = False
                    self._flushed_all.wait(APPLY_LINGER_SECONDS)  # returns at once when stopping
                continue
            if flushed_all:
                self._caught_up = True
                return
            if time.monotonic() >= next_adoption:
                self._adopt_orphans()
                next_adoption = time.monotonic() + _ADOPT_INTERVAL_SECONDS
            self._wake_applier.wait(1.0)

    def _applied(self, count: int, stored: bool) -> None:
        with self._cond:
            first = self.stats.applied + 1
            self.stats.applied += count
            last = self.stats.applied
            if not stored:
                self.stats.refused += count
                self._refused.update(range(first, last + 1))
            due = [
                (n, self._applied_waiters.pop(n))
                for n in range(first, last + 1)
                if n in self._applied_waiters
            ]
        if due and self._loop is not None:
            self._loop.call_soon_threadsafe(_release, due, stored)

    def _adopt_orphans(self) -> None:
        if not self.root.is_dir():
            return
        for directory in sorted(self.root.iterdir()):
            if directory == self.directory or not (directory / _LOCK_FILE).exists():
                continue
            lock = _try_lock(directory)
            if lock is None:
                continue  # a live process owns it
            try:
                self._adopt(directory)
            except Exception:
                log.exception("journal %s: adoption interrupted", directory.name)
            finally:
                os.close(lock)

    def _adopt(self, directory: Path) -> None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(journal_progress.c.segment, journal_progress.c.position).where(
                    journal_progress.c.journal == directory.name
                )
            ).first()
        if row is None:
            # Every journal is registered before its first hit, so one this database never saw belongs
            # to another database sharing the directory (or died before its first hit): not ours to apply.
            if not any(path.stat().st_size for path in directory.glob("*.log")):
                remove_files(directory)
            return
        applier = self._segment_applier(directory.name, directory, (row[0], row[1]))

        def counted(count: int, _stored: bool) -> None:
            self.stats.adopted += count

        while True:
            progressed = applier.step(None, counted)
            if progressed is None:
                return
            if not progressed:
                break
        log.info(
            "journal %s: adopted and applied (%d records so far from crashed processes)",
            directory.name,
            self.stats.adopted,
        )
        remove_journal(self.engine, directory)

    def _remove(self) -> None:
        remove_journal(self.engine, self.directory)
        self._close()

    def _close(self) -> None:
        for descriptor in (self._segment_fd, self._lock):
            if descriptor is not None:
                os.close(descriptor)
        self._segment_fd = self._lock = None


def _settle(waiters: list[asyncio.Future[int]], outcome: int | OSError) -> None:
    """Wake the hits of one flush: with their record numbers once durable, or with the error."""
    for offset, future in enumerate(waiters):
        if not future.done():
            if isinstance(outcome, OSError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome + offset)


def _release(due: list[tuple[int, asyncio.Future[None]]], stored: bool) -> None:
    for _, future in due:
        if not future.done():
            if stored:
                future.set_result(None)
            else:
                future.set_exception(RecordRefusedError("the database refused this record"))
