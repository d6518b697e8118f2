"""Rollups: anonymous aggregates kept at ingest. They hold nothing personal and outlive raw events.

Every rollup is keyed by the *cohort hour* (the UTC hour the message was sent in), because a period's
figures are those of the messages sent in it, whenever their opens and clicks came. Hourly keys let the
dashboard cut days in any salon's timezone.

The rollups the stats read are kept twice: by hour and by UTC day (`DAILY`). A period is read from the
daily rows of the whole UTC days inside it and the hourly rows of its ragged ends, so a 90-day period
sums ~90 rows per key instead of ~2,160, with the same result (`analytics.queries.cohort_spans`).
`link_totals` bounds any period's clicks of a URL, so the top links are found among the few URLs that
could be in them (`analytics.queries.top_links`).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
)

from mailtrack.db import BigId, UTCDateTime, metadata


def _cohort_key(time: str = "hour") -> list[Column[object]]:
    return [
        Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        Column(time, UTCDateTime, nullable=False),  # "hour": the cohort hour; "day": its UTC midnight
        Column("channel", String(16), nullable=False),
        Column("source", String(16), nullable=False),
        Column("campaign_id", BigId, nullable=False),  # 0 = no campaign
    ]


MESSAGE_COUNTERS = (
    "sent",
    "tracked",
    "delivered",
    "tracked_delivered",
    "bounced",
    "tracked_bounced",
    "hard_bounced",
    "soft_bounced",
    "opened",
    "machine_opened",
    "clicked",
    "unsubscribed",
    "complained",
    "opens",
    "machine_opens",
    "clicks",
    "machine_clicks",
)
"""Per-message counters count messages (first event of the kind); plural ones count events."""


def _counter(name: str) -> Column[int]:
    return Column(name, Integer, nullable=False, server_default="0")


def _messages(name: str, time: str) -> Table:
    return Table(
        name,
        metadata,
        *_cohort_key(time),
        *(_counter(counter) for counter in MESSAGE_COUNTERS),
        PrimaryKeyConstraint("tenant_id", time, "channel", "source", "campaign_id"),
    )


def _links(name: str, time: str, *extra: Index) -> Table:
    return Table(
        name,
        metadata,
        *_cohort_key(time),
        Column("url", Text, nullable=False),
        _counter("clicks"),
        _counter("unique_clicks"),
        # By day, URL first: the top links are summed for a few candidate URLs (see link_totals).
        PrimaryKeyConstraint(
            *(
                ("tenant_id", time, "channel", "source", "campaign_id", "url")
                if time == "hour"
                else ("tenant_id", "url", time, "channel", "source", "campaign_id")
            )
        ),
        *extra,
    )


def _opens(name: str, time: str) -> Table:
    return Table(
        name,
        metadata,
        *_cohort_key(time),
        Column("device", String(16), nullable=False),
        Column("client", String(32), nullable=False),
        _counter("opened"),
        PrimaryKeyConstraint("tenant_id", time, "channel", "source", "campaign_id", "device", "client"),
    )


rollup_messages = _messages("rollup_messages", "hour")
rollup_links = _links("rollup_links", "hour")
rollup_opens = _opens("rollup_opens", "hour")
rollup_messages_daily = _messages("rollup_messages_daily", "day")
rollup_links_daily = _links(
    "rollup_links_daily", "day", Index("ix_rollup_links_daily_tenant_id_day", "tenant_id", "day")
)
rollup_opens_daily = _opens("rollup_opens_daily", "day")

DAILY: dict[Table, Table] = {
    rollup_messages: rollup_messages_daily,
    rollup_links: rollup_links_daily,
    rollup_opens: rollup_opens_daily,
}
"""Hourly rollup → the same rollup by UTC day; ingest writes both in the same transaction."""

link_totals = Table(
    "link_totals",
    metadata,
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("url", Text, nullable=False),
    # Every human click ever counted on the URL: never less than its clicks in any period or filter,
    # since rollup rows only ever go away (retention). Most URLs are clicked once or twice (a booking's
    # own page), so the top links are among the few URLs with the largest totals.
    _counter("clicks"),
    Column("last_day", UTCDateTime, nullable=False),  # the latest cohort day with a click on the URL
    PrimaryKeyConstraint("tenant_id", "url"),
    Index("ix_link_totals_tenant_id_clicks_last_day", "tenant_id", "clicks", "last_day"),
    Index("ix_link_totals_tenant_id_last_day", "tenant_id", "last_day"),  # retention
)

rollup_open_delays = Table(
    "rollup_open_delays",
    metadata,
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("hour", UTCDateTime, nullable=False),  # cohort hour, UTC
    # Whole hours from send to the first human open; the send-time model's survival data.
    Column("delay_hours", SmallInteger, nullable=False),
    Column("opened", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("tenant_id", "hour", "delay_hours"),
)

score_counts = Table(
    "score_counts",
    metadata,
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("day", UTCDateTime, nullable=False),  # UTC day of the customers' last mail
    Column("score", SmallInteger, nullable=False),
    Column("customers", Integer, nullable=False),
    PrimaryKeyConstraint("tenant_id", "day", "score"),
)
"""Customers per (day of last mail, score): the bucket counts (analytics/score_counts.py)."""

score_count_changes = Table(
    "score_count_changes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # No foreign key: the triggers write here while a salon's customers are deleted with the salon.
    Column("tenant_id", BigId, nullable=False),
    Column("day", UTCDateTime, nullable=False),
    Column("score", SmallInteger, nullable=False),
    Column("change", SmallInteger, nullable=False),  # −1: a customer left (day, score); +1: came
    Index("ix_score_count_changes_tenant_id_day", "tenant_id", "day"),
)
"""Changes to score_counts appended by triggers on customers, folded in after each ingest batch."""

AGED_BY: dict[Table, Column[dt.datetime]] = {
    rollup_messages: rollup_messages.c.hour,
    rollup_links: rollup_links.c.hour,
    rollup_opens: rollup_opens.c.hour,
    rollup_open_delays: rollup_open_delays.c.hour,
    rollup_messages_daily: rollup_messages_daily.c.day,
    rollup_links_daily: rollup_links_daily.c.day,
    rollup_opens_daily: rollup_opens_daily.c.day,
    link_totals: link_totals.c.last_day,
}
"""Every table that ages out with the rollups (`rollup_retention_months`) → the moment that ages a row."""

customer_open_hours = Table(
    "customer_open_hours",
    metadata,
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("customer_id", BigId, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False),
    # Hour of the week in the salon's timezone when the customer first opened a message:
    # 0 = Monday 00:00–00:59 … 167 = Sunday 23:00–23:59. Per-customer best hours come from here.
    Column("weekday_hour", SmallInteger, nullable=False),
    Column("opens", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("tenant_id", "customer_id", "weekday_hour"),
)
