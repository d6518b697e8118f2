"""A customer's data on request: export everything we hold about them, or erase it (GDPR art. 15, 17).

Erasure deletes the customer's events and per-customer open hours, replaces their identity (external
id, name, email, search text) and their messages' external and SMTP ids with opaque values, zeroes
their per-customer aggregates and marks them do-not-track. Message and link rows stay (anonymous now),
so the links in mail they already received still redirect, while ingest records no open or click for
a do-not-track customer. The rollups hold no one's data and are left alone, so past figures still add
up. Like the retention jobs, this module reaches into other domains' tables on purpose: it is the one
place that must know every table holding personal data.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Connection, and_, bindparam, delete, false, func, select, update

from mailtrack.analytics.tables import customer_open_hours
from mailtrack.delivery.outbox import cancel_pending
from mailtrack.delivery.tables import quarantine
from mailtrack.maintenance.partitions import forget_customer_external_ids
from mailtrack.messages.queries import ERASED_PREFIX
from mailtrack.messages.tables import campaigns, customers, links, messages
from mailtrack.tenants.queries import get_settings
from mailtrack.tracking.tables import events

log = logging.getLogger(__name__)


class ExportedCustomer(BaseModel):
    """Identity, flags and the aggregates kept about the customer."""

    id: str = Field(description="The platform's own customer id.")
    name: str
    email: str
    created_at: dt.datetime
    do_not_track: bool
    suppressed_at: dt.datetime | None
    suppression_reason: str | None
    unsubscribed_at: dt.datetime | None
    complained_at: dt.datetime | None
    hard_bounced_at: dt.datetime | None
    soft_bounces: int
    last_sent_at: dt.datetime | None
    last_open_at: dt.datetime | None
    last_click_at: dt.datetime | None
    tracked_sent: int
    messages_opened: int
    messages_clicked: int


class ExportedMessage(BaseModel):
    """One message sent to the customer (no body or subject is ever stored)."""

    id: str = Field(description="The platform's own message id.")
    channel: str
    source: str
    campaign: str | None
    tracked: bool
    smtp_message_id: str | None
    cohort_at: dt.datetime
    sent_at: dt.datetime | None
    delivered_at: dt.datetime | None
    bounced_at: dt.datetime | None
    bounce_kind: str | None
    opened_at: dt.datetime | None
    machine_opened_at: dt.datetime | None
    clicked_at: dt.datetime | None
    unsubscribed_at: dt.datetime | None
    complained_at: dt.datetime | None
    open_count: int
    click_count: int


class ExportedEvent(BaseModel):
    """One raw event, every stored field."""

    type: str
    occurred_at: dt.datetime
    message_id: str
    device: str | None
    client: str | None
    os: str | None
    user_agent: str | None
    ip: str | None
    ip_anonymized: bool
    referer: str | None
    link_position: int | None
    url: str | None
    machine: bool
    machine_reason: str | None
    bounce_kind: str | None
    status: str | None
    diagnostic: str | None
    external_event_id: str | None


class ExportedLink(BaseModel):
    """A link in a message to the customer that they clicked."""

    message_id: str
    position: int
    url: str
    human_clicks: int


class ExportedOpenHour(BaseModel):
    """How often the customer first opened a message in an hour of the week (salon time)."""

    weekday_hour: int = Field(description="0 = Monday 00:00-00:59 … 167 = Sunday 23:00-23:59.")
    opens: int


class ExportedBounce(BaseModel):
    """Bounce or complaint mail to the customer's address that could not be tied to one message."""

    received_at: dt.datetime
    kind: str
    bounce_kind: str | None
    status: str | None
    recipient: str | None
    original_message_id: str | None
    subject: str | None


class StoragePeriods(BaseModel):
    """How long the salon keeps this data."""

    raw_event_days: int = Field(description="Raw events are deleted after this many days (0: kept).")
    full_ip_days: int = Field(description="Full addresses are kept this many days (0: never, -1: none).")


class CustomerExport(BaseModel):
    """Everything Mailtrack holds about one customer of one salon."""

    exported_at: dt.datetime
    salon_id: int
    customer: ExportedCustomer
    storage: StoragePeriods
    messages: list[ExportedMessage]
    events: list[ExportedEvent]
    link_clicks: list[ExportedLink]
    open_hours: list[ExportedOpenHour]
    quarantined_mail: list[ExportedBounce]


@dataclass(frozen=True, slots=True)
class Erasure:
    """What erasing one customer removed."""

    customer_key: int  # our internal id: the only way to refer to the customer afterwards
    events_deleted: int
    messages_unlinked: int
    open_hours_deleted: int
    quarantine_deleted: int


def find_customer_key(conn: Connection, *, tenant_id: int, external_id: str) -> int | None:
    """Our id of the salon's customer with that external id; None when unknown (or erased)."""
    if external_id.startswith(ERASED_PREFIX):
        return None
    found = conn.execute(
        select(customers.c.id).where(
            customers.c.tenant_id == tenant_id, customers.c.external_id == external_id
        )
    ).scalar_one_or_none()
    return None if found is None else int(found)


def export_customer(
    conn: Connection, *, tenant_id: int, external_id: str, now: dt.datetime
) -> CustomerExport | None:
    """Everything held about the customer, or None when the salon has no such customer."""
    key = find_customer_key(conn, tenant_id=tenant_id, external_id=external_id)
    if key is None:
        return None
    person = conn.execute(select(customers).where(customers.c.id == key)).one()._asdict()
    settings = get_settings(conn, tenant_id=tenant_id)
    return CustomerExport(
        exported_at=now,
        salon_id=tenant_id,
        customer=ExportedCustomer.model_validate({**person, "id": person["external_id"]}),
        storage=StoragePeriods(
            raw_event_days=settings.retention_days, full_ip_days=settings.ip_anonymize_days
        ),
        messages=_messages(conn, tenant_id, key),
        events=_events(conn, tenant_id, key),
        link_clicks=_link_clicks(conn, tenant_id, key),
        open_hours=[
            ExportedOpenHour(weekday_hour=row.weekday_hour, opens=row.opens)
            for row in conn.execute(
                select(customer_open_hours.c.weekday_hour, customer_open_hours.c.opens)
                .where(customer_open_hours.c.tenant_id == tenant_id, customer_open_hours.c.customer_id == key)
                .order_by(customer_open_hours.c.weekday_hour)
            )
        ],
        quarantined_mail=[
            ExportedBounce.model_validate(row._asdict())
            for row in conn.execute(
                select(quarantine)
                .where(_quarantined_for(tenant_id, person["email"]))
                .order_by(quarantine.c.received_at)
            )
        ],
    )


def _quarantined_for(tenant_id: int, email: str) -> ColumnElement[bool]:
    # Only this salon's quarantine: rows of no salon (SMTP listener, CLI) may come from anyone's mail.
    address = email.strip().lower()
    if not address:
        return false()
    return and_(quarantine.c.tenant_id == tenant_id, func.lower(quarantine.c.recipient) == address)


def _messages(conn: Connection, tenant_id: int, key: int) -> list[ExportedMessage]:
    query = (
        select(messages, campaigns.c.name.label("campaign"))
        .outerjoin(campaigns, campaigns.c.id == messages.c.campaign_id)
        .where(messages.c.tenant_id == tenant_id, messages.c.customer_id == key)
        .order_by(messages.c.cohort_at, messages.c.id)
    )
    return [
        ExportedMessage.model_validate({**row._asdict(), "id": row.external_id})
        for row in conn.execute(query)
    ]


def _events(conn: Connection, tenant_id: int, key: int) -> list[ExportedEvent]:
    link = and_(
        links.c.tenant_id == events.c.tenant_id,
        links.c.message_id == events.c.message_id,
        links.c.position == events.c.link_position,
    )
    query = (
        select(events, messages.c.external_id.label("message_external_id"), links.c.url)
        .join(messages, messages.c.id == events.c.message_id)
        .outerjoin(links, link)
        .where(events.c.tenant_id == tenant_id, events.c.customer_id == key)
        .order_by(events.c.occurred_at, events.c.id)
    )
    result = []
    for row in conn.execute(query):
        values: dict[str, Any] = row._asdict()
        values["message_id"] = values.pop("message_external_id")
        result.append(ExportedEvent.model_validate(values))
    return result


def _link_clicks(conn: Connection, tenant_id: int, key: int) -> list[ExportedLink]:
    query = (
        select(messages.c.external_id, links.c.position, links.c.url, links.c.human_clicks)
        .join(links, and_(links.c.tenant_id == messages.c.tenant_id, links.c.message_id == messages.c.id))
        .where(messages.c.tenant_id == tenant_id, messages.c.customer_id == key, links.c.human_clicks > 0)
        .order_by(messages.c.id, links.c.position)
    )
    return [
        ExportedLink(
            message_id=row.external_id, position=row.position, url=row.url, human_clicks=row.human_clicks
        )
        for row in conn.execute(query)
    ]


def _opaque() -> str:
    return ERASED_PREFIX + secrets.token_hex(12)


_ANONYMOUS_CUSTOMER: dict[str, Any] = {
    "name": "",
    "email": "",
    "search_text": "",
    "do_not_track": True,  # ingest records no open or click of theirs any more; links still redirect
    "suppressed_at": None,
    "suppression_reason": None,
    "soft_bounces": 0,
    "last_sent_at": None,
    "last_open_at": None,
    "last_click_at": None,
    "tracked_sent": 0,
    "tracked_bounced": 0,
    "messages_opened": 0,
    "messages_clicked": 0,
    "w_sent": 0.0,
    "w_bounced": 0.0,
    "w_opened": 0.0,
    "w_clicked": 0.0,
    "unsubscribed_at": None,
    "complained_at": None,
    "hard_bounced_at": None,
}


def erase_customer(conn: Connection, *, tenant_id: int, external_id: str) -> Erasure | None:
    """Erase the customer's personal data (in one write transaction); None for an unknown customer."""
    key = find_customer_key(conn, tenant_id=tenant_id, external_id=external_id)
    if key is None:
        return None
    # The ids first, while the events still tell which ids were theirs.
    forget_customer_external_ids(conn, tenant_id=tenant_id, customer_id=key)
    deleted_events = conn.execute(
        delete(events).where(events.c.tenant_id == tenant_id, events.c.customer_id == key)
    ).rowcount
    deleted_hours = conn.execute(
        delete(customer_open_hours).where(
            customer_open_hours.c.tenant_id == tenant_id, customer_open_hours.c.customer_id == key
        )
    ).rowcount
    email = conn.execute(select(customers.c.email).where(customers.c.id == key)).scalar_one()
    deleted_quarantine = conn.execute(delete(quarantine).where(_quarantined_for(tenant_id, email))).rowcount
    message_keys = list(
        conn.execute(
            select(messages.c.id).where(messages.c.tenant_id == tenant_id, messages.c.customer_id == key)
        ).scalars()
    )
    cancel_pending(conn, tenant_id=tenant_id, message_ids=message_keys)  # unsent mail stays unsent
    if message_keys:
        # The platform knows its message ids and the SMTP Message-ID: either would lead back to the person.
        conn.execute(
            update(messages)
            .where(messages.c.tenant_id == tenant_id, messages.c.id == bindparam("k_id"))
            .values(external_id=bindparam("k_external"), smtp_message_id=None),
            [{"k_id": message_key, "k_external": _opaque()} for message_key in message_keys],
        )
    conn.execute(
        update(customers)
        .where(customers.c.tenant_id == tenant_id, customers.c.id == key)
        .values(external_id=_opaque(), **_ANONYMOUS_CUSTOMER)
    )
    log.info(
        "gdpr: erased customer #%d of salon %d (%d events deleted, %d messages unlinked)",
        key,
        tenant_id,
        deleted_events,
        len(message_keys),
    )
    return Erasure(key, deleted_events, len(message_keys), deleted_hours, deleted_quarantine)
