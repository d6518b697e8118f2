"""Maintenance inside `serve`: an asyncio task that runs the jobs every N minutes in a worker thread.

Every node runs one; leases share the salons between them, and salons another node completed within
half an interval are skipped, so N nodes cost about one run per interval. Jitter spreads nodes that
started together. A failing run is logged and counted and the next one comes as planned: maintenance
never takes the application down.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import threading
from collections.abc import Callable

from sqlalchemy import Engine

from mailtrack.db import utcnow
from mailtrack.maintenance import metrics
from mailtrack.maintenance.jobs import MaintenanceReport, default_holder, run_maintenance
from mailtrack.maintenance.settings import OperationsSettings, get_operations_settings

log = logging.getLogger(__name__)
# How long shutdown waits for a run to reach the end of its current chunk.
STOP_GRACE_SECONDS = 30.0


class MaintenanceScheduler:
    """Runs `run_maintenance` periodically on the running event loop, off the loop's thread."""

    def __init__(
        self,
        engine: Engine,
        settings: OperationsSettings | None = None,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._settings = settings or get_operations_settings()
        self._clock = clock
        self._holder = default_holder()
        self._stopping = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: asyncio.Future[MaintenanceReport] | None = None
        self.runs = 0
        self.failures = 0
        self.last_report: MaintenanceReport | None = None

    @property
    def interval(self) -> float:
        """Seconds between runs, before jitter."""
        return self._settings.maintenance_interval_minutes * 60.0

    def next_delay(self, *, first: bool = False) -> float:
        """Seconds until the next run: the interval (or the first delay) spread by the jitter."""
        jitter = self._settings.maintenance_jitter
        if first:
            base = self._settings.maintenance_first_delay_seconds
            return base + random.uniform(0.0, jitter * self.interval)
        return self.interval * random.uniform(1.0 - jitter, 1.0 + jitter)

    async def start(self) -> None:
        """Start the periodic task (does nothing when maintenance is disabled in the settings)."""
        if not self._settings.maintenance_enabled or self._task is not None:
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(), name="maintenance-scheduler")

    async def stop(self) -> None:
        """Stop the task; a run in progress stops after its current chunk (waited for, briefly)."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._running is not None and not self._running.done():
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._running), STOP_GRACE_SECONDS)

    async def run_once(self) -> MaintenanceReport | None:
        """Run maintenance now, in a thread; None when it failed as a whole (logged and counted)."""
        settings = self._settings
        loop = asyncio.get_running_loop()
        self._running = loop.run_in_executor(
            None,
            lambda: run_maintenance(
                self._engine,
                now=self._clock(),
                chunk_rows=settings.maintenance_chunk_rows,
                lease_seconds=settings.maintenance_lease_seconds,
                holder=self._holder,
                skip_done_within=dt.timedelta(seconds=self.interval / 2),
                should_stop=self._stopping.is_set,
            ),
        )
        self.runs += 1
        try:
            report = await asyncio.shield(self._running)
        except Exception as exc:  # noqa: BLE001  (maintenance must never take the app down)
            self.failures += 1
            metrics.MAINTENANCE_RUNS.inc("failed")
            log.error("maintenance run failed: %s", type(exc).__name__)  # the class only: no personal data
            return None
        if report.failed:
            self.failures += 1
        self.last_report = report
        return report

    async def _loop(self) -> None:
        first = True
        while not self._stopping.is_set():
            await asyncio.sleep(self.next_delay(first=first))
            first = False
            await self.run_once()
