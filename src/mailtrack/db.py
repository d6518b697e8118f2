"""Database wiring: one SQLAlchemy engine for SQLite or PostgreSQL, shared types and metadata."""

from __future__ import annotations

import datetime as dt
import functools
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
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
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement
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


def utc_day_sql(dialect: str, column: str) -> str:
    """SQL for the UTC midnight starting the day of a UTCDateTime column (naive UTC: a timestamp on
    PostgreSQL, 'YYYY-MM-DD HH:MM:SS.ffffff' text on SQLite), for migrations and triggers."""
    if dialect == "postgresql":
        return f"date_trunc('day', {column})"
    return f"substr({column}, 1, 10) || ' 00:00:00.000000'"


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


def bulk_insert_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert many rows at once: COPY on PostgreSQL, one driver-level executemany on SQLite.

    Values go through each column type's bind processor once (UTC conversion, SQLite's text dates)
    rather than through SQLAlchemy's per-row parameter building, which costs more than the insert.
    """
    if not rows:
        return
    dialect, names = conn.dialect, ", ".join(columns)
    processors = [_bulk_processor(table.c[name].type, dialect) for name in columns]
    converted = [(at, processor) for at, processor in enumerate(processors) if processor is not None]
    if converted:  # only the columns that need it: a pass over every value cost twice as much
        rows = [_converted(row, converted) for row in rows]
    if dialect.name == "postgresql":
        driver: Any = conn.connection.driver_connection
        with driver.cursor() as cursor, cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join("?" * len(columns))
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", list(rows))  # noqa: S608  (our names)


def _converted(row: Sequence[Any], converted: list[tuple[int, Any]]) -> tuple[Any, ...]:
    values = list(row)
    for at, processor in converted:
        values[at] = processor(values[at])
    return tuple(values)  # SQLAlchemy's executemany takes tuples or dicts only


# Remembered: the events of a batch share a few distinct seconds, and formatting one costs 1 µs.
@functools.lru_cache(maxsize=4096)
def _sqlite_utc_text(value: dt.datetime | None) -> str | None:
    # What UTCDateTime and then SQLite's DATETIME processor make of a value, in one step (2× faster).
    # Equal aware datetimes are the same instant, so they share one text whatever their time zone.
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetimes are ambiguous; pass a timezone-aware value")
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _bulk_processor(column_type: Any, dialect: Dialect) -> Any:
    """The bind processor bulk inserts use for a column type (None: pass values as they are)."""
    if dialect.name == "sqlite":
        if isinstance(column_type, UTCDateTime):
            return _sqlite_utc_text
        if isinstance(column_type, Boolean):
            return None  # sqlite3 stores True/False as 1/0 itself
    return column_type.dialect_impl(dialect).bind_processor(dialect)


def bulk_insert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """`bulk_insert_rows` for rows given as dicts with the same keys."""
    if rows:
        columns = list(rows[0])
        bulk_insert_rows(conn, table, columns, [tuple(row[name] for name in columns) for row in rows])


class floor_int(FunctionElement[int]):  # noqa: N801  (SQL function naming)
    """floor(x) as an integer, for x ≥ 0."""

    type = Integer()
    inherit_cache = True


@compiles(floor_int)
def _floor_int_default(element: floor_int, compiler: Any, **kw: Any) -> str:
    return f"CAST(floor({compiler.process(element.clauses, **kw)}) AS INTEGER)"


@compiles(floor_int, "sqlite")
def _floor_int_sqlite(element: floor_int, compiler: Any, **kw: Any) -> str:
    # SQLite's floor() exists only when built with math functions; CAST truncates, which is floor for x ≥ 0.
    return f"CAST({compiler.process(element.clauses, **kw)} AS INTEGER)"


BULK_TABLES = "customers, messages, links, events, event_external_ids"


def refresh_statistics_as_tables_grow(engine: Engine, batch_number: int) -> None:
    """After bulk batch 1, 2, 4, 8 … on PostgreSQL, ANALYZE the tables bulk loads fill.

    Tables grown from nothing mislead the planner until analyzed (it scanned whole tables for lookups
    that have an index), and autovacuum may be off or late; refreshing as they double costs little.
    """
    if engine.dialect.name == "postgresql" and batch_number > 0 and batch_number & (batch_number - 1) == 0:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {BULK_TABLES}")
