"""manager session versions (dashboard logout)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailtrack.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "manager_sessions",
        sa.Column("manager_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tenant_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated_at", mailtrack.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["manager_id"],
            ["managers.id"],
            name=op.f("fk_manager_sessions_manager_id_managers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_manager_sessions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("manager_id", name=op.f("pk_manager_sessions")),
    )
    with op.batch_alter_table("manager_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_manager_sessions_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("manager_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_manager_sessions_tenant_id"))
    op.drop_table("manager_sessions")
