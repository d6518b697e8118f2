"""The in-app scheduler: runs on time in a thread, survives failures, stops promptly."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from mailtrack.db import make_engine
from mailtrack.maintenance import metrics
from mailtrack.maintenance.scheduler import MaintenanceScheduler
from mailtrack.maintenance.settings import OperationsSettings
from mailtrack.tracking.ingest import EventIn
from mailtrack.tracking.tables import events
from tests.factories import ingest, make_customer, make_message, make_tenant

T0 = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)


def old_events(engine: Engine, count: int) -> None:
    """`count` opens at T0 in a new salon."""
    tenant = make_tenant(engine)
    message = make_message(engine, tenant.id, make_customer(engine, tenant.id), sent_at=T0)
    ingest(
        engine,
        *(EventIn(tenant.id, message, "opened", T0, user_agent="Thunderbird/115.0") for _ in range(count)),
    )


def fast(**changes: object) -> OperationsSettings:
    """Settings for a scheduler that runs every ~60 ms, at once."""
    values: dict[str, object] = {
        "maintenance_interval_minutes": 0.001,
        "maintenance_first_delay_seconds": 0,
        "maintenance_jitter": 0,
        **changes,
    }
    return OperationsSettings.model_validate(values)


def test_a_run_uses_the_clock_and_is_counted(engine: Engine) -> None:
    old_events(engine, 3)
    scheduler = MaintenanceScheduler(engine, fast(), clock=lambda: T0 + dt.timedelta(days=91))
    report = asyncio.run(scheduler.run_once())
    assert report is not None
    assert report.totals()["events_deleted"] == 3
    assert (scheduler.runs, scheduler.failures) == (1, 0)


def test_a_failing_run_is_logged_and_counted_and_the_app_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = make_engine(f"sqlite:///{tmp_path}/missing/dir/mailtrack.db")
    scheduler = MaintenanceScheduler(broken, fast())
    failed_before = metrics.MAINTENANCE_RUNS.value("failed")

    async def twice() -> None:
        await scheduler.start()
        deadline = time.monotonic() + 10
        while scheduler.failures < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await scheduler.stop()

    asyncio.run(twice())
    assert scheduler.failures >= 2, "the loop went on after a failure"
    assert metrics.MAINTENANCE_RUNS.value("failed") >= failed_before + 2
    assert "maintenance run failed: OperationalError" in caplog.text


def test_the_loop_runs_periodically_and_stops_promptly(engine: Engine) -> None:
    old_events(engine, 2)
    scheduler = MaintenanceScheduler(engine, fast(), clock=lambda: T0 + dt.timedelta(days=100))

    async def a_while() -> float:
        await scheduler.start()
        deadline = time.monotonic() + 20
        while scheduler.runs < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await scheduler.stop()
        return time.monotonic() - started

    assert asyncio.run(a_while()) < 5
    assert scheduler.runs >= 3
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0


def test_a_disabled_scheduler_does_not_start(engine: Engine) -> None:
    scheduler = MaintenanceScheduler(engine, fast(maintenance_enabled=False))

    async def briefly() -> None:
        await scheduler.start()
        await asyncio.sleep(0.2)
        await scheduler.stop()

    asyncio.run(briefly())
    assert scheduler.runs == 0


def test_delays_follow_the_interval_and_jitter(engine: Engine) -> None:
    scheduler = MaintenanceScheduler(
        engine,
        OperationsSettings(
            maintenance_interval_minutes=60, maintenance_jitter=0.1, maintenance_first_delay_seconds=30
        ),
    )
    delays = [scheduler.next_delay() for _ in range(200)]
    assert all(3240 <= delay <= 3960 for delay in delays)
    assert len(set(delays)) > 100, "nodes started together spread out"
    assert all(30 <= scheduler.next_delay(first=True) <= 30 + 360 for _ in range(50))
