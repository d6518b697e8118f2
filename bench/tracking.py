"""Tracking throughput: `/o` and `/c` under wrk, on SQLite and PostgreSQL, against a bare ASGI app.

    .venv/bin/python bench/tracking.py [--seconds 10] [--connections 32]

For each backend it starts `mailtrack serve` (one worker), drives the open pixel and the click redirect
with wrk, then runs a bare ASGI app serving the same GIF under the same server (uvicorn, uvloop, and
Mailtrack's httptools protocol, which answers `/o` and `/c` without ASGI for Mailtrack's app only) as
the reference of the same run. It prints hits/s, p50 and p99 and the ratio to the bare
app, then checks that every answered hit is a stored event.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from bench.common import (
    BENCH_SECRET,
    free_port,
    mailtrack_serve,
    postgres_available,
    scratch_database,
    server,
)
from mailtrack.config import Settings
from mailtrack.db import make_engine, write_transaction
from mailtrack.messages.routes import MessageRequest, register_message
from mailtrack.messages.tokens import TokenCodec
from mailtrack.migrations import upgrade
from mailtrack.tenants.queries import create_tenant
from mailtrack.tracking.protocol import HTTP_PROTOCOL
from mailtrack.tracking.tables import events

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, *, seconds: int, connections: int) -> dict[str, float]:
    """Run wrk against a URL; returns requests, errors, rate and p50/p99 in milliseconds."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        assert match, out
        return float(match.group(1)) * _UNITS[match.group(2)]

    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": requests,
        "non_2xx_3xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": latency("50"),
        "p99": latency("99"),
    }


def prepare(database_url: str, port: int) -> tuple[str, str]:
    """A migrated database with one tracked message; returns its pixel and click paths."""
    engine = make_engine(database_url)
    upgrade(engine)
    settings = Settings(
        database_url=database_url, secret_key=BENCH_SECRET, base_url=f"http://127.0.0.1:{port}"
    )
    with write_transaction(engine) as conn:
        tenant = create_tenant(conn, name="Bench salon")
        message = register_message(
            conn,
            TokenCodec([BENCH_SECRET]),
            settings,
            tenant_id=tenant.id,
            body=MessageRequest.model_validate(
                {
                    "customer": {"id": "c1", "name": "Bench"},
                    "channel": "marketing",
                    "html": '<a href="https://salon.example/book">Book</a>',
                }
            ),
        )
    engine.dispose()
    assert message.html is not None
    pixel = re.search(r'src="http://127\.0\.0\.1:\d+(/o/[^"]+)"', message.html).group(1)  # type: ignore[union-attr]
    click = re.search(r'href="http://127\.0\.0\.1:\d+(/c/[^"]+)"', message.html).group(1)  # type: ignore[union-attr]
    return pixel, click


def stored_events(database_url: str) -> int:
    """Events in the database."""
    engine = make_engine(database_url)
    with engine.connect() as conn:
        count = int(conn.execute(select(func.count()).select_from(events)).scalar_one())
    engine.dispose()
    return count


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds(pid: int) -> float:
    """CPU time so far of the process's live children (the journal applier), in seconds."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += cpu_seconds(int(child))
            except FileNotFoundError:  # exited meanwhile
                continue
    return total


def catch_up(database_url: str, answered: int, timeout: float = 300.0) -> float:
    """Seconds until the database holds as many events as hits were answered (the applier's lag)."""
    started = time.monotonic()
    while stored_events(database_url) < answered and time.monotonic() - started < timeout:
        time.sleep(0.05)
    return time.monotonic() - started


def main() -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load first")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    backends = ["sqlite"] + (["postgresql"] if postgres_available() else [])
    print(
        f"wrk -t2 -c{args.connections} -d{args.seconds}s; "
        "ratio = Mailtrack rate / bare ASGI app rate (same run); cpu µs = CPU time of the server "
        "process per answered hit, appl µs = of its journal applier process until the database has them"
    )
    print(
        f"{'backend':<11}{'endpoint':<9}{'hits/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'bare/s':>9}{'ratio':>7}"
        f"{'db lag s':>9}{'cpu µs':>8}{'appl µs':>8}{'answered':>10}{'stored':>9}"
    )
    for backend in backends:
        port = free_port()
        with scratch_database(backend, "mt_bench_tracking") as url:
            pixel, click = prepare(url, port)
            command, env = mailtrack_serve(url, port)
            results, lag, cpu = {}, {}, {}
            with server(command, env=env, port=port) as process:
                # Warm-up, not measured (both servers get one): startup work (the send-time model fit,
                # the first maintenance run, the applier process starting) is not the steady state.
                warm = wrk(
                    f"http://127.0.0.1:{port}{pixel}", seconds=args.warmup, connections=args.connections
                )
                answered_so_far = int(warm["requests"] - warm["non_2xx_3xx"])
                for name, path in (("/o", pixel), ("/c", click)):
                    catch_up(url, answered_so_far)  # the applier is idle when measuring starts
                    server_cpu, applier_cpu = cpu_seconds(process.pid), children_cpu_seconds(process.pid)
                    results[name] = wrk(
                        f"http://127.0.0.1:{port}{path}", seconds=args.seconds, connections=args.connections
                    )
                    server_cpu = cpu_seconds(process.pid) - server_cpu
                    # Hits are answered once journaled; time how long the database takes to have them all.
                    hits = int(results[name]["requests"] - results[name]["non_2xx_3xx"])
                    answered_so_far += hits
                    lag[name] = catch_up(url, answered_so_far)
                    applier_cpu = children_cpu_seconds(process.pid) - applier_cpu
                    cpu[name] = (server_cpu * 1e6 / max(hits, 1), applier_cpu * 1e6 / max(hits, 1))
            stored = stored_events(url)
        bare_port = free_port()
        bare_cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.bare_app:app",
            "--port",
            str(bare_port),
            "--log-level",
            "warning",
            "--no-server-header",
            "--loop",
            "uvloop",
            "--http",
            HTTP_PROTOCOL,  # the same server as `mailtrack serve`: the class adds nothing for other apps
        ]
        with server(bare_cmd, env={}, port=bare_port) as bare_process:
            wrk(f"http://127.0.0.1:{bare_port}/o/x", seconds=args.warmup, connections=args.connections)
            bare_cpu = cpu_seconds(bare_process.pid)
            bare = wrk(
                f"http://127.0.0.1:{bare_port}/o/x", seconds=args.seconds, connections=args.connections
            )
            bare_cpu = (cpu_seconds(bare_process.pid) - bare_cpu) * 1e6 / max(int(bare["requests"]), 1)
        answered = answered_so_far
        for name, r in results.items():
            print(
                f"{backend:<11}{name:<9}{r['rate']:>9.0f}{r['p50']:>8.2f}{r['p99']:>8.2f}{bare['rate']:>9.0f}"
                f"{r['rate'] / bare['rate']:>7.2f}{lag[name]:>9.2f}{cpu[name][0]:>8.1f}{cpu[name][1]:>8.1f}",
                end="",
            )
            print(f"{answered:>10}{stored:>9}" if name == "/c" else "")
        print(
            f"{'':<11}{'bare':<9}{bare['rate']:>9.0f}{bare['p50']:>8.2f}{bare['p99']:>8.2f}"
            f"{'':>9}{'':>7}{'':>9}{bare_cpu:>8.1f}"
        )
        if stored < answered:
            print(
                f"LOST HITS on {backend}: {answered - stored} answered hits are not stored", file=sys.stderr
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
