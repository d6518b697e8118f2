"""daily rollups and link totals

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27

The stats' rollups (messages, links, opens) kept by UTC day as well as by hour, and each URL's clicks
of all time (`link_totals`), so that a 90-day period reads ~90 rows per key instead of ~2,160 and the
top links are summed for a few candidate URLs (analytics/tables.py). Both are filled from the hourly
rollups already stored, in the migration's transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem

import mailtrack.db
from mailtrack.analytics.tables import MESSAGE_COUNTERS
from mailtrack.db import utc_day_sql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _cohort_day(table: str) -> list[SchemaItem]:
    return [
        sa.Column("tenant_id", BIG_ID, nullable=False),
        sa.Column("day", mailtrack.db.UTCDateTime(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("campaign_id", BIG_ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f(f"fk_{table}_tenant_id_tenants"), ondelete="CASCADE"
        ),
    ]


def _counter(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), server_default="0", nullable=False)


def _fill(daily: str, hourly: str, keys: list[str], counters: list[str]) -> None:
    columns = ", ".join(keys + counters)
    day = utc_day_sql(op.get_bind().dialect.name, "hour")
    grouped = ", ".join(day if key == "day" else key for key in keys)
    sums = ", ".join(f"sum({name})" for name in counters)
    op.execute(
        f"INSERT INTO {daily} ({columns}) SELECT {grouped}, {sums} FROM {hourly} GROUP BY {grouped}"  # noqa: S608  (constant names)
    )


def upgrade() -> None:
    cohort = ["tenant_id", "day", "channel", "source", "campaign_id"]
    op.create_table(
        "rollup_messages_daily",
        *_cohort_day("rollup_messages_daily"),
        *(_counter(name) for name in MESSAGE_COUNTERS),
        sa.PrimaryKeyConstraint(*cohort, name=op.f("pk_rollup_messages_daily")),
    )
    op.create_table(
        "rollup_links_daily",
        *_cohort_day("rollup_links_daily"),
        sa.Column("url", sa.Text(), nullable=False),
        _counter("clicks"),
        _counter("unique_clicks"),
        sa.PrimaryKeyConstraint(
            "tenant_id", "url", "day", "channel", "source", "campaign_id", name=op.f("pk_rollup_links_daily")
        ),
    )
    op.create_index("ix_rollup_links_daily_tenant_id_day", "rollup_links_daily", ["tenant_id", "day"])
    op.create_table(
        "rollup_opens_daily",
        *_cohort_day("rollup_opens_daily"),
        sa.Column("device", sa.String(length=16), nullable=False),
        sa.Column("client", sa.String(length=32), nullable=False),
        _counter("opened"),
        sa.PrimaryKeyConstraint(*cohort, "device", "client", name=op.f("pk_rollup_opens_daily")),
    )
    op.create_table(
        "link_totals",
        sa.Column("tenant_id", BIG_ID, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        _counter("clicks"),
        sa.Column("last_day", mailtrack.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_link_totals_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "url", name=op.f("pk_link_totals")),
    )
    op.create_index(
        "ix_link_totals_tenant_id_clicks_last_day", "link_totals", ["tenant_id", "clicks", "last_day"]
    )
    op.create_index("ix_link_totals_tenant_id_last_day", "link_totals", ["tenant_id", "last_day"])

    _fill("rollup_messages_daily", "rollup_messages", cohort, list(MESSAGE_COUNTERS))
    _fill("rollup_links_daily", "rollup_links", [*cohort, "url"], ["clicks", "unique_clicks"])
    _fill("rollup_opens_daily", "rollup_opens", [*cohort, "device", "client"], ["opened"])
    op.execute(
        "INSERT INTO link_totals (tenant_id, url, clicks, last_day) "
        "SELECT tenant_id, url, sum(clicks), max(day) FROM rollup_links_daily GROUP BY tenant_id, url"
    )
    if op.get_bind().dialect.name == "postgresql":
        # Statistics now, not at autovacuum's leisure: without them the planner read the top links'
        # candidates through (tenant_id, day) and filtered 65k rows (11 ms instead of 1 at 10M events).
        op.execute("ANALYZE rollup_messages_daily, rollup_links_daily, rollup_opens_daily, link_totals")


def downgrade() -> None:
    op.drop_table("link_totals")
    op.drop_table("rollup_opens_daily")
    op.drop_table("rollup_links_daily")
    op.drop_table("rollup_messages_daily")
