"""`kill -9` under load loses no acknowledged hit: a hit is answered only once its event is committed."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
from sqlalchemy import Engine, select

from mailtrack.config import Settings
from mailtrack.tracking.tables import events
from tests.factories import make_instrumented_message
from tests.live import free_port, served


def test_every_acknowledged_hit_survives_kill_9(
    database_url: str, engine: Engine, settings: Settings
) -> None:
    pixel, _ = make_instrumented_message(engine, settings)
    port = free_port()
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def hammer(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for number in range(1_000_000):
                if stop.is_set():
                    return
                marker = f"https://ref.example/{worker}/{number}"
                try:
                    answer = client.get(pixel, headers={"Referer": marker, "User-Agent": "Thunderbird/115.0"})
                except httpx.TransportError:
                    return
                if answer.status_code == 200:
                    with lock:
                        acknowledged.add(marker)

    with served(database_url, port, settings.journal_dir) as process:
        threads = [threading.Thread(target=hammer, args=(worker,)) for worker in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert len(acknowledged) >= 300, "the load never got going"

    left_behind = [path.name for path in settings.journal_dir.iterdir()]
    assert len(left_behind) == 1, "the killed process left its journal"

    # The restarted server adopts the dead process's journal and applies what the database lacks.
    with served(database_url, port, settings.journal_dir):
        deadline = time.monotonic() + 120  # a hang watchdog, not a timing assertion
        while (settings.journal_dir / left_behind[0]).exists():
            assert time.monotonic() < deadline, "the restarted server did not adopt the old journal"
            time.sleep(0.05)
        with engine.connect() as conn:
            stored = set(conn.execute(select(events.c.referer).where(events.c.type == "opened")).scalars())
    lost = acknowledged - stored
    assert not lost, (
        f"{len(lost)} of {len(acknowledged)} acknowledged hits were lost, e.g. {sorted(lost)[:3]}"
    )
