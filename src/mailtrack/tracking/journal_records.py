"""The hit journal's records and how they reach the database (see `tracking/journal.py`).

A record is one JSON line; `SegmentApplier` reads a journal's segments from a committed position and
applies them in batches, storing the new position in the same transaction, so that whoever applies a
journal (its own process, or the one that adopts it after a crash) does so exactly once.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, delete, insert, text, update

from mailtrack.db import utcnow, write_transaction
from mailtrack.maintenance import metrics
from mailtrack.messages.queries import mark_do_not_track
from mailtrack.tracking.ingest import EventIn, ingest_batch
from mailtrack.tracking.tables import journal_progress

log = logging.getLogger(__name__)

DO_NOT_TRACK = "do_not_track"  # a record that marks the customer do-not-track instead of storing an event
_READ_BYTES = 4 * 1024 * 1024  # lines are at most a few KiB (agents and referers are truncated)
_RETRY_MAX_SECONDS = 5.0

Position = tuple[int, int]  # segment number, byte offset
# For what orjson refuses (lone surrogates, integers past 64 bits); built once: `json.dumps` with
# options builds a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


@dataclass(slots=True)
class JournalStats:
    """Counters for /metrics and tests."""

    appended: int = 0  # records made durable in this process's journal
    applied: int = 0  # of those, records the applier has finished (stored or refused)
    segment: int = 1  # where the applier is in this process's journal: segment…
    offset: int = 0  # …and byte offset (all before is in the database)
    refused: int = 0  # records the database refused, logged and skipped
    dropped: int = 0  # hits not journaled because the journal was full
    adopted: int = 0  # records applied from journals left by crashed processes
    batches: int = 0
    last_batch_size: int = 0
    last_batch_seconds: float = 0.0


def encode(event: EventIn) -> bytes:
    """One journal line for an event (or a do-not-track mark)."""
    return record_line(
        event.tenant_id,
        event.message_id,
        event.type,
        int(event.occurred_at.timestamp()),
        event.user_agent,
        event.ip,
        event.referer,
        event.link_position,
        event.machine_reason,
        event.external_event_id,
    )


def record_line(
    tenant_id: int,
    message_id: int,
    kind: str,
    seconds: int,
    user_agent: str | None = None,
    ip: str | None = None,
    referer: str | None = None,
    link_position: int | None = None,
    machine_reason: str | None = None,
    external_event_id: str | None = None,
) -> bytes:
    """One journal line from its fields: the hot path builds it straight from a request, without an event."""
    fields = [
        tenant_id,
        message_id,
        kind,
        seconds,
        user_agent,
        ip,
        referer,
        link_position,
        machine_reason,
        external_event_id,
    ]
    # orjson takes 0.2 µs where the standard library's encoder takes 2 (every hit pays it). Its UTF-8
    # output never holds a raw newline byte, so a record stays one line.
    try:
        return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:  # no request header can hold these: they come decoded as Latin-1
        return _ENCODER.encode(fields).encode("ascii") + b"\n"


def decode(line: bytes) -> EventIn:
    """The event a journal line holds; raises ValueError for a line that is not one."""
    return decode_many([line])[0]


def decode_many(lines: list[bytes]) -> list[EventIn]:
    """The events of many journal lines, parsed as one JSON array; ValueError if one is not a record."""
    try:
        batch = b"[" + b",".join(lines) + b"]"
        try:
            items = orjson.loads(batch)  # a third of the standard library's time
        except orjson.JSONDecodeError:  # a line only the standard library's encoder could write
            items = json.loads(batch)
        if len(items) != len(lines):
            raise ValueError("a line holds more or less than one record")
        return [_event(item) for item in items]
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise ValueError(f"not a journal record: {exc}") from None


@functools.lru_cache(maxsize=4096)  # a batch's hits share a few distinct seconds
def _utc_time(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _event(item: Any) -> EventIn:
    tenant, message, kind, seconds, agent, ip, referer, position, reason, external = item
    if not (
        isinstance(kind, str)
        and isinstance(tenant, int)
        and isinstance(message, int)
        and isinstance(seconds, int)
        and (agent is None or isinstance(agent, str))
        and (ip is None or isinstance(ip, str))
        and (referer is None or isinstance(referer, str))
        and (reason is None or isinstance(reason, str))
        and (external is None or isinstance(external, str))
        and (position is None or isinstance(position, int))
    ):
        raise TypeError("a field has the wrong type")
    return EventIn(
        tenant_id=tenant,
        message_id=message,
        type=kind,
        occurred_at=_utc_time(seconds),
        user_agent=agent,
        ip=ip,
        referer=referer,
        link_position=position,
        machine_reason=reason,
        external_event_id=external,
    )


def apply_records(engine: Engine, journal: str, records: list[EventIn], end: Position) -> None:
    """Write records and the journal's new position in one transaction (marks and events in order)."""
    with write_transaction(engine) as conn:
        pending: list[EventIn] = []
        for record in records:
            if record.type == DO_NOT_TRACK:
                ingest_batch(conn, pending)
                pending = []
                mark_do_not_track(conn, tenant_id=record.tenant_id, message_id=record.message_id)
            else:
                pending.append(record)
        ingest_batch(conn, pending)
        save_position(conn, journal, end)


def save_position(conn: Connection, journal: str, end: Position) -> None:
    values = {"segment": end[0], "position": end[1], "updated_at": utcnow()}
    moved = conn.execute(update(journal_progress).where(journal_progress.c.journal == journal).values(values))
    if moved.rowcount == 0:
        conn.execute(insert(journal_progress).values(journal=journal, **values))


def segment_path(directory: Path, segment: int) -> Path:
    return directory / f"{segment:08d}.log"


def _read_lines(path: Path, offset: int, limit: int) -> tuple[list[bytes], int]:
    """Whole lines from `offset`, at most `limit`; and the offset after them."""
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(_READ_BYTES)
    # Only whole lines: a line still being written (or torn by a crash, never acknowledged) waits.
    whole = data[: data.rfind(b"\n") + 1]
    lines = whole.split(b"\n")[:-1]
    if len(lines) > limit:
        lines = lines[:limit]
        return lines, offset + sum(len(line) + 1 for line in lines)
    return lines, offset + len(whole)


def database_answers(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001  (any driver error means "not reachable")
        return False
    return True


def _describe(exc: BaseException) -> str:
    # Driver messages can quote parameters (addresses, agents): name the error, not its text.
    cause = exc.__cause__ or getattr(exc, "orig", None)
    return type(exc).__name__ + (f" ({type(cause).__name__})" if cause is not None else "")


class SegmentApplier:
    """Applies one journal from a committed position, batch by batch, isolating a refused record."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        directory: Path,
        position: Position,
        *,
        batch_max: int,
        stats: JournalStats,
        stopping: Callable[[], bool],
    ) -> None:
        self.engine, self.name, self.directory, self.position = engine, name, directory, position
        self.batch_max, self.stats, self.stopping = batch_max, stats, stopping
        self._careful = 0  # after a refused batch, this many records go one by one
        self.ahead = False  # the last batch took everything there was: the next may wait to fill

    def step(self, on_done: Callable[[int, bool], None]) -> bool | None:
        """Apply the next batch of whole lines; a segment is finished once a later one exists.

        True when something was applied, False when caught up, None when the database stayed
        unreachable while the journal was stopping (the rest waits for the next start).
        """
        segment, offset = self.position
        path = segment_path(self.directory, segment)
        limit = 1 if self._careful else self.batch_max
        lines, end = _read_lines(path, offset, limit) if path.exists() else ([], offset)
        if not lines:
            if not self._later_segment_exists(segment):
                return False
            # The writer opens a segment only after its last write to the one before: read that once
            # more now, so that nothing written just before the switch is left behind.
            lines, end = _read_lines(path, offset, limit) if path.exists() else ([], offset)
            if not lines:
                path.unlink(missing_ok=True)
                self.position = (segment + 1, 0)
                return True
        return self._commit(lines, (segment, end), on_done)

    def _later_segment_exists(self, segment: int) -> bool:
        return any(int(p.stem) > segment for p in self.directory.glob("*.log") if p.stem.isdigit())

    def _commit(self, lines: list[bytes], end: Position, on_done: Callable[[int, bool], None]) -> bool | None:
        engine, delay = self.engine, 0.1
        while True:
            started = time.perf_counter()
            try:
                records = decode_many(lines)
                apply_records(engine, self.name, records, end)
            except Exception as exc:  # noqa: BLE001  (driver errors and bad records are told apart below)
                if not database_answers(engine):
                    if self.stopping():
                        return None
                    log.warning("journal %s: database unreachable (%s), retrying", self.name, _describe(exc))
                    time.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_SECONDS)
                    continue
                if len(lines) > 1:
                    log.warning(
                        "journal %s: a batch of %d was refused; going one by one", self.name, len(lines)
                    )
                    self._careful = len(lines)
                    return True
                log.error("journal %s: skipped a record the database refused: %s", self.name, _describe(exc))
                with write_transaction(engine) as conn:
                    save_position(conn, self.name, end)
                self._careful = max(self._careful - 1, 0)
                self.position = end
                on_done(1, False)
                return True
            self._careful = max(self._careful - len(lines), 0)
            self.position, self.ahead = end, len(lines) < self.batch_max and not self._careful
            metrics.observe_batch(
                [r for r in records if r.type != DO_NOT_TRACK], time.perf_counter() - started
            )
            stats = self.stats
            stats.batches += 1
            stats.last_batch_size = len(lines)
            stats.last_batch_seconds = time.perf_counter() - started
            on_done(len(lines), True)
            return True


def remove_journal(engine: Engine, directory: Path) -> None:
    """Forget a fully applied journal: its progress row, its files, its directory."""
    with write_transaction(engine) as conn:
        conn.execute(delete(journal_progress).where(journal_progress.c.journal == directory.name))
    remove_files(directory)


def remove_files(directory: Path) -> None:
    for path in directory.iterdir():
        path.unlink(missing_ok=True)
    directory.rmdir()
