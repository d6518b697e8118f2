"""Analytics queries against hand-computed histories, on both backends."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from sqlalchemy import Engine, select

from mailtrack.analytics import metrics, queries
from mailtrack.analytics.metrics import Period
from mailtrack.db import write_transaction
from mailtrack.messages.queries import (
    MessageIn,
    create_messages,
    ensure_campaign,
    mark_do_not_track,
    store_links,
)
from mailtrack.messages.tables import customers
from mailtrack.tracking.ingest import EventIn
from mailtrack.tracking.useragent import UserAgentInfo
from tests.factories import ingest, make_customer, make_tenant

T0 = dt.datetime(2026, 8, 3, 10, 0, tzinfo=dt.UTC)
_ids = itertools.count(1)
IPHONE = UserAgentInfo("mobile", "apple_mail", "iOS", False, "")
DESKTOP = UserAgentInfo("desktop", "other", "Windows", False, "")
OUTLOOK = UserAgentInfo("desktop", "outlook", "Windows", False, "")
PROXY = UserAgentInfo("unknown", "apple_mail", "", True, "apple_privacy_proxy")


def send(
    engine: Engine,
    tenant_id: int,
    customer_id: int,
    at: dt.datetime,
    *,
    channel: str = "marketing",
    tracked: bool = True,
    campaign: str | None = None,
    links: tuple[str, ...] = (),
) -> int:
    """Register a message (optionally in a named campaign) and ingest its `sent` event; returns its id."""
    source = "system" if channel == "system" else "campaign"
    external_id = f"m{next(_ids)}"
    with write_transaction(engine) as conn:
        campaign_id = (
            ensure_campaign(conn, tenant_id=tenant_id, name=campaign, source=source) if campaign else None
        )
        batch = [MessageIn(external_id, customer_id, channel, source, campaign_id, tracked, at)]
        message_id = create_messages(conn, tenant_id=tenant_id, batch=batch)[external_id]
        store_links(conn, tenant_id=tenant_id, message_id=message_id, urls=list(links))
    ingest(engine, EventIn(tenant_id, message_id, "sent", at))
    return message_id


def ev(tenant_id: int, message_id: int, kind: str, at: dt.datetime, **extra: object) -> EventIn:
    """An event `at`."""
    return EventIn(tenant_id, message_id, kind, at, **extra)  # type: ignore[arg-type]


def cohort(
    tenant_id: int, first: dt.date, last: dt.date, timezone: str = "UTC", **filters: Any
) -> queries.CohortFilter:
    """The cohort filter of local days first..last."""
    start, end = Period(first, last).utc_bounds(timezone)
    return queries.CohortFilter(tenant_id, start, end, **filters)


DAY = T0.date()


def test_cards_count_human_engagement_of_tracked_mail(engine: Engine) -> None:
    tenant = make_tenant(engine, timezone="UTC")
    a, b, c, d, e = (make_customer(engine, tenant.id) for _ in range(5))
    m1, m2 = send(engine, tenant.id, a, T0), send(engine, tenant.id, b, T0)
    m3 = send(engine, tenant.id, c, T0, links=("https://x.example/a", "https://x.example/b"))
    m4, m5, m8 = (
        send(engine, tenant.id, d, T0),
        send(engine, tenant.id, e, T0),
        send(engine, tenant.id, c, T0),
    )
    m6 = send(engine, tenant.id, a, T0, channel="system", tracked=False)
    send(engine, tenant.id, b, T0, channel="system", tracked=False)
    minute = dt.timedelta(minutes=1)
    first_batch = [
        ev(tenant.id, m1, "opened", T0 + minute, agent=PROXY, external_event_id="p1"),
        ev(tenant.id, m1, "opened", T0 + 30 * minute, agent=IPHONE, external_event_id="p2"),
        ev(tenant.id, m1, "opened", T0 + 40 * minute, agent=IPHONE, external_event_id="p3"),
        ev(tenant.id, m2, "opened", T0 + 2 * minute, agent=PROXY, external_event_id="p4"),
        # a security scanner follows the link 3 seconds after sending: a machine click
        ev(tenant.id, m3, "clicked", T0 + dt.timedelta(seconds=3), agent=DESKTOP, link_position=1),
        ev(
            tenant.id, m3, "clicked", T0 + 60 * minute, agent=DESKTOP, link_position=0, external_event_id="k1"
        ),
        ev(tenant.id, m3, "clicked", T0 + 61 * minute, agent=DESKTOP, link_position=0),
        ev(tenant.id, m3, "clicked", T0 + 62 * minute, agent=DESKTOP, link_position=1),
        ev(tenant.id, m4, "opened", T0 + 20 * minute, agent=OUTLOOK),
        ev(tenant.id, m4, "bounced", T0 + 120 * minute, bounce_kind="soft", status="4.2.2"),  # after the open
        ev(tenant.id, m5, "bounced", T0 + 5 * minute, bounce_kind="hard", status="5.1.1"),
        ev(tenant.id, m6, "opened", T0 + 10 * minute, agent=IPHONE),  # untracked: refused
        ev(tenant.id, m8, "sent", T0 + minute),  # a repeated `sent` changes nothing
    ]
    result = ingest(engine, *first_batch)
    assert (result.not_tracked, result.duplicates) == (1, 0)
    replay = ingest(engine, *(event for event in first_batch if event.external_event_id))
    assert (replay.stored, replay.duplicates) == (0, 5)

    with engine.connect() as conn:
        totals = queries.message_totals(conn, cohort=cohort(tenant.id, DAY, DAY))
        links = queries.top_links(conn, cohort=cohort(tenant.id, DAY, DAY))
        opens = queries.first_open_breakdown(conn, cohort=cohort(tenant.id, DAY, DAY))
        next_day = DAY + dt.timedelta(days=1)
        elsewhere = queries.message_totals(conn, cohort=cohort(tenant.id, next_day, next_day))
    assert (totals.sent, totals.tracked, totals.delivered, totals.bounced) == (8, 6, 0, 2)
    assert (totals.hard_bounced, totals.soft_bounced) == (1, 1)
    assert (totals.opened, totals.machine_opened, totals.clicked) == (3, 2, 1)
    assert (totals.opens, totals.machine_opens, totals.clicks, totals.machine_clicks) == (3, 2, 3, 1)
    assert totals.tracked_bounced == 2
    # Untracked system mail would make the open rate 3 / 6: only tracked delivered mail (6 − 2) counts.
    assert metrics.compute_cards(totals) == metrics.Cards(
        sent=8,
        delivered=6,
        open_rate=3 / 4,
        click_rate=1 / 4,
        bounce_rate=2 / 8,
        click_to_open_rate=1 / 3,
        machine_open_share=2 / 4,
    )
    assert links == [
        queries.LinkClicks("https://x.example/a", 2, 1),
        queries.LinkClicks("https://x.example/b", 1, 1),
    ]
    assert opens == {("mobile", "apple_mail"): 1, ("desktop", "other"): 1, ("desktop", "outlook"): 1}
    assert elsewhere == metrics.MessageTotals()


def test_reported_deliveries_and_a_do_not_track_customer(engine: Engine) -> None:
    tenant = make_tenant(engine, timezone="UTC")
    people = [make_customer(engine, tenant.id) for _ in range(4)]
    g1, g2, g3 = (send(engine, tenant.id, person, T0) for person in people[:3])
    g4 = send(engine, tenant.id, people[3], T0, tracked=False)  # do-not-track: mail goes out uninstrumented
    with write_transaction(engine) as conn:
        mark_do_not_track(conn, tenant_id=tenant.id, message_id=g4)
    later = T0 + dt.timedelta(minutes=5)
    ingest(
        engine,
        *(ev(tenant.id, message, "delivered", later) for message in (g1, g2, g4)),
        ev(tenant.id, g3, "bounced", later, bounce_kind="hard", status="5.1.1"),
        ev(tenant.id, g1, "opened", later + dt.timedelta(hours=1), agent=IPHONE),
        ev(tenant.id, g4, "opened", later + dt.timedelta(hours=1), agent=IPHONE),
    )
    with engine.connect() as conn:
        totals = queries.message_totals(conn, cohort=cohort(tenant.id, DAY, DAY))
    cards = metrics.compute_cards(totals)
    assert (totals.sent, totals.tracked, totals.delivered, totals.opened) == (4, 3, 3, 1)
    assert cards.delivered == 3, "the path reports deliveries: the reported count, not sent − bounced"
    # One rollup row mixes 3 tracked and 1 untracked message: only the 2 tracked deliveries count.
    assert totals.tracked_delivered == 2
    assert cards.open_rate == pytest.approx(1 / 2)
    assert cards.bounce_rate == 0.25


@pytest.mark.parametrize(
    ("timezone", "sends", "day", "expected"),
    [
        # New York springs forward on 2026-03-08 at 02:00: that local day is 05:00 → 04:00 UTC (23 hours).
        (
            "America/New_York",
            ["2026-03-08T04:30", "2026-03-08T05:30", "2026-03-09T03:30", "2026-03-09T04:30"],
            {"2026-03-07": 1, "2026-03-08": 2, "2026-03-09": 1},
            None,
        ),
        # Budapest falls back on 2026-10-25 at 03:00: that local day is 22:00 → 23:00 UTC (25 hours).
        (
            "Europe/Budapest",
            ["2026-10-24T21:30", "2026-10-24T22:30", "2026-10-25T22:30", "2026-10-25T23:30"],
            {"2026-10-24": 1, "2026-10-25": 2, "2026-10-26": 1},
            None,
        ),
    ],
    ids=["new-york-spring-forward", "budapest-fall-back"],
)
def test_local_days_follow_dst(
    engine: Engine, timezone: str, sends: list[str], day: dict[str, int], expected: None
) -> None:
    # The middle sends are at 00:30 and 23:30 local on the DST night: both belong to that local day.
    tenant = make_tenant(engine, timezone=timezone)
    customer = make_customer(engine, tenant.id)
    for text in sends:
        send(engine, tenant.id, customer, dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC))
    with engine.connect() as conn:
        for text, sent in day.items():
            local = dt.date.fromisoformat(text)
            totals = queries.message_totals(conn, cohort=cohort(tenant.id, local, local, timezone))
            assert totals.sent == sent, text
        whole = queries.message_totals(
            conn,
            cohort=cohort(
                tenant.id, dt.date.fromisoformat(min(day)), dt.date.fromisoformat(max(day)), timezone
            ),
        )
    assert whole.sent == 4


def test_filters_by_channel_source_and_campaign(engine: Engine) -> None:
    tenant = make_tenant(engine, timezone="UTC")
    person = make_customer(engine, tenant.id)
    send(engine, tenant.id, person, T0, campaign="August newsletter")
    send(engine, tenant.id, person, T0, campaign="Spa week")
    send(engine, tenant.id, person, T0, channel="transactional")
    send(engine, tenant.id, person, T0, channel="system", tracked=False)
    with engine.connect() as conn:
        august = queries.campaign_id_by_name(conn, tenant_id=tenant.id, name="August newsletter")
        assert queries.campaign_id_by_name(conn, tenant_id=tenant.id, name="august newsletter") is None

        def sent(**filters: Any) -> int:
            return queries.message_totals(conn, cohort=cohort(tenant.id, DAY, DAY, **filters)).sent

        assert sent() == 4
        assert sent(campaign_id=august) == 1
        assert sent(campaign_id=queries.NO_CAMPAIGN_MATCH) == 0
        assert sent(channel="marketing") == 2
        assert sent(source="system") == 1
        assert sent(channel="marketing", source="system") == 0


S0 = dt.datetime(2026, 6, 1, 10, 0, tzinfo=dt.UTC)
S1 = S0 + dt.timedelta(days=30)
SCORE_NOW = S1 + dt.timedelta(days=1)


def test_scores_buckets_top_engaged_and_segments(engine: Engine) -> None:
    tenant = make_tenant(engine, timezone="UTC")
    names = ["Petra", "Quentin", "Rita", "Ursula", "Marc", "Zoltán", "Nina", "Wanda"]
    who = {name: make_customer(engine, tenant.id, name=name) for name in names}
    hour = dt.timedelta(hours=1)
    mail = {
        name: (send(engine, tenant.id, who[name], S0), send(engine, tenant.id, who[name], S1))
        for name in names
    }

    def act(name: str, which: int, kind: str, **extra: object) -> EventIn:
        at = (S0, S1)[which] + hour
        return ev(tenant.id, mail[name][which], kind, at, **extra)

    ingest(
        engine,
        act("Petra", 1, "opened", agent=IPHONE),  # 100 × 0.6 × 2/3 = 40
        act("Quentin", 1, "clicked", agent=DESKTOP),  # a click is an open too: 100 × 2/3 → 67
        act("Rita", 0, "opened", agent=IPHONE),  # the older message weighs half: 100 × 0.6 × 1/3 = 20
        act("Ursula", 0, "clicked", agent=DESKTOP),
        act("Ursula", 1, "clicked", agent=DESKTOP),
        act("Ursula", 1, "unsubscribed"),  # → 0
        act("Marc", 0, "opened", agent=PROXY),  # machine opens only → 0
        act("Marc", 1, "opened", agent=PROXY),
        act("Zoltán", 0, "bounced", bounce_kind="hard"),  # nothing delivered: no score
        act("Zoltán", 1, "bounced", bounce_kind="hard"),
        act("Nina", 1, "opened", agent=IPHONE),  # then asks not to be tracked: no score
        act("Wanda", 0, "clicked", agent=DESKTOP),  # → 100
        act("Wanda", 1, "clicked", agent=DESKTOP),
    )
    stale = send(
        engine, tenant.id, make_customer(engine, tenant.id, name="Olivia"), S0 - dt.timedelta(days=200)
    )
    ingest(engine, ev(tenant.id, stale, "opened", S0 - dt.timedelta(days=199), agent=IPHONE))  # > 90 days
    send(
        engine, tenant.id, make_customer(engine, tenant.id, name="Yves"), S1, channel="system", tracked=False
    )
    with write_transaction(engine) as conn:
        mark_do_not_track(conn, tenant_id=tenant.id, message_id=mail["Nina"][1])
    ids = {name: who[name] for name in names}
    with engine.connect() as conn:
        everyone = queries.customers_by_score(conn, tenant_id=tenant.id, now=SCORE_NOW)
        buckets = queries.score_bucket_counts(conn, tenant_id=tenant.id, now=SCORE_NOW)
        top = queries.top_engaged(conn, tenant_id=tenant.id, now=SCORE_NOW)
        first_page = queries.customers_by_score(
            conn, tenant_id=tenant.id, now=SCORE_NOW, min_score=21, limit=2
        )
        second_page = queries.customers_by_score(
            conn, tenant_id=tenant.id, now=SCORE_NOW, min_score=21, after=(67, ids["Quentin"]), limit=2
        )
        win_back = queries.customers_by_score(conn, tenant_id=tenant.id, now=SCORE_NOW, max_score=20)
        records = {
            name: queries.customer_record(conn, tenant_id=tenant.id, external_id=external_id)
            for name, external_id in conn.execute(
                select(customers.c.name, customers.c.external_id).where(customers.c.tenant_id == tenant.id)
            )
        }
        other_salon = queries.customers_by_score(conn, tenant_id=tenant.id + 1000, now=SCORE_NOW)
    ranked = [(c.name, c.score) for c in everyone]
    assert ranked == [
        ("Wanda", 100),
        ("Quentin", 67),
        ("Petra", 40),
        ("Rita", 20),
        ("Ursula", 0),
        ("Marc", 0),
    ]
    assert buckets == {0: 3, 1: 1, 3: 1, 4: 1}
    assert [(c.name, c.score) for c in top] == ranked[:4], "top engaged leaves out scores of 0"
    assert [c.name for c in first_page] == ["Wanda", "Quentin"]
    assert [c.name for c in second_page] == ["Petra"]
    assert [c.name for c in win_back] == ["Rita", "Ursula", "Marc"]
    assert everyone[0].last_engagement == S1 + hour
    assert other_salon == []
    scores = dict(ranked)
    for name, record in records.items():
        assert record is not None
        verdict = metrics.judge_score(record.inputs, now=SCORE_NOW)
        assert verdict.score == scores.get(name), f"{name}: {verdict.explanation}"


def test_event_log_search_filters_and_keyset_pages(engine: Engine) -> None:
    tenant, other = make_tenant(engine, timezone="UTC"), make_tenant(engine)
    anna = make_customer(engine, tenant.id, name="Anna Kovács", email="anna@example.com")
    bela = make_customer(engine, tenant.id, name="Béla Nagy", email="bela_100%@example.com")
    m_anna = send(engine, tenant.id, anna, T0, campaign="Spa week", links=("https://x.example/spa",))
    m_bela = send(engine, tenant.id, bela, T0)
    send(engine, other.id, make_customer(engine, other.id, name="Anna Kovács"), T0)
    same = T0 + dt.timedelta(hours=1)  # three events in the same second: ids break the tie
    ingest(
        engine,
        ev(
            tenant.id,
            m_anna,
            "clicked",
            same,
            agent=DESKTOP,
            link_position=0,
            referer="https://mail.example/",
        ),
        ev(tenant.id, m_anna, "opened", same, agent=IPHONE, ip="81.2.3.4"),
        ev(
            tenant.id,
            m_bela,
            "bounced",
            same,
            bounce_kind="hard",
            status="5.1.1",
            diagnostic="550 unknown user",
        ),
    )
    with engine.connect() as conn:
        everything = queries.list_events(conn, tenant_id=tenant.id)
        paged: list[queries.EventRecord] = []
        before = None
        while page := queries.list_events(conn, tenant_id=tenant.id, before=before, limit=2):
            paged += page
            before = (page[-1].occurred_at, page[-1].id)

        def who(query: str) -> list[tuple[str, str]]:
            return [
                (e.customer_name, e.type) for e in queries.list_events(conn, tenant_id=tenant.id, query=query)
            ]

        found = {query: who(query) for query in ("kovacs", "KOVÁCS", "anna@", "100%", "_", "%", "nagy ")}
        clicks = queries.list_events(conn, tenant_id=tenant.id, event_type="clicked")
    assert [(e.customer_name, e.type) for e in everything] == [
        ("Béla Nagy", "bounced"),
        ("Anna Kovács", "opened"),
        ("Anna Kovács", "clicked"),
        ("Béla Nagy", "sent"),
        ("Anna Kovács", "sent"),
    ]
    assert paged == everything
    anna_events = [("Anna Kovács", "opened"), ("Anna Kovács", "clicked"), ("Anna Kovács", "sent")]
    assert found["kovacs"] == found["KOVÁCS"] == found["anna@"] == anna_events
    assert (
        found["100%"]
        == found["_"]
        == found["%"]
        == found["nagy "]
        == [
            ("Béla Nagy", "bounced"),
            ("Béla Nagy", "sent"),
        ]
    )
    (click,) = clicks
    assert (click.url, click.campaign, click.referer, click.machine) == (
        "https://x.example/spa",
        "Spa week",
        "https://mail.example/",
        False,
    )
    bounce, opened = everything[0], everything[1]
    assert (bounce.bounce, bounce.status, bounce.diagnostic, bounce.url) == (
        "hard",
        "5.1.1",
        "550 unknown user",
        None,
    )
    assert (opened.ip, opened.device, opened.client, opened.campaign) == (
        "81.2.3.4",
        "mobile",
        "apple_mail",
        "Spa week",
    )
