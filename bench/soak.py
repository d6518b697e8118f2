"""Soak: tracking load on a real `mailtrack serve` while maintenance deletes and anonymizes beside it.

    .venv/bin/python -m bench.soak [--seconds 180] [--backend sqlite|postgresql] [--threads 8]

Loopback only and bounded in time. A "live" salon gets opens and clicks from client threads, each hit
with a unique Referer, so every acknowledged hit can be looked for afterwards. A "history" salon is
refilled with old events as the run goes. Two maintenance runners (think: the scheduler in `serve` and
`mailtrack maintain` from cron) run every few seconds with a clock 31 days ahead, so they anonymize the
live salon's fresh addresses while hits keep arriving, and delete the history salon's old events and
rollups. The server's resident memory is sampled from /proc every 10 s.

Prints errors, acknowledged vs stored hits, maintenance totals and the RSS series; exits 1 on any
error, any lost acknowledged hit, a failed maintenance run, or memory growing past --max-rss-growth.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import Engine, select

from bench.common import (
    BENCH_SECRET,
    free_port,
    mailtrack_serve,
    postgres_available,
    scratch_database,
    server,
)
from mailtrack.config import Settings
from mailtrack.db import make_engine, metadata, utcnow, write_transaction
from mailtrack.maintenance.jobs import MaintenanceReport, run_maintenance
from mailtrack.maintenance.tables import events_ip_pending, maintenance_leases
from mailtrack.messages.queries import CustomerIn, MessageIn, create_messages, upsert_customers
from mailtrack.messages.routes import MessageRequest, register_message
from mailtrack.messages.tokens import TokenCodec
from mailtrack.migrations import upgrade
from mailtrack.tenants.queries import create_tenant
from mailtrack.tracking.ingest import EventIn, ingest_batch
from mailtrack.tracking.tables import events

AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0"
HTML = "".join(f'<p><a href="https://salon.example/offer/{n}">offer {n}</a></p>' for n in range(3))


@dataclass
class Tally:
    """What the client threads and maintenance runners saw."""

    acknowledged: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    reports: list[MaintenanceReport] = field(default_factory=list)
    maintenance_errors: list[str] = field(default_factory=list)
    refilled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def prepare(engine: Engine, base_url: str, messages: int) -> tuple[int, list[tuple[str, list[str]]]]:
    """The live salon's instrumented messages (pixel path, click paths) and the history salon's id."""
    upgrade(engine)
    metadata.create_all(engine, tables=[maintenance_leases])  # until the maintenance migration exists
    events_ip_pending.create(engine, checkfirst=True)
    settings = Settings(database_url=str(engine.url), secret_key=BENCH_SECRET, base_url=base_url)
    codec = TokenCodec([BENCH_SECRET])
    paths: list[tuple[str, list[str]]] = []
    with write_transaction(engine) as conn:
        live = create_tenant(conn, name="Soak live salon")
        history = create_tenant(conn, name="Soak history salon")
        for number in range(messages):
            body = {"customer": {"id": f"c{number}", "name": f"Customer {number}"}, "channel": "marketing"}
            answer = register_message(
                conn,
                codec,
                settings,
                tenant_id=live.id,
                body=MessageRequest.model_validate({**body, "html": HTML, "campaign": "Soak"}),
            )
            assert answer.html is not None
            found = [part.split('"', 1)[0].removeprefix(base_url) for part in answer.html.split('href="')[1:]]
            pixel = answer.html.split('src="', 1)[1].split('"', 1)[0].removeprefix(base_url)
            paths.append((pixel, [path for path in found if path.startswith("/c/")]))
    return history.id, paths


def refill_history(engine: Engine, tenant_id: int, count: int, serial: int) -> None:
    """Old messages (27 months and 100–200 days ago) of the history salon, with opens carrying addresses."""
    now = utcnow()
    with write_transaction(engine) as conn:
        people = upsert_customers(
            conn, tenant_id=tenant_id, people=[CustomerIn(f"h{serial}", "Old Customer")]
        )
        ages = [dt.timedelta(days=820), dt.timedelta(days=random.uniform(100, 200))]
        batch = [
            MessageIn(
                f"old-{serial}-{n}", people[f"h{serial}"], "marketing", "campaign", None, True, now - age
            )
            for n, age in enumerate(ages)
        ]
        ids = create_messages(conn, tenant_id=tenant_id, batch=batch)
        batch_events = [
            EventIn(
                tenant_id,
                ids[item.external_id],
                "opened",
                item.cohort_at + dt.timedelta(minutes=k),
                AGENT,
                "192.0.2.7",
            )
            for item in batch
            for k in range(count // len(batch))
        ]
        ingest_batch(conn, batch_events)


def hammer(
    url: str, paths: list[tuple[str, list[str]]], worker: int, stop: threading.Event, tally: Tally
) -> None:
    """Open and click random messages until told to stop, each hit with a unique Referer."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for number in itertools.count():
            if stop.is_set():
                return
            pixel, clicks = random.choice(paths)
            kind, path, expected = ("o", pixel, 200) if number % 3 else ("c", random.choice(clicks), 302)
            marker = f"https://soak.example/{kind}/{worker}/{number}"
            try:
                answer = client.get(
                    path, headers={"User-Agent": AGENT, "Referer": marker}, follow_redirects=False
                )
            except httpx.TransportError as exc:
                with tally.lock:
                    tally.errors.append(f"{kind}: {type(exc).__name__}")
                continue
            with tally.lock:
                if answer.status_code == expected:
                    tally.acknowledged.add(marker)
                else:
                    tally.errors.append(f"{kind}: HTTP {answer.status_code}")


def maintain(
    engine: Engine, history: int, every: float, name: str, stop: threading.Event, tally: Tally
) -> None:
    """Refill the history salon and run maintenance with a clock 31 days ahead, every few seconds."""
    for serial in itertools.count():
        if stop.wait(random.uniform(0.5, 1.5) * every):
            return
        try:
            refill_history(engine, history, 400, serial * 10 + (name == "cron"))
            report = run_maintenance(
                engine, now=utcnow() + dt.timedelta(days=31), chunk_rows=500, holder=name
            )
        except Exception as exc:  # noqa: BLE001  (a soak records every failure and reports it)
            with tally.lock:
                tally.maintenance_errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        with tally.lock:
            tally.reports.append(report)
            tally.refilled += 400
            if report.failed:
                tally.maintenance_errors += [
                    f"{name}: salon {s.tenant_id}: {s.error}" for s in report.salons if s.error
                ]


def rss_mib(pid: int) -> float:
    """Resident set size of the process and its children (the journal applier), MiB."""
    total = 0
    for member in [pid, *_children(pid)]:
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def soak(backend: str, seconds: float, threads: int, every: float, max_growth: float) -> int:
    """Run the soak on one backend; returns the exit status."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with scratch_database(backend, "mailtrack_soak") as database_url:
        engine = make_engine(database_url)
        history, paths = prepare(engine, url, messages=200)
        command, env = mailtrack_serve(database_url, port)
        tally, stop = Tally(), threading.Event()
        samples: list[tuple[float, float]] = []
        with server(command, env=env, port=port) as process:
            workers = [
                threading.Thread(target=hammer, args=(url, paths, n, stop, tally)) for n in range(threads)
            ]
            workers += [
                threading.Thread(target=maintain, args=(engine, history, every, name, stop, tally))
                for name in ("serve-scheduler", "cron")
            ]
            started = time.monotonic()
            for worker in workers:
                worker.start()
            while (elapsed := time.monotonic() - started) < seconds:
                samples.append((elapsed, rss_mib(process.pid)))
                time.sleep(min(10.0, max(0.0, seconds - elapsed)))
            samples.append((time.monotonic() - started, rss_mib(process.pid)))
            stop.set()
            for worker in workers:
                worker.join(timeout=120)
        with engine.connect() as conn:
            stored = set(
                conn.execute(
                    select(events.c.referer).where(events.c.referer.like("https://soak.example/%"))
                ).scalars()
            )
        engine.dispose()
    return summarize(backend, seconds, tally, stored, samples, max_growth)


def summarize(
    backend: str,
    seconds: float,
    tally: Tally,
    stored: set[str],
    samples: list[tuple[float, float]],
    max_growth: float,
) -> int:
    """Print the outcome; 0 when clean."""
    lost = tally.acknowledged - stored
    totals = {
        key: sum(r.totals()[key] for r in tally.reports)
        for key in ("events_deleted", "ips_anonymized", "rollup_rows_deleted")
    }
    # Memory after warm-up (caches, pools, the first batches) against the end of the run.
    baseline = next((mib for at, mib in samples if at >= min(30.0, seconds / 3)), samples[0][1])
    growth = (samples[-1][1] - baseline) / baseline
    print(f"backend: {backend}, {seconds:.0f} s")
    rate = len(tally.acknowledged) / seconds
    print(
        f"hits: {len(tally.acknowledged)} acknowledged ({rate:.0f}/s), {len(stored)} stored, {len(lost)} lost"
    )
    print(f"errors: {len(tally.errors)}" + (f" e.g. {tally.errors[:3]}" if tally.errors else ""))
    print(
        f"maintenance: {len(tally.reports)} runs, {len(tally.maintenance_errors)} failures; "
        f"{totals['events_deleted']} events deleted, {totals['ips_anonymized']} IPs anonymized, "
        f"{totals['rollup_rows_deleted']} rollup rows deleted; history refilled with {tally.refilled} events"
    )
    if tally.maintenance_errors:
        print(f"  e.g. {tally.maintenance_errors[:3]}")
    print("server RSS (MiB): " + ", ".join(f"{at:.0f}s={mib:.1f}" for at, mib in samples))
    print(f"RSS growth after warm-up: {growth:+.1%} (limit {max_growth:.0%})")
    failed = bool(
        lost or tally.errors or tally.maintenance_errors or growth > max_growth or not tally.reports
    )
    print("verdict: " + ("FAIL" if failed else "ok"))
    return 1 if failed else 0


def main() -> int:
    """Parse arguments and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--maintain-every", type=float, default=5.0, help="seconds between maintenance runs")
    parser.add_argument("--max-rss-growth", type=float, default=0.25, help="allowed RSS growth after warm-up")
    args = parser.parse_args()
    if args.backend == "postgresql" and not postgres_available():
        print("PostgreSQL is not reachable", file=sys.stderr)
        return 2
    return soak(args.backend, args.seconds, args.threads, args.maintain_every, args.max_rss_growth)


if __name__ == "__main__":
    sys.exit(main())
