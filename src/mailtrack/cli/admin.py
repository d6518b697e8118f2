"""`mailtrack db|tenant|apikey|manager …`: operator commands for the database and salons."""

from __future__ import annotations

import sys

import typer
from sqlalchemy.exc import IntegrityError

from mailtrack.cli.common import fail, open_engine, print_json, stderr
from mailtrack.db import write_transaction
from mailtrack.tenants.queries import (
    InvalidTimezoneError,
    create_api_key,
    create_manager,
    create_tenant,
    get_tenant,
)

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
tenant_app = typer.Typer(help="Salons.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys for the platform.", no_args_is_help=True)
manager_app = typer.Typer(help="Manager logins for the dashboard.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    open_engine(migrate=True)
    stderr.print("database is up to date")


@tenant_app.command("create")
def tenant_create(
    name: str = typer.Option(..., "--name", help="The salon's name."),
    timezone: str = typer.Option("Europe/Budapest", "--timezone", help="IANA timezone of the salon."),
    json_output: bool = typer.Option(False, "--json", help='Print {"tenant_id": …}.'),
) -> None:
    """Create a salon."""
    _, engine = open_engine()
    try:
        with write_transaction(engine) as conn:
            tenant = create_tenant(conn, name=name, timezone=timezone)
    except InvalidTimezoneError as exc:
        raise fail(str(exc)) from None
    if json_output:
        print_json({"tenant_id": tenant.id})
    else:
        print(f"created salon {tenant.id}: {tenant.name} ({tenant.timezone})")


def _require_tenant(tenant_id: int) -> None:
    _, engine = open_engine()
    with engine.connect() as conn:
        if get_tenant(conn, tenant_id=tenant_id) is None:
            raise fail(f"no salon with id {tenant_id}")


@apikey_app.command("create")
def apikey_create(
    tenant: int = typer.Option(..., "--tenant", help="Salon id."),
    json_output: bool = typer.Option(False, "--json", help='Print {"api_key": …}.'),
) -> None:
    """Create an API key; it is shown once and stored hashed."""
    _require_tenant(tenant)
    _, engine = open_engine(migrate=False)
    with write_transaction(engine) as conn:
        api_key = create_api_key(conn, tenant_id=tenant)
    if json_output:
        print_json({"api_key": api_key})
    else:
        print(api_key)
        stderr.print("store it now: only its hash is kept")


@manager_app.command("create")
def manager_create(
    tenant: int = typer.Option(..., "--tenant", help="Salon id."),
    email: str = typer.Option(..., "--email", help="Login email."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from stdin (keeps it out of shell history)."
    ),
) -> None:
    """Create a manager login for a salon."""
    if not password_stdin:
        raise fail("pass --password-stdin and the password on stdin")
    password = sys.stdin.readline().rstrip("\r\n")
    _require_tenant(tenant)
    _, engine = open_engine(migrate=False)
    try:
        with write_transaction(engine) as conn:
            manager = create_manager(conn, tenant_id=tenant, email=email, password=password)
    except ValueError as exc:
        raise fail(str(exc)) from None
    except IntegrityError:
        raise fail(f"a manager with email {email!r} already exists") from None
    print(f"created manager {manager.email} for salon {manager.tenant_id}")
