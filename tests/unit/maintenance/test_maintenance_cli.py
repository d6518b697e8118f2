"""`mailtrack maintain` and `mailtrack customers export|erase`, registered as cli/main.py will."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
import typer
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from mailtrack.cli.customers import customers_app
from mailtrack.cli.maintain import maintain_command
from mailtrack.config import get_settings
from mailtrack.maintenance.settings import get_operations_settings
from mailtrack.messages.tables import customers
from mailtrack.tracking.ingest import EventIn
from tests.factories import ingest, make_customer, make_message, make_tenant

cli = typer.Typer()
cli.command("maintain")(maintain_command)
cli.add_typer(customers_app, name="customers")


@pytest.fixture
def runner(database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """A CLI runner whose commands use this test's database."""
    monkeypatch.setenv("MAILTRACK_DATABASE_URL", database_url)
    get_settings.cache_clear()
    get_operations_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()
    get_operations_settings.cache_clear()


def salon_with_old_opens(engine: Engine, count: int) -> tuple[int, str]:
    """A salon whose customer opened a message `count` times 100 days ago; (salon, customer's id)."""
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id, name="Anna Kovács", email="anna@example.com")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=100)
    message = make_message(engine, tenant.id, customer, sent_at=long_ago)
    ingest(
        engine,
        *(
            EventIn(tenant.id, message, "opened", long_ago, user_agent="Thunderbird/115", ip="192.0.2.1")
            for _ in range(count)
        ),
    )
    with engine.connect() as conn:
        external = conn.execute(
            select(customers.c.external_id).where(customers.c.id == customer)
        ).scalar_one()
    return tenant.id, str(external)


def test_maintain_prints_what_it_did(runner: CliRunner, engine: Engine) -> None:
    tenant_id, _ = salon_with_old_opens(engine, 3)
    human = runner.invoke(cli, ["maintain"])
    assert human.exit_code == 0, human.output
    assert f"salon {tenant_id}: 3 events deleted, 0 IPs anonymized" in human.stdout
    assert "total: 3 events deleted" in human.stdout

    as_json = runner.invoke(cli, ["maintain", "--json"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout.strip().splitlines()[-1])
    assert report["events_deleted"] == 0
    assert report["salons"][0]["status"] == "done"


def test_customers_export_and_erase(runner: CliRunner, engine: Engine) -> None:
    tenant_id, customer = salon_with_old_opens(engine, 1)
    exported = runner.invoke(cli, ["customers", "export", "--tenant", str(tenant_id), customer])
    assert exported.exit_code == 0, exported.output
    data = json.loads(exported.stdout)
    assert data["customer"]["email"] == "anna@example.com"
    assert data["events"][0]["ip"] == "192.0.2.1"

    declined = runner.invoke(cli, ["customers", "erase", "--tenant", str(tenant_id), customer], input="n\n")
    assert declined.exit_code == 1
    assert runner.invoke(cli, ["customers", "export", "--tenant", str(tenant_id), customer]).exit_code == 0

    erased = runner.invoke(
        cli, ["customers", "erase", "--tenant", str(tenant_id), customer, "--yes", "--json"]
    )
    assert erased.exit_code == 0, erased.output
    assert json.loads(erased.stdout) == {"erased": True, "events_deleted": 1, "messages_unlinked": 1}
    gone = runner.invoke(cli, ["customers", "export", "--tenant", str(tenant_id), customer])
    assert gone.exit_code == 2
    assert "anna" not in gone.output.lower()
    assert runner.invoke(cli, ["customers", "export", "--tenant", "999999", customer]).exit_code == 2
