"""The one way events enter the database: a batch, written with its aggregates in one transaction.

Live hits (through the group-commit writer), imports, provider webhooks and the demo seeder all call
`ingest_batch`, so every path classifies, deduplicates and aggregates the same way. Per batch it:
classifies opens and clicks, drops events already stored (by external id), replays the events against
each message's state (first human open, first click, bounce…) under a row lock, then writes the events
(COPY on PostgreSQL), the message states, the customer aggregates and the rollups.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Executable, bindparam, case, or_, select, update

from mailtrack.analytics import rollups
from mailtrack.analytics.score_counts import fold_score_changes
from mailtrack.db import bulk_insert_rows, utcnow
from mailtrack.delivery.suppression import suppress_repeated_soft_bounces
from mailtrack.messages.queries import ERASED_PREFIX, LinkKey, LinkState, add_link_clicks, link_states
from mailtrack.messages.tables import customers, messages
from mailtrack.tenants.tables import tenant_settings, tenants
from mailtrack.tracking.ipaddr import anonymize_ip
from mailtrack.tracking.tables import EVENT_TYPES, event_external_ids, events
from mailtrack.tracking.useragent import UserAgentInfo, classify_user_agent, is_apple_proxy_ip

# A click this soon after the message left is a security scanner following links on delivery.
SCANNER_CLICK_WINDOW = dt.timedelta(seconds=10)
# Another link of the same message clicked this soon after the last one: a scanner sweeping every link.
LINK_SWEEP_WINDOW = dt.timedelta(seconds=1)
# Each tracked message weighs 2 ** (days since this epoch / 30) in a customer's engagement sums.
WEIGHT_EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
WEIGHT_HALF_LIFE_DAYS = 30.0
_SELECT_CHUNK = 500


@dataclass(slots=True)
class EventIn:
    """One event to store, its message already resolved."""

    tenant_id: int
    message_id: int
    type: str
    occurred_at: dt.datetime
    user_agent: str | None = None
    ip: str | None = None
    referer: str | None = None
    link_position: int | None = None
    machine_reason: str | None = None  # set by callers that know better than the user agent (HEAD)
    bounce_kind: str | None = None
    status: str | None = None
    diagnostic: str | None = None
    external_event_id: str | None = None
    # Precomputed classification (the seeder knows the truth); None = classify the user agent.
    agent: UserAgentInfo | None = None


@dataclass(slots=True)
class IngestResult:
    """What a batch did."""

    stored: int = 0
    duplicates: int = 0
    unknown_messages: int = 0
    not_tracked: int = 0  # opens and clicks refused: untracked message or do-not-track customer


@lru_cache(maxsize=64)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def message_weight(sent: dt.datetime) -> float:
    """A message's recency weight in the engagement sums (ratios of sums are independent of now)."""
    days = (sent - WEIGHT_EPOCH).total_seconds() / 86400.0
    return float(2.0 ** (days / WEIGHT_HALF_LIFE_DAYS))


@dataclass(slots=True)
class _MessageState:
    id: int
    tenant_id: int
    customer_id: int
    channel: str
    source: str
    campaign_id: int
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
    open_count: int
    click_count: int
    last_click_at: dt.datetime | None
    last_click_position: int | None
    do_not_track: bool
    erased: bool
    timezone: str
    ip_anonymize_days: int  # the salon's IP policy, read with the state to save a query per batch
    changed: bool = False


_STATE_COLUMNS = [
    messages.c.id,
    messages.c.tenant_id,
    messages.c.customer_id,
    messages.c.channel,
    messages.c.source,
    messages.c.campaign_id,
    messages.c.tracked,
    messages.c.cohort_at,
    messages.c.sent_at,
    messages.c.delivered_at,
    messages.c.bounced_at,
    messages.c.bounce_kind,
    messages.c.opened_at,
    messages.c.machine_opened_at,
    messages.c.clicked_at,
    messages.c.unsubscribed_at,
    messages.c.complained_at,
    messages.c.open_count,
    messages.c.click_count,
    messages.c.last_click_at,
    messages.c.last_click_position,
]
_MUTABLE = [column.name for column in _STATE_COLUMNS[8:]]


class _CustomerDelta:
    __slots__ = ("counts", "earliest", "latest")

    def __init__(self) -> None:
        self.counts: dict[str, float] = defaultdict(float)
        self.latest: dict[str, dt.datetime] = {}
        self.earliest: dict[str, dt.datetime] = {}

    def bump(self, name: str, amount: float = 1.0) -> None:
        self.counts[name] += amount

    def seen(self, name: str, moment: dt.datetime) -> None:
        if name not in self.latest or self.latest[name] < moment:
            self.latest[name] = moment

    def first(self, name: str, moment: dt.datetime) -> None:
        if name not in self.earliest or self.earliest[name] > moment:
            self.earliest[name] = moment


_CUSTOMER_COUNTERS = (
    "tracked_sent",
    "tracked_bounced",
    "messages_opened",
    "messages_clicked",
    "soft_bounces",
)
_CUSTOMER_WEIGHTS = ("w_sent", "w_bounced", "w_opened", "w_clicked")
_CUSTOMER_LATEST = ("last_sent_at", "last_open_at", "last_click_at")
# When the customer first unsubscribed, complained or hard-bounced: the reasons for suppression.
_CUSTOMER_FIRST = ("unsubscribed_at", "complained_at", "hard_bounced_at")


def ingest_batch(
    conn: Connection,
    batch: Sequence[EventIn],
    *,
    classify: Callable[[str | None], UserAgentInfo] = classify_user_agent,
) -> IngestResult:
    """Store a batch of events with their aggregates; run inside one write transaction."""
    result = IngestResult()
    fresh = _drop_known_duplicates(conn, batch, result)
    states = _lock_message_states(conn, sorted({event.message_id for event in fresh}))
    links = link_states(
        conn,
        keys=[
            (event.tenant_id, event.message_id, event.link_position)
            for event in fresh
            if event.type == "clicked" and event.link_position is not None
        ],
    )
    link_clicks: dict[LinkKey, int] = defaultdict(int)
    tally = rollups.Tally()
    deltas: dict[int, _CustomerDelta] = defaultdict(_CustomerDelta)
    rows: list[tuple[Any, ...]] = []
    for event in sorted(fresh, key=lambda item: item.occurred_at):
        state = states.get(event.message_id)
        if state is None or state.tenant_id != event.tenant_id or event.type not in EVENT_TYPES:
            result.unknown_messages += 1
            continue
        if state.erased:
            # An erased customer's late hits, unsubscribes and bounces would store their address, agent
            # or a diagnostic quoting their email again: nothing more is recorded for them.
            result.not_tracked += 1
            continue
        if event.type in ("opened", "clicked") and (not state.tracked or state.do_not_track):
            # Privacy is enforced here, where every path meets: no open or click is kept for mail that
            # was not to be tracked, nor for a customer who asked not to be (their old mail included).
            result.not_tracked += 1
            continue
        agent = _classify(event, state, classify)
        link_key = (event.tenant_id, event.message_id, event.link_position or 0)
        link = links.get(link_key) if event.link_position is not None else None
        if _apply(event, state, agent, link, tally, deltas[state.customer_id]):
            link_clicks[link_key] += 1
        rows.append(_event_row(event, state, agent))
    bulk_insert_rows(conn, events, _EVENT_COLUMNS, rows)
    if conn.dialect.name == "postgresql":  # partitioned events: the unique external ids live apart
        tenant, external, occurred = _EXTERNAL_ID_AT
        known = [(row[tenant], row[external], row[occurred]) for row in rows if row[external] is not None]
        bulk_insert_rows(conn, event_external_ids, _EXTERNAL_ID_COLUMNS, known)
    _write_message_states(conn, [state for state in states.values() if state.changed])
    _write_customer_deltas(conn, deltas)
    add_link_clicks(conn, clicks=link_clicks)
    tally.write(conn)
    fold_score_changes(conn)  # the score changes the customer updates above appended
    result.stored = len(rows)
    return result


def _drop_known_duplicates(conn: Connection, batch: Sequence[EventIn], result: IngestResult) -> list[EventIn]:
    seen: set[tuple[int, str]] = set()
    by_tenant: dict[int, list[str]] = defaultdict(list)
    for event in batch:
        if event.external_event_id is not None:
            by_tenant[event.tenant_id].append(event.external_event_id)
    # On PostgreSQL one index of event_external_ids answers, instead of one per partition of events.
    table = event_external_ids if conn.dialect.name == "postgresql" else events
    for tenant_id, keys in by_tenant.items():
        for start in range(0, len(keys), _SELECT_CHUNK):
            stored = conn.execute(
                select(table.c.external_event_id).where(
                    table.c.tenant_id == tenant_id,
                    table.c.external_event_id.in_(keys[start : start + _SELECT_CHUNK]),
                )
            ).scalars()
            seen.update((tenant_id, key) for key in stored if key is not None)
    fresh = []
    for event in batch:
        if event.external_event_id is not None:
            key = (event.tenant_id, event.external_event_id)
            if key in seen:
                result.duplicates += 1
                continue
            seen.add(key)
        fresh.append(event)
    return fresh


def _lock_message_states(conn: Connection, message_ids: list[int]) -> dict[int, _MessageState]:
    # FOR UPDATE (PostgreSQL; SQLite already holds its single write lock) makes "first open" decisions
    # exact when several app nodes ingest hits for the same message at once. Ids are sorted: no deadlock.
    states: dict[int, _MessageState] = {}
    for start in range(0, len(message_ids), _SELECT_CHUNK):
        for row in conn.execute(_LOCK_MESSAGE_STATES, {"ids": message_ids[start : start + _SELECT_CHUNK]}):
            values = row._asdict()
            values["campaign_id"] = values["campaign_id"] or 0
            states[row.id] = _MessageState(**values)
    return states


def _classify(
    event: EventIn, state: _MessageState, classify: Callable[[str | None], UserAgentInfo]
) -> UserAgentInfo | None:
    if event.type not in ("opened", "clicked"):
        return None
    agent = event.agent or classify(event.user_agent)
    reason = event.machine_reason
    if reason is None and not agent.machine and event.type == "opened" and is_apple_proxy_ip(event.ip):
        reason = "apple_privacy_proxy"
    if (
        reason is None
        and not agent.machine
        and event.type == "clicked"
        and state.sent_at is not None
        and event.occurred_at - state.sent_at < SCANNER_CLICK_WINDOW
    ):
        reason = "click_too_soon"
    if (
        reason is None
        and not agent.machine
        and event.type == "clicked"
        and state.last_click_at is not None
        and state.last_click_position != event.link_position
        and event.occurred_at - state.last_click_at <= LINK_SWEEP_WINDOW
    ):
        reason = "link_sweep"
    if reason is not None and not agent.machine:
        return UserAgentInfo(agent.device, agent.client, agent.os, True, reason)
    return agent


def _apply(
    event: EventIn,
    state: _MessageState,
    agent: UserAgentInfo | None,
    link: LinkState | None,
    tally: rollups.Tally,
    customer: _CustomerDelta,
) -> bool:
    """Move the message's state forward and count what changed; True for a human click on a known link."""
    human_link_click = False
    at = event.occurred_at
    key = rollups.CohortKey(state.tenant_id, state.cohort_at, state.channel, state.source, state.campaign_id)
    weight = message_weight(state.cohort_at) if state.tracked else 0.0
    kind = event.type
    if kind == "sent" and state.sent_at is None:
        state.sent_at = at
        tally.count(key, "sent")
        customer.seen("last_sent_at", at)
        if state.tracked:
            tally.count(key, "tracked")
            customer.bump("tracked_sent")
            customer.bump("w_sent", weight)
    elif kind == "delivered" and state.delivered_at is None:
        state.delivered_at = at
        tally.count(key, "delivered")
        if state.tracked:
            tally.count(key, "tracked_delivered")
    elif kind == "bounced":
        _apply_bounce(event, state, key, weight, tally, customer)
    elif kind == "opened" and agent is not None:
        state.open_count += 1
        if agent.machine:
            tally.count(key, "machine_opens")
            if state.machine_opened_at is None:
                state.machine_opened_at = at
                tally.count(key, "machine_opened")
        else:
            tally.count(key, "opens")
            _first_human_open(state, at, agent, key, weight, tally, customer)
    elif kind == "clicked" and agent is not None:
        state.click_count += 1
        state.last_click_at, state.last_click_position = at, event.link_position
        if agent.machine:
            tally.count(key, "machine_clicks")
        else:
            tally.count(key, "clicks")
            # A click proves the message was opened even when images were blocked.
            _first_human_open(state, at, agent, key, weight, tally, customer)
            if link is not None:
                tally.link(key, link.url, unique=not link.url_clicks.clicked)
                link.url_clicks.clicked = True
                link.human_clicks += 1
                human_link_click = True
            if state.clicked_at is None:
                state.clicked_at = at
                tally.count(key, "clicked")
                customer.bump("messages_clicked")
                customer.bump("w_clicked", weight)
            customer.seen("last_click_at", at)
    elif kind == "unsubscribed" and state.unsubscribed_at is None:
        state.unsubscribed_at = at
        tally.count(key, "unsubscribed")
        customer.first("unsubscribed_at", at)
    elif kind == "complained" and state.complained_at is None:
        state.complained_at = at
        tally.count(key, "complained")
        customer.first("complained_at", at)
    state.changed = True
    return human_link_click


def _first_human_open(
    state: _MessageState,
    at: dt.datetime,
    agent: UserAgentInfo,
    key: rollups.CohortKey,
    weight: float,
    tally: rollups.Tally,
    customer: _CustomerDelta,
) -> None:
    customer.seen("last_open_at", at)
    if state.opened_at is not None:
        return
    state.opened_at = at
    tally.count(key, "opened")
    tally.open(key, agent.device, agent.client, at - (state.sent_at or state.cohort_at))
    tally.open_hour(state.tenant_id, state.customer_id, at.astimezone(_zone(state.timezone)))
    customer.bump("messages_opened")
    customer.bump("w_opened", weight)


def _apply_bounce(
    event: EventIn,
    state: _MessageState,
    key: rollups.CohortKey,
    weight: float,
    tally: rollups.Tally,
    customer: _CustomerDelta,
) -> None:
    hard = event.bounce_kind == "hard"
    if state.bounced_at is None:
        state.bounced_at = event.occurred_at
        state.bounce_kind = "hard" if hard else "soft"
        tally.count(key, "bounced")
        tally.count(key, "hard_bounced" if hard else "soft_bounced")
        if state.tracked:
            tally.count(key, "tracked_bounced")
            customer.bump("tracked_bounced")
            customer.bump("w_bounced", weight)
    elif hard and state.bounce_kind == "soft":
        # A retry that ends in a permanent failure: the message counts as hard-bounced from now on.
        state.bounce_kind = "hard"
        tally.count(key, "soft_bounced", -1)
        tally.count(key, "hard_bounced")
    if hard:
        customer.first("hard_bounced_at", event.occurred_at)
    else:
        customer.bump("soft_bounces")


_EVENT_COLUMNS = tuple(
    "tenant_id message_id customer_id type occurred_at device client os user_agent ip ip_anonymized "  # noqa: SIM905  (three lines, not nineteen)
    "referer link_position machine machine_reason bounce_kind status diagnostic external_event_id".split()
)
_EXTERNAL_ID_COLUMNS = ("tenant_id", "external_event_id", "occurred_at")
_EXTERNAL_ID_AT = tuple(_EVENT_COLUMNS.index(name) for name in _EXTERNAL_ID_COLUMNS)


def _event_row(event: EventIn, state: _MessageState, agent: UserAgentInfo | None) -> tuple[Any, ...]:
    """The event's values in `_EVENT_COLUMNS` order (tuples: a dict per event cost the batch 8 %)."""
    ip = None if state.ip_anonymize_days < 0 else event.ip
    truncate_now = ip is not None and state.ip_anonymize_days == 0
    return (
        event.tenant_id,
        event.message_id,
        state.customer_id,
        event.type,
        event.occurred_at,
        agent.device if agent else None,
        agent.client if agent else None,
        agent.os if agent else None,
        event.user_agent,
        anonymize_ip(ip) if truncate_now and ip else ip,
        truncate_now,
        event.referer,
        event.link_position,
        agent.machine if agent else False,
        (agent.reason or None) if agent and agent.machine else None,
        event.bounce_kind,
        event.status,
        event.diagnostic,
        event.external_event_id,
    )


# Statements are built once: constructing SQLAlchemy expressions per batch cost more than running them.
_UPDATE_MESSAGE_STATE = (
    update(messages)
    .where(messages.c.id == bindparam("state_id"))
    .values({name: bindparam(f"new_{name}", type_=messages.c[name].type) for name in _MUTABLE})
)


def _customer_delta_statement() -> Executable:
    values: dict[str, Any] = {}
    for name in (*_CUSTOMER_COUNTERS, *_CUSTOMER_WEIGHTS):
        values[name] = customers.c[name] + bindparam(f"d_{name}", type_=customers.c[name].type)
    for name in _CUSTOMER_LATEST:
        column = customers.c[name]
        new = bindparam(f"d_{name}", type_=column.type)
        values[name] = case((or_(column.is_(None), column < new), new), else_=column)
    for name in _CUSTOMER_FIRST:
        column = customers.c[name]
        new = bindparam(f"d_{name}", type_=column.type)
        values[name] = case((new.is_(None), column), (or_(column.is_(None), column > new), new), else_=column)
    return update(customers).where(customers.c.id == bindparam("customer_key")).values(values)


_UPDATE_CUSTOMER_DELTAS = _customer_delta_statement()
_SUPPRESS_CUSTOMER = (
    update(customers)
    .where(customers.c.id == bindparam("customer_key"), customers.c.suppressed_at.is_(None))
    .values(
        suppressed_at=bindparam("at", type_=customers.c.suppressed_at.type),
        suppression_reason=bindparam("reason"),
    )
)
_LOCK_MESSAGE_STATES = (
    select(
        *_STATE_COLUMNS,
        customers.c.do_not_track,
        customers.c.external_id.startswith(ERASED_PREFIX).label("erased"),
        tenants.c.timezone,
        tenant_settings.c.ip_anonymize_days,
    )
    .join(customers, customers.c.id == messages.c.customer_id)
    .join(tenants, tenants.c.id == messages.c.tenant_id)
    .join(tenant_settings, tenant_settings.c.tenant_id == messages.c.tenant_id)
    .where(messages.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(messages.c.id)
    .with_for_update(of=messages)
)


def _write_message_states(conn: Connection, changed: list[_MessageState]) -> None:
    if not changed:
        return
    conn.execute(
        _UPDATE_MESSAGE_STATE,
        [
            {"state_id": state.id, **{f"new_{name}": getattr(state, name) for name in _MUTABLE}}
            for state in changed
        ],
    )


def _write_customer_deltas(conn: Connection, deltas: dict[int, _CustomerDelta]) -> None:
    if not deltas:
        return
    params = []
    for customer_id in sorted(deltas):  # a stable order keeps concurrent batches from deadlocking
        delta = deltas[customer_id]
        row: dict[str, Any] = {"customer_key": customer_id}
        row.update(
            {f"d_{name}": delta.counts.get(name, 0) for name in (*_CUSTOMER_COUNTERS, *_CUSTOMER_WEIGHTS)}
        )
        row.update({f"d_{name}": delta.latest.get(name) for name in _CUSTOMER_LATEST})
        row.update({f"d_{name}": delta.earliest.get(name) for name in _CUSTOMER_FIRST})
        params.append(row)
    conn.execute(_UPDATE_CUSTOMER_DELTAS, params)
    _suppress(conn, deltas)
    soft = [customer_id for customer_id in sorted(deltas) if deltas[customer_id].counts.get("soft_bounces")]
    suppress_repeated_soft_bounces(conn, customer_ids=soft, at=utcnow())


# Why a customer stops getting marketing mail, by the aggregate that records the event.
_SUPPRESSING = (
    ("complained_at", "complained"),
    ("unsubscribed_at", "unsubscribed"),
    ("hard_bounced_at", "hard_bounce"),
)


def _suppress(conn: Connection, deltas: dict[int, _CustomerDelta]) -> None:
    params = []
    for customer_id in sorted(deltas):
        causes = [
            (moment, reason)
            for name, reason in _SUPPRESSING
            if (moment := deltas[customer_id].earliest.get(name)) is not None
        ]
        if causes:
            moment, reason = min(causes)  # the first cause is what suppressed them
            params.append({"customer_key": customer_id, "at": moment, "reason": reason})
    if params:
        conn.execute(_SUPPRESS_CUSTOMER, params)
