"""The inbound SMTP listener on a real socket: real bounce, DSN and ARF messages delivered with smtplib."""

from __future__ import annotations

import re
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from mailtrack.delivery import tables as delivery_tables
from mailtrack.delivery.smtp_listener import start_listener
from mailtrack.tracking.tables import events
from tests.factories import make_tenant
from tests.unit.delivery.bounce_mail import CODEC, dsn, sent_message, verp_address

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bounces"
# Every VERP address in the corpus has this shape; tests swap in one that names a real message.
CORPUS_VERP = re.compile(rb"bounces\+[a-z2-7]{32}@bounces\.mailtrack\.example")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def listener(engine: Engine) -> Iterator[int]:
    """A running listener on a free loopback port, storing into this test's database; yields the port."""
    delivery_tables.quarantine.create(engine, checkfirst=True)
    port = _free_port()
    controller = start_listener(engine, CODEC, "127.0.0.1", port)
    try:
        yield port
    finally:
        controller.stop()


def deliver(
    port: int, raw: bytes, rcpt: str, *, size_hint: bool = True, options: tuple[str, ...] = ()
) -> tuple[int, bytes]:
    """Deliver one message as a bouncing MTA does (null envelope sender); returns the DATA reply."""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # smtplib sends bytes as they are
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("mx.example.hu")
        code, reply = smtp.mail("", [*options, *([f"SIZE={len(raw)}"] if size_hint else [])])
        assert code == 250, reply
        code, reply = smtp.rcpt(rcpt)
        assert code == 250, reply
        return smtp.data(raw)


def _event_types(engine: Engine) -> list[tuple[int, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(events.c.message_id, events.c.type, events.c.bounce_kind).order_by(events.c.id)
        )
        return [(row.message_id, row.type, row.bounce_kind) for row in rows]


def test_a_dsn_to_a_verp_address_is_stored(engine: Engine, listener: int) -> None:
    tenant = make_tenant(engine)
    message_id = sent_message(engine, tenant.id)
    code, reply = deliver(listener, dsn(), verp_address(tenant.id, message_id))
    assert code == 250
    assert reply.startswith(b"2.0.0 OK: bounce, bounced")
    assert _event_types(engine) == [(message_id, "bounced", "hard")]


@pytest.mark.parametrize(
    ("name", "event", "bounce_kind"),
    [
        ("postfix_user_unknown.eml", "bounced", "hard"),
        ("gmail_over_quota.eml", "bounced", "soft"),
        ("exim_user_unknown.eml", "bounced", "hard"),
        ("qmail_no_mailbox.eml", "bounced", "hard"),
        ("office365_delayed.eml", "bounced", "soft"),
        ("postfix_delivered.eml", "delivered", None),
        ("arf_yahoo.eml", "complained", None),
    ],
)
def test_real_mta_reports_are_attributed_and_stored(
    engine: Engine, listener: int, name: str, event: str, bounce_kind: str | None
) -> None:
    tenant = make_tenant(engine)
    message_id = sent_message(engine, tenant.id)
    verp = verp_address(tenant.id, message_id)
    raw = CORPUS_VERP.sub(verp.encode(), (CORPUS / name).read_bytes())
    # Feedback loops write to a fixed address; their report names the VERP sender inside.
    rcpt = "fbl@mailtrack.example" if name.startswith("arf_") else verp
    code, _ = deliver(listener, raw, rcpt)
    assert code == 250
    assert _event_types(engine) == [(message_id, event, bounce_kind)]
    assert deliver(listener, raw, rcpt)[0] == 250  # the MTA retried: still one event
    assert len(_event_types(engine)) == 1


def test_every_corpus_message_is_accepted_and_nothing_is_lost(engine: Engine, listener: int) -> None:
    names = sorted(path.name for path in CORPUS.glob("*.eml"))
    for name in names:
        code, reply = deliver(listener, (CORPUS / name).read_bytes(), "bounces@bounces.mailtrack.example")
        assert code == 250, (name, reply)
    auto_replies = [name for name in names if name.startswith("oof_")]
    with engine.connect() as conn:
        kept = conn.execute(select(func.count()).select_from(delivery_tables.quarantine)).scalar_one()
    # No corpus message names a message of this database: all but the auto-replies wait for review.
    assert kept == len(names) - len(auto_replies)
    assert _event_types(engine) == []


def test_an_internationalized_bounce_over_smtputf8_is_accepted(engine: Engine, listener: int) -> None:
    tenant = make_tenant(engine)
    message_id = sent_message(engine, tenant.id)
    raw = dsn(diagnostic="smtp; 550 5.1.1 <józsef@példa.hu>: Recipient address rejected: User unknown")
    code, reply = deliver(
        listener,
        raw.replace(b"anna@example.hu", "józsef@példa.hu".encode()),
        verp_address(tenant.id, message_id),
        options=("SMTPUTF8",),
    )
    assert code == 250, reply
    assert _event_types(engine) == [(message_id, "bounced", "hard")]


def test_an_oversized_message_is_refused_with_552(engine: Engine, listener: int) -> None:
    huge = b"Subject: big\r\n\r\n" + (b"a" * 998 + b"\r\n") * 10_600
    with smtplib.SMTP("127.0.0.1", listener, timeout=30) as smtp:
        smtp.ehlo("mx.example.hu")
        assert smtp.mail("", [f"SIZE={len(huge)}"])[0] == 552  # declared up front: refused at once
    code, _ = deliver(listener, huge, "bounces@bounces.mailtrack.example", size_hint=False)
    assert code == 552  # undeclared: refused after DATA, having kept none of it
    assert _event_types(engine) == []


def test_a_storage_failure_answers_451_so_the_mta_retries(engine: Engine, listener: int) -> None:
    delivery_tables.quarantine.drop(engine)
    code, reply = deliver(listener, dsn(), "bounces@bounces.mailtrack.example")
    assert code == 451, reply
