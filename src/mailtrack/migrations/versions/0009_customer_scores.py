"""customer scores kept by the database

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27

The engagement score as generated columns of `customers` (VIRTUAL on SQLite, which cannot add a STORED
column to an existing table; STORED on PostgreSQL, which has no other kind before version 18), with the
two indexes the dashboard reads buckets and top customers from.
"""

from __future__ import annotations

from alembic import op

from mailtrack.messages.tables import score_expressions

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    kind = "STORED" if bind.dialect.name == "postgresql" else "VIRTUAL"
    raw, score = (
        expression.compile(dialect=bind.dialect, compile_kwargs={"literal_binds": True})
        for expression in score_expressions()
    )
    real = "DOUBLE PRECISION" if bind.dialect.name == "postgresql" else "FLOAT"
    op.execute(f"ALTER TABLE customers ADD COLUMN score_raw {real} GENERATED ALWAYS AS ({raw}) {kind}")
    op.execute(f"ALTER TABLE customers ADD COLUMN score SMALLINT GENERATED ALWAYS AS ({score}) {kind}")
    op.create_index(
        "ix_customers_tenant_id_score_last_sent_at", "customers", ["tenant_id", "score", "last_sent_at"]
    )
    op.create_index(
        "ix_customers_tenant_id_score_score_raw_id", "customers", ["tenant_id", "score", "score_raw", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_customers_tenant_id_score_score_raw_id", table_name="customers")
    op.drop_index("ix_customers_tenant_id_score_last_sent_at", table_name="customers")
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("score")
        batch.drop_column("score_raw")
