"""`mailtrack`: one command group per module (CONTRACTS.md lists them)."""

from __future__ import annotations

import typer

from mailtrack.cli import admin, customers, data, inbound, maintain, sendtime, server, ua

app = typer.Typer(
    name="mailtrack",
    help="Email tracking for a salon-booking platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(admin.db_app, name="db")
app.add_typer(admin.tenant_app, name="tenant")
app.add_typer(admin.apikey_app, name="apikey")
app.add_typer(admin.manager_app, name="manager")
app.command("serve")(server.serve)
app.command("demo")(server.demo)
app.command("seed")(data.seed)
app.command("import")(data.import_file)
app.command("ua")(ua.ua_command)
app.command("inbound")(inbound.inbound_command)
app.command("sendtime")(sendtime.sendtime_command)
app.command("maintain")(maintain.maintain_command)
app.add_typer(customers.customers_app, name="customers")
