"""Tables of inbound delivery feedback: the quarantine of mail that could not be attributed.

Nothing inbound is silently dropped: a bounce, delay, delivery report or complaint that names no
message we know (or names another salon's), and any message the parser does not recognize, is kept
here for review. Only the top-level headers and the classification are kept, never a body: bounces
quote the original message, and no email body is ever stored (DESIGN.md, privacy rules).
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, String, Table, Text

from mailtrack.db import BigId, UTCDateTime, metadata

QUARANTINE_REASONS = ("unattributed", "unrecognized")
INBOUND_SOURCES = ("api", "smtp", "cli")

quarantine = Table(
    "inbound_quarantine",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # The salon whose API key posted the message; NULL for the SMTP listener and the CLI, which
    # serve every salon.
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("source", String(8), nullable=False),
    Column("reason", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("bounce_kind", String(8), nullable=True),
    Column("status", String(16), nullable=True),
    Column("recipient", String(320), nullable=True),
    Column("original_message_id", String(300), nullable=True),
    Column("envelope_recipient", String(320), nullable=True),
    Column("sender", String(320), nullable=True),
    Column("subject", String(998), nullable=True),
    Column("headers", Text, nullable=False),  # the inbound message's own header block, decoded
    Column("classification", Text, nullable=False),  # the classification JSON (docs/bounces.md)
    # SHA-256 of the salon id and the raw message: the same message delivered twice is kept once.
    Column("fingerprint", String(64), nullable=False),
    Column("reviewed_at", UTCDateTime, nullable=True),
    Index(None, "fingerprint", unique=True),
    Index(None, "tenant_id", "received_at"),
)
