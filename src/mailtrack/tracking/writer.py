"""The ingest writer: group commit for tracking hits.

Request handlers `submit` an event and wait; one writer task takes everything queued, writes it in one
transaction on a dedicated thread, and only then releases the waiting handlers. So a hit is answered
only once it is durable (`kill -9` loses no acknowledged hit), a burst of N hits costs one commit instead
of N, and the bounded queue makes handlers wait (back-pressure) rather than grow memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Engine

from mailtrack.db import write_transaction
from mailtrack.maintenance import metrics
from mailtrack.tracking.ingest import EventIn, IngestResult, ingest_batch

log = logging.getLogger(__name__)
SWITCH_INTERVAL = 0.0002


class WriterStoppedError(RuntimeError):
    """The writer is not running (shutting down, or never started)."""


@dataclass
class WriterStats:
    """Counters for /metrics and tests."""

    batches: int = 0
    events: int = 0
    failed_events: int = 0
    last_batch_size: int = 0
    last_batch_seconds: float = 0.0


class IngestWriter:
    """Batches submitted events into shared transactions (group commit)."""

    def __init__(
        self, engine: Engine, *, batch_max: int = 500, queue_max: int = 10_000, linger_ms: float = 0.0
    ):
        self._engine = engine
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._linger = linger_ms / 1000.0
        self._queue: asyncio.Queue[tuple[EventIn, asyncio.Future[None]]] | None = None
        self._task: asyncio.Task[None] | None = None
        # One thread: batches are written strictly one after another, each on its own connection.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer")
        self.stats = WriterStats()

    @property
    def depth(self) -> int:
        """Events waiting to be written."""
        return self._queue.qsize() if self._queue else 0

    async def start(self) -> None:
        """Start the writer task on the running loop."""
        # The writer thread and the event loop hand the GIL back and forth once per batch; at the default
        # 5 ms switch interval every hit would wait for those handoffs, so switch far more often.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._queue = asyncio.Queue(maxsize=self._queue_max)
        self._task = asyncio.create_task(self._run(), name="ingest-writer")

    async def submit(self, event: EventIn) -> None:
        """Queue an event and return once it is committed; raises if it could not be stored."""
        if self._queue is None or self._task is None or self._task.done():
            raise WriterStoppedError("the ingest writer is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, future))
        await future

    async def stop(self) -> None:
        """Write everything already queued, then stop."""
        if self._queue is None or self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._thread.shutdown(wait=True)

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            if self._linger and queue.qsize() < self._batch_max:
                await asyncio.sleep(self._linger)
            while len(batch) < self._batch_max and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await loop.run_in_executor(self._thread, self._write_batch, [event for event, _ in batch])
                outcome: list[BaseException | None] = [None] * len(batch)
            except Exception as exc:  # noqa: BLE001  (any driver error: isolate the bad event below)
                log.warning("ingest batch of %d failed (%s); writing its events one by one", len(batch), exc)
                outcome = await self._write_one_by_one(loop, [event for event, _ in batch])
            for (_, future), error in zip(batch, outcome, strict=True):
                if not future.done():
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
                queue.task_done()

    async def _write_one_by_one(
        self, loop: asyncio.AbstractEventLoop, events: list[EventIn]
    ) -> list[BaseException | None]:
        outcome: list[BaseException | None] = []
        for event in events:
            try:
                await loop.run_in_executor(self._thread, self._write_batch, [event])
                outcome.append(None)
            except Exception as exc:  # noqa: BLE001  (reported to the one waiting handler)
                log.error("ingest: dropped a %s event of message %s: %s", event.type, event.message_id, exc)
                self.stats.failed_events += 1
                outcome.append(exc)
        return outcome

    def _write_batch(self, events: list[EventIn]) -> IngestResult:
        started = time.perf_counter()
        with write_transaction(self._engine) as conn:
            result = ingest_batch(conn, events)
        self.stats.batches += 1
        self.stats.events += len(events)
        self.stats.last_batch_size = len(events)
        self.stats.last_batch_seconds = time.perf_counter() - started
        metrics.observe_batch(events, self.stats.last_batch_seconds)
        return result
