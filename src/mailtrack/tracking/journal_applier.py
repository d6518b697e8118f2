"""The journal applier: tails one process's hit journal into the database, and adopts dead ones.

It runs as a child process of `mailtrack serve` (`MAILTRACK_JOURNAL_APPLIER=process`, the default) or
as a thread of the serving process (`thread`, which the tests use). As a process, its work per hit
(about 20 µs: decoding, classification, message state, rows) no longer competes for the GIL with
answering hits, and it uses a core of its own where there is one.

Two locks guard a journal directory: `writer.lock`, held by the process that appends, and
`applier.lock`, held by whoever applies it. A journal is adopted only when both are free: its writer
died, and so did its applier (an applier outliving its writer finishes the journal itself).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from mailtrack.db import make_engine
from mailtrack.tracking.journal_records import (
    JournalStats,
    Position,
    SegmentApplier,
    remove_files,
    remove_journal,
)
from mailtrack.tracking.tables import journal_progress

log = logging.getLogger(__name__)

WRITER_LOCK = "writer.lock"
APPLIER_LOCK = "applier.lock"
# After a batch smaller than the maximum the applier is ahead of the hits: it gives the next batch this
# long to fill, so that under load a transaction carries hundreds of hits rather than a handful (the
# fixed cost per transaction dominated otherwise). It is also about the most a hit waits for the database.
APPLY_LINGER_SECONDS = 0.05
_ADOPT_INTERVAL_SECONDS = 60.0
APPLIER_NICENESS = 10
STAT_FIELDS = ("applied", "segment", "offset", "refused", "adopted", "batches", "last_batch_size")


def try_lock(path: Path) -> int | None:
    """An open descriptor holding this lock file, or None when a live process holds it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


class JournalApplier:
    """Applies one journal as it grows until its writer is done, adopting orphans on the way."""

    def __init__(
        self,
        engine: Engine,
        root: Path,
        name: str,
        *,
        batch_max: int,
        stats: JournalStats,
        finished: Callable[[], bool],
        wait: Callable[[float], object],
        publish: Callable[[JournalStats], None] = lambda _stats: None,
    ) -> None:
        self.engine, self.root, self.name, self.directory = engine, root, name, root / name
        self.batch_max, self.stats = batch_max, stats
        self._finished, self._wait, self._publish = finished, wait, publish

    def run(self) -> bool:
        """Apply until the writer is finished and everything is stored; True when the journal is gone."""
        lock = try_lock(self.directory / APPLIER_LOCK)
        if lock is None:
            log.error("journal %s: another applier holds it", self.name)
            return False
        try:
            return self._run()
        finally:
            os.close(lock)

    def _run(self) -> bool:
        self._adopt_orphans()
        next_adoption = time.monotonic() + _ADOPT_INTERVAL_SECONDS
        own = self._segment_applier(self.name, self.directory, self._position(self.name) or (1, 0))
        while True:
            finished = self._finished()  # read first: caught up after this means the journal is complete
            try:
                progressed = own.step(self._applied)
            except Exception:
                log.exception("journal %s: applier step failed; retrying", self.name)
                time.sleep(1.0)
                continue
            if progressed is None:
                return False  # the database stayed down while finishing: the next start carries on
            self.stats.segment, self.stats.offset = own.position
            self._publish(self.stats)
            if progressed:
                if own.ahead and not finished:
                    own.ahead = False
                    self._wait(APPLY_LINGER_SECONDS)
                continue
            if finished:
                remove_journal(self.engine, self.directory)
                return True
            if time.monotonic() >= next_adoption:
                self._adopt_orphans()
                next_adoption = time.monotonic() + _ADOPT_INTERVAL_SECONDS
            self._wait(APPLY_LINGER_SECONDS)

    def _applied(self, count: int, stored: bool) -> None:
        self.stats.applied += count
        if not stored:
            self.stats.refused += count

    def _segment_applier(self, name: str, directory: Path, position: Position) -> SegmentApplier:
        return SegmentApplier(
            self.engine,
            name,
            directory,
            position,
            batch_max=self.batch_max,
            stats=self.stats,
            stopping=self._finished,
        )

    def _position(self, name: str) -> Position | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(journal_progress.c.segment, journal_progress.c.position).where(
                    journal_progress.c.journal == name
                )
            ).first()
        return (row[0], row[1]) if row else None

    def _adopt_orphans(self) -> None:
        if not self.root.is_dir():
            return
        for directory in sorted(self.root.iterdir()):
            if directory == self.directory or not (directory / WRITER_LOCK).exists():
                continue
            locks = [try_lock(directory / WRITER_LOCK), try_lock(directory / APPLIER_LOCK)]
            try:
                if None not in locks:  # its writer and its applier are both gone
                    self._adopt(directory)
            except Exception:
                log.exception("journal %s: adoption interrupted", directory.name)
            finally:
                for lock in locks:
                    if lock is not None:
                        os.close(lock)

    def _adopt(self, directory: Path) -> None:
        position = self._position(directory.name)
        if position is None:
            # Every journal is registered before its first hit, so one this database never saw belongs
            # to another database sharing the directory (or died before its first hit): not ours to apply.
            if not any(path.stat().st_size for path in directory.glob("*.log")):
                remove_files(directory)
            return
        applier = self._segment_applier(directory.name, directory, position)

        def counted(count: int, _stored: bool) -> None:
            self.stats.adopted += count

        while (progressed := applier.step(counted)) is not False:
            if progressed is None:
                return
        log.info("journal %s: adopted and applied (%d records so far)", directory.name, self.stats.adopted)
        remove_journal(self.engine, directory)
        self._publish(self.stats)


def run_in_thread(applier: JournalApplier) -> threading.Thread:
    """Start the applier on a thread of this process."""
    thread = threading.Thread(target=applier.run, name="journal-applier", daemon=True)
    thread.start()
    return thread


def applier_process_main(
    database_url: str,
    root: str,
    name: str,
    batch_max: int,
    parent_pid: int,
    counters: Any,
    finished_flag: Any,
) -> None:
    """Entry point of the applier process: apply until the parent is done (or gone), then exit."""
    # Ctrl-C and SIGTERM reach the whole process group; the parent decides when this one stops, and if
    # the parent dies the journal is finished first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Answering hits comes first; applying them may lag a little under a burst and catch up after.
    os.nice(APPLIER_NICENESS)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    engine = make_engine(database_url)
    # A replacement applier carries on the counters of the one it replaces (its position it reads
    # from the database).
    stats = JournalStats(**dict(zip(STAT_FIELDS, counters[:], strict=True)))

    def finished() -> bool:
        return bool(finished_flag.value) or os.getppid() != parent_pid

    def publish(stats: JournalStats) -> None:
        for index, field in enumerate(STAT_FIELDS):
            counters[index] = getattr(stats, field)

    applier = JournalApplier(
        engine,
        Path(root),
        name,
        batch_max=batch_max,
        stats=stats,
        finished=finished,
        wait=time.sleep,
        publish=publish,
    )
    try:
        applier.run()
    finally:
        engine.dispose()


def shared_counters(context: Any) -> Any:
    """Counters the applier process publishes its `JournalStats` through (one writer: no lock)."""
    # Plain shared memory, no locks: a lock held by a process that dies is never released, and
    # multiprocessing's Event deadlocked here when its setter and a timed-out waiter met.
    counters = context.RawArray("q", len(STAT_FIELDS))
    for index, field in enumerate(STAT_FIELDS):
        counters[index] = getattr(JournalStats(), field)
    return counters


def shared_flag(context: Any) -> Any:
    """A flag the serving process raises when its journal is complete (the applier polls it)."""
    return context.RawValue("b", 0)
