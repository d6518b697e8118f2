"""events partitioned by time on PostgreSQL; external ids kept unique in event_external_ids

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27

PostgreSQL only: SQLite keeps one `events` table with its unique external-id index. The rows are
copied in this one transaction while writers of `events` wait (readers go on reading the old table
until the swap at the end); see docs/operations.md for the time it takes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailtrack.db
from mailtrack.maintenance import partitions

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_IP_PENDING = "ip IS NOT NULL AND ip_anonymized = false"  # as in 0005 and maintenance/tables.py
# (name, columns, unique on the plain table, partial-index predicate): the indexes events has today.
_INDEXES = (
    ("ix_events_tenant_id_occurred_at_id", "tenant_id, occurred_at, id", False, None),
    ("ix_events_tenant_id_message_id", "tenant_id, message_id", False, None),
    ("ix_events_tenant_id_customer_id_occurred_at", "tenant_id, customer_id, occurred_at", False, None),
    ("ix_events_tenant_id_external_event_id", "tenant_id, external_event_id", True, None),
    ("ix_events_ip_pending", "tenant_id, occurred_at", False, _IP_PENDING),
)


def _build(new: str, *, partitioned: bool) -> None:
    """Copy `events` into the table `new`, index it under temporary names, then take its place."""
    run = op.get_bind().exec_driver_sql
    run(f"INSERT INTO {new} SELECT * FROM events")  # noqa: S608  (same columns, same order: LIKE)
    key = "tenant_id, id, occurred_at" if partitioned else "id"
    run(f"ALTER TABLE {new} ADD CONSTRAINT pk_events_new PRIMARY KEY ({key})")
    for name, columns, unique, where in _INDEXES:
        # A partitioned table's unique index must hold the partition key: event_external_ids does it.
        kind = "UNIQUE INDEX" if unique and not partitioned else "INDEX"
        run(f"CREATE {kind} {name}_new ON {new} ({columns})" + (f" WHERE {where}" if where else ""))
    run(f"ALTER SEQUENCE events_id_seq OWNED BY {new}.id")  # or dropping the old table drops it
    run("DROP TABLE events")
    run(f"ALTER TABLE {new} RENAME TO events")
    run("ALTER TABLE events RENAME CONSTRAINT pk_events_new TO pk_events")
    for name, *_ in _INDEXES:
        run(f"ALTER INDEX {name}_new RENAME TO {name}")
    run("ANALYZE events")  # autovacuum never analyzes a partitioned parent itself


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    # Writers wait from here; readers keep reading the old table until it is swapped at the end.
    conn.exec_driver_sql("LOCK TABLE events IN EXCLUSIVE MODE")
    conn.exec_driver_sql(
        "CREATE TABLE events_new (LIKE events INCLUDING DEFAULTS) PARTITION BY RANGE (occurred_at)"
    )
    # Partitions for the days that hold rows (and the next ones), laid out as maintenance will; rows
    # already expired for every salon, or far ahead, go to DEFAULT, where retention deletes them.
    now = mailtrack.db.utcnow()
    longest = partitions.longest_retention(conn)
    data_days = conn.exec_driver_sql("SELECT DISTINCT CAST(occurred_at AS date) FROM events").scalars()
    days = partitions.wanted_days(now, data_days, partitions.drop_horizon(now, longest))
    for lower, upper in partitions.missing_ranges([], days, partitions.partition_width(longest)):
        partitions.create_partition(conn, lower, upper, parent="events_new", default=None)
    conn.exec_driver_sql(f"CREATE TABLE {partitions.DEFAULT_PARTITION} PARTITION OF events_new DEFAULT")
    op.create_table(
        "event_external_ids",
        sa.Column("tenant_id", mailtrack.db.BigId, autoincrement=False, nullable=False),
        sa.Column("external_event_id", sa.String(length=200), nullable=False),
        sa.Column("occurred_at", mailtrack.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "external_event_id", name=op.f("pk_event_external_ids")),
    )
    op.create_index(
        op.f("ix_event_external_ids_tenant_id_occurred_at"),
        "event_external_ids",
        ["tenant_id", "occurred_at"],
        unique=False,
    )
    conn.exec_driver_sql(
        "INSERT INTO event_external_ids (tenant_id, external_event_id, occurred_at)"
        " SELECT tenant_id, external_event_id, occurred_at FROM events WHERE external_event_id IS NOT NULL"
    )
    _build("events_new", partitioned=True)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql("LOCK TABLE events IN EXCLUSIVE MODE")
    conn.exec_driver_sql("CREATE TABLE events_new (LIKE events INCLUDING DEFAULTS)")
    _build("events_new", partitioned=False)  # dropping the partitioned table drops its partitions
    op.drop_index(op.f("ix_event_external_ids_tenant_id_occurred_at"), table_name="event_external_ids")
    op.drop_table("event_external_ids")
