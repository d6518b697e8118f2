"""Tables of outgoing delivery: the SMTP outbox, and the nonces that make signed webhooks single-use.

The outbox holds a message's MIME bytes only until the relay has answered for good (250, a 5xx, or
the last retry): the row is deleted in the same transaction that records the outcome, by
`outbox.cancel_pending` when the customer is erased, and with its message or salon (foreign key
cascade). docs/sending.md explains why this transient queue is compatible with "no email body is
ever stored".
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from mailtrack.db import BigId, UTCDateTime, metadata

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("message_id", BigId, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("envelope_from", String(320), nullable=False),  # the VERP address bounces come back to
    Column("recipient", String(320), nullable=False),
    Column("mime", LargeBinary, nullable=False),  # deleted with the row once the relay has answered
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    # A worker leases the rows it sends; another node may take them over only once the lease ran out.
    Column("claimed_until", UTCDateTime, nullable=True),
    Column("claim_token", String(32), nullable=True),
    Column("last_error", Text, nullable=True),  # the relay's last temporary failure, for operators
    UniqueConstraint("tenant_id", "message_id"),  # a registered message is sent at most once
    Index(None, "next_attempt_at"),  # workers serve every salon: the due scan is global
)

webhook_nonces = Table(
    "webhook_nonces",
    metadata,
    # Not per salon: a provider account belongs to the platform, and its signed calls name no salon.
    Column("provider", String(16), nullable=False),
    Column("nonce", String(64), nullable=False),  # SHA-256 of the provider's token, signature or id
    # After this the provider's timestamp is stale anyway, so the row can go.
    Column("expires_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("provider", "nonce"),
    Index(None, "expires_at"),
)
