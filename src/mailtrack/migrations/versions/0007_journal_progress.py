"""journal progress

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailtrack.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journal_progress",
        sa.Column("journal", sa.String(length=200), nullable=False),
        sa.Column("segment", sa.Integer(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", mailtrack.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("journal", name=op.f("pk_journal_progress")),
    )


def downgrade() -> None:
    op.drop_table("journal_progress")
