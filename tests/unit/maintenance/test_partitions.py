"""Time partitions of events (PostgreSQL): expired partitions dropped whole, DEFAULT catching the rest,
external ids still unique and forgotten with their events; the layout rules themselves."""

from __future__ import annotations

import datetime as dt
import threading

import psycopg
import pytest
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import IntegrityError

from mailtrack.db import write_transaction
from mailtrack.maintenance import jobs, metrics, partitions
from mailtrack.maintenance.gdpr import erase_customer
from mailtrack.maintenance.jobs import run_maintenance
from mailtrack.maintenance.partitions import (
    Partition,
    list_partitions,
    missing_ranges,
    partition_width,
    retention_floor,
    wanted_days,
)
from mailtrack.messages.tables import customers
from mailtrack.tracking import ingest as ingest_module
from mailtrack.tracking.ingest import EventIn, IngestResult
from mailtrack.tracking.tables import event_external_ids, events
from tests.factories import ingest, make_customer, make_message, make_tenant
from tests.unit.maintenance.test_jobs import DAY, T0, change_settings, opens, salon_with_message, stored

UTC = dt.UTC


@pytest.fixture
def pg(engine: Engine) -> Engine:
    """The engine, on PostgreSQL only (SQLite keeps one table)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("events are partitioned on PostgreSQL only")
    return engine


def at(day: dt.date) -> dt.datetime:
    """Midnight UTC of `day`."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=UTC)


def names(engine: Engine) -> set[str]:
    """The partitions of events."""
    with engine.connect() as conn:
        return {p.name for p in list_partitions(conn)}


def homes(engine: Engine, tenant_id: int) -> dict[str, int]:
    """How many of the salon's events each partition holds."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT tableoid::regclass::text, count(*) FROM events WHERE tenant_id = :t GROUP BY 1"),
            {"t": tenant_id},
        )
        return dict(rows.all())


def external_ids(engine: Engine) -> set[str]:
    """Every external id event_external_ids holds."""
    with engine.connect() as conn:
        return set(conn.execute(select(event_external_ids.c.external_event_id)).scalars())


def exists(engine: Engine, name: str) -> bool:
    """True when a table of that name exists."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}).scalar_one() is True


def test_an_expired_partition_is_dropped_whole_at_91_days_not_at_89(pg: Engine) -> None:
    tenant_id, message_id = salon_with_message(pg)
    created = run_maintenance(pg, now=T0)  # maintenance runs all the time: today and the next days exist
    assert created.partitions.status == "done"
    assert {"events_20260310", "events_20260324"} <= names(pg)
    ingest(pg, EventIn(tenant_id, message_id, "sent", T0), *opens(tenant_id, message_id, T0, 3))
    ingest(pg, *opens(tenant_id, message_id, T0 + 2 * DAY, 2))
    assert homes(pg, tenant_id) == {"events_20260310": 4, "events_20260312": 2}
    dropped_before = metrics.MAINTENANCE_ROWS.value("events_dropped")

    kept = run_maintenance(pg, now=T0 + 89 * DAY)
    assert kept.totals()["partitions_dropped"] == 0
    assert len(stored(pg, tenant_id)) == 6

    report = run_maintenance(pg, now=T0 + 91 * DAY)
    assert not exists(pg, "events_20260310"), "the partition of the expired day is gone"
    assert [row.occurred_at for row in stored(pg, tenant_id)] == [
        T0 + 2 * DAY,
        T0 + 2 * DAY + dt.timedelta(seconds=1),
    ], "89 days old: kept in their own partition"
    totals = report.totals()
    assert (totals["partitions_dropped"], totals["events_dropped"], totals["events_deleted"]) == (1, 4, 0)
    assert metrics.MAINTENANCE_ROWS.value("events_dropped") - dropped_before == 4
    assert {"events_20260609", "events_20260623"} <= names(pg), "and the next days are made ready"


def test_a_shorter_retention_deletes_rows_in_a_partition_the_longest_keeps(pg: Engine) -> None:
    short_id, short_message = salon_with_message(pg)
    long_id, long_message = salon_with_message(pg)
    change_settings(pg, short_id, retention_days=30)
    run_maintenance(pg, now=T0)
    ingest(pg, *opens(short_id, short_message, T0, 3), *opens(long_id, long_message, T0, 2))

    report = run_maintenance(pg, now=T0 + 31 * DAY)
    assert exists(pg, "events_20260310")
    assert (stored(pg, short_id), len(stored(pg, long_id))) == ([], 2)
    assert report.totals()["events_deleted"] == 3


def test_the_default_partition_takes_any_time_and_expired_rows_there_are_deleted(pg: Engine) -> None:
    tenant_id, message_id = salon_with_message(pg)
    far_past, far_ahead = dt.datetime(2001, 1, 1, tzinfo=UTC), dt.datetime(2090, 1, 1, tzinfo=UTC)
    result = ingest(
        pg,
        *opens(tenant_id, message_id, far_past, 2),
        *opens(tenant_id, message_id, far_ahead, 1),
        *opens(tenant_id, message_id, T0 - 5 * DAY, 3),  # no partition yet for that day
    )
    assert result.stored == 6
    assert homes(pg, tenant_id) == {"events_default": 6}

    report = run_maintenance(pg, now=T0)
    assert homes(pg, tenant_id) == {"events_default": 1, "events_20260305": 3}, "moved into a new partition"
    assert report.partitions.events_moved == 3
    assert report.totals()["events_deleted"] == 2, "expired rows in DEFAULT are deleted like before"
    assert [row.occurred_at.year for row in stored(pg, tenant_id)] == [2026, 2026, 2026, 2090]


def _no_select_first(conn: Connection, batch: list[EventIn], result: IngestResult) -> list[EventIn]:
    return list(batch)


def test_an_external_id_is_stored_once_even_past_the_select(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, message_id = salon_with_message(engine)
    delivered = EventIn(tenant_id, message_id, "delivered", T0, external_event_id="ses:1")
    assert ingest(engine, delivered).stored == 1
    assert ingest(engine, delivered).duplicates == 1, "the usual path: found by the SELECT"

    # Two batches racing past their SELECTs: the database itself refuses the second (COPY on
    # PostgreSQL raises the driver's own error, as it did with the unique index on events).
    monkeypatch.setattr(ingest_module, "_drop_known_duplicates", _no_select_first)
    with pytest.raises((IntegrityError, psycopg.errors.UniqueViolation)):
        ingest(engine, EventIn(tenant_id, message_id, "delivered", T0 + DAY, external_event_id="ses:1"))
    assert len(stored(engine, tenant_id)) == 1
    if engine.dialect.name == "postgresql":
        assert external_ids(engine) == {"ses:1"}


def test_retention_forgets_the_external_ids_of_the_events_it_removes(pg: Engine) -> None:
    tenant_id, message_id = salon_with_message(pg)
    run_maintenance(pg, now=T0)
    ingest(
        pg,
        EventIn(tenant_id, message_id, "delivered", T0, external_event_id="ses:old"),
        EventIn(
            tenant_id, message_id, "bounced", T0 + 2 * DAY, bounce_kind="soft", external_event_id="ses:new"
        ),
    )
    report = run_maintenance(pg, now=T0 + 91 * DAY)
    assert report.totals()["events_dropped"] == 1
    assert external_ids(pg) == {"ses:new"}


def test_erasure_forgets_the_customers_external_ids(engine: Engine) -> None:
    tenant = make_tenant(engine)
    anna, bela = make_customer(engine, tenant.id), make_customer(engine, tenant.id, name="Béla Nagy")
    for customer, key in ((anna, "anna"), (bela, "bela")):
        message = make_message(engine, tenant.id, customer, sent_at=T0)
        ingest(engine, EventIn(tenant.id, message, "delivered", T0, external_event_id=f"ses:{key}"))
    with write_transaction(engine) as conn:
        external = conn.execute(select(customers.c.external_id).where(customers.c.id == anna)).scalar_one()
        erasure = erase_customer(conn, tenant_id=tenant.id, external_id=external)
    assert erasure is not None
    assert erasure.events_deleted == 1
    with engine.connect() as conn:
        left = conn.execute(select(events.c.external_event_id).where(events.c.tenant_id == tenant.id))
        assert set(left.scalars()) == {"ses:bela"}
    if engine.dialect.name == "postgresql":
        assert external_ids(engine) == {"ses:bela"}


def test_two_runs_at_once_make_each_partition_change_once(pg: Engine) -> None:
    salons = [salon_with_message(pg) for _ in range(2)]
    run_maintenance(pg, now=T0)
    for tenant_id, message_id in salons:
        ingest(pg, *(event for n in range(5) for event in opens(tenant_id, message_id, T0 + n * DAY, 4)))
    now = T0 + 100 * DAY
    horizon = now - 90 * DAY
    with pg.connect() as conn:
        expired = {p.name for p in list_partitions(conn) if p.upper is not None and p.upper <= horizon}
    assert len(expired) == 10  # 10 to 19 March
    barrier = threading.Barrier(2)
    reports: list[jobs.MaintenanceReport] = []

    def node(name: str) -> None:
        barrier.wait()
        reports.append(run_maintenance(pg, now=now, holder=name))

    threads = [threading.Thread(target=node, args=(name,)) for name in ("node-a", "node-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(reports) == 2
    assert [report.failed for report in reports] == [False, False]
    assert sum(report.partitions.dropped for report in reports) == len(expired), "each dropped once"
    assert sum(report.partitions.created for report in reports) == 15, "each created once"
    assert sum(report.totals()["events_dropped"] for report in reports) == 40
    assert sum(report.totals()["events_deleted"] for report in reports) == 0, "no row deleted one by one"
    assert not expired & names(pg)
    for tenant_id, _ in salons:
        assert stored(pg, tenant_id) == []


def test_a_salon_keeping_events_forever_stops_every_drop(pg: Engine) -> None:
    keeper_id, keeper_message = salon_with_message(pg)
    other_id, other_message = salon_with_message(pg)
    change_settings(pg, keeper_id, retention_days=0)
    run_maintenance(pg, now=T0)
    ingest(pg, *opens(keeper_id, keeper_message, T0, 2), *opens(other_id, other_message, T0, 3))

    report = run_maintenance(pg, now=T0 + 200 * DAY)
    assert report.totals()["partitions_dropped"] == 0
    assert (len(stored(pg, keeper_id)), stored(pg, other_id)) == (2, [])
    with pg.connect() as conn:
        new = [p for p in list_partitions(conn) if p.lower is not None and p.lower >= at(dt.date(2026, 9, 1))]
    assert [(p.name, p.upper) for p in new][:2] == [
        ("events_20260901", at(dt.date(2026, 10, 1))),
        ("events_20261001", at(dt.date(2026, 11, 1))),
    ], "with nothing to drop, new partitions are a month wide"


def test_partition_width_follows_the_longest_retention() -> None:
    assert [partition_width(days) for days in (0, 90, 120, 121, 730, 840, 841, None)] == [
        "day",
        "day",
        "day",
        "week",
        "week",
        "week",
        "month",
        "month",
    ]


def test_missing_ranges_fill_only_the_gaps_between_existing_partitions() -> None:
    march = Partition("events_20260301", at(dt.date(2026, 3, 1)), at(dt.date(2026, 3, 2)))
    default = Partition("events_default", None, None, default=True)
    days = [dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 4)]
    assert missing_ranges([march, default], days, "day") == [
        (at(dt.date(2026, 3, 2)), at(dt.date(2026, 3, 3))),
        (at(dt.date(2026, 3, 4)), at(dt.date(2026, 3, 5))),
    ]
    assert missing_ranges([march], days, "month") == [(at(dt.date(2026, 3, 2)), at(dt.date(2026, 4, 1)))]
    assert missing_ranges([], [dt.date(2026, 3, 4)], "week") == [  # ISO weeks start on Monday
        (at(dt.date(2026, 3, 2)), at(dt.date(2026, 3, 9)))
    ]


def test_wanted_days_leave_expired_and_far_future_rows_in_default() -> None:
    now = dt.datetime(2026, 3, 10, 9, 30, tzinfo=UTC)
    data = [dt.date(2025, 1, 1), dt.date(2026, 1, 20), dt.date(2026, 3, 20), dt.date(2030, 1, 1)]
    days = wanted_days(now, data, now - 90 * DAY)
    assert (min(days), max(days)) == (dt.date(2026, 1, 20), dt.date(2026, 3, 24))
    assert len(days) == partitions.AHEAD_DAYS + 2
    assert dt.date(2025, 1, 1) in wanted_days(now, data, None), "nothing expires while a salon keeps all"


def test_the_longest_retention_stops_at_the_partition_holding_its_cutoff() -> None:
    day = Partition("events_20260310", at(dt.date(2026, 3, 10)), at(dt.date(2026, 3, 11)))
    assert retention_floor([day], T0) == at(dt.date(2026, 3, 10))
    assert retention_floor([day], T0 + DAY) == T0 + DAY, "outside partitions: the cutoff itself"
