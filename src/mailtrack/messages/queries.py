"""Queries of the messages domain: customers, campaigns, messages and their links."""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, insert, select, update

from mailtrack.db import utcnow
from mailtrack.messages.tables import campaigns, customers, links, messages

CHANNELS = ("marketing", "transactional", "system")
# External ids of erased customers start with this; nothing is recorded for them any more (GDPR).
ERASED_PREFIX = "erased-"
SOURCES = ("campaign", "automation", "system")


def fold_for_search(text: str) -> str:
    """Lower-case text with accents removed, so "Kovács" is found by "kovacs"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def hour_floor(moment: dt.datetime) -> dt.datetime:
    """The start of the hour holding `moment`."""
    return moment.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class CustomerIn:
    """A customer as the platform names them."""

    external_id: str
    name: str = ""
    email: str = ""


def upsert_customers(conn: Connection, *, tenant_id: int, people: Sequence[CustomerIn]) -> dict[str, int]:
    """Create missing customers and refresh the names and emails of known ones; returns external id → id."""
    latest = {person.external_id: person for person in people}
    known = _customer_ids(conn, tenant_id=tenant_id, external_ids=latest)
    fresh = [person for key, person in latest.items() if key not in known]
    now = utcnow()
    if fresh:
        conn.execute(
            insert(customers),
            [
                {
                    "tenant_id": tenant_id,
                    "external_id": person.external_id,
                    "name": person.name,
                    "email": person.email,
                    "search_text": fold_for_search(f"{person.name} {person.email}"),
                    "created_at": now,
                }
                for person in fresh
            ],
        )
        known.update(_customer_ids(conn, tenant_id=tenant_id, external_ids=[p.external_id for p in fresh]))
    fresh_ids = {person.external_id for person in fresh}
    returning = [p for p in latest.values() if p.external_id not in fresh_ids and (p.name or p.email)]
    if returning:
        _refresh_identities(conn, tenant_id=tenant_id, people=returning)
    return known


def _refresh_identities(conn: Connection, *, tenant_id: int, people: Sequence[CustomerIn]) -> None:
    rows = conn.execute(
        select(customers.c.external_id, customers.c.name, customers.c.email).where(
            customers.c.tenant_id == tenant_id, customers.c.external_id.in_([p.external_id for p in people])
        )
    ).all()
    stored = {row.external_id: (row.name, row.email) for row in rows}
    for person in people:
        name, email = (
            person.name or stored[person.external_id][0],
            person.email or stored[person.external_id][1],
        )
        if (name, email) != stored[person.external_id]:
            conn.execute(
                update(customers)
                .where(customers.c.tenant_id == tenant_id, customers.c.external_id == person.external_id)
                .values(name=name, email=email, search_text=fold_for_search(f"{name} {email}"))
            )


def _customer_ids(conn: Connection, *, tenant_id: int, external_ids: Iterable[str]) -> dict[str, int]:
    result: dict[str, int] = {}
    keys = list(external_ids)
    for start in range(0, len(keys), 500):
        rows = conn.execute(
            select(customers.c.external_id, customers.c.id).where(
                customers.c.tenant_id == tenant_id, customers.c.external_id.in_(keys[start : start + 500])
            )
        )
        result.update({row.external_id: row.id for row in rows})
    return result


def ensure_campaign(conn: Connection, *, tenant_id: int, name: str, source: str) -> int:
    """The id of the salon's campaign with that name, created on first use."""
    found = conn.execute(
        select(campaigns.c.id).where(campaigns.c.tenant_id == tenant_id, campaigns.c.name == name)
    ).scalar_one_or_none()
    if found is None:
        found = conn.execute(
            insert(campaigns)
            .values(tenant_id=tenant_id, name=name, source=source, created_at=utcnow())
            .returning(campaigns.c.id)
        ).scalar_one()
    return int(found)


@dataclass(frozen=True, slots=True)
class MessageIn:
    """A message to register: who it goes to, and how it is classified."""

    external_id: str
    customer_id: int
    channel: str
    source: str
    campaign_id: int | None
    tracked: bool
    cohort_at: dt.datetime
    smtp_message_id: str | None = None


def create_messages(conn: Connection, *, tenant_id: int, batch: Sequence[MessageIn]) -> dict[str, int]:
    """Register messages whose external id is new; returns external id → id for the whole batch."""
    wanted = {item.external_id: item for item in batch}
    known = message_ids(conn, tenant_id=tenant_id, external_ids=list(wanted))
    fresh = [item for key, item in wanted.items() if key not in known]
    if fresh:
        now = utcnow()
        conn.execute(
            insert(messages),
            [
                {
                    "tenant_id": tenant_id,
                    "external_id": item.external_id,
                    "customer_id": item.customer_id,
                    "channel": item.channel,
                    "source": item.source,
                    "campaign_id": item.campaign_id,
                    "tracked": item.tracked,
                    "created_at": now,
                    "cohort_at": hour_floor(item.cohort_at),
                    "smtp_message_id": item.smtp_message_id,
                }
                for item in fresh
            ],
        )
        known.update(
            message_ids(conn, tenant_id=tenant_id, external_ids=[item.external_id for item in fresh])
        )
    return known


def message_ids(conn: Connection, *, tenant_id: int, external_ids: Sequence[str]) -> dict[str, int]:
    """External id → id for the salon's messages among `external_ids`."""
    result: dict[str, int] = {}
    for start in range(0, len(external_ids), 500):
        rows = conn.execute(
            select(messages.c.external_id, messages.c.id).where(
                messages.c.tenant_id == tenant_id,
                messages.c.external_id.in_(external_ids[start : start + 500]),
            )
        )
        result.update({row.external_id: row.id for row in rows})
    return result


def store_links(conn: Connection, *, tenant_id: int, message_id: int, urls: Sequence[str]) -> None:
    """Keep a message's link targets, by position; the only place a click can redirect to."""
    if urls:
        conn.execute(
            insert(links),
            [
                {"tenant_id": tenant_id, "message_id": message_id, "position": position, "url": url}
                for position, url in enumerate(urls)
            ],
        )


def link_url(conn: Connection, *, tenant_id: int, message_id: int, position: int) -> str | None:
    """The URL stored for a message's link, or None."""
    return conn.execute(
        select(links.c.url).where(
            links.c.tenant_id == tenant_id, links.c.message_id == message_id, links.c.position == position
        )
    ).scalar_one_or_none()


@dataclass(slots=True)
class UrlClicks:
    """Whether a person clicked a URL of a message yet, whichever of its links carried it."""

    clicked: bool


@dataclass(slots=True)
class LinkState:
    """A link's target and its human clicks so far."""

    url: str
    human_clicks: int
    # Shared by the links of one message with the same URL (a header and a button to the same page):
    # a message counts once in the URL's unique clicks.
    url_clicks: UrlClicks


LinkKey = tuple[int, int, int]
"""(tenant, message, position)"""


def link_states(conn: Connection, *, keys: Sequence[LinkKey]) -> dict[LinkKey, LinkState]:
    """The stored links among `keys`."""
    wanted = set(keys)
    messages_by_tenant: dict[int, set[int]] = {}
    for tenant_id, message_id, _ in wanted:
        messages_by_tenant.setdefault(tenant_id, set()).add(message_id)
    result: dict[LinkKey, LinkState] = {}
    by_url: dict[tuple[int, int, str], UrlClicks] = {}
    for tenant_id, message_set in sorted(messages_by_tenant.items()):
        message_list = sorted(message_set)
        for start in range(0, len(message_list), 500):
            # Tenant and message ids seek the primary key on every backend; a row-value IN list of
            # (tenant, message, position) made SQLite scan the whole links table for every chunk.
            chunk = message_list[start : start + 500]
            rows = conn.execute(
                select(
                    links.c.tenant_id, links.c.message_id, links.c.position, links.c.url, links.c.human_clicks
                ).where(links.c.tenant_id == tenant_id, links.c.message_id.in_(chunk))
            )
            for row in rows:  # every link of these messages: a wanted one's twins decide its uniqueness
                shared = by_url.setdefault((row.tenant_id, row.message_id, row.url), UrlClicks(False))
                shared.clicked = shared.clicked or row.human_clicks > 0
                key = (row.tenant_id, row.message_id, row.position)
                if key in wanted:
                    result[key] = LinkState(row.url, row.human_clicks, shared)
    return result


def add_link_clicks(conn: Connection, *, clicks: dict[LinkKey, int]) -> None:
    """Add human clicks to links."""
    if clicks:
        conn.execute(
            update(links)
            .where(
                links.c.tenant_id == bindparam("k_tenant"),
                links.c.message_id == bindparam("k_message"),
                links.c.position == bindparam("k_position"),
            )
            .values(human_clicks=links.c.human_clicks + bindparam("k_clicks")),
            [
                {"k_tenant": t, "k_message": m, "k_position": p, "k_clicks": n}
                for (t, m, p), n in sorted(clicks.items())
            ],
        )


def link_positions_for_urls(
    conn: Connection, *, tenant_id: int, wanted: Sequence[tuple[int, str]]
) -> dict[tuple[int, str], int]:
    """(message, URL) → position, adding a link row for a URL the message did not have yet (imports)."""
    message_set = sorted({message_id for message_id, _ in wanted})
    existing: dict[int, dict[str, int]] = {message_id: {} for message_id in message_set}
    for start in range(0, len(message_set), 500):
        rows = conn.execute(
            select(links.c.message_id, links.c.position, links.c.url).where(
                and_(links.c.tenant_id == tenant_id, links.c.message_id.in_(message_set[start : start + 500]))
            )
        )
        for row in rows:
            existing[row.message_id].setdefault(row.url, row.position)
    new_rows = []
    for message_id, url in wanted:
        positions = existing[message_id]
        if url not in positions:
            positions[url] = max(positions.values(), default=-1) + 1
            new_rows.append(
                {"tenant_id": tenant_id, "message_id": message_id, "position": positions[url], "url": url}
            )
    if new_rows:
        conn.execute(insert(links), new_rows)
    return {(message_id, url): existing[message_id][url] for message_id, url in wanted}


def mark_do_not_track(conn: Connection, *, tenant_id: int, message_id: int) -> None:
    """Remember that the recipient of this message asked not to be tracked (DNT / GPC)."""
    customer_id = (
        select(messages.c.customer_id)
        .where(messages.c.tenant_id == tenant_id, messages.c.id == message_id)
        .scalar_subquery()
    )
    conn.execute(
        update(customers)
        .where(
            customers.c.tenant_id == tenant_id,
            customers.c.id == customer_id,
            customers.c.do_not_track.is_(False),
        )
        .values(do_not_track=True)
    )
