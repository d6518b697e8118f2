"""drop the external-id index of events on PostgreSQL

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27

Since 0008, PostgreSQL checks duplicates in `event_external_ids`; the (non-unique) index on
`events (tenant_id, external_event_id)` served no query there, yet every event insert (most with a NULL
external id, which PostgreSQL indexes too) paid for it. SQLite keeps its unique index: it is the
guarantee there.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEX = "ix_events_tenant_id_external_event_id"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(INDEX, table_name="events")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(INDEX, "events", ["tenant_id", "external_event_id"])
