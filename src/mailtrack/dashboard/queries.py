"""Reads and writes only the dashboard needs; everything is scoped by the signed-in manager's salon.

Figures shared with the API (cards, scores, links, devices, the event log) are not here: the dashboard
calls the analytics functions for those, so the page and `/api/v1/stats` can never disagree.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from sqlalchemy import Connection, exists, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from mailtrack.analytics import metrics
from mailtrack.analytics.queries import CohortFilter, cohort_sums
from mailtrack.analytics.tables import MESSAGE_COUNTERS, customer_open_hours, rollup_messages
from mailtrack.dashboard.tables import manager_sessions
from mailtrack.db import utcnow
from mailtrack.messages.queries import fold_for_search
from mailtrack.messages.tables import campaigns, customers, links, messages
from mailtrack.tenants.tables import managers, settings_audit, tenants
from mailtrack.tracking.tables import events

# --- sessions ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionManager:
    """A manager as a session sees them: their salon and current session version."""

    manager_id: int
    tenant_id: int
    email: str
    version: int
    tenant_name: str
    timezone: str


def session_manager(conn: Connection, *, manager_id: int) -> SessionManager | None:
    """The manager with their salon and session version, or None when the manager is gone."""
    row = conn.execute(
        select(
            managers.c.id,
            managers.c.tenant_id,
            managers.c.email,
            func.coalesce(manager_sessions.c.version, 0).label("version"),
            tenants.c.name,
            tenants.c.timezone,
        )
        .select_from(managers)
        .join(tenants, tenants.c.id == managers.c.tenant_id)
        .outerjoin(manager_sessions, manager_sessions.c.manager_id == managers.c.id)
        .where(managers.c.id == manager_id)
    ).first()
    if row is None:
        return None
    return SessionManager(row.id, row.tenant_id, row.email, int(row.version), row.name, row.timezone)


def bump_session_version(conn: Connection, *, manager_id: int, tenant_id: int) -> int:
    """Invalidate every session of the manager (logout); returns the new version."""
    now = utcnow()
    values = {"manager_id": manager_id, "tenant_id": tenant_id, "version": 1, "updated_at": now}
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(manager_sessions).values(**values)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[manager_sessions.c.manager_id],
            set_={"version": manager_sessions.c.version + 1, "updated_at": now},
        )
    )
    version: int = conn.execute(
        select(manager_sessions.c.version).where(manager_sessions.c.manager_id == manager_id)
    ).scalar_one()
    return version


# --- settings audit ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditLine:
    """One settings change: when, by whom, which field, from what to what."""

    changed_at: dt.datetime
    manager_email: str | None
    field: str
    old_value: str | None
    new_value: str | None


def audit_trail(conn: Connection, *, tenant_id: int, limit: int = 50) -> list[AuditLine]:
    """The salon's latest settings changes, newest first."""
    rows = conn.execute(
        select(
            settings_audit.c.changed_at,
            managers.c.email,
            settings_audit.c.field,
            settings_audit.c.old_value,
            settings_audit.c.new_value,
        )
        .select_from(settings_audit)
        .outerjoin(managers, managers.c.id == settings_audit.c.manager_id)
        .where(settings_audit.c.tenant_id == tenant_id)
        .order_by(settings_audit.c.changed_at.desc(), settings_audit.c.id.desc())
        .limit(limit)
    )
    return [AuditLine(r.changed_at, r.email, r.field, r.old_value, r.new_value) for r in rows]


# --- mail presence, campaigns -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MailPresence:
    """Whether the salon has registered any mail, and any tracked mail (for helpful empty states)."""

    any_mail: bool
    any_tracked: bool


def mail_presence(conn: Connection, *, tenant_id: int) -> MailPresence:
    """Two indexed EXISTS probes: no count over the salon's messages."""
    mine = messages.c.tenant_id == tenant_id
    any_mail = conn.execute(select(exists().where(mine))).scalar_one()
    any_tracked = conn.execute(select(exists().where(mine, messages.c.tracked.is_(True)))).scalar_one()
    return MailPresence(bool(any_mail), bool(any_tracked))


def campaign_names(conn: Connection, *, tenant_id: int) -> list[str]:
    """The salon's campaign names, alphabetically (for the filter)."""
    return list(
        conn.execute(
            select(campaigns.c.name).where(campaigns.c.tenant_id == tenant_id).order_by(campaigns.c.name)
        ).scalars()
    )


@dataclass(frozen=True, slots=True)
class CampaignTotals:
    """A campaign's rollup sums over a cohort."""

    name: str
    source: str
    totals: metrics.MessageTotals


def campaign_totals(conn: Connection, *, cohort: CohortFilter, limit: int = 12) -> list[CampaignTotals]:
    """Per-campaign sums of the cohort's rollup rows (its campaign filter is ignored), most sent first."""
    sums = cohort_sums(
        conn,
        cohort=replace(cohort, campaign_id=None),
        hourly=rollup_messages,
        counters=MESSAGE_COUNTERS,
        group_by=("campaign_id",),
        where=lambda table: [table.c.campaign_id != 0],
    )
    if not sums:
        return []
    names = conn.execute(
        select(campaigns.c.id, campaigns.c.name, campaigns.c.source).where(
            campaigns.c.tenant_id == cohort.tenant_id, campaigns.c.id.in_([key[0] for key in sums])
        )
    )
    found = [
        CampaignTotals(
            row.name,
            row.source,
            metrics.MessageTotals(**dict(zip(MESSAGE_COUNTERS, sums[(row.id,)], strict=True))),
        )
        for row in names
    ]
    found.sort(key=lambda campaign: (-campaign.totals.sent, campaign.name))
    return found[:limit]


def observed_open_hours(conn: Connection, *, tenant_id: int) -> dict[int, int]:
    """Hour of the week (0 = Monday 00:00, salon time) → customers' first human opens seen then."""
    table = customer_open_hours.c
    rows = conn.execute(
        select(table.weekday_hour, func.sum(table.opens).label("opens"))
        .where(table.tenant_id == tenant_id)
        .group_by(table.weekday_hour)
    )
    return {int(r.weekday_hour): int(r.opens) for r in rows}


# --- customers --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CustomerRow:
    """A customer's identity and status."""

    id: int
    external_id: str
    name: str
    email: str
    do_not_track: bool
    suppressed_at: dt.datetime | None
    suppression_reason: str | None
    last_sent_at: dt.datetime | None
    last_open_at: dt.datetime | None
    last_click_at: dt.datetime | None
    unsubscribed_at: dt.datetime | None
    complained_at: dt.datetime | None
    hard_bounced_at: dt.datetime | None


_CUSTOMER_COLUMNS = [customers.c[name] for name in CustomerRow.__dataclass_fields__]


def search_customers(conn: Connection, *, tenant_id: int, query: str, limit: int = 20) -> list[CustomerRow]:
    """The salon's customers whose name or email contains the query (case and accents ignored)."""
    folded = fold_for_search(query).strip()
    if not folded:
        return []
    rows = conn.execute(
        select(*_CUSTOMER_COLUMNS)
        .where(customers.c.tenant_id == tenant_id, customers.c.search_text.contains(folded, autoescape=True))
        .order_by(customers.c.last_sent_at.desc().nulls_last(), customers.c.name, customers.c.id)
        .limit(limit)
    )
    return [CustomerRow(**r._asdict()) for r in rows]


def customer_by_external_id(conn: Connection, *, tenant_id: int, external_id: str) -> CustomerRow | None:
    """The salon's customer with that platform id, or None (another salon's customer is None too)."""
    row = conn.execute(
        select(*_CUSTOMER_COLUMNS).where(
            customers.c.tenant_id == tenant_id, customers.c.external_id == external_id
        )
    ).first()
    return CustomerRow(**row._asdict()) if row else None


@dataclass(frozen=True, slots=True)
class MessageState:
    """One message to a customer and what happened to it (the state ingest keeps)."""

    id: int
    external_id: str
    channel: str
    source: str
    campaign: str | None
    tracked: bool
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


def customer_messages(
    conn: Connection, *, tenant_id: int, customer_id: int, limit: int = 100
) -> list[MessageState]:
    """The customer's latest messages with their state, newest first."""
    m = messages.c
    rows = conn.execute(
        select(
            m.id,
            m.external_id,
            m.channel,
            m.source,
            campaigns.c.name.label("campaign"),
            *(m[name] for name in list(MessageState.__dataclass_fields__)[5:]),
        )
        .select_from(messages)
        .outerjoin(campaigns, campaigns.c.id == m.campaign_id)
        .where(m.tenant_id == tenant_id, m.customer_id == customer_id)
        .order_by(m.cohort_at.desc(), m.id.desc())
        .limit(limit)
    )
    return [MessageState(**r._asdict()) for r in rows]


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """A raw event of one of the customer's messages (kept for the salon's retention period)."""

    message_id: int
    type: str
    occurred_at: dt.datetime
    device: str | None
    client: str | None
    os: str | None
    machine: bool
    machine_reason: str | None
    bounce_kind: str | None
    status: str | None
    diagnostic: str | None
    url: str | None
    user_agent: str | None
    ip: str | None
    referer: str | None


def customer_events(
    conn: Connection, *, tenant_id: int, customer_id: int, message_ids: list[int], limit: int = 2000
) -> dict[int, list[HistoryEvent]]:
    """Message id → its events in time order, for the given messages of the customer."""
    if not message_ids:
        return {}
    e = events.c
    rows = conn.execute(
        select(
            e.message_id,
            e.type,
            e.occurred_at,
            e.device,
            e.client,
            e.os,
            e.machine,
            e.machine_reason,
            e.bounce_kind,
            e.status,
            e.diagnostic,
            links.c.url,
            e.user_agent,
            e.ip,
            e.referer,
        )
        .select_from(events)
        .outerjoin(
            links,
            (links.c.tenant_id == e.tenant_id)
            & (links.c.message_id == e.message_id)
            & (links.c.position == e.link_position),
        )
        .where(e.tenant_id == tenant_id, e.customer_id == customer_id, e.message_id.in_(message_ids))
        .order_by(e.occurred_at, e.id)
        .limit(limit)
    )
    grouped: dict[int, list[HistoryEvent]] = {}
    for r in rows:
        grouped.setdefault(r.message_id, []).append(HistoryEvent(**r._asdict()))
    return grouped
