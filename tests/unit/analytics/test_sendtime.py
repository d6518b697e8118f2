"""The best-send-time model on hand-built rollups: habits, DST, censoring, honesty about thin data."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import zoneinfo
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
import typer
from fastapi import FastAPI
from sqlalchemy import Engine, insert, select
from typer.testing import CliRunner

from mailtrack.analytics import routes as analytics_routes
from mailtrack.analytics import sendtime
from mailtrack.analytics import sendtime_data as data
from mailtrack.analytics import sendtime_fit as model
from mailtrack.analytics.tables import customer_open_hours, rollup_messages, rollup_open_delays
from mailtrack.cli.sendtime import sendtime_command
from mailtrack.config import get_settings
from mailtrack.db import utcnow, write_transaction
from mailtrack.messages.tables import customers
from tests.conftest import TEST_SECRET
from tests.factories import make_api_key, make_customer, make_tenant

ZONE = "Europe/Budapest"
LOCAL = zoneinfo.ZoneInfo(ZONE)
CAMPAIGN = ("marketing", "campaign", 1)
THURSDAY_20H = 3 * 24 + 20
SUNDAY_20H = 6 * 24 + 20


@dataclass
class Send:
    """A cohort hour of one kind of mail: tracked delivered messages and first human opens by delay."""

    at: dt.datetime  # UTC
    delivered: int
    opens: dict[int, int] = field(default_factory=dict)
    kind: tuple[str, str, int] = CAMPAIGN


def local(year: int, month: int, day: int, hour: int) -> dt.datetime:
    """A wall-clock time in the salon's timezone, as UTC."""
    return dt.datetime(year, month, day, hour, tzinfo=LOCAL).astimezone(dt.UTC)


def weekly(
    first: dt.datetime, weeks: int, *, opens_after: dt.timedelta, delivered: int = 200, opened: int = 60
) -> list[Send]:
    """A campaign every week at the same local time, opened at the same local time `opens_after` later."""
    sends = []
    for week in range(weeks):
        sent = (first.astimezone(LOCAL) + dt.timedelta(days=7 * week)).replace(tzinfo=LOCAL)
        seen = (sent + opens_after).replace(tzinfo=LOCAL)  # wall-clock arithmetic: the same local hour
        delay = int((seen.astimezone(dt.UTC) - sent.astimezone(dt.UTC)) // dt.timedelta(hours=1))
        sends.append(Send(sent.astimezone(dt.UTC), delivered, {delay: opened}))
    return sends


def write_rollups(engine: Engine, tenant_id: int, sends: list[Send]) -> None:
    """Insert the rollup rows ingest would have kept for these sends."""
    counters: dict[tuple[dt.datetime, str, str, int], dict[str, int]] = defaultdict(
        lambda: {"sent": 0, "tracked": 0, "tracked_delivered": 0, "opened": 0}
    )
    delays: dict[tuple[dt.datetime, int], int] = defaultdict(int)
    for send in sends:
        hour = send.at.replace(minute=0, second=0, microsecond=0)
        row = counters[(hour, *send.kind)]
        row["sent"] += send.delivered
        row["tracked"] += send.delivered
        row["tracked_delivered"] += send.delivered
        row["opened"] += sum(send.opens.values())
        for delay, count in send.opens.items():
            delays[(hour, delay)] += count
    with write_transaction(engine) as conn:
        conn.execute(
            insert(rollup_messages),
            [
                {"tenant_id": tenant_id, "hour": h, "channel": c, "source": s, "campaign_id": k, **values}
                for (h, c, s, k), values in counters.items()
            ],
        )
        if delays:
            conn.execute(
                insert(rollup_open_delays),
                [
                    {"tenant_id": tenant_id, "hour": h, "delay_hours": d, "opened": n}
                    for (h, d), n in delays.items()
                ],
            )


def slot_of(answer: dict[str, object]) -> int:
    """The recommended local hour of the week."""
    return sendtime.WEEKDAYS.index(str(answer["weekday"])) * 24 + int(str(answer["hour"]))


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    # Salon ids restart in every test database; the in-process cache must not carry answers across.
    sendtime.clear_cache()
    yield
    sendtime.clear_cache()


# --- the model's arithmetic, without a database ---------------------------------------------------


def test_look_slots_follow_the_local_clock_across_a_dst_change() -> None:
    saturday = local(2026, 3, 28, 10)  # 09:00 UTC; the clocks go forward that night
    path = data.look_path(saturday, 72, LOCAL)
    assert isinstance(path, tuple), "a path crossing the change is spelled out hour by hour"
    assert path[0] == 5 * 24 + 10
    assert path[33] == SUNDAY_20H, "33 real hours later it is 20:00 on Sunday, local summer time"
    assert 6 * 24 + 2 not in path, "02:00 on that Sunday never happened"
    assert data.look_path(local(2026, 3, 7, 10), 72, LOCAL) == 5 * 24 + 10, "an ordinary week: one run"
    autumn = data.look_path(local(2026, 10, 24, 10), 72, LOCAL)
    assert isinstance(autumn, tuple)
    assert autumn.count(6 * 24 + 2) == 2, "02:00 happens twice when the clocks go back"


def test_a_cohort_sent_ten_hours_ago_is_exposed_ten_hours() -> None:
    sent = dt.datetime(2026, 5, 5, 8, tzinfo=dt.UTC)
    cohort = data.CohortCounts(sent, {"campaign": 100}, {"campaign": 30}, {0: 20, 3: 10})
    prepared = data.prepare([cohort], timezone=ZONE, now=sent + dt.timedelta(hours=10))
    (row,) = data.build_rows(prepared)
    assert row.ages == 10
    assert row.at_risk == [100, 80, 80, 80, 70, 70, 70, 70, 70, 70]
    assert sum(row.exposed) == pytest.approx(sum(row.at_risk) - 0.5 * 30)
    mixed = data.CohortCounts(
        sent, {"campaign": 100, "transactional/automation/7": 10}, {"campaign": 30}, {0: 30}
    )
    later = data.prepare([mixed], timezone=ZONE, now=sent + dt.timedelta(days=30))
    # Campaign mail is followed for a week (every local hour sees it waiting); other kinds for 72 hours.
    assert sorted(row.ages for row in data.build_rows(later)) == [
        data.HORIZON_HOURS,
        data.TARGET_FIT_HOURS,
    ]
    assert data.prepare([cohort], timezone=ZONE, now=sent).cohorts == (), "not observed at all yet"


def test_engagement_spread_from_customer_counts() -> None:
    # Everyone alike: no spread beyond what few messages give; half fans, half dormant: a wide one.
    assert model.frailty_from_customers(500, 0.4, 0.16) is None
    wide = model.frailty_from_customers(500, 0.5, 0.5 * 0.81 + 0.5 * 0.01)
    narrow = model.frailty_from_customers(500, 0.5, 0.26)
    assert wide is not None
    assert narrow is not None
    assert wide > 1.0 > narrow > 0.0
    assert model.frailty_from_customers(10, 0.5, 0.5) is None, "ten customers say nothing"


def test_predicted_rates_are_one_minus_survival() -> None:
    attention = [1.0] * 168
    decay = [0.01] * 72
    (rate, *_) = model.predict_grid(attention, decay, 1e-9)
    assert rate == pytest.approx(1 - math.exp(-0.72), abs=1e-6)
    (frail, *_) = model.predict_grid(attention, decay, 1.0)
    assert frail == pytest.approx(1 - 1 / 1.72)
    assert frail < rate, "mixing keen and indifferent customers lowers the rate for the same mean hazard"


# --- on the database: both backends --------------------------------------------------------------


def test_customers_who_read_on_thursday_evening_get_mail_then(engine: Engine) -> None:
    tenant = make_tenant(engine, timezone=ZONE)
    # Every campaign went out on Tuesday 10:00; people only ever open on Thursday at 20:00.
    sends = weekly(local(2026, 1, 6, 10), 20, opens_after=dt.timedelta(days=2, hours=10))
    write_rollups(engine, tenant.id, sends)
    now = sends[-1].at + dt.timedelta(days=5)
    with engine.connect() as conn:
        answer = sendtime.best_send_time(conn, tenant_id=tenant.id, timezone=ZONE, now=now)
    assert answer is not None
    assert (answer["weekday"], answer["hour"]) == ("Thursday", 20), "never tried, yet the best"
    grid = answer["grid"]
    assert grid[3][20] > grid[1][10] + 0.02, "fresh mail when they look beats mail waiting since Tuesday"
    assert grid[1][10] == pytest.approx(0.3, abs=0.03), "the slot used: calibrated on what happened"
    assert answer["reliable"] is True
    assert answer["months_of_data"] == 4.3, "19 weeks and an hour, rounded down"
    assert answer["notice"] is None
    assert answer["horizon_hours"] == 72
    assert answer["basis"] == {"mail": "campaign", "messages": 4000, "first_opens": 1200, "timezone": ZONE}
    assert set(answer) >= {"weekday", "hour", "expected_open_rate", "interval", "months_of_data", "reliable"}


def test_the_same_local_slot_across_dst_changes(engine: Engine) -> None:
    winter, spring, summer = (make_tenant(engine, timezone=ZONE) for _ in range(3))
    after = dt.timedelta(days=1, hours=10)  # Saturday 10:00 → Sunday 20:00, whatever the clocks did
    write_rollups(engine, winter.id, weekly(local(2025, 11, 8, 10), 14, opens_after=after))
    write_rollups(engine, spring.id, weekly(local(2026, 1, 31, 10), 14, opens_after=after))  # over 29 March
    write_rollups(engine, summer.id, weekly(local(2026, 4, 4, 10), 14, opens_after=after))
    answers = {}
    with engine.connect() as conn:
        for salon in (winter, spring, summer):
            now = local(2026, 8, 1, 12)
            found = sendtime.best_send_time(conn, tenant_id=salon.id, timezone=ZONE, now=now)
            analysis = sendtime.cached_analysis(conn, tenant_id=salon.id, timezone=ZONE, now=now)
            assert found is not None
            assert analysis is not None
            attention = analysis.fit.attention
            assert max(range(168), key=lambda s: attention[s]) == SUNDAY_20H
            assert attention[SUNDAY_20H] > 10 * attention[SUNDAY_20H + 1], "no opens smeared into 21:00"
            answers[salon.id] = found
    assert {slot_of(a) for a in answers.values()} == {SUNDAY_20H}
    flat = {salon: [rate for row in answer["grid"] for rate in row] for salon, answer in answers.items()}
    assert flat[winter.id] == pytest.approx(flat[summer.id], abs=0.005)


def test_recent_mail_is_censored_at_its_age(engine: Engine) -> None:
    tenant, without = make_tenant(engine, timezone=ZONE), make_tenant(engine, timezone=ZONE)
    # People read on Wednesday morning what came on Tuesday at 10:00.
    sends = weekly(local(2026, 1, 6, 10), 16, opens_after=dt.timedelta(hours=20), opened=80)
    fresh = local(2026, 5, 5, 10)
    write_rollups(engine, without.id, sends)
    write_rollups(engine, tenant.id, [*sends, Send(fresh, 200)])  # unopened: it went out ten hours ago
    with engine.connect() as conn:
        early = sendtime.analyse(conn, tenant_id=tenant.id, timezone=ZONE, now=fresh + dt.timedelta(hours=10))
        late = sendtime.analyse(conn, tenant_id=tenant.id, timezone=ZONE, now=fresh + dt.timedelta(days=4))
        alone = sendtime.analyse(
            conn, tenant_id=without.id, timezone=ZONE, now=fresh + dt.timedelta(hours=10)
        )
    assert early is not None
    assert late is not None
    assert alone is not None
    # Ten hours without an open, before anyone looks, say nothing; days without one say that mail failed.
    tuesday_10h = [found.answer["grid"][1][10] for found in (alone, early, late)]
    assert tuesday_10h[1] == pytest.approx(tuesday_10h[0], abs=0.003)
    assert tuesday_10h[2] < tuesday_10h[0] - 0.01
    assert early.answer["basis"]["messages"] == alone.answer["basis"]["messages"] + 200


def test_no_data_no_answer(engine: Engine) -> None:
    empty, untracked, few = (make_tenant(engine, timezone=ZONE) for _ in range(3))
    write_rollups(engine, untracked.id, [Send(local(2026, 3, 3, 10), 0)])
    write_rollups(engine, few.id, [Send(local(2026, 3, 3, 10), 50, {1: 5})])
    now = local(2026, 4, 1, 12)
    with engine.connect() as conn:
        for salon in (empty, untracked, few):
            assert sendtime.best_send_time(conn, tenant_id=salon.id, timezone=ZONE, now=now) is None
            assert sendtime.customer_best_hours(conn, tenant_id=salon.id, now=now) == {}


def test_under_three_months_is_a_hint_and_says_so(engine: Engine) -> None:
    tenant = make_tenant(engine, timezone=ZONE)
    sends = weekly(local(2026, 3, 3, 10), 8, opens_after=dt.timedelta(hours=3))
    write_rollups(engine, tenant.id, sends)
    with engine.connect() as conn:
        answer = sendtime.best_send_time(
            conn, tenant_id=tenant.id, timezone=ZONE, now=sends[-1].at + dt.timedelta(days=3)
        )
    assert answer is not None
    assert answer["reliable"] is False
    assert answer["months_of_data"] == pytest.approx(1.6, abs=0.1)
    assert "Based on 1.6 months of data: under 3 months" in str(answer["notice"])


def noisy_weeks(weeks: int, seed: int) -> list[Send]:
    """Weekly Tuesday campaigns whose opens (Tuesday evening) vary from week to week."""
    rng = random.Random(seed)
    sends = []
    for send in weekly(local(2025, 6, 3, 10), weeks, opens_after=dt.timedelta(hours=9)):
        ((delay, _),) = send.opens.items()
        sends.append(Send(send.at, 200, {delay: rng.randint(30, 90), delay + 1: rng.randint(0, 20)}))
    return sends


def test_the_interval_holds_the_estimate_and_narrows_with_more_data(engine: Engine) -> None:
    short, long = make_tenant(engine, timezone=ZONE), make_tenant(engine, timezone=ZONE)
    write_rollups(engine, short.id, noisy_weeks(8, seed=1))
    write_rollups(engine, long.id, noisy_weeks(40, seed=1))
    widths = []
    with engine.connect() as conn:
        for salon in (short, long):
            answer = sendtime.best_send_time(
                conn, tenant_id=salon.id, timezone=ZONE, now=local(2026, 5, 1, 0)
            )
            assert answer is not None
            low, high = answer["interval"]
            assert low <= answer["expected_open_rate"] <= high
            widths.append(high - low)
            again = sendtime.analyse(conn, tenant_id=salon.id, timezone=ZONE, now=local(2026, 5, 1, 0))
            assert again is not None
            assert again.answer["interval"] == answer["interval"], "same data, same resamples"
    assert 0 < widths[1] < widths[0] * 0.75


def test_answers_are_cached_for_minutes_then_while_the_rollups_stay_the_same(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = make_tenant(engine, timezone=ZONE)
    write_rollups(engine, tenant.id, weekly(local(2026, 1, 6, 10), 10, opens_after=dt.timedelta(hours=5)))
    now = local(2026, 4, 1, 12)

    def cached() -> sendtime.Analysis | None:
        with engine.connect() as conn:
            return sendtime.cached_analysis(conn, tenant_id=tenant.id, timezone=ZONE, now=now)

    first = cached()
    assert cached() is first
    write_rollups(engine, tenant.id, [Send(local(2026, 3, 31, 10), 200, {5: 60})])
    assert cached() is first, "a few minutes old: served as is, even though opens keep coming"
    later = sendtime._clock() + sendtime.CACHE_SECONDS + 1
    monkeypatch.setattr(sendtime, "_clock", lambda: later)
    changed = cached()
    assert changed is not first
    assert changed is not None
    assert changed.answer["basis"]["messages"] == 2200
    assert cached() is changed, "expired, but nothing changed since: no refit"


def test_per_customer_best_hours(engine: Engine) -> None:
    tenant = make_tenant(engine, timezone=ZONE)
    write_rollups(engine, tenant.id, weekly(local(2026, 1, 6, 10), 16, opens_after=dt.timedelta(hours=3)))
    evening, morning, new = (make_customer(engine, tenant.id) for _ in range(3))
    with write_transaction(engine) as conn:
        conn.execute(
            insert(customer_open_hours),
            [
                {"tenant_id": tenant.id, "customer_id": evening, "weekday_hour": THURSDAY_20H, "opens": 6},
                {"tenant_id": tenant.id, "customer_id": evening, "weekday_hour": 1 * 24 + 13, "opens": 1},
                {"tenant_id": tenant.id, "customer_id": morning, "weekday_hour": 0 * 24 + 7, "opens": 3},
                {"tenant_id": tenant.id, "customer_id": morning, "weekday_hour": 2 * 24 + 7, "opens": 3},
                {"tenant_id": tenant.id, "customer_id": new, "weekday_hour": 1 * 24 + 13, "opens": 2},
            ],
        )
    now = local(2026, 5, 1, 12)
    evening_id, morning_id = _external(engine, evening), _external(engine, morning)
    with engine.connect() as conn:
        found = sendtime.customer_best_hours(conn, tenant_id=tenant.id, now=now)
        one = sendtime.customer_best_hours(conn, tenant_id=tenant.id, customer_ids=[evening_id], now=now)
        top = sendtime.customer_best_hours(conn, tenant_id=tenant.id, limit=1, now=now)
    by_id = {key: (value["weekday"], value["hour"], value["opens"]) for key, value in found.items()}
    assert by_id[evening_id] == ("Thursday", 20, 7)
    weekday, hour, opens = by_id[morning_id]
    assert (weekday in ("Monday", "Wednesday"), hour, opens) == (True, 7, 6)
    assert set(by_id) == {evening_id, morning_id}, "two first opens are not a habit"
    assert set(one) == {evening_id}
    assert set(top) == {evening_id}, "without ids: the customers with the most first opens"


def _external(engine: Engine, customer_id: int) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(select(customers.c.external_id).where(customers.c.id == customer_id)).scalar_one()
        )


# --- the stats API and the CLI ---------------------------------------------------------------------


def _recent_history(engine: Engine, tenant_id: int) -> None:
    """Twelve weekly campaigns up to last week, Thursday 20:00 readers (relative to the real clock)."""
    now = utcnow().astimezone(LOCAL)
    tuesday = (now - dt.timedelta(days=(now.weekday() - 1) % 7 + 7)).replace(hour=10, minute=0, second=0)
    first = (tuesday - dt.timedelta(weeks=11)).replace(tzinfo=LOCAL)
    write_rollups(engine, tenant_id, weekly(first, 12, opens_after=dt.timedelta(days=2, hours=10)))


def _get(app: FastAPI, path: str, api_key: str) -> httpx.Response:
    """One request through the ASGI app, as a client would send it."""

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get(path, headers={"Authorization": f"Bearer {api_key}"})

    return anyio.run(call)


def test_the_stats_api_includes_the_best_send_time(engine: Engine) -> None:
    tenant, empty = make_tenant(engine, timezone=ZONE), make_tenant(engine, timezone=ZONE)
    _recent_history(engine, tenant.id)
    app = FastAPI()
    app.state.engine = engine
    app.include_router(analytics_routes.router)
    stats = _get(app, "/api/v1/stats", make_api_key(engine, tenant.id))
    nothing = _get(app, "/api/v1/stats", make_api_key(engine, empty.id))
    assert stats.status_code == 200, stats.text
    best = stats.json()["best_send_time"]
    assert (best["weekday"], best["hour"]) == ("Thursday", 20)
    assert best["reliable"] is False
    assert len(best["grid"]) == 7
    assert all(len(row) == 24 for row in best["grid"])
    assert best["interval"][0] <= best["expected_open_rate"] <= best["interval"][1]
    assert nothing.json()["best_send_time"] is None


@pytest.fixture
def cli_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's settings point at this test's database."""
    monkeypatch.setenv("MAILTRACK_DATABASE_URL", database_url)
    monkeypatch.setenv("MAILTRACK_SECRET_KEY", TEST_SECRET)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(sendtime_command)
    return app


def test_the_cli_prints_the_recommendation_and_the_grid(engine: Engine, cli_env: None) -> None:
    tenant, empty = make_tenant(engine, timezone=ZONE), make_tenant(engine, timezone=ZONE)
    _recent_history(engine, tenant.id)
    runner = CliRunner()
    shown = runner.invoke(_cli(), ["--tenant", str(tenant.id)], env={"COLUMNS": "120"})
    assert shown.exit_code == 0, shown.output
    assert "send on Thursday at 20:00 (Europe/Budapest)" in shown.stdout
    assert "under 3 months" in shown.stdout
    for day in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"):
        assert f"{day}" in shown.stdout
    as_json = runner.invoke(_cli(), ["--tenant", str(tenant.id), "--json"])
    assert as_json.exit_code == 0, as_json.output
    answer = json.loads(as_json.stdout.strip().splitlines()[-1])
    assert (answer["weekday"], answer["hour"], answer["reliable"]) == ("Thursday", 20, False)
    none = runner.invoke(_cli(), ["--tenant", str(empty.id), "--json"])
    assert none.stdout.strip().splitlines()[-1] == "null"
    assert "not enough data yet" in runner.invoke(_cli(), ["--tenant", str(empty.id)]).stdout
    assert runner.invoke(_cli(), ["--tenant", "999999"]).exit_code == 2
