"""Tables of the maintenance domain: leases that let one node at a time work on a salon."""

from __future__ import annotations

from sqlalchemy import Column, Index, String, Table, text

from mailtrack.db import UTCDateTime, metadata
from mailtrack.tracking.tables import events

maintenance_leases = Table(
    "maintenance_leases",
    metadata,
    # "retention:<tenant_id>": one lease per salon, so several nodes share the salons between them.
    Column("name", String(100), primary_key=True),
    Column("holder", String(200), nullable=False),
    # A holder that crashed stops renewing; once this passes, anyone may take the lease over.
    Column("expires_at", UTCDateTime, nullable=False),
    Column("acquired_at", UTCDateTime, nullable=True),
    # The last run that finished every step (for operators, and to skip salons done moments ago).
    Column("completed_at", UTCDateTime, nullable=True),
)

# Rows still holding a full address: small (a month of hits at most), so the anonymization job finds
# its work without walking the months of already-truncated rows. The predicate is written the same
# way in the job's query so that SQLite's planner recognizes it.
IP_PENDING_PREDICATE = "ip IS NOT NULL AND ip_anonymized = false"
events_ip_pending = Index(
    "ix_events_ip_pending",
    events.c.tenant_id,
    events.c.occurred_at,
    postgresql_where=text(IP_PENDING_PREDICATE),
    sqlite_where=text(IP_PENDING_PREDICATE),
)
