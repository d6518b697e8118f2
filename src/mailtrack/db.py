"""Database wiring: one SQLAlchemy engine for SQLite or PostgreSQL, shared types and metadata."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Table,
    create_engine,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# Constraint names are explicit so that Alembic migrations are identical on both backends.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING_CONVENTION)

# 64-bit ids on PostgreSQL; SQLite only aliases rowid (fast inserts) for a column typed exactly INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    """Now, in UTC, to the second (the precision events are stored with)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as naive UTC on every backend and returned timezone-aware."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass a timezone-aware value")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite rows written by raw SQL (benchmarks, operators)
            value = dt.datetime.fromisoformat(value)
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


def _sqlite_on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # WAL lets readers (dashboard) run while the ingest writer commits; NORMAL sync is durable in WAL
    # against process crashes (kill -9), which is the promise we make for acknowledged hits.
    dbapi_connection.isolation_level = None  # SQLAlchemy issues BEGIN itself (see _sqlite_begin)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front, so two writers queue on busy_timeout instead of one
    # failing with "database is locked" when it upgrades a read transaction.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")


def make_engine(database_url: str, *, echo: bool = False) -> Engine:
    """An engine for the URL, with the pragmas and pool settings each backend needs."""
    if database_url.startswith("sqlite"):
        engine = create_engine(
            database_url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(database_url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that commits on success; on SQLite it holds the write lock."""
    with engine.connect() as conn:
        conn.info["write"] = True
        try:
            with conn.begin():
                yield conn
        finally:
            conn.info.pop("write", None)


def _copy_value(value: object) -> object:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _sqlite_datetime(value: dt.datetime | None) -> str | None:
    # The exact text SQLAlchemy's SQLite DateTime stores, so raw and SQLAlchemy-written rows compare alike.
    if value is None:
        return None
    utc = value.astimezone(dt.UTC) if value.tzinfo is not None else value
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d} "
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}"
    )


def bulk_insert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert many rows at once: COPY on PostgreSQL, one executemany elsewhere.

    Every row must have the same keys. Values bypass SQLAlchemy's type processing under COPY, so only
    plain values (numbers, text, booleans, timezone-aware datetimes) belong here.
    """
    if not rows:
        return
    columns = list(rows[0])
    if conn.dialect.name == "sqlite":
        # One driver-level executemany: SQLAlchemy's per-value type processing costs more than SQLite.
        names, marks = ", ".join(columns), ", ".join("?" * len(columns))
        statement = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"  # noqa: S608  (our own names)
        stamps = [name for name in columns if isinstance(table.c[name].type, UTCDateTime)]
        values = []
        for row in rows:
            converted = dict(row)
            for name in stamps:
                converted[name] = _sqlite_datetime(row[name])
            values.append(tuple(converted[name] for name in columns))
        conn.exec_driver_sql(statement, values)
        return
    if conn.dialect.name != "postgresql":
        conn.execute(table.insert(), list(rows))
        return
    driver = conn.connection.driver_connection
    assert driver is not None
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([_copy_value(row[column]) for column in columns])


BULK_TABLES = "customers, messages, links, events"


def refresh_statistics_as_tables_grow(engine: Engine, batch_number: int) -> None:
    """After bulk batch 1, 2, 4, 8 … on PostgreSQL, ANALYZE the tables bulk loads fill.

    Tables grown from nothing mislead the planner until analyzed (it scanned whole tables for lookups
    that have an index), and autovacuum may be off or late; refreshing as they double costs little.
    """
    if engine.dialect.name == "postgresql" and batch_number > 0 and batch_number & (batch_number - 1) == 0:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {BULK_TABLES}")
