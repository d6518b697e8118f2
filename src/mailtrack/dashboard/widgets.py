"""The dashboard's widgets, built from the stats the API serves (same functions, same numbers)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from sqlalchemy import Connection, Engine

from mailtrack.analytics import metrics
from mailtrack.analytics import routes as analytics_routes
from mailtrack.analytics.queries import CohortFilter
from mailtrack.dashboard import present, queries

DEFAULT_DAYS = 7  # a week, so the change beside each card is week over week (managers check weekly)
KPI_KEYS = ("sent", "open_rate", "click_rate", "bounce_rate")


@dataclass(frozen=True, slots=True)
class Filters:
    """The dashboard's filters as given in the URL (empty = not set)."""

    first: str = ""
    last: str = ""
    source: str = ""
    campaign: str = ""
    channel: str = ""

    def params(self) -> dict[str, str]:
        """The filters as URL parameters."""
        return {
            "from": self.first,
            "to": self.last,
            "source": self.source,
            "campaign": self.campaign,
            "channel": self.channel,
        }

    @property
    def active(self) -> bool:
        """Whether any filter narrows the mail (the period is not a filter)."""
        return bool(self.source or self.campaign or self.channel)


def last_days(timezone: str, now: dt.datetime, days: int) -> tuple[str, str]:
    """(from, to) of the last `days` local days, today included."""
    today = metrics.local_today(timezone, now)
    return (today - dt.timedelta(days=days - 1)).isoformat(), today.isoformat()


def default_period(timezone: str, now: dt.datetime) -> tuple[str, str]:
    """The last DEFAULT_DAYS local days, today included."""
    return last_days(timezone, now, DEFAULT_DAYS)


def load_stats(
    engine: Engine, *, tenant_id: int, filters: Filters, timezone: str, now: dt.datetime
) -> tuple[analytics_routes.StatsOut, Filters, str | None]:
    """The stats exactly as `GET /api/v1/stats` computes them; invalid filters fall back, with the reason."""
    first, last = filters.first, filters.last
    if not first and not last:
        first, last = default_period(timezone, now)
    wanted = Filters(first, last, filters.source, filters.campaign, filters.channel)
    try:
        stats = analytics_routes.get_stats(
            tenant_id=tenant_id,
            engine=engine,
            first=wanted.first or None,
            last=wanted.last or None,
            source=wanted.source or None,
            campaign=wanted.campaign or None,
            channel=wanted.channel or None,
        )
    except HTTPException as exc:
        if exc.status_code != 422:
            raise
        first, last = default_period(timezone, now)
        fallback = Filters(first, last)
        stats = analytics_routes.get_stats(tenant_id=tenant_id, engine=engine, first=first, last=last)
        return stats, fallback, f"{exc.detail}. Showing the last {DEFAULT_DAYS} days without filters instead."
    return stats, wanted, None


@dataclass(frozen=True, slots=True)
class Kpi:
    """One stats card."""

    key: str
    label: str
    value: str
    definition: str
    change: str
    tone: str
    previous: str


def kpis(stats: analytics_routes.StatsOut, keys: tuple[str, ...]) -> list[Kpi]:
    """The cards with their definitions and their change against the previous period."""
    cards, change, previous = stats.cards.model_dump(), stats.change.model_dump(), stats.previous.model_dump()
    result = []
    for key in keys:
        is_count = key in ("sent", "delivered")
        result.append(
            Kpi(
                key=key,
                label=present.CARD_LABELS[key],
                value=present.number(cards[key]) if is_count else present.pct(cards[key]),
                definition=present.CARD_DEFINITIONS[key],
                change=present.change_text(key, change[key]),
                tone=present.change_tone(key, change[key]),
                previous=present.number(previous[key]) if is_count else present.pct(previous[key]),
            )
        )
    return result


@dataclass(frozen=True, slots=True)
class Bucket:
    """An engagement bucket with its segment name and its export link parameters."""

    range: str
    segment: str
    customers: int
    percent: float
    low: int
    high: int


def buckets(stats: analytics_routes.StatsOut) -> list[Bucket]:
    """The five buckets, each named as the segment it exports."""
    return [
        Bucket(b.range, present.SEGMENTS[i], b.customers, b.percent, *metrics.BUCKETS[i])
        for i, b in enumerate(stats.engagement_buckets)
    ]


@dataclass(frozen=True, slots=True)
class CampaignCard:
    """A campaign's cards over the period (sums from the rollups, rates from metrics.compute_cards)."""

    name: str
    source: str
    cards: metrics.Cards
    tracked: bool  # False: none of its mail was tracked (system mail), so it can show no open or click


def campaign_cards(
    conn: Connection, *, tenant_id: int, stats: analytics_routes.StatsOut, filters: Filters, timezone: str
) -> list[CampaignCard]:
    """Per-campaign cards for the period, channel and source filters, most sent first."""
    start, end = metrics.Period(stats.period.from_, stats.period.to).utc_bounds(timezone)
    cohort = CohortFilter(tenant_id, start, end, filters.channel or None, filters.source or None, None)
    return [
        CampaignCard(c.name, c.source, metrics.compute_cards(c.totals), c.totals.tracked > 0)
        for c in queries.campaign_totals(conn, cohort=cohort)
    ]


@dataclass(frozen=True, slots=True)
class SendTime:
    """The best-send-time widget: the model's answer, or an honest "not available yet" with what we saw."""

    available: bool
    slot: str
    expected: str
    interval: str
    months: float | None
    reliable: bool
    cells: list[present.Cell] | None
    observed: bool


def send_time(best: dict[str, Any] | None, observed_opens: dict[int, int]) -> SendTime:
    """The widget for the model's answer (None: the model is not available or has too little data)."""
    if best is None:
        cells = present.observed_heatmap(observed_opens)
        return SendTime(False, "", "", "", None, False, cells, cells is not None)
    interval = best.get("interval")
    low, high = [*interval, None, None][:2] if isinstance(interval, list | tuple) else (None, None)
    months = best.get("months_of_data")
    return SendTime(
        available=True,
        slot=present.send_time_slot(best),
        expected=present.pct(best.get("expected_open_rate"), 0),
        interval=f"{present.pct(low, 0)} – {present.pct(high, 0)}" if low is not None else "",
        months=float(months) if isinstance(months, int | float) else None,
        reliable=bool(best.get("reliable")) and (not isinstance(months, int | float) or months >= 3),
        cells=present.model_heatmap(best),
        observed=False,
    )


def bars(fractions: dict[str, float], labels: dict[str, str]) -> list[tuple[str, float]]:
    """(label, fraction) pairs for a bar chart, largest first."""
    return [(labels.get(key, key), value) for key, value in fractions.items()]
