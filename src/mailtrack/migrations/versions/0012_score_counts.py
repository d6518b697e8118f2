"""customers counted per day of last mail and score, by triggers

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27

The score buckets read `score_counts` (plus the changes not yet folded in) instead of visiting every
scored customer; triggers on `customers` append each change of a customer's (day of last mail, score)
to `score_count_changes` (analytics/score_counts.py). The counts start from the customers as they are.
The index the buckets were counted from goes: every customer update paid for it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailtrack.db
from mailtrack.analytics import score_counts

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BUCKET_INDEX = "ix_customers_tenant_id_score_last_sent_at"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "score_counts",
        sa.Column("tenant_id", BIG_ID, nullable=False),
        sa.Column("day", mailtrack.db.UTCDateTime(), nullable=False),
        sa.Column("score", sa.SmallInteger(), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_score_counts_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "day", "score", name=op.f("pk_score_counts")),
    )
    op.create_table(
        "score_count_changes",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", BIG_ID, nullable=False),
        sa.Column("day", mailtrack.db.UTCDateTime(), nullable=False),
        sa.Column("score", sa.SmallInteger(), nullable=False),
        sa.Column("change", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_count_changes")),
    )
    op.create_index("ix_score_count_changes_tenant_id_day", "score_count_changes", ["tenant_id", "day"])
    op.execute(score_counts.count_all(dialect))
    if dialect == "postgresql":
        op.execute("ANALYZE score_counts")  # planner statistics for the new counts at once
    for statement in score_counts.create_triggers(dialect):
        op.execute(statement)
    op.drop_index(BUCKET_INDEX, table_name="customers")


def downgrade() -> None:
    op.create_index(BUCKET_INDEX, "customers", ["tenant_id", "score", "last_sent_at"])
    for statement in score_counts.drop_triggers(op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_table("score_count_changes")
    op.drop_table("score_counts")
