"""`mailtrack seed` and `mailtrack import`: bulk data in."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine

from mailtrack.cli.common import fail, open_engine, print_json, stderr
from mailtrack.tenants.queries import get_tenant
from mailtrack.tracking.importer import import_lines


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
    )


def seed_with_progress(engine: Engine, *, tenant_id: int, months: int, customers: int, seed: int) -> None:
    """Generate synthetic history with a progress bar on stderr."""
    from mailtrack.demo.generator import seed_history

    with _progress() as bar:
        task = bar.add_task("events", total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, done))

        result = seed_history(
            engine, tenant_id=tenant_id, months=months, customers=customers, seed=seed, progress=report
        )
    rate = result.events / result.seconds if result.seconds else 0.0
    stderr.print(
        f"seeded {result.customers} customers, {result.messages} messages, {result.events} events "
        f"in {result.seconds:.1f} s ({rate:,.0f} events/s)"
    )


def _require_tenant(engine: Engine, tenant_id: int) -> None:
    with engine.connect() as conn:
        if get_tenant(conn, tenant_id=tenant_id) is None:
            raise fail(f"no salon with id {tenant_id}")


def seed(
    tenant: int = typer.Option(..., "--tenant", help="Salon id."),
    months: int = typer.Option(6, "--months", min=1, max=36, help="Months of history, ending now."),
    customers: int = typer.Option(2000, "--customers", min=1, help="Customers to create."),
    seed_value: int = typer.Option(1, "--seed", help="Random seed: the same seed gives the same history."),
) -> None:
    """Generate a realistic synthetic history for a salon, with a progress bar."""
    _, engine = open_engine()
    _require_tenant(engine, tenant)
    seed_with_progress(engine, tenant_id=tenant, months=months, customers=customers, seed=seed_value)


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    yield from stream


def import_file(
    file: str = typer.Argument(..., help="JSON Lines file of events; - reads stdin."),
    tenant: int = typer.Option(..., "--tenant", help="Salon id."),
) -> None:
    """Import historical events (JSON Lines); prints {"imported", "duplicates", "rejected"}."""
    _, engine = open_engine()
    _require_tenant(engine, tenant)
    if file == "-":
        stream: IO[bytes] = sys.stdin.buffer
    else:
        path = Path(file)
        if not path.is_file():
            raise fail(f"no such file: {file}")
        stream = path.open("rb")
    with stream, _progress() as bar:
        task = bar.add_task("lines", total=None)
        report = import_lines(
            engine, tenant_id=tenant, lines=_lines(stream), progress=lambda n: bar.advance(task, n)
        )
    print_json(report.as_dict())
