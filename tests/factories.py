"""Factories: build salons, customers and messages in a test's database with sensible defaults."""

from __future__ import annotations

import datetime as dt
import itertools
import re

from sqlalchemy import Engine

from mailtrack.config import Settings
from mailtrack.db import write_transaction
from mailtrack.messages.queries import CustomerIn, MessageIn, create_messages, store_links, upsert_customers
from mailtrack.messages.routes import MessageRequest, register_message
from mailtrack.messages.tokens import TokenCodec
from mailtrack.tenants.queries import Tenant, create_api_key, create_tenant
from mailtrack.tracking.ingest import EventIn, IngestResult, ingest_batch

_counter = itertools.count(1)


def make_tenant(engine: Engine, *, name: str | None = None, timezone: str = "Europe/Budapest") -> Tenant:
    """A salon."""
    with write_transaction(engine) as conn:
        return create_tenant(conn, name=name or f"Salon {next(_counter)}", timezone=timezone)


def make_api_key(engine: Engine, tenant_id: int) -> str:
    """An API key for the salon."""
    with write_transaction(engine) as conn:
        return create_api_key(conn, tenant_id=tenant_id)


def make_customer(
    engine: Engine, tenant_id: int, *, name: str = "Anna Kovács", email: str | None = None
) -> int:
    """A customer of the salon; returns its id."""
    external_id = f"c{next(_counter)}"
    with write_transaction(engine) as conn:
        ids = upsert_customers(
            conn,
            tenant_id=tenant_id,
            people=[CustomerIn(external_id, name, email or f"{external_id}@example.com")],
        )
    return ids[external_id]


def make_message(
    engine: Engine,
    tenant_id: int,
    customer_id: int,
    *,
    sent_at: dt.datetime,
    channel: str = "marketing",
    source: str = "campaign",
    tracked: bool = True,
    links: tuple[str, ...] = (),
) -> int:
    """A registered message (not yet sent); returns its id."""
    external_id = f"m{next(_counter)}"
    with write_transaction(engine) as conn:
        ids = create_messages(
            conn,
            tenant_id=tenant_id,
            batch=[MessageIn(external_id, customer_id, channel, source, None, tracked, sent_at)],
        )
        store_links(conn, tenant_id=tenant_id, message_id=ids[external_id], urls=list(links))
    return ids[external_id]


def ingest(engine: Engine, *events: EventIn) -> IngestResult:
    """Ingest events in one batch."""
    with write_transaction(engine) as conn:
        return ingest_batch(conn, list(events))


def make_instrumented_message(
    engine: Engine, settings: Settings, *, html: str = "<p>hi</p>"
) -> tuple[str, list[str]]:
    """A new salon's marketing message, instrumented as the API does; its pixel path and click paths."""
    tenant = make_tenant(engine)
    body = MessageRequest.model_validate({"customer": {"id": "c1"}, "channel": "marketing", "html": html})
    codec = TokenCodec([settings.secret_key.get_secret_value()])
    with write_transaction(engine) as conn:
        message = register_message(conn, codec, settings, tenant_id=tenant.id, body=body)
    assert message.html is not None
    base = re.escape(settings.base_url)
    pixel = re.search(rf'src="{base}(/o/[^"]+)"', message.html)
    assert pixel is not None, message.html
    return pixel.group(1), re.findall(rf'href="{base}(/c/[^"]+)"', message.html)
