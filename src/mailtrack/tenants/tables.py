"""Tables of the tenants domain."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, ForeignKey, Index, Integer, String, Table, Text

from mailtrack.db import BigId, UTCDateTime, metadata

tenants = Table(
    "tenants",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("timezone", String(64), nullable=False, server_default="Europe/Budapest"),
    Column("created_at", UTCDateTime, nullable=False),
)

tenant_settings = Table(
    "tenant_settings",
    metadata,
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("track_marketing", Boolean, nullable=False, server_default="1"),
    Column("track_transactional", Boolean, nullable=False, server_default="1"),
    Column("honor_dnt", Boolean, nullable=False, server_default="1"),
    Column("retention_days", Integer, nullable=False, server_default="90"),
    # 0 = truncate at once; -1 = store no IP at all; N = full address for N days, then truncated.
    Column("ip_anonymize_days", Integer, nullable=False, server_default="30"),
    Column("soft_bounce_threshold", Integer, nullable=False, server_default="3"),
    Column("rollup_retention_months", Integer, nullable=False, server_default="25"),
    Column("updated_at", UTCDateTime, nullable=False),
)

settings_audit = Table(
    "settings_audit",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("manager_id", BigId, ForeignKey("managers.id", ondelete="SET NULL"), nullable=True),
    Column("changed_at", UTCDateTime, nullable=False),
    Column("field", String(64), nullable=False),
    Column("old_value", Text, nullable=True),
    Column("new_value", Text, nullable=True),
    Index(None, "tenant_id", "changed_at"),
)

managers = Table(
    "managers",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index(None, "tenant_id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    # Keys carry 256 random bits, so a fast hash is as safe as a slow one and keeps auth cheap.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Index(None, "tenant_id"),
)
