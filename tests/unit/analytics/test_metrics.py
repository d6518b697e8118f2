"""Pure metric definitions: periods in a salon's timezone, cards, changes, scores and buckets."""

from __future__ import annotations

import datetime as dt

import pytest

from mailtrack.analytics import metrics
from mailtrack.analytics.metrics import Cards, MessageTotals, Period, ScoreInputs
from mailtrack.tracking.ingest import message_weight

NOW = dt.datetime(2026, 8, 20, 12, 0, tzinfo=dt.UTC)


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC)


# --- periods ----------------------------------------------------------------------------------------


def test_default_period_is_the_last_30_local_days() -> None:
    period = metrics.parse_period(None, None, today=dt.date(2026, 8, 20))
    assert (period.first, period.last, period.days) == (dt.date(2026, 7, 22), dt.date(2026, 8, 20), 30)
    assert metrics.parse_period(None, "2026-08-05", today=dt.date(2026, 8, 20)).first == dt.date(2026, 7, 7)


def test_local_today_follows_the_salon_timezone() -> None:
    late_evening_in_new_york = _utc(2026, 8, 21, 2, 30)
    assert metrics.local_today("America/New_York", late_evening_in_new_york) == dt.date(2026, 8, 20)
    assert metrics.local_today("Europe/Budapest", late_evening_in_new_york) == dt.date(2026, 8, 21)


def test_previous_period_has_equal_length_and_ends_the_day_before() -> None:
    week = Period(dt.date(2026, 3, 8), dt.date(2026, 3, 14))
    assert week.previous() == Period(dt.date(2026, 3, 1), dt.date(2026, 3, 7))
    day = Period(dt.date(2026, 3, 1), dt.date(2026, 3, 1))
    assert day.previous() == Period(dt.date(2026, 2, 28), dt.date(2026, 2, 28))


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        ("2026-13-01", "2026-12-31", "`from` must be a date as YYYY-MM-DD"),
        ("20260801", "2026-08-02", "`from` must be a date"),
        ("2026-08-01", "2026-8-2", "`to` must be a date"),
        ("2026-08-01T00:00", "2026-08-02", "`from` must be a date"),
        ("2026-08-05", "2026-08-01", "is after `to`"),
        ("2020-01-01", "2023-01-02", "at most 1096 days"),
        ("1960-01-01", "1960-01-02", "between 1970-01-01"),
        ("1970-01-01", "1970-01-01", "on or after 1970-01-01"),
    ],
)
def test_bad_periods_are_refused_with_a_reason(first: str, last: str, message: str) -> None:
    with pytest.raises(metrics.PeriodError, match=message.replace("(", r"\(")):
        metrics.parse_period(first, last, today=dt.date(2026, 8, 20))


def test_three_years_is_the_longest_period() -> None:
    assert metrics.parse_period("2020-01-01", "2022-12-31", today=NOW.date()).days == 1096


def test_new_york_spring_forward_day_has_23_hours() -> None:
    start, end = Period(dt.date(2026, 3, 8), dt.date(2026, 3, 8)).utc_bounds("America/New_York")
    assert (start, end) == (_utc(2026, 3, 8, 5), _utc(2026, 3, 9, 4))


def test_budapest_fall_back_day_has_25_hours() -> None:
    start, end = Period(dt.date(2026, 10, 25), dt.date(2026, 10, 25)).utc_bounds("Europe/Budapest")
    assert (start, end) == (_utc(2026, 10, 24, 22), _utc(2026, 10, 25, 23))


def test_half_hour_offsets_give_each_utc_hour_to_the_day_it_starts_in() -> None:
    start, end = Period(dt.date(2026, 8, 3), dt.date(2026, 8, 3)).utc_bounds("Asia/Kolkata")
    assert (start, end) == (_utc(2026, 8, 2, 18, 30), _utc(2026, 8, 3, 18, 30))


def test_a_midnight_inside_a_dst_gap_starts_the_day_at_its_first_instant() -> None:
    # Santiago springs forward at 00:00 → 01:00 local on 2026-09-06: that day starts at 01:00 -03.
    start, _end = Period(dt.date(2026, 9, 6), dt.date(2026, 9, 6)).utc_bounds("America/Santiago")
    assert start == _utc(2026, 9, 6, 4)
    _start, previous_end = Period(dt.date(2026, 9, 5), dt.date(2026, 9, 5)).utc_bounds("America/Santiago")
    assert previous_end == start, "consecutive days tile time"


# --- cards ------------------------------------------------------------------------------------------


def test_cards_use_tracked_delivered_mail_for_open_and_click_rates() -> None:
    totals = MessageTotals(
        sent=8, tracked=6, bounced=2, opened=3, machine_opened=2, clicked=1, tracked_bounced=2
    )
    assert metrics.compute_cards(totals) == Cards(
        sent=8,
        delivered=6,
        open_rate=0.75,
        click_rate=0.25,
        bounce_rate=0.25,
        click_to_open_rate=1 / 3,
        machine_open_share=0.5,
    )


def test_reported_deliveries_replace_sent_minus_bounced() -> None:
    totals = MessageTotals(
        sent=10,
        tracked=10,
        delivered=7,
        bounced=1,
        opened=2,
        tracked_delivered=7,
        tracked_bounced=1,
    )
    cards = metrics.compute_cards(totals)
    assert (cards.delivered, cards.open_rate, cards.bounce_rate) == (7, 2 / 7, 0.1)
    assert metrics.tracked_delivered(totals) == 7


def test_empty_cohorts_and_inconsistent_counts_stay_within_0_and_1() -> None:
    assert metrics.compute_cards(MessageTotals()) == Cards(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
    opened_but_never_sent = MessageTotals(opened=2, clicked=1)
    assert metrics.compute_cards(opened_but_never_sent).open_rate == 0.0
    assert metrics.compute_cards(MessageTotals(sent=1, tracked=1, opened=3)).open_rate == 1.0


def test_change_is_the_difference_card_by_card() -> None:
    now = Cards(10, 9, 0.5, 0.2, 0.1, 0.4, 0.3)
    before = Cards(4, 4, 0.25, 0.25, 0.0, 1.0, 0.5)
    change = metrics.card_changes(now, before)
    assert (change.sent, change.delivered) == (6, 5)
    assert change.open_rate == pytest.approx(0.25)
    assert change.click_rate == pytest.approx(-0.05)
    assert change.click_to_open_rate == pytest.approx(-0.6)


def test_fractions_are_largest_first_and_skip_zeros() -> None:
    assert metrics.fractions({"desktop": 1, "mobile": 3, "tablet": 0}) == {"mobile": 0.75, "desktop": 0.25}
    assert metrics.fractions({}) == {}


# --- engagement score -------------------------------------------------------------------------------


def _inputs(**overrides: object) -> ScoreInputs:
    base: dict[str, object] = {
        "name": "Anna",
        "tracked_sent": 2,
        "tracked_bounced": 0,
        "messages_opened": 1,
        "messages_clicked": 0,
        "w_sent": 3.0,
        "w_bounced": 0.0,
        "w_opened": 2.0,
        "w_clicked": 0.0,
        "do_not_track": False,
        "last_sent_at": NOW - dt.timedelta(days=1),
        "unsubscribed_at": None,
        "complained_at": None,
        "hard_bounced_at": None,
    }
    base.update(overrides)
    return ScoreInputs(**base)  # type: ignore[arg-type]


def test_recent_mail_weighs_more_with_a_30_day_half_life() -> None:
    older, newer = _utc(2026, 6, 1, 10), _utc(2026, 7, 1, 10)
    assert message_weight(newer) / message_weight(older) == pytest.approx(2.0)
    w_sent = message_weight(older) + message_weight(newer)
    opened_newer = _inputs(w_sent=w_sent, w_opened=message_weight(newer))
    opened_older = _inputs(w_sent=w_sent, w_opened=message_weight(older))
    assert metrics.judge_score(opened_newer, now=NOW).score == 40  # 100 × 0.6 × 2/3
    assert metrics.judge_score(opened_older, now=NOW).score == 20  # 100 × 0.6 × 1/3


def test_score_formula_weighs_opens_and_clicks() -> None:
    verdict = metrics.judge_score(_inputs(w_opened=3.0, w_clicked=1.5, messages_clicked=1), now=NOW)
    assert verdict.score == 80  # 100 × (0.6 × 1 + 0.4 × 0.5)
    assert "Score = 100 × (0.6 × 1.000 + 0.4 × 0.500) = 80.0, rounded to 80." in verdict.explanation
    assert "Anna" in verdict.explanation


def test_bounced_mail_leaves_the_denominator() -> None:
    inputs = _inputs(tracked_sent=3, tracked_bounced=1, w_sent=4.0, w_bounced=1.0, w_opened=3.0)
    assert inputs.open_share == 1.0
    assert metrics.judge_score(inputs, now=NOW).score == 60


@pytest.mark.parametrize(
    "suppression", ["unsubscribed_at", "complained_at", "hard_bounced_at"], ids=lambda name: name
)
def test_suppressed_customers_score_zero(suppression: str) -> None:
    verdict = metrics.judge_score(_inputs(w_opened=3.0, **{suppression: NOW}), now=NOW)
    assert verdict.score == 0
    assert "so the score is 0" in verdict.explanation


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"do_not_track": True}, "asked not to be tracked"),
        ({"tracked_sent": 0, "w_sent": 0.0, "w_opened": 0.0}, "No tracked message has been delivered"),
        ({"tracked_bounced": 2, "w_bounced": 3.0}, "No tracked message has been delivered"),
        ({"last_sent_at": NOW - dt.timedelta(days=91)}, "no mail in the last 90 days"),
        ({"last_sent_at": None}, "no mail in the last 90 days"),
    ],
)
def test_customers_without_evidence_have_no_score(overrides: dict[str, object], reason: str) -> None:
    verdict = metrics.judge_score(_inputs(**overrides), now=NOW)
    assert verdict.score is None
    assert reason in verdict.explanation


def test_rounding_is_half_up_and_clamped() -> None:
    assert [metrics.round_score(value) for value in (20.5, 20.49, 0.5, -3.0, 100.4, 250.0)] == [
        21,
        20,
        1,
        0,
        100,
        100,
    ]


def test_buckets_have_fixed_ranges_and_percent_of_scored_customers() -> None:
    assert [metrics.bucket_index(score) for score in (0, 20, 21, 40, 41, 60, 61, 80, 81, 100)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        4,
    ]
    buckets = metrics.engagement_buckets({0: 3, 1: 1, 4: 4})
    assert [(b["range"], b["customers"]) for b in buckets] == [
        ("0-20", 3),
        ("21-40", 1),
        ("41-60", 0),
        ("61-80", 0),
        ("81-100", 4),
    ]
    assert [b["percent"] for b in buckets] == [37.5, 12.5, 0.0, 0.0, 50.0]
    assert all(b["percent"] == 0.0 for b in metrics.engagement_buckets({}))
