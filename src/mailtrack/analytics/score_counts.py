"""Customers per (UTC day of their last mail, score), kept by the database for the bucket counts.

The score buckets count the customers mailed in the last 90 days by score. Counting them from the
customers index visits every scored customer (455k entries, ~55 ms, at 10M events); these counts let
the dashboard read ~100 rows per day instead.

Triggers on `customers` (installed by migration 0012) append a −1 for the row's old (day, score) and a
+1 for its new one to `score_count_changes` whenever either changes, whoever writes the row: ingest,
do-not-track, erasure, deletion, imports. Appending never waits on another transaction, so concurrent
ingest batches cannot deadlock on a hot count row. `fold_score_changes` moves the changes into
`score_counts` (after each ingest batch, under a try-lock on PostgreSQL); readers add both, so the
figures are exact whether or not a fold has run.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, bindparam, delete, text

from mailtrack.analytics.tables import score_counts
from mailtrack.db import UTCDateTime, utc_day_sql

# One key for "a fold is running" (pg_try_advisory_xact_lock): folds never wait for each other.
FOLD_LOCK_KEY = 0x5C0E_C0DE


def _change(dialect: str, row: str, sign: int) -> str:
    return (
        "INSERT INTO score_count_changes (tenant_id, day, score, change) "
        f"SELECT {row}.tenant_id, {utc_day_sql(dialect, f'{row}.last_sent_at')}, {row}.score, {sign} "
        f"WHERE {row}.score IS NOT NULL AND {row}.last_sent_at IS NOT NULL"
    )


def _moved(dialect: str) -> str:
    old, new = utc_day_sql(dialect, "OLD.last_sent_at"), utc_day_sql(dialect, "NEW.last_sent_at")
    differs = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    return f"OLD.score {differs} NEW.score OR {old} {differs} {new}"


def create_triggers(dialect: str) -> list[str]:
    """The statements that install the counting triggers on `customers`."""
    if dialect == "postgresql":
        return [
            "CREATE FUNCTION customers_score_changes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF TG_OP <> 'INSERT' THEN {_change(dialect, 'OLD', -1)}; END IF; "
            f"IF TG_OP <> 'DELETE' THEN {_change(dialect, 'NEW', 1)}; END IF; "
            "RETURN NULL; END $$",
            "CREATE TRIGGER customers_score_insert_delete AFTER INSERT OR DELETE ON customers "
            "FOR EACH ROW EXECUTE FUNCTION customers_score_changes()",
            "CREATE TRIGGER customers_score_update AFTER UPDATE ON customers "
            f"FOR EACH ROW WHEN ({_moved(dialect)}) EXECUTE FUNCTION customers_score_changes()",
        ]
    return [
        "CREATE TRIGGER customers_score_insert AFTER INSERT ON customers "
        f"BEGIN {_change(dialect, 'NEW', 1)}; END",
        "CREATE TRIGGER customers_score_delete AFTER DELETE ON customers "
        f"BEGIN {_change(dialect, 'OLD', -1)}; END",
        f"CREATE TRIGGER customers_score_update AFTER UPDATE ON customers WHEN {_moved(dialect)} "
        f"BEGIN {_change(dialect, 'OLD', -1)}; {_change(dialect, 'NEW', 1)}; END",
    ]


def drop_triggers(dialect: str) -> list[str]:
    """The statements that remove them."""
    if dialect == "postgresql":
        return [
            "DROP TRIGGER customers_score_update ON customers",
            "DROP TRIGGER customers_score_insert_delete ON customers",
            "DROP FUNCTION customers_score_changes()",
        ]
    return [f"DROP TRIGGER customers_score_{name}" for name in ("insert", "delete", "update")]


def count_all(dialect: str) -> str:
    """Counts recomputed from `customers` (what the triggers keep up to date from then on)."""
    return (
        "INSERT INTO score_counts (tenant_id, day, score, customers) "  # noqa: S608  (constant names)
        f"SELECT tenant_id, {utc_day_sql(dialect, 'last_sent_at')}, score, count(*) FROM customers "
        f"WHERE score IS NOT NULL AND last_sent_at IS NOT NULL "
        f"GROUP BY tenant_id, {utc_day_sql(dialect, 'last_sent_at')}, score"
    )


_FOLD_POSTGRESQL = text(
    "WITH moved AS (DELETE FROM score_count_changes RETURNING tenant_id, day, score, change) "
    "INSERT INTO score_counts (tenant_id, day, score, customers) "
    "SELECT moved.tenant_id, day, score, sum(change) FROM moved JOIN tenants ON tenants.id = moved.tenant_id "
    "GROUP BY moved.tenant_id, day, score ORDER BY moved.tenant_id, day, score "
    "ON CONFLICT (tenant_id, day, score) "
    "DO UPDATE SET customers = score_counts.customers + excluded.customers"
)
# SQLite has one writer at a time: the two statements see the same rows. (WHERE true: the parser
# otherwise reads ON CONFLICT as a join constraint.)
_FOLD_SQLITE = (
    text(
        "INSERT INTO score_counts (tenant_id, day, score, customers) "
        "SELECT changes.tenant_id, day, score, sum(change) FROM score_count_changes AS changes "
        "JOIN tenants ON tenants.id = changes.tenant_id WHERE true GROUP BY changes.tenant_id, day, score "
        "ON CONFLICT (tenant_id, day, score) DO UPDATE SET customers = customers + excluded.customers"
    ),
    text("DELETE FROM score_count_changes"),
)


def fold_score_changes(conn: Connection) -> bool:
    """Move the pending changes into `score_counts` in the caller's write transaction (False: a fold
    was already running elsewhere, and the changes wait for the next one)."""
    if conn.dialect.name == "postgresql":
        if not conn.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": FOLD_LOCK_KEY}).scalar():
            return False
        conn.execute(_FOLD_POSTGRESQL)
    else:
        for statement in _FOLD_SQLITE:
            conn.execute(statement)
    return True


_COUNTS = text(
    "SELECT score, sum(customers) AS customers FROM ("
    "SELECT score, customers FROM score_counts WHERE tenant_id = :tenant AND day >= :first_day "
    "UNION ALL "
    "SELECT score, change FROM score_count_changes WHERE tenant_id = :tenant AND day >= :first_day"
    ") AS counted GROUP BY score"
).bindparams(bindparam("first_day", type_=UTCDateTime))
_FIRST_DAY = text(
    "SELECT score, count(*) AS customers FROM customers "
    "WHERE tenant_id = :tenant AND score IS NOT NULL AND last_sent_at >= :since AND last_sent_at < :next "
    "GROUP BY score"
).bindparams(bindparam("since", type_=UTCDateTime), bindparam("next", type_=UTCDateTime))


def customers_by_score(conn: Connection, *, tenant_id: int, since: dt.datetime) -> dict[int, int]:
    """Score → scored customers of the salon last mailed at or after `since`."""
    first_day = since.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    next_day = first_day + dt.timedelta(days=1)
    counts: dict[int, int] = {}
    # The day `since` falls in only partly counts: its customers are counted one by one.
    partial = conn.execute(_FIRST_DAY, {"tenant": tenant_id, "since": since, "next": next_day})
    whole = conn.execute(_COUNTS, {"tenant": tenant_id, "first_day": next_day})
    for rows in (partial, whole):
        for row in rows:
            counts[int(row.score)] = counts.get(int(row.score), 0) + int(row.customers)
    return {score: customers for score, customers in counts.items() if customers}


def delete_stale_counts(conn: Connection, *, tenant_id: int, before: dt.datetime) -> int:
    """Delete the salon's counts of days before `before`, which no read of the window reaches again."""
    # A customer counted there who is mailed again later adds a −1 to a day no one reads: harmless.
    table = score_counts.c
    return conn.execute(delete(score_counts).where(table.tenant_id == tenant_id, table.day < before)).rowcount
