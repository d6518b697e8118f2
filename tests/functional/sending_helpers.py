"""Helpers of the sending tests: settings for the test relay, queueing messages, running the worker."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from sqlalchemy import Engine, func, select

from mailtrack.config import Settings
from mailtrack.db import utcnow, write_transaction
from mailtrack.delivery.outbox import Backoff, OutboxWorker
from mailtrack.delivery.outbox_tables import outbox
from mailtrack.delivery.sending import queue_for_sending
from mailtrack.delivery.smtp_relay import SmtpRelay
from mailtrack.messages.routes import CustomerBody, MessageRequest, MessageResponse
from mailtrack.messages.tables import customers, messages
from mailtrack.messages.tokens import TokenCodec
from mailtrack.tracking.tables import events
from tests.conftest import TEST_SECRET

CODEC = TokenCodec([TEST_SECRET])
BOUNCE_DOMAIN = "bounces.mailtrack.example"


def relay_settings(settings: Settings, port: int, **changes: Any) -> Settings:
    """Settings sending through the test relay on `port`: plain SMTP, a VERP bounce domain, 3 tries."""
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_security": "none",
        "mail_from": "Bella Szalon <hello@bella.example>",
        "bounce_domain": BOUNCE_DOMAIN,
        "smtp_max_attempts": 3,
    }
    return settings.model_copy(update={**values, **changes})


def message_request(
    channel: str = "marketing", customer: str = "c1", email: str = "anna@example.hu", **changes: Any
) -> MessageRequest:
    """A message to Anna, with HTML and text, to send (marketing unless told otherwise)."""
    values: dict[str, Any] = {
        "customer": CustomerBody(id=customer, name="Anna Kovács", email=email),
        "channel": channel,
        "subject": "Őszi akció: 20% kedvezmény",
        "html": '<p>Szia Anna!</p><p><a href="https://bella.example/foglalas">Foglalj most</a></p>',
        "text": "Szia Anna! Foglalj most: https://bella.example/foglalas",
        "send": True,
    }
    return MessageRequest(**{**values, **changes})


def queue(engine: Engine, settings: Settings, tenant_id: int, **kwargs: Any) -> MessageResponse:
    """Register and queue a message as `"send": true` does (kwargs: message_request's, and sender)."""
    sender = kwargs.pop("sender", None)
    with write_transaction(engine) as conn:
        return queue_for_sending(
            conn, CODEC, settings, tenant_id=tenant_id, body=message_request(**kwargs), sender=sender
        )


class Clock:
    """A settable clock for the worker, a little ahead so that what was just queued is due."""

    def __init__(self) -> None:
        """Now, plus five seconds."""
        self.now = utcnow() + dt.timedelta(seconds=5)

    def __call__(self) -> dt.datetime:
        return self.now


def worker(engine: Engine, settings: Settings, clock: Clock | None = None, **kwargs: Any) -> OutboxWorker:
    """A worker on the configured relay, with a 60 s backoff base and no jitter."""
    relay = SmtpRelay.from_settings(settings, ssl_context=kwargs.pop("ssl_context", None))
    relay.local_hostname = "mailtrack.test"
    return OutboxWorker(
        engine,
        relay,
        max_attempts=settings.smtp_max_attempts,
        backoff=Backoff(base_seconds=60, jitter=0),
        clock=clock or utcnow,
        **kwargs,
    )


def run(outbox_worker: OutboxWorker) -> int:
    """One batch of the worker; how many rows it claimed."""
    return asyncio.run(outbox_worker.run_once())


def stored_events(engine: Engine) -> list[Any]:
    """Every stored event, oldest first."""
    with engine.connect() as conn:
        return list(conn.execute(select(events).order_by(events.c.id)))


def outbox_rows(engine: Engine) -> list[Any]:
    """The outbox's rows, oldest first."""
    with engine.connect() as conn:
        return list(conn.execute(select(outbox).order_by(outbox.c.id)))


def customer_row(engine: Engine, external_id: str = "c1") -> Any:
    """The customer with this external id."""
    with engine.connect() as conn:
        return conn.execute(select(customers).where(customers.c.external_id == external_id)).one()


def message_key(engine: Engine, external_id: str) -> int:
    """The id of the message with this external id."""
    with engine.connect() as conn:
        return int(
            conn.execute(select(messages.c.id).where(messages.c.external_id == external_id)).scalar_one()
        )


def count(engine: Engine, table: Any) -> int:
    """Rows in a table."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
