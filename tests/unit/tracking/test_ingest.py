"""The ingest batch: message states, aggregates and rollups from events, on both backends."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, func, select

from mailtrack.analytics.tables import (
    customer_open_hours,
    rollup_links,
    rollup_messages,
    rollup_open_delays,
    rollup_opens,
)
from mailtrack.messages.tables import customers, messages
from mailtrack.tracking.ingest import EventIn, message_weight
from mailtrack.tracking.tables import events
from tests.factories import ingest, make_customer, make_message, make_tenant

T0 = dt.datetime(2026, 8, 3, 16, 0, 0, tzinfo=dt.UTC)
IPHONE_MAIL = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) "
    "AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
)
DESKTOP_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) "
    "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)


def _rollup(engine: Engine, tenant_id: int) -> dict[str, int]:
    with engine.connect() as conn:
        row = conn.execute(
            select(
                *(
                    func.sum(column).label(column.name)
                    for column in rollup_messages.c
                    if column.name not in ("tenant_id", "hour", "channel", "source", "campaign_id")
                )
            ).where(rollup_messages.c.tenant_id == tenant_id)
        ).one()
    return {key: int(value or 0) for key, value in row._asdict().items()}


def _event(tenant_id: int, message_id: int, kind: str, minutes: float, **extra: object) -> EventIn:
    return EventIn(tenant_id, message_id, kind, T0 + dt.timedelta(minutes=minutes), **extra)  # type: ignore[arg-type]


def test_first_human_open_counts_once_and_machine_opens_apart(engine: Engine) -> None:
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id)
    message = make_message(engine, tenant.id, customer, sent_at=T0)
    ingest(
        engine,
        _event(tenant.id, message, "sent", 0),
        _event(tenant.id, message, "opened", 1, user_agent="Mozilla/5.0", ip="17.58.1.2"),
        _event(tenant.id, message, "opened", 90, user_agent=IPHONE_MAIL, ip="81.2.3.4"),
    )
    ingest(engine, _event(tenant.id, message, "opened", 200, user_agent=IPHONE_MAIL))
    totals = _rollup(engine, tenant.id)
    assert totals["sent"] == 1
    assert totals["opened"] == 1
    assert totals["opens"] == 2
    assert totals["machine_opened"] == 1
    assert totals["machine_opens"] == 1
    with engine.connect() as conn:
        state = conn.execute(select(messages).where(messages.c.id == message)).one()
        flagged = conn.execute(
            select(events.c.machine, events.c.machine_reason).where(events.c.type == "opened")
        ).all()
        delays = conn.execute(select(rollup_open_delays.c.delay_hours, rollup_open_delays.c.opened)).all()
        opens = conn.execute(
            select(rollup_opens.c.device, rollup_opens.c.client, rollup_opens.c.opened)
        ).all()
    assert state.opened_at == T0 + dt.timedelta(minutes=90)
    assert state.machine_opened_at == T0 + dt.timedelta(minutes=1)
    assert state.open_count == 3
    assert sorted(flagged) == [(False, None), (False, None), (True, "apple_privacy_proxy")]
    assert delays == [(1, 1)]
    assert opens == [("mobile", "apple_mail", 1)]
    with engine.connect() as conn:
        slots = conn.execute(select(customer_open_hours.c.weekday_hour, customer_open_hours.c.opens)).all()
    assert [tuple(row) for row in slots] == [(19, 1)], "Monday 17:30 UTC is 19:30 in Budapest (CEST)"


def test_click_implies_open_and_unique_clicks_per_link(engine: Engine) -> None:
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id)
    message = make_message(
        engine, tenant.id, customer, sent_at=T0, links=("https://a.example/", "https://b.example/")
    )
    ingest(engine, _event(tenant.id, message, "sent", 0))
    ingest(engine, _event(tenant.id, message, "clicked", 30, user_agent=DESKTOP_CHROME, link_position=0))
    ingest(
        engine,
        _event(tenant.id, message, "clicked", 31, user_agent=DESKTOP_CHROME, link_position=0),
        _event(tenant.id, message, "clicked", 32, user_agent=DESKTOP_CHROME, link_position=1),
    )
    totals = _rollup(engine, tenant.id)
    assert totals["opened"] == 1, "a human click proves an open even with images blocked"
    assert totals["clicked"] == 1
    assert totals["clicks"] == 3
    with engine.connect() as conn:
        links = {
            row.url: (row.clicks, row.unique_clicks)
            for row in conn.execute(
                select(rollup_links.c.url, rollup_links.c.clicks, rollup_links.c.unique_clicks)
            )
        }
    assert links == {"https://a.example/": (2, 1), "https://b.example/": (1, 1)}


def test_click_within_seconds_of_sending_is_a_scanner(engine: Engine) -> None:
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id)
    message = make_message(engine, tenant.id, customer, sent_at=T0, links=("https://a.example/",))
    ingest(
        engine,
        _event(tenant.id, message, "sent", 0),
        _event(tenant.id, message, "clicked", 0.05, user_agent=DESKTOP_CHROME, link_position=0),
    )
    totals = _rollup(engine, tenant.id)
    assert (totals["clicked"], totals["machine_clicks"], totals["opened"]) == (0, 1, 0)


def test_bounces_and_suppression(engine: Engine) -> None:
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id)
    message = make_message(engine, tenant.id, customer, sent_at=T0)
    ingest(
        engine,
        _event(tenant.id, message, "sent", 0),
        _event(tenant.id, message, "bounced", 1, bounce_kind="soft", status="4.2.2"),
    )
    assert _rollup(engine, tenant.id)["soft_bounced"] == 1
    ingest(engine, _event(tenant.id, message, "bounced", 60, bounce_kind="hard", status="5.1.1"))
    totals = _rollup(engine, tenant.id)
    assert (totals["bounced"], totals["soft_bounced"], totals["hard_bounced"]) == (1, 0, 1)
    with engine.connect() as conn:
        person = conn.execute(select(customers).where(customers.c.id == customer)).one()
    assert person.suppression_reason == "hard_bounce"
    assert person.suppressed_at == T0 + dt.timedelta(minutes=60)
    assert person.tracked_bounced == 1
    assert person.soft_bounces == 1


def test_duplicate_external_ids_are_stored_once(engine: Engine) -> None:
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id)
    message = make_message(engine, tenant.id, customer, sent_at=T0)
    first = ingest(
        engine,
        _event(tenant.id, message, "delivered", 1, external_event_id="ses:1"),
        _event(tenant.id, message, "delivered", 1, external_event_id="ses:1"),
    )
    second = ingest(engine, _event(tenant.id, message, "delivered", 1, external_event_id="ses:1"))
    assert (first.stored, first.duplicates, second.stored, second.duplicates) == (1, 1, 0, 1)
    assert _rollup(engine, tenant.id)["delivered"] == 1


def test_events_of_another_tenants_message_are_refused(engine: Engine) -> None:
    tenant, other = make_tenant(engine), make_tenant(engine)
    message = make_message(engine, tenant.id, make_customer(engine, tenant.id), sent_at=T0)
    result = ingest(engine, _event(other.id, message, "opened", 5, user_agent=IPHONE_MAIL))
    assert (result.stored, result.unknown_messages) == (0, 1)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0


def test_customer_engagement_sums_follow_tracked_messages(engine: Engine) -> None:
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id)
    tracked = make_message(engine, tenant.id, customer, sent_at=T0)
    untracked = make_message(
        engine, tenant.id, customer, sent_at=T0, channel="system", source="system", tracked=False
    )
    ingest(
        engine,
        _event(tenant.id, tracked, "sent", 0),
        _event(tenant.id, untracked, "sent", 0),
        _event(tenant.id, tracked, "opened", 120, user_agent=IPHONE_MAIL),
    )
    with engine.connect() as conn:
        person = conn.execute(select(customers).where(customers.c.id == customer)).one()
    assert person.tracked_sent == 1
    assert person.messages_opened == 1
    assert person.w_sent == person.w_opened == message_weight(T0)
    assert person.last_open_at == T0 + dt.timedelta(minutes=120)
    assert person.last_sent_at == T0


def test_ip_policy_truncates_or_drops(engine: Engine) -> None:
    from mailtrack.db import write_transaction
    from mailtrack.tenants.queries import update_settings

    tenant = make_tenant(engine)
    message = make_message(engine, tenant.id, make_customer(engine, tenant.id), sent_at=T0)
    ingest(engine, _event(tenant.id, message, "opened", 60, user_agent=IPHONE_MAIL, ip="81.2.3.4"))
    with write_transaction(engine) as conn:
        update_settings(conn, tenant_id=tenant.id, changes={"ip_anonymize_days": 0})
    ingest(
        engine, _event(tenant.id, message, "opened", 61, user_agent=IPHONE_MAIL, ip="2001:db8:1234:5678::1")
    )
    with write_transaction(engine) as conn:
        update_settings(conn, tenant_id=tenant.id, changes={"ip_anonymize_days": -1})
    ingest(engine, _event(tenant.id, message, "opened", 62, user_agent=IPHONE_MAIL, ip="81.2.3.4"))
    with engine.connect() as conn:
        ips = conn.execute(select(events.c.ip).order_by(events.c.occurred_at)).scalars().all()
    assert ips == ["81.2.3.4", "2001:db8:1234::", None]


def test_sweeping_every_link_within_a_second_is_a_scanner(engine: Engine) -> None:
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id)
    urls = ("https://a.example/", "https://b.example/", "https://c.example/")
    message = make_message(engine, tenant.id, customer, sent_at=T0, links=urls)
    ingest(engine, _event(tenant.id, message, "sent", 0))
    ingest(engine, _event(tenant.id, message, "clicked", 30, user_agent=DESKTOP_CHROME, link_position=0))
    ingest(
        engine,
        _event(tenant.id, message, "clicked", 30 + 1 / 60, user_agent=DESKTOP_CHROME, link_position=1),
        _event(tenant.id, message, "clicked", 30 + 1 / 60, user_agent=DESKTOP_CHROME, link_position=2),
        # The same link again a second later is a human double-click, not a sweep.
        _event(tenant.id, message, "clicked", 30 + 2 / 60, user_agent=DESKTOP_CHROME, link_position=2),
    )
    with engine.connect() as conn:
        flagged = conn.execute(
            select(events.c.link_position, events.c.machine_reason)
            .where(events.c.type == "clicked")
            .order_by(events.c.id)
        ).all()
    assert [tuple(row) for row in flagged] == [(0, None), (1, "link_sweep"), (2, "link_sweep"), (2, None)]


def test_suppression_keeps_its_first_cause(engine: Engine) -> None:
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id)
    first = make_message(engine, tenant.id, customer, sent_at=T0)
    second = make_message(engine, tenant.id, customer, sent_at=T0)
    ingest(
        engine,
        _event(tenant.id, second, "complained", 300),
        _event(tenant.id, first, "unsubscribed", 120),
        _event(tenant.id, second, "unsubscribed", 400),
    )
    with engine.connect() as conn:
        person = conn.execute(select(customers).where(customers.c.id == customer)).one()
    assert (person.suppression_reason, person.suppressed_at) == (
        "unsubscribed",
        T0 + dt.timedelta(minutes=120),
    )
    assert person.unsubscribed_at == T0 + dt.timedelta(minutes=120), "the first unsubscribe is kept"
    assert person.complained_at == T0 + dt.timedelta(minutes=300)


def test_a_url_linked_twice_in_a_message_counts_it_once_in_unique_clicks(engine: Engine) -> None:
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id)
    twice = ("https://salon.example/gift", "https://other.example/", "https://salon.example/gift")
    message = make_message(engine, tenant.id, customer, sent_at=T0, links=twice)
    ingest(engine, _event(tenant.id, message, "sent", 0))
    ingest(engine, _event(tenant.id, message, "clicked", 30, user_agent=DESKTOP_CHROME, link_position=0))
    ingest(engine, _event(tenant.id, message, "clicked", 40, user_agent=DESKTOP_CHROME, link_position=2))
    with engine.connect() as conn:
        links = {
            row.url: (row.clicks, row.unique_clicks)
            for row in conn.execute(
                select(rollup_links.c.url, rollup_links.c.clicks, rollup_links.c.unique_clicks)
            )
        }
    assert links == {"https://salon.example/gift": (2, 1)}, "the header and the button are one URL"
