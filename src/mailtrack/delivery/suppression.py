"""Suppression by repeated soft bounces, and the check that keeps suppressed customers from marketing mail.

Hard bounces, complaints and unsubscribes suppress a customer at ingest (tracking/ingest.py). Soft
bounces only do once they repeat: `suppress_repeated_soft_bounces` counts, per customer, the distinct
messages that soft-bounced since the last sign that mail reaches them (a delivery report, an open or a
click), and suppresses for marketing mail at the salon's `soft_bounce_threshold` (0 = never). Distinct
messages, because one message delayed three times is one problem, not three; and our own relay's
give-ups (`smtp:relay:` events: it could not reach the relay at all) never count, so a relay outage
cannot suppress a whole customer base. This module imports no ingest code, so ingest may call it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from sqlalchemy import Connection, func, or_, select, update

from mailtrack.messages.tables import customers
from mailtrack.tenants.tables import tenant_settings
from mailtrack.tracking.tables import events

SOFT_BOUNCE_REASON = "repeated_soft_bounces"
# External event ids of soft bounces recorded because our relay was unreachable or refused us.
RELAY_FAILURE_PREFIX = "smtp:relay:"
SIGNS_OF_LIFE = ("delivered", "opened", "clicked")


def suppression_of(conn: Connection, *, tenant_id: int, external_id: str) -> tuple[dt.datetime, str] | None:
    """When and why the salon's customer (by the platform's id) is suppressed, or None."""
    row = conn.execute(
        select(customers.c.suppressed_at, customers.c.suppression_reason).where(
            customers.c.tenant_id == tenant_id, customers.c.external_id == external_id
        )
    ).first()
    if row is None or row.suppressed_at is None:
        return None
    return row.suppressed_at, row.suppression_reason or "suppressed"


def suppress_repeated_soft_bounces(
    conn: Connection, *, customer_ids: Collection[int], at: dt.datetime
) -> list[int]:
    """Suppress, among `customer_ids`, those whose soft bounces reached their salon's threshold."""
    if not customer_ids:
        return []
    # The lifetime counter kept at ingest is a cheap upper bound: most customers stop here.
    candidates = conn.execute(
        select(customers.c.id, customers.c.tenant_id, tenant_settings.c.soft_bounce_threshold)
        .join(tenant_settings, tenant_settings.c.tenant_id == customers.c.tenant_id)
        .where(
            customers.c.id.in_(sorted(set(customer_ids))),
            customers.c.suppressed_at.is_(None),
            tenant_settings.c.soft_bounce_threshold > 0,
            customers.c.soft_bounces >= tenant_settings.c.soft_bounce_threshold,
        )
        .order_by(customers.c.id)
    ).all()
    suppressed = []
    for row in candidates:
        if _recent_soft_bounced_messages(conn, row.tenant_id, row.id) >= row.soft_bounce_threshold:
            conn.execute(
                update(customers)
                .where(customers.c.id == row.id, customers.c.suppressed_at.is_(None))
                .values(suppressed_at=at, suppression_reason=SOFT_BOUNCE_REASON)
            )
            suppressed.append(row.id)
    return suppressed


def _recent_soft_bounced_messages(conn: Connection, tenant_id: int, customer_id: int) -> int:
    last_alive = (
        select(func.max(events.c.occurred_at))
        .where(
            events.c.tenant_id == tenant_id,
            events.c.customer_id == customer_id,
            events.c.type.in_(SIGNS_OF_LIFE),
        )
        .scalar_subquery()
    )
    count = conn.execute(
        select(func.count(func.distinct(events.c.message_id))).where(
            events.c.tenant_id == tenant_id,
            events.c.customer_id == customer_id,
            events.c.type == "bounced",
            events.c.bounce_kind == "soft",
            or_(
                events.c.external_event_id.is_(None),
                ~events.c.external_event_id.startswith(RELAY_FAILURE_PREFIX, autoescape=True),
            ),
            or_(last_alive.is_(None), events.c.occurred_at > last_alive),
        )
    ).scalar_one()
    return int(count)
