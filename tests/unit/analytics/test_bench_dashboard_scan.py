"""bench/dashboard.py's raw scans (SQL and DuckDB) give the stats call's figures on a small seeded salon."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from bench import dashboard, dashboard_scan
from mailtrack.db import write_transaction
from mailtrack.demo.generator import seed_history
from mailtrack.tenants.queries import create_tenant


def test_raw_scans_give_the_stats_figures(engine: Engine, tmp_path: Path) -> None:
    with write_transaction(engine) as conn:
        tenant = create_tenant(conn, name="Bench salon", timezone=dashboard.TIMEZONE)
    seed_history(
        engine,
        tenant_id=tenant.id,
        months=dashboard.MONTHS,
        customers=120,
        seed=dashboard.SEED,
        end=dashboard.END,
    )
    period = dashboard.history_period()
    _, _, api = dashboard.time_stats(engine, tenant.id, period, repeats=0)
    _, by_sql = dashboard.time_scan(dashboard.sql_runner(engine), engine.dialect.name, tenant.id, period, 1)
    duck, _ = dashboard.load_duckdb(engine, tmp_path)
    _, by_duck = dashboard.time_scan(dashboard.duckdb_runner(duck), "duckdb", tenant.id, period, 1)
    assert api["counts"]["opened"] > 0
    assert api["top_links"]
    assert api["top_engaged"]
    assert dashboard_scan.differences(api, by_sql) == []
    assert dashboard_scan.differences(api, by_duck) == []
