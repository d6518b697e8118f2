"""Inbound mail: attribution (VERP, Message-ID, tracking URL), storing, quarantine, isolation, API and CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from fastapi import FastAPI
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from mailtrack.app import create_app
from mailtrack.cli.inbound import inbound_command
from mailtrack.config import Settings, get_settings
from mailtrack.delivery import routes as delivery_routes
from mailtrack.delivery import tables as delivery_tables
from mailtrack.delivery.inbound import InboundResult, process_inbound
from mailtrack.messages.tables import customers, messages
from mailtrack.tracking.tables import events
from tests.conftest import TEST_SECRET
from tests.factories import make_api_key, make_tenant
from tests.unit.delivery.bounce_mail import (
    CODEC,
    NEWSLETTER,
    OUT_OF_OFFICE,
    arf,
    click_url,
    dsn,
    qmail_bounce,
    sent_message,
    verp_address,
)

CORPUS = Path(__file__).resolve().parents[2] / "data" / "bounces"


@pytest.fixture
def db(engine: Engine) -> Engine:
    """The test database with the quarantine table (its migration is added separately)."""
    delivery_tables.quarantine.create(engine, checkfirst=True)
    return engine


def _process(engine: Engine, raw: bytes, **kwargs: Any) -> InboundResult:
    return process_inbound(engine, CODEC, raw, source=kwargs.pop("source", "smtp"), **kwargs)


def _events(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(events).order_by(events.c.id)))


def _quarantined(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(select(delivery_tables.quarantine).order_by(delivery_tables.quarantine.c.id))
        )


def test_verp_envelope_recipient_attributes_a_hard_bounce(db: Engine) -> None:
    tenant = make_tenant(db)
    message_id = sent_message(db, tenant.id)
    result = _process(db, dsn(), envelope_recipients=[verp_address(tenant.id, message_id)])
    assert result.attribution is not None
    assert (result.attribution.message_id, result.attribution.via) == (message_id, "verp")
    assert result.stored_event == "bounced"
    (event,) = _events(db)
    assert (event.type, event.bounce_kind, event.status) == ("bounced", "hard", "5.1.1")
    assert "User unknown" in event.diagnostic
    with db.connect() as conn:
        assert conn.execute(select(messages.c.bounce_kind)).scalar_one() == "hard"
        assert conn.execute(select(customers.c.suppression_reason)).scalar_one() == "hard_bounce"
    data = result.as_dict()
    assert data["attributed"]["via"] == "verp"
    assert data["stored"] == {"event": "bounced", "duplicate": False, "quarantine_id": None}


def test_verp_token_in_the_to_header_is_enough(db: Engine) -> None:
    tenant = make_tenant(db)
    message_id = sent_message(db, tenant.id)
    result = _process(db, dsn(to=verp_address(tenant.id, message_id)), source="cli")
    assert result.attribution is not None
    assert result.attribution.via == "verp"
    assert result.stored_event == "bounced"


def test_quoted_message_id_attributes_the_bounce(db: Engine) -> None:
    tenant = make_tenant(db)
    message_id = sent_message(db, tenant.id, smtp_message_id="<abc123@track.mailtrack.example>")
    result = _process(db, dsn(quoted_message_id="<abc123@track.mailtrack.example>"))
    assert result.attribution is not None
    assert (result.attribution.message_id, result.attribution.via) == (message_id, "message_id")
    assert result.stored_event == "bounced"


def test_tracking_url_in_the_quoted_body_attributes_the_bounce(db: Engine) -> None:
    tenant = make_tenant(db)
    message_id = sent_message(db, tenant.id)
    url = click_url(tenant.id, message_id)
    # Quoted-printable soft line break in the middle of the token, as a quoted copy keeps it.
    body = f"Book now: {url[:-5]}=\n{url[-5:]}\n"
    result = _process(db, qmail_bounce(quoted_body=body))
    assert result.classification.parser == "flufl"
    assert result.attribution is not None
    assert (result.attribution.message_id, result.attribution.via) == (message_id, "tracking_url")


def test_forged_or_unknown_evidence_goes_to_quarantine_once(db: Engine) -> None:
    tenant = make_tenant(db)
    message_id = sent_message(db, tenant.id)
    forged = verp_address(tenant.id, message_id)[:-30] + "aaaa@" + "bounces.mailtrack.example"
    raw = dsn(quoted_message_id="<unknown@elsewhere.example>")
    first = _process(db, raw, envelope_recipients=[forged])
    again = _process(db, raw, envelope_recipients=[forged])
    assert first.attribution is None
    assert first.quarantine_id is not None
    assert (again.quarantine_id, again.duplicate) == (first.quarantine_id, True)
    assert _events(db) == []
    (row,) = _quarantined(db)
    assert (row.reason, row.kind, row.status, row.recipient) == (
        "unattributed",
        "bounce",
        "5.1.1",
        "anna@example.hu",
    )
    assert (row.source, row.envelope_recipient, row.tenant_id) == ("smtp", forged, None)
    assert "Undelivered Mail Returned to Sender" in row.headers
    assert json.loads(row.classification)["status"] == "5.1.1"


def test_unrecognized_mail_is_quarantined_and_auto_replies_are_ignored(db: Engine) -> None:
    unknown = _process(db, NEWSLETTER)
    assert (unknown.classification.kind, unknown.stored_event) == ("unknown", None)
    ooo = _process(db, OUT_OF_OFFICE)
    assert ooo.classification.kind == "auto_reply"
    assert (ooo.stored_event, ooo.quarantine_id) == (None, None)
    assert [row.reason for row in _quarantined(db)] == ["unrecognized"]
    assert _events(db) == []


def test_delivered_delayed_and_complaint_store_their_events(db: Engine) -> None:
    tenant = make_tenant(db)
    delivered_id = sent_message(db, tenant.id)
    delayed_id = sent_message(db, tenant.id)
    complained_id = sent_message(db, tenant.id)
    delivered = dsn(action="delivered", status="2.0.0", diagnostic="smtp; 250 2.0.0 Ok")
    delayed = dsn(
        action="delayed", status="4.4.1", diagnostic="X-Postfix; connect to mx: Connection timed out"
    )
    assert _process(
        db, delivered, envelope_recipients=[verp_address(tenant.id, delivered_id)]
    ).stored_event == ("delivered")
    assert _process(db, delayed, envelope_recipients=[verp_address(tenant.id, delayed_id)]).stored_event == (
        "bounced"
    )
    complaint = _process(db, arf(original_mail_from=verp_address(tenant.id, complained_id)))
    assert complaint.classification.kind == "complaint"
    assert complaint.stored_event == "complained"
    rows = {(event.message_id, event.type, event.bounce_kind, event.status) for event in _events(db)}
    assert rows == {
        (delivered_id, "delivered", None, "2.0.0"),
        (delayed_id, "bounced", "soft", "4.4.1"),
        (complained_id, "complained", None, None),
    }
    with db.connect() as conn:
        reasons = set(conn.execute(select(customers.c.suppression_reason)).scalars())
    assert reasons == {None, "complained"}  # a soft bounce does not suppress


def test_the_same_bounce_twice_is_one_event_even_through_another_relay(db: Engine) -> None:
    tenant = make_tenant(db)
    message_id = sent_message(db, tenant.id)
    envelope = [verp_address(tenant.id, message_id)]
    first = _process(db, dsn(), envelope_recipients=envelope)
    relayed = dsn(received="Received: from relay.example by mx.mailtrack.example; Mon, 3 Aug 2026\n")
    second = _process(db, relayed, envelope_recipients=envelope, source="api")
    assert (first.stored_event, first.duplicate) == ("bounced", False)
    assert (second.stored_event, second.duplicate) == (None, True)
    assert len(_events(db)) == 1


def test_another_salons_message_is_unattributable_for_an_api_key(db: Engine) -> None:
    owner = make_tenant(db)
    other = make_tenant(db)
    message_id = sent_message(db, owner.id, smtp_message_id="<owned@track.mailtrack.example>")
    by_verp = dsn(to=verp_address(owner.id, message_id))
    by_id = dsn(quoted_message_id="<owned@track.mailtrack.example>")
    for raw in (by_verp, by_id):
        result = _process(db, raw, source="api", tenant_id=other.id)
        assert result.attribution is None
        assert result.quarantine_id is not None
    assert _events(db) == []
    assert {row.tenant_id for row in _quarantined(db)} == {other.id}
    mine = _process(db, by_id, source="api", tenant_id=owner.id)
    assert mine.attribution is not None
    assert mine.stored_event == "bounced"


def test_a_dry_run_stores_nothing(db: Engine) -> None:
    result = _process(db, NEWSLETTER, dry_run=True)
    assert result.as_dict()["stored"] is None
    assert _quarantined(db) == []


# HTTP: the router is wired into app.py separately; the test mounts it on the real app and calls it
# in-process (the inbound route needs no lifespan: no ingest writer, just the engine and the codec).
@pytest.fixture
def app(db: Engine, settings: Settings) -> FastAPI:
    """The whole app with the inbound router mounted."""
    application = create_app(settings, engine=db)
    if not any(getattr(route, "path", "") == "/api/v1/inbound" for route in application.routes):
        application.include_router(delivery_routes.router)
    return application


def _post(
    app: FastAPI, content: bytes | list[bytes], headers: dict[str, str] | None = None
) -> httpx.Response:
    async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            body = chunks(content) if isinstance(content, list) else content
            return await client.post("/api/v1/inbound", content=body, headers=headers or {})

    return asyncio.run(send())


def test_api_stores_a_bounce_for_the_keys_salon(db: Engine, app: FastAPI) -> None:
    tenant = make_tenant(db)
    key = make_api_key(db, tenant.id)
    message_id = sent_message(db, tenant.id)
    raw = dsn(to=verp_address(tenant.id, message_id))
    response = _post(app, raw, {"Authorization": f"Bearer {key}", "Content-Type": "message/rfc822"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["kind"], body["bounce"], body["status"], body["parser"]) == (
        "bounce",
        "hard",
        "5.1.1",
        "dsn",
    )
    assert body["attributed"]["tenant_id"] == tenant.id
    assert body["stored"] == {"event": "bounced", "duplicate": False, "quarantine_id": None}


def test_api_rejects_missing_keys_empty_and_oversized_bodies(db: Engine, app: FastAPI) -> None:
    key = make_api_key(db, make_tenant(db).id)
    auth = {"Authorization": f"Bearer {key}"}
    assert _post(app, dsn()).status_code == 401
    assert _post(app, b"  \r\n", auth).status_code == 400
    huge = b"X-Pad: " + b"a" * (10 * 1024 * 1024) + b"\r\n\r\nbody"
    assert _post(app, huge, auth).status_code == 413
    # Streamed without a Content-Length: refused once the limit is passed, not after reading it all.
    assert _post(app, [huge[:5_000_000], huge[5_000_000:]], auth).status_code == 413
    assert _quarantined(db) == []
    assert _events(db) == []


# CLI: `mailtrack inbound` is registered in cli/main.py separately; a one-command app runs it here.
def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(inbound_command)
    return app


@pytest.fixture
def cli_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's settings point at this test's database."""
    monkeypatch.setenv("MAILTRACK_DATABASE_URL", database_url)
    monkeypatch.setenv("MAILTRACK_SECRET_KEY", TEST_SECRET)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_cli_dry_run_json_prints_the_classification_last() -> None:
    result = CliRunner().invoke(_cli(), ["--dry-run", "--json", str(CORPUS / "gmail_over_quota.eml")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert (data["kind"], data["bounce"], data["status"]) == ("bounce", "soft", "5.2.2")
    assert data["recipient"] == "teli.kata@gmail.com"
    assert (data["attributed"], data["stored"]) == (None, None)


def test_cli_reads_stdin_and_stores(db: Engine, cli_env: None) -> None:
    tenant = make_tenant(db)
    message_id = sent_message(db, tenant.id)
    raw = dsn(to=verp_address(tenant.id, message_id))
    result = CliRunner().invoke(_cli(), ["-"], input=raw)
    assert result.exit_code == 0, result.output
    assert "kind: bounce (hard)" in result.stdout
    assert "stored: bounced" in result.stdout
    again = CliRunner().invoke(_cli(), ["--json"], input=raw)
    assert json.loads(again.stdout.splitlines()[-1])["stored"]["duplicate"] is True
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 1


def test_cli_refuses_oversized_empty_and_missing_input(tmp_path: Path) -> None:
    big = tmp_path / "big.eml"
    big.write_bytes(b"a" * (10 * 1024 * 1024 + 1))
    assert CliRunner().invoke(_cli(), ["--dry-run", str(big)]).exit_code == 65
    assert CliRunner().invoke(_cli(), ["--dry-run", "-"], input=b"").exit_code == 65
    assert CliRunner().invoke(_cli(), ["--dry-run", str(tmp_path / "nope.eml")]).exit_code == 2
