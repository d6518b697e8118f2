"""Property: every rollup-based figure equals a recount from the raw messages and events tables.

The recount below reads only `messages`, `events`, `links` and `campaigns` and applies docs/metrics.md
from scratch, so a drift between ingest's rollups and the raw log, or between the definitions and
their implementation, shows up as a counterexample. Each example uses a salon of its own.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, and_, select

from mailtrack.analytics import metrics, queries
from mailtrack.analytics.metrics import Period
from mailtrack.analytics.tables import MESSAGE_COUNTERS
from mailtrack.db import write_transaction
from mailtrack.messages.queries import (
    CHANNELS,
    SOURCES,
    MessageIn,
    create_messages,
    ensure_campaign,
    mark_do_not_track,
    store_links,
)
from mailtrack.messages.tables import campaigns, links, messages
from mailtrack.tracking.ingest import EventIn
from mailtrack.tracking.tables import events
from mailtrack.tracking.useragent import UserAgentInfo
from tests.factories import ingest, make_customer, make_tenant

IPHONE = UserAgentInfo("mobile", "apple_mail", "iOS", False, "")
DESKTOP = UserAgentInfo("desktop", "other", "Windows", False, "")
PROXY = UserAgentInfo("unknown", "apple_mail", "", True, "apple_privacy_proxy")


BASE = dt.datetime(2026, 3, 6, 12, 0, tzinfo=dt.UTC)  # New York springs forward two nights later
URLS = ("https://a.example/", "https://b.example/")  # position 2 is a link the message does not have
KINDS = ("sent", "delivered", "bounced", "opened", "clicked", "unsubscribed", "complained")
# (kind, seconds after the cohort hour, agent, link position, hard bounce, event id, batch)
EVENT = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 7200),
    st.sampled_from([IPHONE, DESKTOP, PROXY]),
    st.sampled_from([0, 1, 2, None]),
    st.booleans(),
    st.sampled_from([None, None, "e1", "e2"]),
    st.integers(0, 2),
)
# (customer, cohort hour offset, channel, tracked, campaign, events)
MESSAGE = st.tuples(
    st.integers(0, 2),
    st.integers(0, 95),
    st.sampled_from(CHANNELS),
    st.booleans(),
    st.sampled_from([None, "Spring", "Summer"]),
    st.lists(EVENT, max_size=6),
)
QUERY = st.tuples(
    st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"]),
    st.integers(0, 4),  # first local day, from 2026-03-06
    st.integers(1, 4),  # days
    st.sampled_from([None, *CHANNELS]),
    st.sampled_from([None, *SOURCES]),
    st.sampled_from([None, "Spring", "Nope"]),
)


def _recount(conn: Connection, tenant_id: int, cohort: queries.CohortFilter, campaign: str | None) -> Any:
    """Per rollup key, links and first opens, recomputed from messages and events alone."""
    m, e = messages.c, events.c
    rows = conn.execute(
        select(m.id, m.cohort_at, m.channel, m.source, m.tracked, campaigns.c.name)
        .outerjoin(campaigns, campaigns.c.id == m.campaign_id)
        .where(m.tenant_id == tenant_id, m.cohort_at >= cohort.start, m.cohort_at < cohort.end)
    ).all()
    wanted = {
        row.id: row
        for row in rows
        if cohort.channel in (None, row.channel)
        and cohort.source in (None, row.source)
        and campaign in (None, row.name)
    }
    log: dict[int, list[Any]] = defaultdict(list)
    for row in conn.execute(
        select(
            e.id,
            e.message_id,
            e.type,
            e.machine,
            e.device,
            e.client,
            e.bounce_kind,
            e.link_position,
            links.c.url,
        )
        .outerjoin(links, and_(links.c.message_id == e.message_id, links.c.position == e.link_position))
        .where(e.tenant_id == tenant_id)
        .order_by(e.id)
    ):
        log[row.message_id].append(row)
    per_key: dict[tuple[Any, ...], Counter[str]] = defaultdict(Counter)
    link_clicks: dict[str, list[Any]] = defaultdict(lambda: [0, set()])
    first_opens: Counter[tuple[str, str]] = Counter()
    for message_id, message in wanted.items():
        evs = log[message_id]

        def count(kind: str, machine: bool | None = None, evs: list[Any] = evs) -> int:
            return sum(1 for x in evs if x.type == kind and machine in (None, x.machine))

        human = [x for x in evs if x.type in ("opened", "clicked") and not x.machine]
        hard = any(x.type == "bounced" and x.bounce_kind == "hard" for x in evs)
        flags = {
            "sent": count("sent") > 0,
            "tracked": count("sent") > 0 and message.tracked,
            "delivered": count("delivered") > 0,
            "tracked_delivered": count("delivered") > 0 and message.tracked,
            "bounced": count("bounced") > 0,
            "tracked_bounced": count("bounced") > 0 and message.tracked,
            "hard_bounced": hard,
            "soft_bounced": count("bounced") > 0 and not hard,
            "opened": bool(human),
            "machine_opened": count("opened", True) > 0,
            "clicked": count("clicked", False) > 0,
            "unsubscribed": count("unsubscribed") > 0,
            "complained": count("complained") > 0,
            "opens": count("opened", False),
            "machine_opens": count("opened", True),
            "clicks": count("clicked", False),
            "machine_clicks": count("clicked", True),
        }
        per_key[(message.cohort_at, message.channel, message.source, message.name)].update(
            {name: int(value) for name, value in flags.items()}
        )
        if human:
            first_opens[(human[0].device, human[0].client)] += 1
        for x in human:
            if x.type == "clicked" and x.url is not None:
                link_clicks[x.url][0] += 1
                link_clicks[x.url][1].add((message_id, x.link_position))
    return per_key, {url: (n, len(unique)) for url, (n, unique) in link_clicks.items()}, dict(first_opens)


def _cards_by_definition(per_key: dict[tuple[Any, ...], Counter[str]]) -> dict[str, float]:
    """docs/metrics.md, written again from scratch."""
    total: Counter[str] = sum(per_key.values(), Counter())

    def rate(numerator: float, denominator: float) -> float:
        return 0.0 if denominator <= 0 else min(1.0, max(0.0, numerator / denominator))

    reported = total["delivered"] > 0
    base = total["tracked_delivered"] if reported else total["tracked"] - total["tracked_bounced"]
    return {
        "sent": total["sent"],
        "delivered": total["delivered"] if reported else max(0, total["sent"] - total["bounced"]),
        "open_rate": rate(total["opened"], base),
        "click_rate": rate(total["clicked"], base),
        "bounce_rate": rate(total["bounced"], total["sent"]),
        "click_to_open_rate": rate(total["clicked"], total["opened"]),
        "machine_open_share": rate(total["machine_opened"], base),
    }


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    history=st.lists(MESSAGE, min_size=1, max_size=8), query=QUERY, dnt=st.sets(st.integers(0, 2), max_size=1)
)
def test_rollup_figures_equal_a_recount_of_raw_events(
    engine: Engine, history: list[Any], query: Any, dnt: set[int]
) -> None:
    tenant = make_tenant(engine)  # a salon per example: examples share the test's database
    people = [make_customer(engine, tenant.id) for _ in range(3)]
    batches: list[list[EventIn]] = [[], [], []]
    with write_transaction(engine) as conn:
        for index, (who, hour, channel, tracked, campaign, evs) in enumerate(history):
            source = "system" if channel == "system" else ("campaign" if campaign else "automation")
            campaign_id = (
                ensure_campaign(conn, tenant_id=tenant.id, name=campaign, source=source) if campaign else None
            )
            cohort_at = BASE + dt.timedelta(hours=hour)
            message = MessageIn(f"p{index}", people[who], channel, source, campaign_id, tracked, cohort_at)
            message_id = create_messages(conn, tenant_id=tenant.id, batch=[message])[f"p{index}"]
            store_links(conn, tenant_id=tenant.id, message_id=message_id, urls=list(URLS))
            for kind, seconds, agent, position, hard, event_id, batch in evs:
                extra = {"agent": agent, "link_position": position} if kind in ("opened", "clicked") else {}
                batches[batch].append(
                    EventIn(
                        tenant.id,
                        message_id,
                        kind,
                        cohort_at + dt.timedelta(seconds=seconds),
                        bounce_kind="hard" if hard else "soft",
                        external_event_id=event_id,
                        **extra,
                    )
                )
            if who in dnt:
                mark_do_not_track(conn, tenant_id=tenant.id, message_id=message_id)
    for batch in batches:
        ingest(engine, *batch)
    timezone, offset, days, channel, source, campaign = query
    first = BASE.date() + dt.timedelta(days=offset)
    start, end = Period(first, first + dt.timedelta(days=days - 1)).utc_bounds(timezone)
    with engine.connect() as conn:
        campaign_id = None
        if campaign is not None:
            campaign_id = queries.campaign_id_by_name(conn, tenant_id=tenant.id, name=campaign)
        cohort = queries.CohortFilter(
            tenant.id,
            start,
            end,
            channel,
            source,
            queries.NO_CAMPAIGN_MATCH if campaign_id is None and campaign else campaign_id,
        )
        totals = queries.message_totals(conn, cohort=cohort)
        top = queries.top_links(conn, cohort=cohort, limit=100)
        opens = queries.first_open_breakdown(conn, cohort=cohort)
        per_key, raw_links, raw_opens = _recount(conn, tenant.id, cohort, campaign)
    total: Counter[str] = sum(per_key.values(), Counter())
    assert {name: getattr(totals, name) for name in MESSAGE_COUNTERS} == {
        n: total[n] for n in MESSAGE_COUNTERS
    }
    cards = metrics.compute_cards(totals)
    assert {name: getattr(cards, name) for name in _cards_by_definition(per_key)} == pytest.approx(
        _cards_by_definition(per_key)
    )
    assert {link.url: (link.clicks, link.unique_clicks) for link in top} == raw_links
    assert opens == raw_opens
