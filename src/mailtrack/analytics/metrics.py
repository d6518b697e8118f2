"""Pure computations behind the stats: periods, rates, engagement scores, buckets and changes.

Every definition here is written out in docs/metrics.md; nothing in this module touches the database,
so each figure can be checked by hand in a unit test.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, fields

DEFAULT_PERIOD_DAYS = 30
MAX_PERIOD_DAYS = 3 * 365 + 1  # three years, a leap day included
EARLIEST_DAY = dt.date(1970, 1, 1)
LATEST_DAY = dt.date(2999, 12, 31)

OPEN_WEIGHT = 0.6
CLICK_WEIGHT = 0.4
HALF_LIFE_DAYS = 30.0  # the half-life ingest bakes into customers.w_* (tracking.ingest.message_weight)
SCORE_WINDOW = dt.timedelta(days=90)
BUCKETS = ((0, 20), (21, 40), (41, 60), (61, 80), (81, 100))
SCORE_FORMULA = "score = round(100 × (0.6 × weighted open share + 0.4 × weighted click share)), 0–100"


class PeriodError(ValueError):
    """The requested period cannot be served (bad date, reversed or too long)."""


@dataclass(frozen=True, slots=True)
class Period:
    """Local calendar days, both inclusive, in a salon's timezone."""

    first: dt.date
    last: dt.date

    @property
    def days(self) -> int:
        """How many calendar days the period spans."""
        return (self.last - self.first).days + 1

    def previous(self) -> Period:
        """The period of equal length that ends the day before this one starts."""
        return Period(self.first - dt.timedelta(days=self.days), self.first - dt.timedelta(days=1))

    def utc_bounds(self, timezone: str) -> tuple[dt.datetime, dt.datetime]:
        """[start, end) in UTC: local midnight of `first` to local midnight after `last`."""
        zone = zoneinfo.ZoneInfo(timezone)
        return local_midnight(self.first, zone), local_midnight(self.last + dt.timedelta(days=1), zone)


def local_midnight(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    """The UTC instant a local day starts (DST-correct through zoneinfo).

    Where midnight falls in a DST gap, fold=0 maps it to the first instant that exists that day; where
    midnight repeats, the first one starts the day. Days built this way tile time without gaps or overlaps.
    """
    return dt.datetime.combine(day, dt.time(0), tzinfo=zone).astimezone(dt.UTC)


def local_today(timezone: str, now: dt.datetime) -> dt.date:
    """Today's date in the salon's timezone."""
    return now.astimezone(zoneinfo.ZoneInfo(timezone)).date()


def _parse_day(name: str, text: str) -> dt.date:
    # fromisoformat alone would also accept "20260803" and week dates; the contract is YYYY-MM-DD.
    value = text.strip()
    try:
        if len(value) != 10 or value[4] != "-" or value[7] != "-":
            raise ValueError(value)
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise PeriodError(f"`{name}` must be a date as YYYY-MM-DD, got {text!r}") from None
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise PeriodError(f"`{name}` must lie between {EARLIEST_DAY} and {LATEST_DAY}, got {day}")
    return day


def parse_period(first: str | None, last: str | None, *, today: dt.date) -> Period:
    """The period asked for; `to` defaults to today and `from` to 30 days ending on `to`."""
    end = _parse_day("to", last) if last else today
    start = _parse_day("from", first) if first else end - dt.timedelta(days=DEFAULT_PERIOD_DAYS - 1)
    if start > end:
        raise PeriodError(f"`from` ({start}) is after `to` ({end})")
    period = Period(start, end)
    if period.days > MAX_PERIOD_DAYS:
        raise PeriodError(
            f"the period spans {period.days} days; at most {MAX_PERIOD_DAYS} days (three years)"
        )
    if period.previous().first < EARLIEST_DAY:
        raise PeriodError(f"the period and the one before it must start on or after {EARLIEST_DAY}")
    return period


@dataclass(frozen=True, slots=True)
class MessageTotals:
    """Sums of rollup_messages over a cohort."""

    sent: int = 0
    tracked: int = 0
    delivered: int = 0
    tracked_delivered: int = 0
    bounced: int = 0
    tracked_bounced: int = 0
    hard_bounced: int = 0
    soft_bounced: int = 0
    opened: int = 0
    machine_opened: int = 0
    clicked: int = 0
    unsubscribed: int = 0
    complained: int = 0
    opens: int = 0
    machine_opens: int = 0
    clicks: int = 0
    machine_clicks: int = 0

    def counts(self) -> dict[str, float]:
        """Every counter, by name."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


@dataclass(frozen=True, slots=True)
class Cards:
    """The dashboard's headline figures; rates are fractions 0–1."""

    sent: int
    delivered: int
    open_rate: float
    click_rate: float
    bounce_rate: float
    click_to_open_rate: float
    machine_open_share: float


def ratio(numerator: float, denominator: float) -> float:
    """numerator ÷ denominator clamped to 0–1; 0 when there is nothing to divide by."""
    if denominator <= 0:
        return 0.0
    return min(1.0, max(0.0, numerator / denominator))


def reports_deliveries(totals: MessageTotals) -> bool:
    """Whether the salon's sending path reported deliveries explicitly in this cohort."""
    return totals.delivered > 0


def delivered_count(totals: MessageTotals) -> int:
    """Delivered messages: as reported when the path reports deliveries, else sent − bounced."""
    if reports_deliveries(totals):
        return totals.delivered
    return max(0, totals.sent - totals.bounced)


def tracked_delivered(totals: MessageTotals) -> int:
    """Delivered tracked messages: the denominator of open and click rates."""
    if reports_deliveries(totals):
        return totals.tracked_delivered
    return max(0, totals.tracked - totals.tracked_bounced)


def compute_cards(totals: MessageTotals) -> Cards:
    """The cards of a cohort; human opens and clicks only, over tracked mail only."""
    base = tracked_delivered(totals)
    return Cards(
        sent=totals.sent,
        delivered=delivered_count(totals),
        open_rate=ratio(totals.opened, base),
        click_rate=ratio(totals.clicked, base),
        bounce_rate=ratio(totals.bounced, totals.sent),
        click_to_open_rate=ratio(totals.clicked, totals.opened),
        machine_open_share=ratio(totals.machine_opened, base),
    )


def card_changes(current: Cards, previous: Cards) -> Cards:
    """current − previous, card by card (rates: a difference of fractions, 0.05 = +5 points)."""
    return Cards(
        sent=current.sent - previous.sent,
        delivered=current.delivered - previous.delivered,
        open_rate=current.open_rate - previous.open_rate,
        click_rate=current.click_rate - previous.click_rate,
        bounce_rate=current.bounce_rate - previous.bounce_rate,
        click_to_open_rate=current.click_to_open_rate - previous.click_to_open_rate,
        machine_open_share=current.machine_open_share - previous.machine_open_share,
    )


def fractions(counts: Mapping[str, int]) -> dict[str, float]:
    """Each key's share of the total, largest first; empty when the total is zero."""
    total = sum(counts.values())
    if total <= 0:
        return {}
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {key: value / total for key, value in ordered if value > 0}


# --- engagement score -------------------------------------------------------------------------------


def raw_score(*, w_sent: float, w_bounced: float, w_opened: float, w_clicked: float) -> float:
    """The unrounded score, in the same order of float operations as the SQL (queries.score_columns)."""
    return 100.0 * (OPEN_WEIGHT * w_opened + CLICK_WEIGHT * w_clicked) / (w_sent - w_bounced)


def round_score(raw: float) -> int:
    """Clamp to 0–100 and round halves up (the same on SQLite and PostgreSQL)."""
    return math.floor(min(100.0, max(0.0, raw)) + 0.5)


def bucket_index(score: int) -> int:
    """Which of the five buckets (0–4) a score falls in."""
    for index, (_low, high) in enumerate(BUCKETS):
        if score <= high:
            return index
    return len(BUCKETS) - 1


def bucket_label(index: int) -> str:
    """A bucket's range as the API names it ("0-20"…"81-100")."""
    low, high = BUCKETS[index]
    return f"{low}-{high}"


def engagement_buckets(counts: Mapping[int, int]) -> list[dict[str, object]]:
    """The five buckets with their customer counts and their percent (0–100) of scored customers."""
    total = sum(counts.values())
    return [
        {
            "range": bucket_label(index),
            "customers": counts.get(index, 0),
            "percent": 100.0 * counts.get(index, 0) / total if total else 0.0,
        }
        for index in range(len(BUCKETS))
    ]


@dataclass(frozen=True, slots=True)
class ScoreInputs:
    """A customer's stored aggregates, everything the score is made of."""

    name: str
    tracked_sent: int
    tracked_bounced: int
    messages_opened: int
    messages_clicked: int
    w_sent: float
    w_bounced: float
    w_opened: float
    w_clicked: float
    do_not_track: bool
    last_sent_at: dt.datetime | None
    unsubscribed_at: dt.datetime | None
    complained_at: dt.datetime | None
    hard_bounced_at: dt.datetime | None

    @property
    def tracked_delivered(self) -> int:
        """Tracked messages that did not bounce."""
        return max(0, self.tracked_sent - self.tracked_bounced)

    @property
    def open_share(self) -> float | None:
        """Recency-weighted share of delivered tracked messages a person opened."""
        base = self.w_sent - self.w_bounced
        return min(1.0, self.w_opened / base) if self.tracked_delivered > 0 and base > 0 else None

    @property
    def click_share(self) -> float | None:
        """Recency-weighted share of delivered tracked messages a person clicked."""
        base = self.w_sent - self.w_bounced
        return min(1.0, self.w_clicked / base) if self.tracked_delivered > 0 and base > 0 else None


@dataclass(frozen=True, slots=True)
class ScoreVerdict:
    """A score (None: not scored) and why, in plain words."""

    score: int | None
    explanation: str


def _suppression(inputs: ScoreInputs) -> tuple[str, dt.datetime] | None:
    for label, moment in (
        ("unsubscribed", inputs.unsubscribed_at),
        ("marked a message as spam", inputs.complained_at),
        ("had a hard bounce (the address does not exist)", inputs.hard_bounced_at),
    ):
        if moment is not None:
            return label, moment
    return None


def judge_score(inputs: ScoreInputs, *, now: dt.datetime) -> ScoreVerdict:
    """The customer's score exactly as the buckets and lists count it, with a plain explanation."""
    who = inputs.name or "This customer"
    if inputs.do_not_track:
        return ScoreVerdict(None, f"{who} asked not to be tracked (Do Not Track), so no score is computed.")
    if inputs.tracked_delivered <= 0 or inputs.w_sent - inputs.w_bounced <= 0:
        return ScoreVerdict(None, f"No tracked message has been delivered to {who} yet: nothing to score.")
    if inputs.last_sent_at is None or inputs.last_sent_at < now - SCORE_WINDOW:
        return ScoreVerdict(
            None, f"{who} was sent no mail in the last 90 days; a score needs recent mail to be fair."
        )
    suppressed = _suppression(inputs)
    if suppressed is not None:
        label, moment = suppressed
        return ScoreVerdict(0, f"{who} {label} on {moment:%Y-%m-%d}, so the score is 0 whatever came before.")
    raw = raw_score(
        w_sent=inputs.w_sent, w_bounced=inputs.w_bounced, w_opened=inputs.w_opened, w_clicked=inputs.w_clicked
    )
    score = round_score(raw)
    opened, clicked = inputs.open_share or 0.0, inputs.click_share or 0.0
    return ScoreVerdict(
        score,
        f"Of the {inputs.tracked_delivered} tracked messages delivered to {who} (recent ones count more: "
        f"a message loses half its weight every {HALF_LIFE_DAYS:g} days), {opened:.1%} were opened by a "
        f"person and {clicked:.1%} clicked; machine opens do not count. "
        f"Score = 100 × (0.6 × {opened:.3f} + 0.4 × {clicked:.3f}) = {min(100.0, max(0.0, raw)):.1f}, "
        f"rounded to {score}.",
    )
