"""Retention, IP anonymization and rollup retention, with the clock moved forward; leases; resuming."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, select

from mailtrack.analytics.metrics import SCORE_WINDOW
from mailtrack.analytics.score_counts import customers_by_score
from mailtrack.analytics.tables import AGED_BY, rollup_messages, score_counts
from mailtrack.db import write_transaction
from mailtrack.maintenance import jobs
from mailtrack.maintenance.jobs import (
    LeaseLostError,
    acquire_lease,
    lease_name,
    months_before,
    renew_lease,
    run_maintenance,
)
from mailtrack.tenants.queries import update_settings
from mailtrack.tracking.ingest import EventIn
from mailtrack.tracking.tables import events
from mailtrack.tracking.useragent import UserAgentInfo
from tests.factories import ingest, make_customer, make_message, make_tenant

T0 = dt.datetime(2026, 3, 10, 9, 30, tzinfo=dt.UTC)
HUMAN = UserAgentInfo("desktop", "other", "Windows", False, "")
AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0"
DAY = dt.timedelta(days=1)


def salon_with_message(engine: Engine, *, sent_at: dt.datetime = T0) -> tuple[int, int]:
    """A salon and one tracked message of theirs, sent at `sent_at`."""
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id)
    return tenant.id, make_message(engine, tenant.id, customer, sent_at=sent_at)


def opens(
    tenant_id: int, message_id: int, at: dt.datetime, count: int, ip: str = "203.0.113.57"
) -> list[EventIn]:
    """`count` opens, a second apart from `at`."""
    return [
        EventIn(tenant_id, message_id, "opened", at + dt.timedelta(seconds=n), user_agent=AGENT, ip=ip)
        for n in range(count)
    ]


def stored(engine: Engine, tenant_id: int) -> list[Any]:
    """The salon's events, oldest first."""
    with engine.connect() as conn:
        query = select(events).where(events.c.tenant_id == tenant_id).order_by(events.c.occurred_at)
        return list(conn.execute(query).all())


def change_settings(engine: Engine, tenant_id: int, **changes: Any) -> None:
    """Change a salon's settings."""
    with write_transaction(engine) as conn:
        update_settings(conn, tenant_id=tenant_id, changes=changes)


def test_months_before_clamps_to_the_end_of_shorter_months() -> None:
    assert months_before(dt.datetime(2026, 3, 31, tzinfo=dt.UTC), 1) == dt.datetime(
        2026, 2, 28, tzinfo=dt.UTC
    )
    assert months_before(dt.datetime(2026, 1, 15, tzinfo=dt.UTC), 25) == dt.datetime(
        2023, 12, 15, tzinfo=dt.UTC
    )
    assert months_before(dt.datetime(2028, 3, 29, tzinfo=dt.UTC), 12) == dt.datetime(
        2027, 3, 29, tzinfo=dt.UTC
    )


def test_events_are_kept_at_89_days_and_gone_at_91(engine: Engine) -> None:
    tenant_id, message_id = salon_with_message(engine)
    ingest(engine, EventIn(tenant_id, message_id, "sent", T0), *opens(tenant_id, message_id, T0, 3))
    other_id, other_message = salon_with_message(engine)
    change_settings(engine, other_id, retention_days=200)
    ingest(engine, *opens(other_id, other_message, T0, 2))

    report = run_maintenance(engine, now=T0 + 89 * DAY)
    assert len(stored(engine, tenant_id)) == 4
    assert report.totals()["events_deleted"] == 0

    report = run_maintenance(engine, now=T0 + 91 * DAY)
    assert stored(engine, tenant_id) == []
    assert len(stored(engine, other_id)) == 2, "each salon's own retention applies"
    salon = next(s for s in report.salons if s.tenant_id == tenant_id)
    assert (salon.status, salon.events_deleted) == ("done", 4)


def test_ips_are_full_at_29_days_and_truncated_at_31(engine: Engine) -> None:
    tenant_id, message_id = salon_with_message(engine)
    ingest(
        engine,
        *opens(tenant_id, message_id, T0, 1, ip="203.0.113.57"),
        *opens(tenant_id, message_id, T0 + dt.timedelta(minutes=1), 1, ip="2001:db8:1234:5678::1"),
        *opens(tenant_id, message_id, T0 + dt.timedelta(minutes=2), 1, ip="::ffff:198.51.100.7"),
        *opens(tenant_id, message_id, T0 + 5 * DAY, 1, ip="192.0.2.44"),
    )
    run_maintenance(engine, now=T0 + 29 * DAY)
    assert [(row.ip, row.ip_anonymized) for row in stored(engine, tenant_id)] == [
        ("203.0.113.57", False),
        ("2001:db8:1234:5678::1", False),
        ("::ffff:198.51.100.7", False),
        ("192.0.2.44", False),
    ]

    report = run_maintenance(engine, now=T0 + 31 * DAY)
    assert [(row.ip, row.ip_anonymized) for row in stored(engine, tenant_id)] == [
        ("203.0.113.0", True),
        ("2001:db8:1234::", True),
        ("198.51.100.0", True),
        ("192.0.2.44", False),  # only 26 days old
    ]
    assert report.totals()["ips_anonymized"] == 3
    again = run_maintenance(engine, now=T0 + 31 * DAY)
    assert again.totals()["ips_anonymized"] == 0, "rows already anonymized are skipped"


def test_setting_zero_truncates_at_once_and_minus_one_removes_every_address(engine: Engine) -> None:
    tenant_id, message_id = salon_with_message(engine)
    ingest(engine, *opens(tenant_id, message_id, T0, 2))
    change_settings(engine, tenant_id, ip_anonymize_days=0)
    run_maintenance(engine, now=T0 + dt.timedelta(minutes=5))
    assert {(row.ip, row.ip_anonymized) for row in stored(engine, tenant_id)} == {("203.0.113.0", True)}

    ingest(engine, *opens(tenant_id, message_id, T0 + DAY, 1, ip="198.51.100.9"))
    assert stored(engine, tenant_id)[-1].ip == "198.51.100.0", "ingest truncates at once too"

    change_settings(engine, tenant_id, ip_anonymize_days=-1)
    report = run_maintenance(engine, now=T0 + DAY)
    assert {row.ip for row in stored(engine, tenant_id)} == {None}
    assert report.totals()["ips_anonymized"] == 3


def _rollup_days(conn: Connection, tenant_id: int) -> dict[str, set[dt.date]]:
    return {
        table.name: {
            moment.date()
            for moment in conn.execute(select(moment).where(table.c.tenant_id == tenant_id)).scalars()
        }
        for table, moment in AGED_BY.items()
    }


def test_rollups_keep_last_year_and_drop_what_is_older_than_25_months(engine: Engine) -> None:
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id)
    old_sent, last_year_sent = months_before(T0, 26), months_before(T0, 12)
    # Earlier than 25 months before T0, but on its UTC day: kept whole, so hours and days agree.
    edge_sent = months_before(T0, 25) - dt.timedelta(hours=1)
    for sent in (old_sent, last_year_sent, edge_sent):  # a URL each: link_totals has a row per URL
        page = f"https://salon.example/{sent:%Y-%m}"
        message = make_message(engine, tenant.id, customer, sent_at=sent, links=(page,))
        ingest(
            engine,
            EventIn(tenant.id, message, "sent", sent),
            *opens(tenant.id, message, sent + dt.timedelta(hours=2), 1),
            EventIn(
                tenant.id, message, "clicked", sent + dt.timedelta(hours=3), link_position=0, agent=HUMAN
            ),
        )
    with engine.connect() as conn:
        before = _rollup_days(conn, tenant.id)
        counts_before = len(_score_count_days(conn, tenant.id))
    report = run_maintenance(engine, now=T0)

    with engine.connect() as conn:
        days = _rollup_days(conn, tenant.id)
        last_year = conn.execute(
            select(func.sum(rollup_messages.c.sent), func.sum(rollup_messages.c.opened)).where(
                rollup_messages.c.tenant_id == tenant.id,
                rollup_messages.c.hour >= months_before(T0, 13),
                rollup_messages.c.hour < months_before(T0, 11),
            )
        ).one()
    kept = {last_year_sent.date(), edge_sent.date()}
    assert before == {name: {old_sent.date(), *kept} for name in before}, "every table had all three"
    assert days == dict.fromkeys(days, kept), f"{old_sent:%Y-%m-%d} is gone, the rest stays"
    assert tuple(last_year) == (1, 1), "last year's figures still add up"
    assert counts_before > 0
    with engine.connect() as conn:
        assert _score_count_days(conn, tenant.id) == [], "last mailed a year ago: outside the score window"
    deleted = report.totals()["rollup_rows_deleted"]
    assert deleted == len(AGED_BY) + counts_before, "one row of each rollup, and the score counts"
    assert stored(engine, tenant.id) == [], "raw events of all went long ago"


def _score_count_days(conn: Connection, tenant_id: int) -> list[dt.date]:
    rows = conn.execute(select(score_counts.c.day).where(score_counts.c.tenant_id == tenant_id))
    return sorted(day.date() for day in rows.scalars())


def test_score_counts_of_the_window_stay_and_older_ones_go(engine: Engine) -> None:
    tenant = make_tenant(engine)
    for days_ago in (1, 89, 120):
        customer = make_customer(engine, tenant.id)
        sent = T0 - dt.timedelta(days=days_ago)
        message = make_message(engine, tenant.id, customer, sent_at=sent)
        ingest(engine, EventIn(tenant.id, message, "sent", sent), *opens(tenant.id, message, sent, 1))
    run_maintenance(engine, now=T0)
    with engine.connect() as conn:
        kept = _score_count_days(conn, tenant.id)
        window = customers_by_score(conn, tenant_id=tenant.id, since=T0 - SCORE_WINDOW)
    assert kept == [(T0 - dt.timedelta(days=89)).date(), (T0 - dt.timedelta(days=1)).date()]
    assert sum(window.values()) == 2, "both customers mailed in the window still count"


def test_two_runs_at_once_do_the_work_once(engine: Engine) -> None:
    salons = [salon_with_message(engine) for _ in range(3)]
    for tenant_id, message_id in salons:
        ingest(engine, *opens(tenant_id, message_id, T0, 40))
    barrier = threading.Barrier(2)
    reports: list[jobs.MaintenanceReport] = []

    def node(name: str) -> None:
        barrier.wait()
        reports.append(run_maintenance(engine, now=T0 + 100 * DAY, chunk_rows=7, holder=name))

    threads = [threading.Thread(target=node, args=(name,)) for name in ("node-a", "node-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(reports) == 2
    assert not any(report.failed for report in reports)
    assert sum(report.totals()["events_deleted"] for report in reports) == 120, "each row deleted once"
    for tenant_id, _ in salons:
        assert stored(engine, tenant_id) == []
        visits = [s for report in reports for s in report.salons if s.tenant_id == tenant_id]
        worked = [s for s in visits if s.events_deleted]
        assert len(worked) == 1, "one node did this salon's work"


def test_a_held_lease_is_respected_until_it_expires(engine: Engine) -> None:
    tenant_id, message_id = salon_with_message(engine)
    ingest(engine, *opens(tenant_id, message_id, T0, 5))
    now = T0 + 100 * DAY
    with write_transaction(engine) as conn:
        assert acquire_lease(
            conn, name=lease_name(tenant_id), holder="crashed-node", now=now, ttl=dt.timedelta(minutes=10)
        )

    blocked = run_maintenance(engine, now=now + dt.timedelta(minutes=9), tenant_ids=[tenant_id])
    assert [s.status for s in blocked.salons] == ["skipped"]
    assert len(stored(engine, tenant_id)) == 5

    taken_over = run_maintenance(engine, now=now + dt.timedelta(minutes=11), tenant_ids=[tenant_id])
    assert [(s.status, s.events_deleted) for s in taken_over.salons] == [("done", 5)]
    with write_transaction(engine) as conn, pytest.raises(LeaseLostError):
        renew_lease(conn, name=lease_name(tenant_id), holder="crashed-node", now=now, ttl=dt.timedelta(1))


def test_a_salon_done_recently_is_skipped_when_asked(engine: Engine) -> None:
    tenant_id, _ = salon_with_message(engine)
    run_maintenance(engine, now=T0, tenant_ids=[tenant_id])
    recent = run_maintenance(
        engine, now=T0 + dt.timedelta(minutes=20), skip_done_within=dt.timedelta(minutes=30)
    )
    assert [s.status for s in recent.salons if s.tenant_id == tenant_id] == ["skipped"]
    later = run_maintenance(
        engine, now=T0 + dt.timedelta(minutes=40), skip_done_within=dt.timedelta(minutes=30)
    )
    assert [s.status for s in later.salons if s.tenant_id == tenant_id] == ["done"]


def test_an_interrupted_run_is_resumed_by_the_next(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant_id, message_id = salon_with_message(engine)
    ingest(engine, *opens(tenant_id, message_id, T0, 35))
    real = jobs.delete_events_chunk
    calls = 0

    def crash_after_first_chunk(conn: Connection, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the node died")
        return real(conn, **kwargs)

    monkeypatch.setattr(jobs, "delete_events_chunk", crash_after_first_chunk)
    first = run_maintenance(engine, now=T0 + 100 * DAY, chunk_rows=10)
    assert [(s.status, s.error, s.events_deleted) for s in first.salons] == [("failed", "RuntimeError", 10)]
    assert len(stored(engine, tenant_id)) == 25, "the first chunk was committed, the second rolled back"

    monkeypatch.setattr(jobs, "delete_events_chunk", real)
    second = run_maintenance(engine, now=T0 + 100 * DAY, chunk_rows=10)
    assert [(s.status, s.events_deleted) for s in second.salons] == [("done", 25)]
    assert stored(engine, tenant_id) == []


def test_a_run_asked_to_stop_stops_between_chunks(engine: Engine) -> None:
    tenant_id, message_id = salon_with_message(engine)
    ingest(engine, *opens(tenant_id, message_id, T0, 30))
    checks = iter([False, False, False, True])  # the salon loop, then one check before each chunk
    report = run_maintenance(
        engine, now=T0 + 100 * DAY, chunk_rows=10, should_stop=lambda: next(checks, True)
    )
    assert [(s.status, s.error) for s in report.salons] == [("failed", "InterruptedRunError")]
    assert len(stored(engine, tenant_id)) == 10


def test_the_report_and_logs_hold_no_personal_data(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    tenant_id, message_id = salon_with_message(engine)
    ingest(engine, *opens(tenant_id, message_id, T0, 2, ip="198.51.100.77"))
    with caplog.at_level("DEBUG"):
        report = run_maintenance(engine, now=T0 + 31 * DAY)
    text = caplog.text + repr(report.as_dict())
    assert "198.51.100" not in text
    assert "@example.com" not in text
    assert "Anna" not in text
    assert f"salon {tenant_id}: 0 events deleted, 2 IPs anonymized" in caplog.text
