"""Sending through a real SMTP server (aiosmtpd on loopback): envelope, headers, DSN, retries, bounces."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr
from sqlalchemy import Engine, func, select, update

from mailtrack.app import create_app
from mailtrack.config import Settings
from mailtrack.db import utcnow, write_transaction
from mailtrack.delivery.outbox import cancel_pending
from mailtrack.delivery.outbox_tables import outbox
from mailtrack.delivery.sending import SendRefusedError, SuppressedError
from mailtrack.messages.routes import MessageRequest
from mailtrack.messages.tables import customers, messages
from mailtrack.messages.tokens import TokenKind, TrackingToken
from tests.factories import make_api_key, make_tenant
from tests.functional.sending_helpers import (
    BOUNCE_DOMAIN,
    CODEC,
    Clock,
    count,
    customer_row,
    message_key,
    message_request,
    outbox_rows,
    queue,
    relay_settings,
    run,
    stored_events,
    worker,
)
from tests.functional.smtp_test_relay import DSN_PARAMS, QUEUED, Relay, free_port, start_relay
from tests.unit.delivery.crypto_keys import client_context, loopback_tls, self_signed, server_context


@pytest.fixture
def db(engine: Engine) -> Engine:
    """The test database with the outbox table (its migration is added separately)."""
    outbox.create(engine, checkfirst=True)
    return engine


@pytest.fixture
def relay() -> Iterator[Relay]:
    """A DSN-capable relay on a free loopback port."""
    handler = Relay(free_port())
    controller = start_relay(handler)
    try:
        yield handler
    finally:
        controller.stop()


def test_a_message_goes_out_with_verp_headers_and_dsn_and_sent_is_recorded(
    db: Engine, settings: Settings, relay: Relay
) -> None:
    settings = relay_settings(settings, relay.port)
    tenant = make_tenant(db)
    response = queue(db, settings, tenant.id)
    assert run(worker(db, settings)) == 1

    assert len(relay.received) == 1
    got = relay.received[0]
    message_id = message_key(db, response.message_id)
    token = CODEC.encode_verp(TrackingToken(TokenKind.BOUNCE, tenant.id, message_id))
    assert got.mail_from == f"bounces+{token}@{BOUNCE_DOMAIN}"
    assert got.rcpt_tos == ["anna@example.hu"]
    # aiosmtpd upper-cases parameters; the VERP token is base32, decoded case-insensitively.
    assert "RET=HDRS" in got.mail_options
    assert f"ENVID={token.upper()}" in got.mail_options
    assert CODEC.decode_verp(token.upper(), kind=TokenKind.BOUNCE) == TrackingToken(
        TokenKind.BOUNCE, tenant.id, message_id
    )
    assert got.rcpt_options == ["NOTIFY=SUCCESS,FAILURE,DELAY", "ORCPT=RFC822;ANNA@EXAMPLE.HU"]

    mail = got.message()
    assert mail["From"] == "Bella Szalon <hello@bella.example>"
    assert mail["To"] == "Anna Kovács <anna@example.hu>"
    assert mail["Subject"] == "Őszi akció: 20% kedvezmény"
    assert mail["Message-ID"] == response.headers["Message-ID"]
    assert mail["List-Unsubscribe"] == response.headers["List-Unsubscribe"]
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["Date"] is not None
    assert mail.get_content_type() == "multipart/alternative"
    text, html = (part.get_content() for part in mail.iter_parts())
    # set_content ends the body with a line break, and SMTP carries CRLF: the rest is byte for byte.
    assert html.replace("\r\n", "\n").rstrip("\n") == response.html
    assert text.replace("\r\n", "\n").rstrip("\n") == response.text
    assert "/c/" in html
    assert "/o/" in html
    assert all(len(line) <= 78 for line in got.content.split(b"\r\n"))

    (event,) = stored_events(db)
    assert (event.type, event.message_id, event.external_event_id) == (
        "sent",
        message_id,
        f"smtp:sent:{message_id}",
    )
    assert event.diagnostic == f"queue_id=4Bx1yZ3qKz; {QUEUED}"
    assert count(db, outbox) == 0


def test_a_greylisting_451_is_retried_with_backoff_and_sent_once(
    db: Engine, settings: Settings, relay: Relay
) -> None:
    settings = relay_settings(settings, relay.port)
    tenant = make_tenant(db)
    queue(db, settings, tenant.id)
    relay.rcpt_replies.append("451 4.7.1 Greylisted, try again later")
    clock = Clock()
    outbox_worker = worker(db, settings, clock)
    assert run(outbox_worker) == 1
    assert relay.received == []
    assert stored_events(db) == []
    (row,) = outbox_rows(db)
    assert row.attempts == 1
    assert row.claimed_until is None
    assert row.next_attempt_at == clock.now + dt.timedelta(seconds=60)
    assert "451 4.7.1 Greylisted" in row.last_error
    assert run(outbox_worker) == 0  # not due yet
    clock.now += dt.timedelta(seconds=61)
    assert run(outbox_worker) == 1
    assert run(outbox_worker) == 0
    assert len(relay.received) == 1
    assert [event.type for event in stored_events(db)] == ["sent"]
    assert count(db, outbox) == 0


def test_a_550_5_1_1_is_a_hard_bounce_and_suppresses_the_customer(
    db: Engine, settings: Settings, relay: Relay
) -> None:
    settings = relay_settings(settings, relay.port)
    tenant = make_tenant(db)
    queue(db, settings, tenant.id)
    relay.rcpt_replies.append("550 5.1.1 <anna@example.hu>: Recipient address rejected: User unknown")
    run(worker(db, settings))
    (event,) = stored_events(db)
    assert (event.type, event.bounce_kind, event.status) == ("bounced", "hard", "5.1.1")
    assert event.diagnostic.startswith("550 5.1.1 <anna@example.hu>")
    customer = customer_row(db)
    assert customer.suppressed_at is not None
    assert customer.suppression_reason == "hard_bounce"
    assert count(db, outbox) == 0


def test_a_full_mailbox_552_5_2_2_is_soft(db: Engine, settings: Settings, relay: Relay) -> None:
    settings = relay_settings(settings, relay.port)
    queue(db, settings, make_tenant(db).id)
    relay.rcpt_replies.append("552 5.2.2 The email account that you tried to reach is over quota")
    run(worker(db, settings))
    (event,) = stored_events(db)
    assert (event.bounce_kind, event.status) == ("soft", "5.2.2")
    assert customer_row(db).suppressed_at is None


def test_suppression_blocks_marketing_but_not_system_or_transactional_mail(
    db: Engine, settings: Settings, relay: Relay
) -> None:
    settings = relay_settings(settings, relay.port)
    tenant = make_tenant(db)
    queue(db, settings, tenant.id)
    relay.rcpt_replies.append("550 5.1.1 User unknown")
    run(worker(db, settings))
    with pytest.raises(SuppressedError, match="hard_bounce") as refused:
        queue(db, settings, tenant.id, message_id="newsletter-2")
    assert refused.value.status_code == 409
    with db.connect() as conn:  # nothing was registered for the refused message
        assert (
            conn.execute(select(messages.c.id).where(messages.c.external_id == "newsletter-2")).first()
            is None
        )
    queue(db, settings, tenant.id, channel="system", source="system", message_id="password-reset")
    queue(db, settings, tenant.id, channel="transactional", source="automation", message_id="reminder")
    run(worker(db, settings))
    assert len(relay.received) == 2
    assert [event.type for event in stored_events(db)] == ["bounced", "sent", "sent"]
    system = relay.received[0].message()
    assert system["List-Unsubscribe"] is None  # only marketing mail carries one
    html = system.get_body(("html",))
    assert html is not None
    assert "/o/" not in html.get_content()  # system mail is never tracked


def test_marketing_mail_queued_before_a_suppression_is_not_sent(
    db: Engine, settings: Settings, relay: Relay
) -> None:
    settings = relay_settings(settings, relay.port)
    queue(db, settings, make_tenant(db).id)
    with write_transaction(db) as conn:
        conn.execute(update(customers).values(suppressed_at=utcnow(), suppression_reason="complained"))
    run(worker(db, settings))
    assert relay.received == []
    assert stored_events(db) == []
    assert count(db, outbox) == 0


def test_repeated_soft_bounces_suppress_at_the_salons_threshold(
    db: Engine, settings: Settings, relay: Relay
) -> None:
    settings = relay_settings(settings, relay.port, smtp_max_attempts=1)
    tenant = make_tenant(db)
    outbox_worker = worker(db, settings)
    for n in range(3):
        queue(db, settings, tenant.id, message_id=f"m{n}")
        relay.rcpt_replies.append("452 4.2.2 Mailbox full")
        run(outbox_worker)
        expected = "repeated_soft_bounces" if n == 2 else None
        assert customer_row(db).suppression_reason == expected
    assert [(e.bounce_kind, e.status) for e in stored_events(db)] == [("soft", "4.2.2")] * 3
    assert all(e.external_event_id.startswith("smtp:gaveup:") for e in stored_events(db))


def test_an_unreachable_relay_gives_up_softly_without_counting_against_the_customer(
    db: Engine, settings: Settings
) -> None:
    settings = relay_settings(settings, free_port(), smtp_max_attempts=2)  # nothing listens there
    tenant = make_tenant(db)
    clock = Clock()
    outbox_worker = worker(db, settings, clock)
    for n in range(3):
        queue(db, settings, tenant.id, message_id=f"m{n}")
        assert run(outbox_worker) == 1
        clock.now += dt.timedelta(hours=1)
        assert run(outbox_worker) == 1
    bounces = stored_events(db)
    assert len(bounces) == 3
    assert all(e.bounce_kind == "soft" and e.external_event_id.startswith("smtp:relay:") for e in bounces)
    assert bounces[0].diagnostic.startswith("gave up after 2 tries; last: relay connect:")
    assert customer_row(db).suppressed_at is None  # a relay outage is not the customer's fault


def test_without_dsn_support_no_dsn_parameters_are_sent(db: Engine, settings: Settings) -> None:
    handler = Relay(free_port(), dsn=False)
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)  # plain aiosmtpd: 555 on DSN
    controller.start()
    try:
        settings = relay_settings(settings, handler.port)
        queue(db, settings, make_tenant(db).id)
        run(worker(db, settings))
    finally:
        controller.stop()
    assert len(handler.received) == 1
    assert not any(option.startswith(DSN_PARAMS) for option in handler.received[0].mail_options)
    assert [event.type for event in stored_events(db)] == ["sent"]


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"salon",
        b"s3cret",
    )
    return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")  # the server's
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_and_auth(db: Engine, settings: Settings, tmp_path: Path, security: str) -> None:
    handler = Relay(free_port())
    context = server_context(loopback_tls(), tmp_path)
    kwargs: dict[str, Any] = {
        "authenticator": _authenticator,
        "auth_required": True,
        "auth_require_tls": True,
    }
    if security == "starttls":
        kwargs.update(tls_context=context, require_starttls=True)
    else:
        # aiosmtpd only counts STARTTLS as TLS for auth_require_tls; implicit TLS is TLS all the same.
        kwargs.update(ssl_context=context, auth_require_tls=False)
    controller = start_relay(handler, **kwargs)
    try:
        good = relay_settings(
            settings,
            handler.port,
            smtp_security=security,
            smtp_username="salon",
            smtp_password=SecretStr("s3cret"),
        )
        tenant = make_tenant(db)
        queue(db, good, tenant.id, message_id="with-auth")
        run(worker(db, good, ssl_context=client_context(loopback_tls())))
        assert len(handler.received) == 1

        # A wrong password is our configuration's fault: retried, never a bounce of the customer.
        bad = good.model_copy(update={"smtp_password": SecretStr("wrong")})
        queue(db, bad, tenant.id, message_id="bad-auth")
        run(worker(db, bad, ssl_context=client_context(loopback_tls())))
        # An untrusted certificate fails the TLS stage (no fallback to cleartext).
        run(worker(db, good, ssl_context=client_context(self_signed("localhost", ip="127.0.0.1"))))
    finally:
        controller.stop()
    assert len(handler.received) == 1
    assert [event.type for event in stored_events(db)] == ["sent"]
    (row,) = outbox_rows(db)
    assert row.attempts == 1
    assert row.last_error.startswith("auth: 535")


def test_bad_addresses_are_refused_before_anything_is_registered(db: Engine, settings: Settings) -> None:
    settings = relay_settings(settings, 25)
    tenant = make_tenant(db)
    with pytest.raises(SendRefusedError, match="customer email"):
        queue(db, settings, tenant.id, customer="c9", email="anna at example.hu")
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(messages)).scalar_one() == 0
    with pytest.raises(SendRefusedError, match="line breaks"):
        queue(db, settings, tenant.id, sender="a@b.example\r\nBcc: victim@example.com")


def test_the_worker_task_sends_when_woken(db: Engine, settings: Settings, relay: Relay) -> None:
    settings = relay_settings(settings, relay.port)
    tenant = make_tenant(db)

    async def scenario() -> None:
        outbox_worker = worker(db, settings, poll_seconds=60)
        await outbox_worker.start()
        try:
            await asyncio.to_thread(queue, db, settings, tenant.id)
            outbox_worker.wake()
            for _ in range(200):
                if relay.received:
                    break
                await asyncio.sleep(0.02)
        finally:
            await outbox_worker.stop()

    asyncio.run(scenario())
    assert len(relay.received) == 1
    for _ in range(100):  # the event is committed right after the relay's answer
        if stored_events(db):
            break
    assert [event.type for event in stored_events(db)] == ["sent"]


def test_a_dead_relay_fails_the_whole_batch_at_once(db: Engine, settings: Settings) -> None:
    settings = relay_settings(settings, free_port())
    tenant = make_tenant(db)
    for n in range(3):
        queue(db, settings, tenant.id, message_id=f"m{n}")
    assert run(worker(db, settings, Clock())) == 3
    rows = outbox_rows(db)
    assert [(row.attempts, row.claimed_until) for row in rows] == [(1, None)] * 3
    assert all(row.last_error.startswith("connect: ") for row in rows)


def test_rows_the_lease_cannot_cover_are_released_unsent(
    db: Engine, settings: Settings, relay: Relay
) -> None:
    settings = relay_settings(settings, relay.port)
    tenant = make_tenant(db)
    for n in range(3):
        queue(db, settings, tenant.id, message_id=f"m{n}")
    # A lease shorter than a few SMTP timeouts leaves room for one message per batch.
    short = worker(db, settings, Clock(), lease=dt.timedelta(seconds=60))
    assert run(short) == 3
    assert len(relay.received) == 1
    assert [(row.attempts, row.claimed_until) for row in outbox_rows(db)] == [(0, None)] * 2
    run(short)
    run(short)
    assert len(relay.received) == 3


def test_erasure_cancels_unsent_mail(db: Engine, settings: Settings) -> None:
    settings = relay_settings(settings, free_port())
    tenant = make_tenant(db)
    response = queue(db, settings, tenant.id)
    key = message_key(db, response.message_id)
    with write_transaction(db) as conn:
        assert cancel_pending(conn, tenant_id=tenant.id + 1, message_ids=[key]) == 0  # another salon's
        dropped = cancel_pending(conn, tenant_id=tenant.id, message_ids=[key])
    assert dropped == 1
    assert outbox_rows(db) == []


def _wired() -> bool:
    return "sender" in MessageRequest.model_fields


@pytest.mark.skipif(not _wired(), reason="the messages/routes.py `send` wiring is not applied yet")
def test_post_messages_with_send_true(db: Engine, settings: Settings, relay: Relay) -> None:
    settings = relay_settings(settings, relay.port)
    tenant = make_tenant(db)
    key = make_api_key(db, tenant.id)
    app = create_app(settings, engine=db)
    body = message_request().model_dump() | {"sender": "Bella <hello@bella.example>"}

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        ):
            headers = {"Authorization": f"Bearer {key}"}
            first = await client.post("/api/v1/messages", json=body, headers=headers)
            for _ in range(200):
                if relay.received:
                    break
                await asyncio.sleep(0.02)
            with write_transaction(db) as conn:
                conn.execute(
                    update(customers).values(suppressed_at=utcnow(), suppression_reason="complained")
                )
            second = await client.post(
                "/api/v1/messages", json=body | {"message_id": "again"}, headers=headers
            )
            return first, second

    first, second = asyncio.run(scenario())
    assert first.status_code == 201, first.text
    assert len(relay.received) == 1
    assert relay.received[0].message()["From"] == "Bella <hello@bella.example>"
    assert second.status_code == 409
    assert "complained" in second.text
