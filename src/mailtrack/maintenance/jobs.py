"""Retention and IP anonymization, per salon, in bounded chunks under a lease.

Per salon: delete raw events older than `retention_days`, truncate stored addresses older than
`ip_anonymize_days` (IPv4 /24, IPv6 /48), delete rollup rows older than `rollup_retention_months`.
On PostgreSQL a run first drops the time partitions of `events` that expired for every salon and
creates the next ones (partitions.py); the salons at the longest retention then leave their expired
rows to their partition, and only the others delete rows.
Each chunk is its own transaction, and what a chunk selects is exactly what is still to do, so a run
that dies half-way has committed its finished chunks and the next run simply carries on.

A lease row per salon (`maintenance_leases`) makes several runs at once (two app nodes, or cron while
`serve` runs) share the salons instead of doing the same work twice; it is renewed inside every chunk's
transaction, so a run that lost its lease cannot commit another chunk, and it expires, so a crashed
holder blocks nobody for longer than the lease time.

Like `tracking/ingest.py`, this module reaches into other domains' tables on purpose: it is the one
place that must touch every table that holds raw events.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, delete, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from mailtrack.analytics.metrics import SCORE_WINDOW
from mailtrack.analytics.rollups import utc_day
from mailtrack.analytics.score_counts import delete_stale_counts
from mailtrack.analytics.tables import AGED_BY
from mailtrack.db import utcnow, write_transaction
from mailtrack.maintenance import metrics
from mailtrack.maintenance.partitions import (
    Partition,
    PartitionReport,
    delete_external_ids_chunk,
    keeps_external_ids,
    list_partitions,
    longest_retention,
    maintain_partitions,
    retention_floor,
)
from mailtrack.maintenance.tables import IP_PENDING_PREDICATE, maintenance_leases
from mailtrack.tenants.queries import TenantSettings, get_settings
from mailtrack.tenants.tables import tenants
from mailtrack.tracking.ipaddr import anonymize_ip
from mailtrack.tracking.tables import events

log = logging.getLogger(__name__)

CHUNK_ROWS = 5000
LEASE_SECONDS = 600.0
# Rollups keyed by cohort hour or day (a new one belongs in AGED_BY, so that it ages out too).
ROLLUP_TABLES: tuple[Table, ...] = tuple(AGED_BY)
_RELEASED = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)  # free for any clock, including tests' moved ones


class LeaseLostError(RuntimeError):
    """Another run took over this salon's lease (ours expired); stop without committing more."""


class InterruptedRunError(RuntimeError):
    """The run was asked to stop (shutdown) between two chunks."""


@dataclass(slots=True)
class SalonReport:
    """What maintenance did for one salon."""

    tenant_id: int
    status: str = "done"  # done | skipped (leased elsewhere or done recently) | failed
    events_deleted: int = 0
    ips_anonymized: int = 0
    rollup_rows_deleted: int = 0
    seconds: float = 0.0
    error: str | None = None  # the exception's class only: messages may quote personal data


@dataclass(slots=True)
class MaintenanceReport:
    """What one maintenance run did, salon by salon."""

    now: dt.datetime
    holder: str
    salons: list[SalonReport] = field(default_factory=list)
    partitions: PartitionReport = field(default_factory=PartitionReport)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        """True when at least one salon, or the partition step, failed."""
        return self.partitions.status == "failed" or any(salon.status == "failed" for salon in self.salons)

    def totals(self) -> dict[str, int]:
        """Rows changed and salons by outcome, over the whole run."""
        return {
            "events_deleted": sum(s.events_deleted for s in self.salons),
            "ips_anonymized": sum(s.ips_anonymized for s in self.salons),
            "rollup_rows_deleted": sum(s.rollup_rows_deleted for s in self.salons),
            "events_dropped": self.partitions.events_dropped,
            "partitions_dropped": self.partitions.dropped,
            "partitions_created": self.partitions.created,
            "salons_done": sum(s.status == "done" for s in self.salons),
            "salons_skipped": sum(s.status == "skipped" for s in self.salons),
            "salons_failed": sum(s.status == "failed" for s in self.salons),
        }

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return {
            "now": self.now.isoformat(),
            "seconds": round(self.seconds, 3),
            **self.totals(),
            "partitions": {**asdict(self.partitions), "seconds": round(self.partitions.seconds, 3)},
            "salons": [{**asdict(s), "seconds": round(s.seconds, 3)} for s in self.salons],
        }


def default_holder() -> str:
    """A name for this process in lease rows: host, pid and a random tag."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(4)}"


def lease_name(tenant_id: int) -> str:
    """The lease guarding one salon's maintenance."""
    return f"retention:{tenant_id}"


def _insert_ignoring_conflict(conn: Connection, values: dict[str, Any]) -> bool:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(maintenance_leases).values(values).on_conflict_do_nothing()
    # RETURNING, not rowcount: drivers disagree on the rowcount of an INSERT that did nothing.
    return conn.execute(statement.returning(maintenance_leases.c.name)).first() is not None


def acquire_lease(
    conn: Connection,
    *,
    name: str,
    holder: str,
    now: dt.datetime,
    ttl: dt.timedelta,
    done_since: dt.datetime | None = None,
) -> bool:
    """Take the lease when it is free or expired (and, with `done_since`, not completed since then)."""
    # One conditional UPDATE is atomic on both backends: of two runs racing for an expired lease, the
    # second re-reads the row after the first commits, finds it unexpired and updates nothing.
    condition = maintenance_leases.c.expires_at <= now
    if done_since is not None:
        condition &= maintenance_leases.c.completed_at.is_(None) | (
            maintenance_leases.c.completed_at < done_since
        )
    taken = conn.execute(
        update(maintenance_leases)
        .where(maintenance_leases.c.name == name, condition)
        .values(holder=holder, expires_at=now + ttl, acquired_at=now)
    ).rowcount
    if taken:
        return True
    values = {"name": name, "holder": holder, "expires_at": now + ttl, "acquired_at": now}
    return _insert_ignoring_conflict(conn, values)


def renew_lease(conn: Connection, *, name: str, holder: str, now: dt.datetime, ttl: dt.timedelta) -> None:
    """Extend our lease; raises LeaseLostError when someone else holds it now."""
    renewed = conn.execute(
        update(maintenance_leases)
        .where(maintenance_leases.c.name == name, maintenance_leases.c.holder == holder)
        .values(expires_at=now + ttl)
    ).rowcount
    if not renewed:
        raise LeaseLostError(name)


def release_lease(conn: Connection, *, name: str, holder: str, completed_at: dt.datetime | None) -> None:
    """Give the lease back (recording a completed run, if it was one)."""
    values: dict[str, Any] = {"expires_at": _RELEASED}
    if completed_at is not None:
        values["completed_at"] = completed_at
    conn.execute(
        update(maintenance_leases)
        .where(maintenance_leases.c.name == name, maintenance_leases.c.holder == holder)
        .values(values)
    )


def months_before(moment: dt.datetime, months: int) -> dt.datetime:
    """The same day and time `months` calendar months earlier (clamped to the month's last day)."""
    years, month_index = divmod(moment.month - 1 - months, 12)
    year, month = moment.year + years, month_index + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def delete_events_chunk(conn: Connection, *, tenant_id: int, before: dt.datetime, limit: int) -> int:
    """Delete up to `limit` of the salon's oldest events that occurred before `before`."""
    scope = (events.c.tenant_id == tenant_id, events.c.occurred_at < before)
    last = conn.execute(
        select(events.c.occurred_at, events.c.id)
        .where(*scope)
        .order_by(events.c.occurred_at, events.c.id)
        .offset(limit - 1)
        .limit(1)
    ).first()
    # The chunk is a range of (occurred_at, id) up to its `limit`-th row, not a list of ids: a
    # partitioned table then prunes to the partitions of that range instead of probing every one
    # of them for each id. tenant_id leads every condition, which Citus needs to route it to a shard.
    statement = delete(events).where(*scope)
    if last is not None:
        statement = statement.where(
            events.c.occurred_at <= last.occurred_at,
            or_(events.c.occurred_at < last.occurred_at, events.c.id <= last.id),
        )
    return conn.execute(statement).rowcount


# occurred_at too, so that a partitioned table finds the row in its one partition.
_TRUNCATE_IP = (
    update(events)
    .where(
        events.c.tenant_id == bindparam("k_tenant"),
        events.c.id == bindparam("k_id"),
        events.c.occurred_at == bindparam("k_at"),
    )
    .values(ip=bindparam("k_ip"), ip_anonymized=True)
)


def anonymize_ips_chunk(
    conn: Connection, *, tenant_id: int, before: dt.datetime | None, limit: int, erase: bool = False
) -> int:
    """Truncate (or with `erase`, remove) up to `limit` stored addresses of events before `before`."""
    chosen = select(events.c.id, events.c.occurred_at, events.c.ip).where(events.c.tenant_id == tenant_id)
    if erase:
        # The salon stores no addresses any more: remove whatever is left, truncated ones included.
        chosen = chosen.where(events.c.ip.is_not(None)).order_by(events.c.id)
    else:
        chosen = chosen.where(text(IP_PENDING_PREDICATE)).order_by(events.c.occurred_at)
        if before is not None:
            chosen = chosen.where(events.c.occurred_at < before)
    rows = conn.execute(chosen.limit(limit)).all()
    if rows:
        params = [
            {
                "k_tenant": tenant_id,
                "k_id": row.id,
                "k_at": row.occurred_at,
                "k_ip": None if erase else anonymize_ip(row.ip),
            }
            for row in rows
        ]
        conn.execute(_TRUNCATE_IP, params)
    return len(rows)


def delete_rollups_chunk(
    conn: Connection, *, table: Table, tenant_id: int, before: dt.datetime, limit: int
) -> tuple[int, bool]:
    """Delete about `limit` of the salon's oldest rollup rows before `before`; (rows, more to do)."""
    hour = AGED_BY[table]
    scope = (table.c.tenant_id == tenant_id, hour < before)
    # Rollup keys have no single id: bound the chunk by the hour of its `limit`-th row instead
    # (a chunk may run over by the rows sharing that one hour).
    bound = conn.execute(
        select(hour).where(*scope).order_by(hour).offset(limit - 1).limit(1)
    ).scalar_one_or_none()
    statement = delete(table).where(*scope)
    if bound is not None:
        statement = statement.where(hour <= bound)
    return conn.execute(statement).rowcount, bound is not None


@dataclass(slots=True)
class _Run:
    engine: Engine
    now: dt.datetime
    holder: str
    chunk_rows: int
    ttl: dt.timedelta
    should_stop: Callable[[], bool]
    started: float = field(default_factory=time.monotonic)
    # After the partition step (PostgreSQL): the partitions left, and the longest retention of any salon.
    partitions: list[Partition] = field(default_factory=list)
    longest: int | None = None

    def events_before(self, retention_days: int) -> dt.datetime:
        """Where a salon's deletes of raw events stop."""
        cutoff = self.now - dt.timedelta(days=retention_days)
        if self.partitions and retention_days == self.longest:
            # Rows past the cutoff but in the partition that holds it go with that partition, a bit
            # later; deleting them now would delete every row one by one before its partition goes.
            return retention_floor(self.partitions, cutoff)
        return cutoff

    def lease_now(self) -> dt.datetime:
        # The run's clock moved on by the real time spent, so renewals extend the lease for real.
        return self.now + dt.timedelta(seconds=time.monotonic() - self.started)

    def chunks(self, salon: SalonReport, action: str, step: Callable[[Connection], tuple[int, bool]]) -> None:
        """Run `step` one transaction at a time, renewing the lease inside each, until it has no more;
        adds each committed chunk's rows to the report's `action` field (so a failed run reports them)."""
        more = True
        while more:
            if self.should_stop():
                raise InterruptedRunError(action)
            with write_transaction(self.engine) as conn:
                renew_lease(
                    conn,
                    name=lease_name(salon.tenant_id),
                    holder=self.holder,
                    now=self.lease_now(),
                    ttl=self.ttl,
                )
                done, more = step(conn)
            setattr(salon, action, getattr(salon, action) + done)
            metrics.MAINTENANCE_ROWS.inc(action, amount=done)


def _maintain(run: _Run, salon: SalonReport, settings: TenantSettings) -> None:
    tenant_id, limit = salon.tenant_id, run.chunk_rows
    if settings.retention_days > 0:  # 0 or less: keep raw events
        before = run.events_before(settings.retention_days)
        run.chunks(salon, "events_deleted", lambda conn: _events_step(conn, tenant_id, before, limit))
    days = settings.ip_anonymize_days
    cutoff = run.now - dt.timedelta(days=days) if days > 0 else None  # 0: at once; -1: remove them
    run.chunks(
        salon,
        "ips_anonymized",
        lambda conn: _full(
            anonymize_ips_chunk(conn, tenant_id=tenant_id, before=cutoff, limit=limit, erase=days < 0), limit
        ),
    )
    if settings.rollup_retention_months > 0:
        # From a UTC midnight, so that hourly and daily rollups always cover the same hours.
        oldest = utc_day(months_before(run.now, settings.rollup_retention_months))
        for table in ROLLUP_TABLES:
            run.chunks(salon, "rollup_rows_deleted", _rollup_step(table, tenant_id, oldest, limit))
    # Score counts of days before the 90-day window (with a week to spare for clocks) are never read.
    stale = utc_day(run.now - SCORE_WINDOW) - dt.timedelta(days=7)
    run.chunks(
        salon,
        "rollup_rows_deleted",
        lambda conn: (delete_stale_counts(conn, tenant_id=tenant_id, before=stale), False),
    )


def _rollup_step(
    table: Table, tenant_id: int, before: dt.datetime, limit: int
) -> Callable[[Connection], tuple[int, bool]]:
    return lambda conn: delete_rollups_chunk(
        conn, table=table, tenant_id=tenant_id, before=before, limit=limit
    )


def _events_step(conn: Connection, tenant_id: int, before: dt.datetime, limit: int) -> tuple[int, bool]:
    deleted = delete_events_chunk(conn, tenant_id=tenant_id, before=before, limit=limit)
    more = deleted >= limit
    if keeps_external_ids(conn):  # their ids go too, also those of the events gone with a partition
        more |= delete_external_ids_chunk(conn, tenant_id=tenant_id, before=before, limit=limit) >= limit
    return deleted, more


def _full(done: int, limit: int) -> tuple[int, bool]:
    return done, done >= limit


def _salon(run: _Run, tenant_id: int, done_since: dt.datetime | None) -> SalonReport:
    salon = SalonReport(tenant_id)
    started = time.monotonic()
    name = lease_name(tenant_id)
    with write_transaction(run.engine) as conn:
        taken = acquire_lease(
            conn, name=name, holder=run.holder, now=run.lease_now(), ttl=run.ttl, done_since=done_since
        )
    if not taken:
        salon.status = "skipped"
        return salon
    completed: dt.datetime | None = None
    try:
        with run.engine.connect() as conn:
            settings = get_settings(conn, tenant_id=tenant_id)
        _maintain(run, salon, settings)
        completed = run.now
    except Exception as exc:  # noqa: BLE001  (one salon's failure must not stop the others: reported, counted)
        salon.status, salon.error = "failed", _describe(exc)
    finally:
        salon.seconds = time.monotonic() - started
        try:
            with write_transaction(run.engine) as conn:
                release_lease(conn, name=name, holder=run.holder, completed_at=completed)
        except SQLAlchemyError as exc:  # the lease will expire on its own
            log.warning("maintenance: salon %d: lease not released (%s)", tenant_id, _describe(exc))
    return salon


def _describe(exc: BaseException) -> str:
    # Only the class (and the driver's): messages and SQL parameters can carry addresses and names.
    origin = getattr(exc, "orig", None)
    return type(exc).__name__ + (f"/{type(origin).__name__}" if origin is not None else "")


def _partition_step(run: _Run, report: PartitionReport) -> None:
    started = time.monotonic()
    try:
        maintain_partitions(run.engine, now=run.now, report=report)
        if report.status == "done":
            with run.engine.connect() as conn:
                run.partitions, run.longest = list_partitions(conn), longest_retention(conn)
    except Exception as exc:  # noqa: BLE001  (the salons' deletes still apply retention: reported, counted)
        report.status, report.error = "failed", _describe(exc)
        log.error("maintenance: partitions failed: %s", report.error)
    finally:
        report.seconds = time.monotonic() - started


def salon_ids(engine: Engine) -> list[int]:
    """Every salon, in id order."""
    with engine.connect() as conn:
        return list(conn.execute(select(tenants.c.id).order_by(tenants.c.id)).scalars())


def run_maintenance(
    engine: Engine,
    *,
    now: dt.datetime | None = None,
    tenant_ids: Sequence[int] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    lease_seconds: float = LEASE_SECONDS,
    holder: str | None = None,
    skip_done_within: dt.timedelta | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> MaintenanceReport:
    """Apply retention, IP anonymization and rollup retention to every salon (or `tenant_ids`) once.

    `now` is the clock (tests move it); `skip_done_within` skips salons another run completed that
    recently (the scheduler's several nodes); a salon that fails is reported and the others go on.
    """
    run = _Run(
        engine,
        now or utcnow(),
        holder or default_holder(),
        chunk_rows,
        dt.timedelta(seconds=lease_seconds),
        should_stop,
    )
    report = MaintenanceReport(now=run.now, holder=run.holder)
    _partition_step(run, report.partitions)
    done_since = run.now - skip_done_within if skip_done_within is not None else None
    for tenant_id in salon_ids(engine) if tenant_ids is None else tenant_ids:
        if should_stop():
            break
        salon = _salon(run, tenant_id, done_since)
        report.salons.append(salon)
        metrics.MAINTENANCE_SALONS.inc(salon.status)
        if salon.status == "failed":
            log.error("maintenance: salon %d failed after %.2fs: %s", tenant_id, salon.seconds, salon.error)
        elif salon.status == "done" and (
            salon.events_deleted or salon.ips_anonymized or salon.rollup_rows_deleted
        ):
            log.info(
                "maintenance: salon %d: %d events deleted, %d IPs anonymized, %d rollup rows deleted "
                "in %.2fs",
                tenant_id,
                salon.events_deleted,
                salon.ips_anonymized,
                salon.rollup_rows_deleted,
                salon.seconds,
            )
    report.seconds = time.monotonic() - run.started
    totals = report.totals()
    metrics.MAINTENANCE_RUNS.inc("failed" if report.failed else "ok")
    if not report.failed:
        metrics.MAINTENANCE_LAST_SUCCESS.set(time.time())
    log.info(
        "maintenance run: %d salons done, %d skipped, %d failed; %d events dropped with %d partitions, "
        "%d events deleted, %d IPs anonymized, %d rollup rows deleted in %.2fs",
        totals["salons_done"],
        totals["salons_skipped"],
        totals["salons_failed"],
        totals["events_dropped"],
        totals["partitions_dropped"],
        totals["events_deleted"],
        totals["ips_anonymized"],
        totals["rollup_rows_deleted"],
        report.seconds,
    )
    return report
