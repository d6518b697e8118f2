"""The stats call on a 10-million-event salon, next to a raw scan of its events in SQL and in DuckDB.

    .venv/bin/python -m bench.dashboard [--events 10000000] [--backend sqlite|postgresql|both] [--rebuild]

For each backend: build (or reuse) a salon of about `--events` events over three months through the
real seeder, so ingest keeps its rollups; then, in the same run, time
  - the full stats call as `GET /api/v1/stats` computes it: `analytics.routes.get_stats` called
    in-process with its JSON serialization, and the same request over HTTP to `mailtrack serve`;
  - a raw scan: the same figures computed by plain SQL over `events` (bench/dashboard_scan.py) on the
    same database, and by the same SQL in DuckDB over a copy of the same rows (loaded untimed);
and check that all of them give identical figures (exit status 1 and the differences if not).

Compared: cards, previous cards and change, counts, engagement buckets, top engaged, top links, devices,
clients and recent events. Not recomputed: `best_send_time`, a model fitted from the rollups rather than
a figure a scan could count (the first call fits it, as `serve` does at startup; later calls reuse it
for five minutes, as in production), and `period`/`previous_period`, which echo the request. The
in-process calls and the scans run with the clock at the end of the history (time-machine), so the
90-day score window is the same for all; the HTTP server runs on today's clock, so only the period
figures are compared with it.

Building 10M events takes 10–25 minutes per backend, so the salon is cached between runs (SQLite:
bench/.cache/, PostgreSQL: database mailtrack_bench_dashboard_<events>), keyed by the parameters and
the generator's source; `--rebuild` forces a new one.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import hashlib
import math
import statistics
import sys
import tempfile
import time
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg
import time_machine
from sqlalchemy import Column, Engine, Float, Integer, MetaData, Table, Text, bindparam, delete, select, text

from bench import dashboard_scan as scan
from bench.common import (
    PG_ADMIN,
    ROOT,
    free_port,
    mailtrack_serve,
    postgres_available,
    server,
)
from mailtrack.analytics import queries, routes, sendtime
from mailtrack.analytics.metrics import Period
from mailtrack.db import UTCDateTime, make_engine, write_transaction
from mailtrack.demo import generator, population
from mailtrack.migrations import upgrade
from mailtrack.tenants.queries import create_api_key, create_tenant, hash_api_key
from mailtrack.tenants.tables import api_keys
from mailtrack.tracking import ingest

# A fixed end (local midnight, 1 November, in Budapest) makes the same seed give the same salon.
END = dt.datetime(2026, 10, 31, 23, 0, tzinfo=dt.UTC)
MONTHS, SEED, TIMEZONE = 3, 5, "Europe/Budapest"
EVENTS_PER_CUSTOMER = 21.53  # measured for these three months (5,000 and 20,000 customers alike)
CACHE = ROOT / "bench" / ".cache"
CACHE_VERSION = 1  # bump when the way the salon is built changes
TIMES = ("start", "end", "window_start")  # the scan parameters that are timestamps

marker_meta = MetaData()
marker = Table(  # in the cached database itself: present only once a build completed
    "bench_dashboard_marker",
    marker_meta,
    Column("key", Text),
    Column("ingest", Text),
    Column("tenant_id", Integer),
    Column("customers", Integer),
    Column("messages", Integer),
    Column("events", Integer),
    Column("seconds", Float),
    Column("built_at", Text),
)


def _source_hash(*modules: Any) -> str:
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class Salon:
    """A built salon: where it is and what building it took."""

    url: str
    tenant_id: int
    customers: int
    messages: int
    events: int
    seconds: float
    built_at: str
    reused: bool


def _url(backend: str, events: int) -> str:
    if backend == "sqlite":
        return f"sqlite:///{CACHE}/dashboard-{events}.db"
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/mailtrack_bench_dashboard_{events}"


def _cached(url: str, key: str) -> Salon | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(marker)).first()
    except Exception:  # noqa: BLE001  (no database or no marker: an unfinished or absent build)
        return None
    finally:
        engine.dispose()
    if row is None or row.key != key:
        return None
    if row.ingest != _source_hash(ingest):
        print("  note: tracking/ingest.py changed since this salon was built; --rebuild if figures differ")
    return Salon(url, row.tenant_id, row.customers, row.messages, row.events, row.seconds, row.built_at, True)


def _reset(backend: str, url: str) -> None:
    if backend == "sqlite":
        CACHE.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
        return
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type,unused-ignore]
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type,unused-ignore]


def _progress(label: str, target: int) -> Callable[[int, int], None]:
    began, shown = time.monotonic(), [0.0]

    def report(done: int, _expected: int) -> None:
        now = time.monotonic()
        if now - shown[0] < 30 and done < target:
            return
        shown[0], rate = now, done / max(now - began, 1e-9)
        left = max(0, target - done) / rate if rate else 0.0
        print(
            f"  {label}: {done:,} events ({done / target:.0%}), {rate:,.0f}/s, ~{left / 60:.0f} min left",
            flush=True,
        )

    return report


def ensure_salon(backend: str, events: int, *, rebuild: bool) -> Salon:
    """The cached salon for these parameters, built first when missing, stale or `rebuild`."""
    customers = max(1, round(events / EVENTS_PER_CUSTOMER))
    key = (
        f"v{CACHE_VERSION} customers={customers} months={MONTHS} seed={SEED} end={END:%Y-%m-%dT%H:%MZ} "
        f"tz={TIMEZONE} generator={_source_hash(generator, population)}"
    )
    url = _url(backend, events)
    found = None if rebuild else _cached(url, key)
    if found is not None:
        return found
    print(f"  building the salon: {customers:,} customers × {MONTHS} months through ingest_batch", flush=True)
    _reset(backend, url)
    engine = make_engine(url)
    upgrade(engine)
    with write_transaction(engine) as conn:
        tenant = create_tenant(conn, name="Bench salon", timezone=TIMEZONE)
    report = generator.seed_history(
        engine,
        tenant_id=tenant.id,
        months=MONTHS,
        customers=customers,
        seed=SEED,
        end=END,
        progress=_progress(backend, events),
    )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if backend == "postgresql":  # what autovacuum does to tables this size soon after they are loaded
            conn.exec_driver_sql("VACUUM ANALYZE")
        else:  # fold the WAL into the database, as a long-running server's checkpoints would have
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    built_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    marker_meta.create_all(engine)
    with write_transaction(engine) as conn:
        conn.execute(delete(marker))
        conn.execute(
            marker.insert().values(
                key=key,
                ingest=_source_hash(ingest),
                tenant_id=tenant.id,
                customers=customers,
                messages=report.messages,
                events=report.events,
                seconds=report.seconds,
                built_at=built_at,
            )
        )
    engine.dispose()
    gc.collect()  # the seeder's garbage would otherwise be collected during the timed calls
    return Salon(url, tenant.id, customers, report.messages, report.events, report.seconds, built_at, False)


def history_period() -> Period:
    """Every local day of the seeded history: the stats period."""
    zone = zoneinfo.ZoneInfo(TIMEZONE)
    start = END.replace(month=END.month - MONTHS)  # where seed_history starts (END is in October)
    return Period(start.astimezone(zone).date(), (END - dt.timedelta(seconds=1)).astimezone(zone).date())


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000


def time_stats(
    engine: Engine, tenant_id: int, period: Period, repeats: int
) -> tuple[float, list[float], Any]:
    """(first call, timed calls, figures) of get_stats + JSON, with the clock at END."""
    first, last = period.first.isoformat(), period.last.isoformat()
    # The clock reads END, so "now" (score window, send-time censoring) is the same for every method.
    with time_machine.travel(END, tick=False):
        sendtime.clear_cache()  # the first call fits the send-time model, as `serve` does at startup
        began = time.perf_counter()
        stats = routes.get_stats(tenant_id, engine, first=first, last=last)
        stats.model_dump_json(by_alias=True)
        cold = _ms(began)
        samples = []
        for _ in range(repeats):
            began = time.perf_counter()
            routes.get_stats(tenant_id, engine, first=first, last=last).model_dump_json(by_alias=True)
            samples.append(_ms(began))
    return cold, samples, scan.api_figures(stats.model_dump(by_alias=True))


def breakdown(engine: Engine, tenant_id: int, period: Period, repeats: int = 5) -> dict[str, float]:
    """Median ms of each read get_stats makes, to show where its time goes (clock at END)."""
    (start, end), before = period.utc_bounds(TIMEZONE), period.previous().utc_bounds(TIMEZONE)
    cohort, earlier = queries.CohortFilter(tenant_id, start, end), queries.CohortFilter(tenant_id, *before)
    reads: dict[str, Callable[[Any], object]] = {
        "cards (2 periods)": lambda c: [queries.message_totals(c, cohort=x) for x in (cohort, earlier)],
        "devices+clients": lambda c: queries.first_open_breakdown(c, cohort=cohort),
        "top links": lambda c: queries.top_links(c, cohort=cohort),
        "score buckets": lambda c: queries.score_bucket_counts(c, tenant_id=tenant_id, now=END),
        "top engaged": lambda c: queries.top_engaged(c, tenant_id=tenant_id, now=END),
        "recent events": lambda c: queries.list_events(c, tenant_id=tenant_id, limit=10),
        "send time (cached)": lambda c: sendtime.best_send_time(c, tenant_id=tenant_id, timezone=TIMEZONE),
    }
    medians = {}
    with time_machine.travel(END, tick=False), engine.connect() as conn:
        for name, read in reads.items():
            samples = []
            for _ in range(repeats):
                began = time.perf_counter()
                read(conn)
                samples.append(_ms(began))
            medians[name] = statistics.median(samples)
    return medians


def time_http(salon: Salon, period: Period, repeats: int) -> tuple[list[float], Any]:
    """Timed `GET /api/v1/stats` against `mailtrack serve` on the salon (its clock is the real one)."""
    engine = make_engine(salon.url)
    with write_transaction(engine) as conn:
        api_key = create_api_key(conn, tenant_id=salon.tenant_id)
    port = free_port()
    command, env = mailtrack_serve(salon.url, port)
    # Retention would delete the salon's events older than 90 days before today: no maintenance here.
    env["MAILTRACK_MAINTENANCE_ENABLED"] = "false"
    params = {"from": period.first.isoformat(), "to": period.last.isoformat()}
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        with (
            server(command, env=env, port=port),
            httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=300) as client,
        ):
            body = client.get("/api/v1/stats", params=params)  # waits for the startup fit if still running
            body.raise_for_status()
            samples = []
            for _ in range(repeats):
                began = time.perf_counter()
                client.get("/api/v1/stats", params=params).raise_for_status()
                samples.append(_ms(began))
    finally:
        with write_transaction(engine) as conn:
            conn.execute(delete(api_keys).where(api_keys.c.key_hash == hash_api_key(api_key)))
        engine.dispose()
    return samples, scan.api_figures(body.json())


def sql_runner(engine: Engine) -> scan.Run:
    """Run scan SQL on the database itself, timestamps bound as the app stores them."""

    def run(sql: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        typed = [bindparam(name, type_=UTCDateTime) for name in TIMES if f":{name}" in sql]
        with engine.connect() as conn:
            return conn.execute(text(sql).bindparams(*typed), params).all()

    return run


_COPIES = {  # DuckDB table → (column, DuckDB type, select expression on the source database)
    "events": [
        ("id", "BIGINT", "id"),
        ("tenant_id", "BIGINT", "tenant_id"),
        ("message_id", "BIGINT", "message_id"),
        ("customer_id", "BIGINT", "customer_id"),
        ("type", "VARCHAR", "type"),
        ("occurred_at", "TIMESTAMP", "occurred_at"),
        ("device", "VARCHAR", "device"),
        ("client", "VARCHAR", "client"),
        ("machine", "BOOLEAN", "CASE WHEN machine THEN 1 ELSE 0 END"),
        ("link_position", "SMALLINT", "link_position"),
        ("bounce_kind", "VARCHAR", "bounce_kind"),
    ],
    "messages": [
        ("id", "BIGINT", "id"),
        ("tenant_id", "BIGINT", "tenant_id"),
        ("external_id", "VARCHAR", "external_id"),
        ("customer_id", "BIGINT", "customer_id"),
        ("tracked", "BOOLEAN", "CASE WHEN tracked THEN 1 ELSE 0 END"),
        ("cohort_at", "TIMESTAMP", "cohort_at"),
    ],
    "links": [
        ("tenant_id", "BIGINT", "tenant_id"),
        ("message_id", "BIGINT", "message_id"),
        ("position", "SMALLINT", "position"),
        ("url", "VARCHAR", "url"),
    ],
    "customers": [
        ("id", "BIGINT", "id"),
        ("tenant_id", "BIGINT", "tenant_id"),
        ("external_id", "VARCHAR", "external_id"),
        ("name", "VARCHAR", "name"),
        ("do_not_track", "BOOLEAN", "CASE WHEN do_not_track THEN 1 ELSE 0 END"),
    ],
}


def load_duckdb(engine: Engine, folder: Path) -> tuple[duckdb.DuckDBPyConnection, float]:
    """An in-memory DuckDB holding the scanned columns of the same rows (via CSV: no extensions here)."""
    began = time.perf_counter()
    duck = duckdb.connect()
    for table, columns in _COPIES.items():
        path = folder / f"{table}.csv"
        query = f"SELECT {', '.join(expr for _, _, expr in columns)} FROM {table}"
        with engine.connect() as conn, path.open("w", newline="") as out:
            csv.writer(out).writerows(conn.execution_options(yield_per=100_000).exec_driver_sql(query))
        types = ", ".join(f"'{name}': '{kind}'" for name, kind, _ in columns)
        duck.execute(
            f"CREATE TABLE {table} AS SELECT * FROM read_csv('{path}', header=false, columns={{{types}}})"
        )
        path.unlink()
    return duck, time.perf_counter() - began


def duckdb_runner(duck: duckdb.DuckDBPyConnection) -> scan.Run:
    """Run scan SQL in DuckDB; timestamps as naive UTC, as loaded."""

    def run(sql: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        plain = {
            k: v.astimezone(dt.UTC).replace(tzinfo=None) if isinstance(v, dt.datetime) else v
            for k, v in params.items()
        }
        rows: list[tuple[Any, ...]] = duck.execute(scan.duckdb_sql(sql), plain).fetchall()
        return rows

    return run


def time_scan(
    run: scan.Run, dialect: str, tenant_id: int, period: Period, repeats: int
) -> tuple[list[float], Any]:
    """Timed scans computing every figure; the first one's figures."""
    args: dict[str, Any] = {
        "dialect": dialect,
        "tenant_id": tenant_id,
        "period": period.utc_bounds(TIMEZONE),
        "previous": period.previous().utc_bounds(TIMEZONE),
        "now": END,
    }
    samples, figures = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = scan.scan_figures(run, **args)
        samples.append(_ms(began))
        figures = figures or result
    return samples, figures


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (with 3 samples, p95 is the slowest)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# Only the period figures can be compared over HTTP: the server's clock is today, not END.
PERIOD_KEYS = ("cards", "previous", "change", "counts", "top_links", "devices", "clients", "recent_events")


def run(backend: str, args: argparse.Namespace) -> bool:
    """Measure one backend, print its table; False when the figures differ."""
    salon = ensure_salon(backend, args.events, rebuild=args.rebuild)
    how = "reused the cached salon built" if salon.reused else "built"
    print(
        f"\n{backend}: {salon.events:,} events, {salon.messages:,} messages, {salon.customers:,} customers; "
        f"{how} {salon.built_at} in {salon.seconds:,.0f} s ({salon.events / salon.seconds:,.0f} events/s)",
        flush=True,
    )
    engine = make_engine(salon.url)
    upgrade(engine)  # a cached salon follows the schema to its head
    period = history_period()
    cold, stats_ms, api = time_stats(engine, salon.tenant_id, period, args.repeats)
    parts = breakdown(engine, salon.tenant_id, period)
    http_ms, over_http = time_http(salon, period, args.repeats)
    sql_ms, by_sql = time_scan(sql_runner(engine), backend, salon.tenant_id, period, args.scan_repeats)
    with tempfile.TemporaryDirectory(prefix="mailtrack-bench-") as folder:
        duck, load_seconds = load_duckdb(engine, Path(folder))
    duck_ms, by_duck = time_scan(duckdb_runner(duck), "duckdb", salon.tenant_id, period, args.duckdb_repeats)
    duck.close()
    engine.dispose()

    base50, base95 = percentile(stats_ms, 0.5), percentile(stats_ms, 0.95)
    print(f"{'what':<46}{'runs':>5}{'p50 ms':>11}{'p95 ms':>11}{'× stats p50':>13}{'× stats p95':>13}")
    rows = [
        ("stats: get_stats() + JSON, in-process", stats_ms),
        ("stats: GET /api/v1/stats via mailtrack serve", http_ms),
        (f"raw scan: plain SQL on the same {backend}", sql_ms),
        ("raw scan: DuckDB over the same rows", duck_ms),
    ]
    for label, samples in rows:
        p50, p95 = percentile(samples, 0.5), percentile(samples, 0.95)
        ratios = f"{p50 / base50:>12,.1f}×{p95 / base95:>12,.1f}×"
        print(f"{label:<46}{len(samples):>5}{p50:>11,.1f}{p95:>11,.1f}{ratios}")
    print(f"first stats call (fits the send-time model, which `serve` does at startup): {cold:,.0f} ms")
    print(f"DuckDB copy of the rows (untimed): {load_seconds:,.0f} s")
    print("the stats call's reads (median ms): " + ", ".join(f"{k} {v:,.1f}" for k, v in parts.items()))
    duck50, duck95 = percentile(duck_ms, 0.5), percentile(duck_ms, 0.95)
    print(
        f"goal: p95 < 100 ms: {'met' if base95 < 100 else 'NOT met'} ({base95:,.1f} ms); "
        f"≥ 10× faster than DuckDB: {'met' if min(duck50 / base50, duck95 / base95) >= 10 else 'NOT met'}"
    )
    problems = [f"stats vs SQL scan: {d}" for d in scan.differences(api, by_sql)]
    problems += [f"stats vs DuckDB: {d}" for d in scan.differences(api, by_duck)]
    problems += [f"in-process vs HTTP: {d}" for d in scan.differences(api, over_http, keys=PERIOD_KEYS)]
    if problems:
        print("figures DIFFER:\n  " + "\n  ".join(problems))
        return False
    cards = api["cards"]
    print(
        f"figures identical (stats = SQL scan = DuckDB; HTTP = in-process for the period figures): "
        f"sent {cards['sent']:,}, open rate {cards['open_rate']:.4f}, click rate {cards['click_rate']:.4f}, "
        f"{sum(b['customers'] for b in api['engagement_buckets']):,} scored customers"
    )
    return True


def main() -> int:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="about this many events")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=20, help="timed stats calls (in-process and HTTP)")
    parser.add_argument("--scan-repeats", type=int, default=3, help="timed SQL scans")
    parser.add_argument("--duckdb-repeats", type=int, default=10, help="timed DuckDB scans")
    parser.add_argument("--rebuild", action="store_true", help="build the salon even when cached")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    if "postgresql" in backends and not postgres_available():
        print("PostgreSQL is not reachable: measuring SQLite only", file=sys.stderr)
        backends.remove("postgresql")
    period, local_end = history_period(), END.astimezone(zoneinfo.ZoneInfo(TIMEZONE))
    print(f"python -m bench.dashboard {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"salon: ~{args.events:,} events, {MONTHS} months of history ending {local_end:%Y-%m-%d %H:%M} "
        f"{TIMEZONE} (seed {SEED}); stats period {period.first}…{period.last} "
        f"({period.days} days), all sources"
    )
    print(
        "times in ms (nearest-rank percentiles); × stats = the row's p50 (p95) ÷ the stats call's p50 (p95), "
        "same run; the stats call reads rollups, the scans read raw events"
    )
    identical = [run(backend, args) for backend in backends]
    return 0 if all(identical) else 1


if __name__ == "__main__":
    sys.exit(main())
