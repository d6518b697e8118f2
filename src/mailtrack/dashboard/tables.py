"""Tables of the dashboard: the session version that lets a logout invalidate a manager's cookies."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, Table

from mailtrack.db import BigId, UTCDateTime, metadata

manager_sessions = Table(
    "manager_sessions",
    metadata,
    Column("manager_id", BigId, ForeignKey("managers.id", ondelete="CASCADE"), primary_key=True),
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    # Every session cookie carries the version it was issued under; logging out bumps it, so every
    # cookie issued before (on any device, on any app node) stops working. No row = version 0.
    Column("version", Integer, nullable=False, server_default="0"),
    Column("updated_at", UTCDateTime, nullable=False),
    Index(None, "tenant_id"),
)
