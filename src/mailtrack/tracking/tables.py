"""The raw events table. Operators may query it: `type` and `ip` are public column names."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, SmallInteger, String, Table, Text

from mailtrack.db import BigId, UTCDateTime, metadata

EVENT_TYPES = ("sent", "delivered", "opened", "clicked", "bounced", "unsubscribed", "complained")

# No foreign keys, on purpose: the ingest batch is the only writer and has just locked the message row
# each event refers to, so a per-row check would only repeat that work on the largest table (it cost a
# fifth of bulk ingest time on PostgreSQL) and would get in the way of dropping time partitions.
# Deleting a salon, a message or a customer deletes their events explicitly.
# On PostgreSQL (migration 0008) this logical table is partitioned by range of occurred_at, with the
# primary key (tenant_id, id, occurred_at) and the external-id index not unique: a partitioned table's
# unique indexes must hold the partition key; event_external_ids below keeps that guarantee there.
events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", BigId, nullable=False),
    Column("message_id", BigId, nullable=False),
    Column("customer_id", BigId, nullable=False),
    Column("type", String(16), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("device", String(16), nullable=True),
    Column("client", String(32), nullable=True),
    Column("os", String(64), nullable=True),
    Column("user_agent", Text, nullable=True),
    Column("ip", String(64), nullable=True),
    Column("ip_anonymized", Boolean, nullable=False, server_default="0"),
    Column("referer", Text, nullable=True),
    Column("link_position", SmallInteger, nullable=True),
    Column("machine", Boolean, nullable=False, server_default="0"),
    Column("machine_reason", String(64), nullable=True),
    Column("bounce_kind", String(8), nullable=True),
    Column("status", String(16), nullable=True),
    Column("diagnostic", Text, nullable=True),
    # Provider or import event id: the same id twice is the same event (idempotent re-delivery).
    Column("external_event_id", String(200), nullable=True),
    Index(None, "tenant_id", "occurred_at", "id"),
    Index(None, "tenant_id", "message_id"),
    Index(None, "tenant_id", "customer_id", "occurred_at"),
    Index(None, "tenant_id", "external_event_id", unique=True),
)

# PostgreSQL only (migration 0008; SQLite keeps the unique index above): one row per stored event that
# has an external id, written by ingest in the event's transaction, deleted with the event.
event_external_ids = Table(
    "event_external_ids",
    metadata,
    Column("tenant_id", BigId, primary_key=True, autoincrement=False),
    Column("external_event_id", String(200), primary_key=True),
    Column("occurred_at", UTCDateTime, nullable=False),  # the event's, so that retention finds it
    Index(None, "tenant_id", "occurred_at"),
)

# How far the database has applied each hit journal (tracking/journal.py): updated in the same
# transaction as the events it covers, so a journal is applied exactly once, even across crashes.
journal_progress = Table(
    "journal_progress",
    metadata,
    Column("journal", String(200), primary_key=True),
    Column("segment", Integer, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
