"""`mailtrack customers export|erase`: a customer's data on request (GDPR), from the command line."""

from __future__ import annotations

import typer

from mailtrack.cli.common import fail, open_engine, print_json, stderr
from mailtrack.db import utcnow, write_transaction
from mailtrack.maintenance.gdpr import erase_customer, export_customer
from mailtrack.tenants.queries import get_tenant

customers_app = typer.Typer(
    help="A customer's personal data: export and erasure (GDPR).", no_args_is_help=True
)
_CUSTOMER = typer.Argument(..., help="The platform's own customer id.")
_TENANT = typer.Option(..., "--tenant", help="Salon id.")


def _check_tenant(tenant: int) -> None:
    _, engine = open_engine()
    with engine.connect() as conn:
        if get_tenant(conn, tenant_id=tenant) is None:
            raise fail(f"no salon with id {tenant}")


@customers_app.command("export")
def customers_export(customer_id: str = _CUSTOMER, tenant: int = _TENANT) -> None:
    """Print everything held about one customer as one JSON object."""
    _check_tenant(tenant)
    _, engine = open_engine(migrate=False)
    with engine.connect() as conn:
        export = export_customer(conn, tenant_id=tenant, external_id=customer_id, now=utcnow())
    if export is None:
        raise fail(f"salon {tenant} has no customer with that id (or it was erased)")
    print_json(export.model_dump(mode="json"))


@customers_app.command("erase")
def customers_erase(
    customer_id: str = _CUSTOMER,
    tenant: int = _TENANT,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    json_output: bool = typer.Option(False, "--json", help="Print what was erased as JSON."),
) -> None:
    """Erase one customer's personal data; the anonymous rollups stay and old links still redirect."""
    _check_tenant(tenant)
    if not yes:
        typer.confirm(f"Erase this customer of salon {tenant}? This cannot be undone", abort=True, err=True)
    _, engine = open_engine(migrate=False)
    with write_transaction(engine) as conn:
        erasure = erase_customer(conn, tenant_id=tenant, external_id=customer_id)
    if erasure is None:
        raise fail(f"salon {tenant} has no customer with that id (or it was erased)")
    if json_output:
        print_json(
            {
                "erased": True,
                "events_deleted": erasure.events_deleted,
                "messages_unlinked": erasure.messages_unlinked,
            }
        )
    else:
        print(
            f"erased: {erasure.events_deleted} events deleted, {erasure.messages_unlinked} messages unlinked"
        )
        stderr.print("their old links still redirect and record nothing")
