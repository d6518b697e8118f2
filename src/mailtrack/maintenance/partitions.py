"""Time partitions of `events` on PostgreSQL (migration 0008): created ahead, dropped whole once expired.

There `events` is `PARTITION BY RANGE (occurred_at)` with a DEFAULT partition, so an insert never fails
for lack of a partition (an import from years ago, a clock far ahead). Every maintenance run, before the
salons, applies one change at a time until none is left:

- drop each partition whose upper bound is older than the longest retention of any salon (its rows
  have expired for everyone); nothing is dropped while some salon keeps raw events forever;
- create the partitions of the next AHEAD_DAYS, and those for rows that landed in the DEFAULT
  partition within the retention window (maintenance stopped for a while, an import), moving them in.

The width of new partitions follows the longest retention, because the salons at that retention lose
their events with the partition, up to one width after `retention_days`, while the number of partitions
(which every query that cannot prune them pays for) stays near a hundred: a day up to 120 days, an ISO
week up to 840, a calendar month beyond or when a salon keeps events forever. Salons with a shorter
retention keep the chunked deletes of jobs.py.

Each change is its own transaction, taken under an advisory transaction lock after re-reading the
catalog, so two runs at once make each change once and a run that dies is carried on by the next.
DDL waits at most DDL_LOCK_TIMEOUT for its table locks, then gives up until the next run: a queued
ACCESS EXCLUSIVE request would otherwise hold every ingest batch behind a long dashboard query.

The unique index `(tenant_id, external_event_id)` cannot exist on a partitioned table without the
partition key, so on PostgreSQL `event_external_ids` carries that guarantee; ingest writes it, and the
retention and erasure paths below delete from it.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Date,
    Engine,
    MetaData,
    bindparam,
    cast,
    column,
    delete,
    func,
    select,
    table,
    text,
)

from mailtrack.db import UTCDateTime, metadata, write_transaction
from mailtrack.maintenance import metrics
from mailtrack.tenants.tables import tenant_settings
from mailtrack.tracking.tables import event_external_ids, events

log = logging.getLogger(__name__)

PARENT = "events"
DEFAULT_PARTITION = "events_default"
AHEAD_DAYS = 14
DDL_LOCK_TIMEOUT = "3s"
# A second run waits this long for the first one's change (moving rows out of DEFAULT can take a while).
LOCK_WAIT_TIMEOUT = "120s"
LOCK_KEY = 0x6D74_5061_7274  # any constant of our own: "mtPart"
DAY_WIDTH_UP_TO_DAYS = 120
WEEK_WIDTH_UP_TO_DAYS = 840
_MAX_CHANGES = 10_000  # a safety stop: every change covers a gap or removes a partition

PARTITION_CHANGES = metrics.REGISTRY.counter(
    "mailtrack_maintenance_partitions_total",
    "Time partitions of events changed by maintenance, by action (created, dropped).",
    ("action",),
)


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of `events`: its table and bounds (None for DEFAULT, MINVALUE or MAXVALUE)."""

    name: str
    lower: dt.datetime | None
    upper: dt.datetime | None
    default: bool = False

    def holds(self, moment: dt.datetime) -> bool:
        """True when `moment` falls in this range partition."""
        return (
            not self.default
            and (self.lower is None or self.lower <= moment)
            and (self.upper is None or moment < self.upper)
        )


@dataclass(frozen=True, slots=True)
class Change:
    """One change made to the partitions: created (rows moved in from DEFAULT) or dropped (rows gone)."""

    action: str
    name: str
    rows: int


def keeps_external_ids(conn: Connection) -> bool:
    """True where `event_external_ids` carries the idempotency of external ids (PostgreSQL)."""
    return conn.dialect.name == "postgresql"


def is_partitioned(conn: Connection) -> bool:
    """True when `events` is a partitioned table (PostgreSQL after migration 0008)."""
    if conn.dialect.name != "postgresql":
        return False
    found = text("SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(:t))")
    return bool(conn.execute(found, {"t": PARENT}).scalar_one())


_PARTITIONS = text(
    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
    " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:parent) ORDER BY c.relname"
)
_RANGE = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")


def _bound(literal: str) -> dt.datetime | None:
    if literal in ("MINVALUE", "MAXVALUE"):
        return None
    return dt.datetime.fromisoformat(literal.strip("'")).replace(tzinfo=dt.UTC)


def list_partitions(conn: Connection, parent: str = PARENT) -> list[Partition]:
    """The partitions of `parent`, range partitions in time order and DEFAULT last."""
    found = []
    for name, bound in conn.execute(_PARTITIONS, {"parent": parent}):
        if bound == "DEFAULT":
            found.append(Partition(name, None, None, default=True))
            continue
        matched = _RANGE.fullmatch(bound)
        if matched is None:
            raise ValueError(f"unexpected bound of partition {name}: {bound}")
        found.append(Partition(name, _bound(matched.group(1)), _bound(matched.group(2))))
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(found, key=lambda p: (p.default, p.lower or epoch))


def longest_retention(conn: Connection) -> int | None:
    """The longest raw-event retention of any salon in days (0 without salons); None when one keeps them."""
    days = tenant_settings.c.retention_days
    shortest, longest = conn.execute(select(func.min(days), func.max(days))).one()
    if shortest is None:
        return 0
    return None if shortest <= 0 else int(longest)


def drop_horizon(now: dt.datetime, longest: int | None) -> dt.datetime | None:
    """Rows older than this have expired for every salon; None when nothing may be dropped."""
    return now - dt.timedelta(days=longest) if longest else None


def partition_width(longest: int | None) -> str:
    """The width of new partitions for this longest retention: day, week or month."""
    if longest is not None and longest <= DAY_WIDTH_UP_TO_DAYS:
        return "day"
    if longest is not None and longest <= WEEK_WIDTH_UP_TO_DAYS:
        return "week"
    return "month"


def _bucket(day: dt.date, width: str) -> tuple[dt.date, dt.date]:
    if width == "day":
        return day, day + dt.timedelta(days=1)
    if width == "week":
        monday = day - dt.timedelta(days=day.weekday())
        return monday, monday + dt.timedelta(days=7)
    first = day.replace(day=1)
    return first, (first + dt.timedelta(days=32)).replace(day=1)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def wanted_days(now: dt.datetime, data_days: Iterable[dt.date], horizon: dt.datetime | None) -> set[dt.date]:
    """Days that need a partition: today and AHEAD_DAYS more, and the days of `data_days` that are
    neither expired for every salon nor further ahead (those stay in DEFAULT)."""
    today = now.date()
    last = today + dt.timedelta(days=AHEAD_DAYS)
    wanted = {today + dt.timedelta(days=n) for n in range(AHEAD_DAYS + 1)}
    first = horizon.date() if horizon is not None else dt.date.min
    return wanted | {day for day in data_days if first <= day <= last}


def missing_ranges(
    partitions: Iterable[Partition], days: Iterable[dt.date], width: str
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The ranges to create so that every day is covered: each day's bucket, less what exists."""
    taken = [
        (p.lower or dt.datetime.min.replace(tzinfo=dt.UTC), p.upper or dt.datetime.max.replace(tzinfo=dt.UTC))
        for p in partitions
        if not p.default
    ]
    ranges: set[tuple[dt.datetime, dt.datetime]] = set()
    for low, high in {_bucket(day, width) for day in days}:
        pieces = [(_midnight(low), _midnight(high))]
        for lower, upper in taken:
            pieces = _subtract(pieces, lower, upper)
        ranges.update(pieces)
    return sorted(ranges)


def _subtract(
    pieces: list[tuple[dt.datetime, dt.datetime]], lower: dt.datetime, upper: dt.datetime
) -> list[tuple[dt.datetime, dt.datetime]]:
    kept = []
    for start, end in pieces:
        if upper <= start or lower >= end:
            kept.append((start, end))
            continue
        if start < lower:
            kept.append((start, lower))
        if upper < end:
            kept.append((upper, end))
    return kept


def _quoted(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _literal(moment: dt.datetime) -> str:
    return f"'{moment.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}'"


def create_partition(
    conn: Connection,
    lower: dt.datetime,
    upper: dt.datetime,
    *,
    parent: str = PARENT,
    default: str | None = DEFAULT_PARTITION,
) -> Change:
    """Create the partition [lower, upper), moving into it the rows DEFAULT holds for that range."""
    name = f"{PARENT}_{lower:%Y%m%d}"
    target, source = _quoted(conn, name), _quoted(conn, parent)
    # Built apart and then attached: ATTACH locks the parent in SHARE UPDATE EXCLUSIVE mode, which
    # ingest's inserts pass, where CREATE TABLE … PARTITION OF would take ACCESS EXCLUSIVE.
    conn.exec_driver_sql(f"CREATE TABLE {target} (LIKE {source} INCLUDING DEFAULTS)")
    moved = 0
    if default is not None:
        # ATTACH refuses a range DEFAULT still holds rows of: they move first, in this transaction.
        moved = conn.execute(
            text(
                f"WITH moved AS (DELETE FROM {_quoted(conn, default)} WHERE occurred_at >= :lower"  # noqa: S608  (our names)
                f" AND occurred_at < :upper RETURNING *) INSERT INTO {target} SELECT * FROM moved"
            ).bindparams(bindparam("lower", type_=UTCDateTime), bindparam("upper", type_=UTCDateTime)),
            {"lower": lower, "upper": upper},
        ).rowcount
    bounds = f"FROM ({_literal(lower)}) TO ({_literal(upper)})"
    conn.exec_driver_sql(f"ALTER TABLE {source} ATTACH PARTITION {target} FOR VALUES {bounds}")
    return Change("created", name, moved)


def drop_partition(conn: Connection, partition: Partition) -> Change:
    """Detach and drop a partition; its rows are counted first (the count may miss a row that arrives
    just before the detach: the row goes either way)."""
    name = _quoted(conn, partition.name)
    rows = conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()  # noqa: S608  (catalog name)
    # Not CONCURRENTLY: PostgreSQL refuses it on a table with a DEFAULT partition and outside a
    # transaction block; the plain DETACH holds its ACCESS EXCLUSIVE lock for milliseconds.
    conn.exec_driver_sql(f"ALTER TABLE {_quoted(conn, PARENT)} DETACH PARTITION {name}")
    conn.exec_driver_sql(f"DROP TABLE {name}")
    return Change("dropped", partition.name, int(rows))


def _default_days(conn: Connection, default: Partition) -> list[dt.date]:
    stored = table(default.name, column("occurred_at", UTCDateTime))
    day = cast(stored.c.occurred_at, Date)
    return list(conn.execute(select(day).distinct()).scalars())


def _next_change(conn: Connection, now: dt.datetime) -> Change | None:
    partitions = list_partitions(conn)
    longest = longest_retention(conn)
    horizon = drop_horizon(now, longest)
    for partition in partitions:
        if horizon is not None and partition.upper is not None and partition.upper <= horizon:
            return drop_partition(conn, partition)
    default = next((p for p in partitions if p.default), None)
    data_days = _default_days(conn, default) if default is not None else []
    ranges = missing_ranges(partitions, wanted_days(now, data_days, horizon), partition_width(longest))
    if not ranges:
        return None
    lower, upper = ranges[0]
    return create_partition(conn, lower, upper, default=default.name if default is not None else None)


def apply_next_change(engine: Engine, now: dt.datetime) -> Change | None:
    """Make the next change the partitions need, in its own transaction; None when there is none."""
    with write_transaction(engine) as conn:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_WAIT_TIMEOUT}'")
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        return _next_change(conn, now)


@dataclass(slots=True)
class PartitionReport:
    """What maintenance did to the partitions of `events` in one run."""

    status: str = "done"  # done | not_partitioned (SQLite) | failed
    created: int = 0
    dropped: int = 0
    events_dropped: int = 0
    events_moved: int = 0  # rows moved out of DEFAULT into a partition created for them
    seconds: float = 0.0
    error: str | None = None


def maintain_partitions(engine: Engine, *, now: dt.datetime, report: PartitionReport) -> None:
    """Apply every change the partitions need (raises on failure; `report` keeps what was done).

    Not interrupted by a shutdown: each change takes a moment, and there are few after the first run.
    """
    with engine.connect() as conn:
        if not is_partitioned(conn):
            report.status = "not_partitioned"
            return
    for _ in range(_MAX_CHANGES):
        change = apply_next_change(engine, now)
        if change is None:
            return
        PARTITION_CHANGES.inc(change.action)
        if change.action == "dropped":
            report.dropped += 1
            report.events_dropped += change.rows
            metrics.MAINTENANCE_ROWS.inc("events_dropped", amount=change.rows)
            log.info("maintenance: partition %s dropped (%d events)", change.name, change.rows)
        else:
            report.created += 1
            report.events_moved += change.rows
            log.info("maintenance: partition %s created (%d events moved in)", change.name, change.rows)


def retention_floor(partitions: Iterable[Partition], cutoff: dt.datetime) -> dt.datetime:
    """Where a salon at the longest retention stops deleting rows: the start of the partition that
    holds `cutoff` (the rest goes with that partition), or `cutoff` itself outside partitions."""
    holding = next((p for p in partitions if p.holds(cutoff)), None)
    return holding.lower if holding is not None and holding.lower is not None else cutoff


def delete_external_ids_chunk(conn: Connection, *, tenant_id: int, before: dt.datetime, limit: int) -> int:
    """Forget up to `limit` of the salon's oldest external ids of events before `before`."""
    ids = event_external_ids
    oldest = (
        select(ids.c.external_event_id)
        .where(ids.c.tenant_id == tenant_id, ids.c.occurred_at < before)
        .order_by(ids.c.occurred_at)
        .limit(limit)
    )
    statement = delete(ids).where(ids.c.tenant_id == tenant_id, ids.c.external_event_id.in_(oldest))
    return conn.execute(statement).rowcount


def forget_customer_external_ids(conn: Connection, *, tenant_id: int, customer_id: int) -> int:
    """Forget the external ids of a customer's events (before those are deleted); 0 where not kept."""
    if not keeps_external_ids(conn):
        return 0
    theirs = select(events.c.external_event_id).where(
        events.c.tenant_id == tenant_id,
        events.c.customer_id == customer_id,
        events.c.external_event_id.is_not(None),
    )
    ids = event_external_ids
    statement = delete(ids).where(ids.c.tenant_id == tenant_id, ids.c.external_event_id.in_(theirs))
    return conn.execute(statement).rowcount


def deployed_metadata(dialect: str) -> MetaData:
    """The declared schema as the migrations build it on `dialect` (what a schema comparison expects)."""
    deployed = MetaData(naming_convention=metadata.naming_convention)
    for declared in metadata.sorted_tables:
        if declared.name == event_external_ids.name and dialect != "postgresql":
            continue  # SQLite keeps the unique index on events instead
        copied = declared.to_metadata(deployed)
        if declared.name == PARENT and dialect == "postgresql":
            for index in list(copied.indexes):
                if [c.name for c in index.columns] == ["tenant_id", "external_event_id"]:
                    # event_external_ids holds the guarantee there; the index went in 0010
                    copied.indexes.discard(index)
    return deployed


def comparison_filter(conn: Connection) -> Callable[..., bool]:
    """An Alembic `include_object` that leaves out the partitions of `events`: storage, not schema."""
    children: set[str] | None = None  # read on first use: configuring Alembic must not open a transaction

    def include(_object: Any, name: str | None, type_: str, reflected: bool, _compare_to: Any) -> bool:
        nonlocal children
        if type_ != "table" or not reflected:
            return True
        if children is None:
            children = {p.name for p in list_partitions(conn)} if is_partitioned(conn) else set()
        return name not in children

    return include
