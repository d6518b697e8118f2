"""Rollups: anonymous aggregates kept at ingest. They hold nothing personal and outlive raw events.

Every rollup is keyed by the *cohort hour* (the UTC hour the message was sent in), because a period's
figures are those of the messages sent in it, whenever their opens and clicks came. Hourly keys let the
dashboard cut days in any salon's timezone.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Integer, PrimaryKeyConstraint, SmallInteger, String, Table, Text

from mailtrack.db import BigId, UTCDateTime, metadata


def _cohort_key() -> list[Column[object]]:
    return [
        Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        Column("hour", UTCDateTime, nullable=False),
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

rollup_messages = Table(
    "rollup_messages",
    metadata,
    *_cohort_key(),
    *(Column(name, Integer, nullable=False, server_default="0") for name in MESSAGE_COUNTERS),
    PrimaryKeyConstraint("tenant_id", "hour", "channel", "source", "campaign_id"),
)

rollup_links = Table(
    "rollup_links",
    metadata,
    *_cohort_key(),
    Column("url", Text, nullable=False),
    Column("clicks", Integer, nullable=False, server_default="0"),
    Column("unique_clicks", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("tenant_id", "hour", "channel", "source", "campaign_id", "url"),
)

rollup_opens = Table(
    "rollup_opens",
    metadata,
    *_cohort_key(),
    Column("device", String(16), nullable=False),
    Column("client", String(32), nullable=False),
    Column("opened", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("tenant_id", "hour", "channel", "source", "campaign_id", "device", "client"),
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
