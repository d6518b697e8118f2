"""Daily rollups and link totals: always what the hourly rollups say, and the reads built on them."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, func, select

from mailtrack.analytics import queries
from mailtrack.analytics.rollups import CohortKey, Tally, utc_day
from mailtrack.analytics.tables import DAILY, link_totals, rollup_links, rollup_messages, rollup_opens
from mailtrack.db import write_transaction
from tests.factories import make_tenant

BASE = dt.datetime(2026, 3, 6, 0, 0, tzinfo=dt.UTC)
URLS = tuple(f"https://salon.example/{name}" for name in ("book", "offer", "gift", "a", "b", "c", "d", "e"))
# (hour offset, channel, source, campaign id, url index, clicks, unique clicks of those)
CLICK = st.tuples(
    st.integers(0, 24 * 5),
    st.sampled_from(["marketing", "transactional"]),
    st.sampled_from(["campaign", "automation"]),
    st.sampled_from([0, 7]),
    st.integers(0, len(URLS) - 1),
    st.integers(1, 6),
    st.integers(0, 6),
)
# (first hour offset, hours, channel, source, campaign id, limit)
COHORT = st.tuples(
    st.integers(-30, 24 * 5),
    st.integers(1, 24 * 6),
    st.sampled_from([None, "marketing", "transactional"]),
    st.sampled_from([None, "campaign", "automation"]),
    st.sampled_from([None, 0, 7]),
    st.integers(1, 5),
)
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _write(engine: Engine, tenant_id: int, batches: list[list[Any]]) -> None:
    """Each batch through one Tally, as ingest does: messages, opens and link clicks."""
    for batch in batches:
        tally = Tally()
        for hour, channel, source, campaign_id, url, clicks, unique in batch:
            key = CohortKey(tenant_id, BASE + dt.timedelta(hours=hour), channel, source, campaign_id)
            tally.count(key, "sent", clicks)
            tally.open(key, "mobile" if url % 2 else "desktop", "gmail", dt.timedelta(hours=1))
            for index in range(clicks):
                tally.link(key, URLS[url], unique=index < unique)
        with write_transaction(engine) as conn:
            tally.write(conn)


def _rows(conn: Connection, tenant_id: int, table: Any, keys: list[str]) -> dict[Any, tuple[Any, ...]]:
    key_names = {column.name for column in table.primary_key.columns}
    values = [column for column in table.columns if column.name not in key_names]
    return {
        tuple(row[: len(keys)]): tuple(row[len(keys) :])
        for row in conn.execute(
            select(*(table.c[name] for name in keys), *values).where(table.c.tenant_id == tenant_id)
        )
    }


@SETTINGS
@given(batches=st.lists(st.lists(CLICK, min_size=1, max_size=6), min_size=1, max_size=4))
def test_daily_rollups_and_link_totals_always_equal_the_hourly_rollups(
    engine: Engine, batches: list[list[Any]]
) -> None:
    tenant = make_tenant(engine)  # a salon per example: examples share the test's database
    _write(engine, tenant.id, batches)
    with engine.connect() as conn:
        for hourly, daily in DAILY.items():
            keys = [column.name for column in hourly.primary_key.columns if column.name != "tenant_id"]
            expected: dict[Any, list[int]] = defaultdict(list)
            for key, values in _rows(conn, tenant.id, hourly, keys).items():
                day_key = (utc_day(key[0]), *key[1:])  # the hour comes first in every hourly key
                expected[day_key] = [
                    a + b for a, b in zip(expected[day_key] or [0] * len(values), values, strict=True)
                ]
            day_keys = ["day" if name == "hour" else name for name in keys]
            found = _rows(conn, tenant.id, daily, day_keys)
            assert found == {key: tuple(values) for key, values in expected.items()}, daily.name
        links = _rows(conn, tenant.id, rollup_links, ["hour", "channel", "source", "campaign_id", "url"])
        totals = _rows(conn, tenant.id, link_totals, ["url"])
    clicks: dict[str, int] = defaultdict(int)
    latest: dict[str, dt.datetime] = {}
    for (hour, *_cohort, url), (count, _unique) in links.items():
        clicks[url] += count
        latest[url] = max(latest.get(url, utc_day(hour)), utc_day(hour))
    assert totals == {(url,): (clicks[url], latest[url]) for url in clicks}


def _naive_sums(
    conn: Connection, cohort: queries.CohortFilter, table: Any, group_by: list[str], counters: list[str]
) -> dict[tuple[Any, ...], list[int]]:
    """Sums over every hourly row of the cohort, as the stats read before there were daily rollups."""
    query = (
        select(*(table.c[name] for name in group_by), *(func.sum(table.c[name]) for name in counters))
        .where(table.c.tenant_id == cohort.tenant_id, table.c.hour >= cohort.start, table.c.hour < cohort.end)
        .group_by(*(table.c[name] for name in group_by))
    )
    for name in ("channel", "source", "campaign_id"):
        if getattr(cohort, name) is not None:
            query = query.where(table.c[name] == getattr(cohort, name))
    return {
        tuple(row[: len(group_by)]): [int(value) for value in row[len(group_by) :]]
        for row in conn.execute(query)
        if row[len(group_by)] is not None  # no rows at all, without GROUP BY
    }


@SETTINGS
@given(
    batches=st.lists(st.lists(CLICK, min_size=1, max_size=8), min_size=1, max_size=3),
    cohorts=st.lists(COHORT, min_size=1, max_size=4),
    candidates=st.sampled_from([(1, 2), (2, 4), (64, 1024)]),
)
def test_top_links_and_cohort_sums_equal_sums_of_hourly_rows(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    batches: list[list[Any]],
    cohorts: list[Any],
    candidates: tuple[int, int],
) -> None:
    # Few candidates per try: the bound is tested, and so are the second try and the full sum.
    monkeypatch.setattr(queries, "TOP_LINK_CANDIDATES", candidates)
    tenant = make_tenant(engine)
    _write(engine, tenant.id, batches)
    with engine.connect() as conn:
        for first, hours, channel, source, campaign_id, limit in cohorts:
            start = BASE + dt.timedelta(hours=first)
            cohort = queries.CohortFilter(
                tenant.id, start, start + dt.timedelta(hours=hours), channel, source, campaign_id
            )
            links = [
                queries.LinkClicks(url, clicks, unique)
                for (url,), (clicks, unique) in _naive_sums(
                    conn, cohort, rollup_links, ["url"], ["clicks", "unique_clicks"]
                ).items()
            ]
            links.sort(key=lambda link: (-link.clicks, -link.unique_clicks, link.url))
            assert queries.top_links(conn, cohort=cohort, limit=limit) == links[:limit]
            sent = _naive_sums(conn, cohort, rollup_messages, [], ["sent"]).get((), [0])[0]
            assert queries.message_totals(conn, cohort=cohort).sent == sent
            opens = _naive_sums(conn, cohort, rollup_opens, ["device", "client"], ["opened"])
            assert queries.first_open_breakdown(conn, cohort=cohort) == {
                key: opened for key, (opened,) in opens.items()
            }


def test_a_link_left_out_that_ties_the_last_candidate_is_still_compared(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queries, "TOP_LINK_CANDIDATES", (1,))
    tenant = make_tenant(engine)
    # Both URLs have 5 clicks ever; "a" is the candidate (same total, first URL) but "b" has more
    # unique clicks, so "b" is the top link and the bound alone cannot say so.
    _write(
        engine,
        tenant.id,
        [[(3, "marketing", "campaign", 0, 3, 5, 1), (4, "marketing", "campaign", 0, 4, 5, 3)]],
    )
    cohort = queries.CohortFilter(tenant.id, BASE, BASE + dt.timedelta(days=1))
    with engine.connect() as conn:
        assert queries.top_links(conn, cohort=cohort, limit=1) == [queries.LinkClicks(URLS[4], 5, 3)]
        assert queries.top_links(conn, cohort=cohort, limit=2) == [
            queries.LinkClicks(URLS[4], 5, 3),
            queries.LinkClicks(URLS[3], 5, 1),
        ]


HOUR = dt.timedelta(hours=1)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        # (hourly or daily, start, end) in hours after BASE (a UTC midnight)
        (0, 24, [("daily", 0, 24)]),
        (0, 72, [("daily", 0, 72)]),
        (5, 20, [("hourly", 5, 20)]),
        (5, 30, [("hourly", 5, 30)]),
        (23, 49, [("daily", 24, 48), ("hourly", 23, 24), ("hourly", 48, 49)]),
        (22, 48, [("daily", 24, 48), ("hourly", 22, 24)]),
        (0, 50, [("daily", 0, 48), ("hourly", 48, 50)]),
    ],
)
def test_cohort_spans_read_whole_utc_days_from_daily_rows(
    start: int, end: int, expected: list[tuple[str, int, int]]
) -> None:
    cohort = queries.CohortFilter(1, BASE + start * HOUR, BASE + end * HOUR)
    spans = queries.cohort_spans(rollup_opens, cohort)
    assert [
        ("daily" if table is DAILY[rollup_opens] else "hourly", (a - BASE) // HOUR, (b - BASE) // HOUR)
        for table, a, b in spans
    ] == expected


def test_cohort_spans_of_a_half_hour_timezone() -> None:
    # Asia/Kolkata's days start at 18:30 UTC: the ragged ends are read from hourly rows from there.
    start = BASE + dt.timedelta(hours=18, minutes=30)
    cohort = queries.CohortFilter(1, start, start + dt.timedelta(days=3))
    spans = queries.cohort_spans(rollup_opens, cohort)
    assert [(a, b) for _table, a, b in spans] == [
        (BASE + 24 * HOUR, BASE + 72 * HOUR),
        (start, BASE + 24 * HOUR),
        (BASE + 72 * HOUR, start + dt.timedelta(days=3)),
    ]
