"""`mailtrack sendtime --tenant ID [--json]`: the best-send-time recommendation and its 7 × 24 grid."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from mailtrack.analytics.sendtime import WEEKDAYS, best_send_time
from mailtrack.cli.common import fail, open_engine, print_json
from mailtrack.db import utcnow
from mailtrack.tenants.queries import get_tenant


def _percent(value: float) -> str:
    return f"{100 * value:.0f}"


def _print_answer(answer: dict[str, Any], salon: str) -> None:
    """The recommendation in words, then the grid: weekdays down, hours across, percent opened."""
    console = Console(highlight=False)
    low, high = answer["interval"]
    console.print(
        f"[bold]{salon}[/]: send on [bold]{answer['weekday']} at {answer['hour']:02d}:00[/] "
        f"({answer['basis']['timezone']}) → expected {_percent(answer['expected_open_rate'])}% opened by a "
        f"person within {answer['horizon_hours']} hours (likely {_percent(low)}–{_percent(high)}%)"
    )
    basis = answer["basis"]
    console.print(
        f"Learned from {answer['months_of_data']:.1f} months: {basis['messages']:,} tracked messages, "
        f"{basis['first_opens']:,} first human opens; rates are for {basis['mail']} mail."
    )
    if answer.get("notice"):
        console.print(f"[yellow]{answer['notice']}[/]")
    table = Table(
        title="Expected open rate (%) by weekday and hour sent", title_justify="left", padding=(0, 0)
    )
    table.add_column("", justify="left", no_wrap=True)
    for hour in range(24):
        table.add_column(f"{hour:02d}", justify="right", no_wrap=True, min_width=3)
    best_day = WEEKDAYS.index(answer["weekday"])
    for day, rates in enumerate(answer["grid"]):
        cells = [_percent(rate) for rate in rates]
        if day == best_day:
            cells[answer["hour"]] = f"[bold reverse]{cells[answer['hour']]}*[/]"
        table.add_row(WEEKDAYS[day][:3], *cells)
    console.print(table)
    console.print("* the recommended slot. Hours are the salon's local time.")


def sendtime_command(
    tenant: int = typer.Option(..., "--tenant", help="Salon id."),
    json_output: bool = typer.Option(False, "--json", help="Print the answer as one JSON object."),
) -> None:
    """The best weekday and hour to send campaign mail, with the expected open rate of every slot."""
    _, engine = open_engine()
    with engine.connect() as conn:
        salon = get_tenant(conn, tenant_id=tenant)
        if salon is None:
            raise fail(f"no salon with id {tenant}")
        answer = best_send_time(conn, tenant_id=tenant, timezone=salon.timezone, now=utcnow())
    if json_output:
        print_json(answer)  # null: not enough data yet, never an invented slot
    elif answer is None:
        typer.echo(
            f"{salon.name}: not enough data yet to recommend a send time "
            "(it needs tracked mail and human opens; it becomes reliable with 3 months of history)."
        )
    else:
        _print_answer(answer, salon.name)
