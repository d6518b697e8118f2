"""maintenance leases and the index of addresses still to anonymize

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailtrack.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The same text as in maintenance/tables.py: SQLite uses a partial index only for queries that repeat it.
_IP_PENDING = "ip IS NOT NULL AND ip_anonymized = false"


def upgrade() -> None:
    op.create_table(
        "maintenance_leases",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", mailtrack.db.UTCDateTime(), nullable=False),
        sa.Column("acquired_at", mailtrack.db.UTCDateTime(), nullable=True),
        sa.Column("completed_at", mailtrack.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maintenance_leases")),
    )
    op.create_index(
        "ix_events_ip_pending",
        "events",
        ["tenant_id", "occurred_at"],
        unique=False,
        postgresql_where=sa.text(_IP_PENDING),
        sqlite_where=sa.text(_IP_PENDING),
    )


def downgrade() -> None:
    op.drop_index("ix_events_ip_pending", table_name="events")
    op.drop_table("maintenance_leases")
