"""Bulk ingest speed: the seeder and `import`, next to a plain executemany of the same rows.

    .venv/bin/python -m bench.ingest [--customers 10000] [--months 6] [--backend sqlite|postgresql|both]

For each backend: seed a salon (about 1M events with the defaults) and time it; export its events as
JSON Lines and time importing them into a fresh database; then, in that same database, time a plain
driver-level executemany of the very same event rows into a table shaped and indexed like `events`
(the reference: what merely storing the rows costs, with no classification or aggregates).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Engine, Index, MetaData, Table, select

from bench.common import postgres_available, scratch_database
from mailtrack.db import make_engine, write_transaction
from mailtrack.demo.generator import seed_history
from mailtrack.messages.tables import campaigns, customers, links, messages
from mailtrack.migrations import upgrade
from mailtrack.tenants.queries import create_tenant
from mailtrack.tracking.importer import import_lines
from mailtrack.tracking.tables import events


def fresh_salon(url: str) -> tuple[Engine, int]:
    """A migrated database with one salon."""
    engine = make_engine(url)
    upgrade(engine)
    with write_transaction(engine) as conn:
        tenant = create_tenant(conn, name="Bench salon")
    return engine, tenant.id


def export_jsonl(engine: Engine, path: Path) -> int:
    """Write the database's events as import lines (each message's first line carries its customer)."""
    query = (
        select(
            events.c.id,
            events.c.type,
            events.c.occurred_at,
            events.c.user_agent,
            events.c.ip,
            events.c.referer,
            events.c.bounce_kind,
            events.c.status,
            events.c.diagnostic,
            messages.c.external_id.label("message"),
            messages.c.channel,
            messages.c.source,
            campaigns.c.name.label("campaign"),
            customers.c.external_id.label("customer"),
            customers.c.name,
            customers.c.email,
            links.c.url,
        )
        .join(messages, messages.c.id == events.c.message_id)
        .join(customers, customers.c.id == events.c.customer_id)
        .outerjoin(campaigns, campaigns.c.id == messages.c.campaign_id)
        .outerjoin(
            links,
            (links.c.message_id == events.c.message_id) & (links.c.position == events.c.link_position),
        )
        .order_by(events.c.occurred_at, events.c.id)
    )
    seen: set[str] = set()
    count = 0
    with engine.connect() as conn, path.open("w") as out:
        for row in conn.execution_options(yield_per=20_000).execute(query):
            line: dict[str, Any] = {
                "type": row.type,
                "message_id": row.message,
                "event_id": f"e{row.id}",
                "occurred_at": row.occurred_at.isoformat().replace("+00:00", "Z"),
            }
            if row.message not in seen:
                seen.add(row.message)
                line.update(
                    customer={"id": row.customer, "name": row.name, "email": row.email},
                    channel=row.channel,
                    source=row.source,
                    campaign=row.campaign,
                )
            for key in ("user_agent", "ip", "referer", "status", "diagnostic", "url"):
                if getattr(row, key) is not None:
                    line[key] = getattr(row, key)
            if row.bounce_kind is not None:
                line["bounce"] = row.bounce_kind
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            count += 1
    return count


def reference_executemany(engine: Engine) -> tuple[int, float]:
    """Time a plain executemany of the stored event rows into an identically indexed copy table."""
    copy_meta = MetaData()
    columns = [Column(c.name, c.type, primary_key=c.primary_key) for c in events.columns]
    reference = Table("events_reference", copy_meta, *columns)
    for index in events.indexes:
        Index(f"ref_{index.name}", *(reference.c[c.name] for c in index.columns), unique=index.unique)
    copy_meta.create_all(engine)
    names = [c.name for c in events.columns]
    with engine.connect() as conn:
        rows = [tuple(row) for row in conn.exec_driver_sql(f"SELECT {', '.join(names)} FROM events")]
    marks = ", ".join(["?" if engine.dialect.name == "sqlite" else "%s"] * len(names))
    statement = f"INSERT INTO events_reference ({', '.join(names)}) VALUES ({marks})"
    started = time.perf_counter()
    with engine.begin() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        for start in range(0, len(rows), 20_000):
            cursor.executemany(statement, rows[start : start + 20_000])
    return len(rows), time.perf_counter() - started


def run(backend: str, customers_count: int, months: int) -> None:
    """Measure one backend and print its lines."""
    with scratch_database(backend, "mt_bench_seed") as seed_url:
        engine, tenant_id = fresh_salon(seed_url)
        report = seed_history(engine, tenant_id=tenant_id, months=months, customers=customers_count, seed=7)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "events.jsonl"
            exported = export_jsonl(engine, path)
            engine.dispose()
            with scratch_database(backend, "mt_bench_import") as import_url:
                target, target_tenant = fresh_salon(import_url)
                started = time.perf_counter()
                with path.open("rb") as lines:
                    result = import_lines(target, tenant_id=target_tenant, lines=lines)
                import_seconds = time.perf_counter() - started
                ref_rows, ref_seconds = reference_executemany(target)
                target.dispose()
    seed_rate = report.events / report.seconds
    import_rate = result.imported / import_seconds
    ref_rate = ref_rows / ref_seconds
    print(
        f"{backend:<11}{'seed':<10}{report.events:>10}{report.seconds:>9.1f}{seed_rate:>11.0f}"
        f"{seed_rate / ref_rate:>8.2f}"
    )
    print(
        f"{'':<11}{'import':<10}{result.imported:>10}{import_seconds:>9.1f}{import_rate:>11.0f}"
        f"{import_rate / ref_rate:>8.2f}   rejected {len(result.rejected)} of {exported}"
    )
    print(f"{'':<11}{'reference':<10}{ref_rows:>10}{ref_seconds:>9.1f}{ref_rate:>11.0f}{1:>8.2f}")


def main() -> int:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--months", type=int, default=6)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    if "postgresql" in backends and not postgres_available():
        print("PostgreSQL is not reachable: measuring SQLite only", file=sys.stderr)
        backends.remove("postgresql")
    print("ratio = events/s ÷ reference rows/s (plain executemany of the same rows, same database, same run)")
    print(f"{'backend':<11}{'what':<10}{'events':>10}{'seconds':>9}{'events/s':>11}{'ratio':>8}")
    for backend in backends:
        run(backend, args.customers, args.months)
    return 0


if __name__ == "__main__":
    sys.exit(main())
