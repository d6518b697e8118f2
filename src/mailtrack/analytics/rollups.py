"""Rollup counting: a batch tallies its changes in memory, then adds them with one upsert per table."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import Connection, Executable, Table, func
from sqlalchemy.dialects import postgresql, sqlite

from mailtrack.analytics.tables import (
    DAILY,
    customer_open_hours,
    link_totals,
    rollup_links,
    rollup_messages,
    rollup_open_delays,
    rollup_opens,
)

# Opens later than this after sending are all counted in the last delay bucket.
MAX_DELAY_HOURS = 24 * 14


class CohortKey(NamedTuple):
    """Which cohort a message counts in."""

    tenant_id: int
    hour: dt.datetime
    channel: str
    source: str
    campaign_id: int


class Tally:
    """Counter increments for every rollup table, accumulated over one batch."""

    def __init__(self) -> None:
        self.messages: dict[CohortKey, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.links: dict[tuple[CohortKey, str], list[int]] = defaultdict(lambda: [0, 0])
        self.opens: dict[tuple[CohortKey, str, str], int] = defaultdict(int)
        self.delays: dict[tuple[int, dt.datetime, int], int] = defaultdict(int)
        self.open_hours: dict[tuple[int, int, int], int] = defaultdict(int)

    def count(self, key: CohortKey, counter: str, amount: int = 1) -> None:
        """Add to one of the per-cohort message counters."""
        self.messages[key][counter] += amount

    def link(self, key: CohortKey, url: str, *, unique: bool) -> None:
        """Count a human click on a link (unique: the message's first click on it)."""
        slot = self.links[(key, url)]
        slot[0] += 1
        slot[1] += int(unique)

    def open(self, key: CohortKey, device: str, client: str, delay: dt.timedelta) -> None:
        """Count a message's first human open, by device and client and by hours since sending."""
        self.opens[(key, device, client)] += 1
        hours = max(0, min(MAX_DELAY_HOURS, int(delay.total_seconds() // 3600)))
        self.delays[(key.tenant_id, key.hour, hours)] += 1

    def open_hour(self, tenant_id: int, customer_id: int, local: dt.datetime) -> None:
        """Count a customer's first human open of a message by local hour of the week."""
        self.open_hours[(tenant_id, customer_id, local.weekday() * 24 + local.hour)] += 1

    def write(self, conn: Connection) -> None:
        """Add every tally to its rollup table (sorted keys: concurrent batches lock rows in one order)."""
        _upsert_hourly_and_daily(
            conn,
            rollup_messages,
            [{**key._asdict(), **counters} for key, counters in sorted(self.messages.items())],
        )
        clicked = [
            {**key._asdict(), "url": url, "clicks": clicks, "unique_clicks": unique}
            for (key, url), (clicks, unique) in sorted(self.links.items())
        ]
        _upsert_hourly_and_daily(conn, rollup_links, clicked)
        _add_link_totals(conn, clicked)
        _upsert_hourly_and_daily(
            conn,
            rollup_opens,
            [
                {**key._asdict(), "device": device, "client": client, "opened": opened}
                for (key, device, client), opened in sorted(self.opens.items())
            ],
        )
        _upsert(
            conn,
            rollup_open_delays,
            [
                {"tenant_id": tenant_id, "hour": hour, "delay_hours": delay, "opened": opened}
                for (tenant_id, hour, delay), opened in sorted(self.delays.items())
            ],
        )
        _upsert(
            conn,
            customer_open_hours,
            [
                {"tenant_id": tenant_id, "customer_id": customer_id, "weekday_hour": slot, "opens": opens}
                for (tenant_id, customer_id, slot), opens in sorted(self.open_hours.items())
            ],
        )


def utc_day(moment: dt.datetime) -> dt.datetime:
    """The UTC midnight starting the day of an aware moment: the key of daily rollups."""
    return moment.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _upsert_hourly_and_daily(conn: Connection, hourly: Table, rows: list[dict[str, Any]]) -> None:
    _upsert(conn, hourly, rows)
    daily = DAILY[hourly]
    keys = tuple(column.name for column in daily.primary_key.columns)
    by_day: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:  # every counter is set: _upsert filled the missing ones with zero
        day_row = {name: value for name, value in row.items() if name != "hour"}
        day_row["day"] = utc_day(row["hour"])
        key = tuple(day_row[name] for name in keys)
        merged = by_day.get(key)
        if merged is None:
            by_day[key] = day_row
        else:
            for name, value in day_row.items():
                if name not in keys:
                    merged[name] += value
    _upsert(conn, daily, [by_day[key] for key in sorted(by_day)])


def _add_link_totals(conn: Connection, clicked: list[dict[str, Any]]) -> None:
    totals: dict[tuple[int, str], list[Any]] = {}
    for row in clicked:
        key, day = (row["tenant_id"], row["url"]), utc_day(row["hour"])
        found = totals.setdefault(key, [0, day])
        found[0] += row["clicks"]
        found[1] = max(found[1], day)
    if totals:
        conn.execute(
            _link_totals_statement(conn.dialect.name),
            [
                {"tenant_id": tenant_id, "url": url, "clicks": clicks, "last_day": day}
                for (tenant_id, url), (clicks, day) in sorted(totals.items())
            ],
        )


@cache
def _link_totals_statement(dialect: str) -> Executable:
    insert = postgresql.insert(link_totals) if dialect == "postgresql" else sqlite.insert(link_totals)
    latest = func.greatest if dialect == "postgresql" else func.max  # SQLite's two-argument max()
    return insert.on_conflict_do_update(
        index_elements=[link_totals.c.tenant_id, link_totals.c.url],
        set_={
            "clicks": link_totals.c.clicks + insert.excluded.clicks,
            "last_day": latest(link_totals.c.last_day, insert.excluded.last_day),
        },
    )


@cache
def _upsert_statement(table: Table, dialect: str) -> tuple[Executable, tuple[str, ...]]:
    # Built once per table and backend: constructing the expression costs more than running it.
    keys = [column.name for column in table.primary_key.columns]
    counters = tuple(column.name for column in table.columns if column.name not in keys)
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    statement = insert.on_conflict_do_update(
        index_elements=keys,
        set_={name: table.c[name] + insert.excluded[name] for name in counters},
    )
    return statement, counters


def _upsert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    statement, counters = _upsert_statement(table, conn.dialect.name)
    # One statement shape for every row: counters a row does not touch add zero.
    for row in rows:
        for name in counters:
            row.setdefault(name, 0)
    conn.execute(statement, rows)
