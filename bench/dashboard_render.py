"""The demo salon's dashboard render time, next to a trivial request on the same server.

    .venv/bin/python -m bench.dashboard_render [--customers 2000] [--months 6] [--backend sqlite|both]

Seeds a salon like `mailtrack demo`, serves it as `mailtrack serve` does (a subprocess), logs in as its
manager, then times: the first dashboard view after login (the send-time fit is warmed at startup), the
median of 20 more, a six-month period, and as the reference the median of 20 `GET /healthz` in the same run.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time

import httpx

from bench.common import free_port, mailtrack_serve, postgres_available, scratch_database, server
from mailtrack.db import make_engine, write_transaction
from mailtrack.demo.generator import seed_history
from mailtrack.migrations import upgrade
from mailtrack.tenants.queries import create_manager, create_tenant

DASHBOARD = "/manager/connect/email/tracking"
EMAIL, PASSWORD = "manager@bench.example", "bench-password-1"


def _timed(client: httpx.Client, path: str, **params: str) -> float:
    began = time.perf_counter()
    answer = client.get(path, params=params)
    elapsed = time.perf_counter() - began
    answer.raise_for_status()
    return elapsed * 1000


def run(backend: str, customers: int, months: int) -> None:
    """Measure one backend and print its line."""
    with scratch_database(backend, "mt_bench_dashboard") as url:
        engine = make_engine(url)
        upgrade(engine)
        with write_transaction(engine) as conn:
            tenant = create_tenant(conn, name="Demo Salon")
            create_manager(conn, tenant_id=tenant.id, email=EMAIL, password=PASSWORD)
        seed_history(engine, tenant_id=tenant.id, months=months, customers=customers, seed=1)
        engine.dispose()
        port = free_port()
        command, env = mailtrack_serve(url, port)
        with server(command, env=env, port=port), httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            time.sleep(3)  # let the startup warm-up of the send-time model finish
            form = client.get("/manager/login").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form)
            data = {"email": EMAIL, "password": PASSWORD, "csrf": csrf.group(1) if csrf else ""}
            assert client.post("/manager/login", data=data).status_code == 303
            first = _timed(client, DASHBOARD)
            views = [_timed(client, DASHBOARD) for _ in range(20)]
            since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 182 * 86400))
            half_year = _timed(client, DASHBOARD, **{"from": since})
            health = [_timed(client, "/healthz") for _ in range(20)]
    reference = statistics.median(health)
    median = statistics.median(views)
    print(
        f"{backend:<11}{first:>10.0f}{median:>10.0f}{half_year:>12.0f}{reference:>11.1f}"
        f"{median / reference:>9.0f}x"
    )


def main() -> int:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--months", type=int, default=6)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    if "postgresql" in backends and not postgres_available():
        print("PostgreSQL is not reachable: measuring SQLite only", file=sys.stderr)
        backends.remove("postgresql")
    print(
        f"demo salon: {args.customers} customers × {args.months} months; "
        "times in ms; ratio = median view ÷ healthz"
    )
    print(f"{'backend':<11}{'first':>10}{'median':>10}{'6 months':>12}{'healthz':>11}{'ratio':>10}")
    for backend in backends:
        run(backend, args.customers, args.months)
    return 0


if __name__ == "__main__":
    sys.exit(main())
