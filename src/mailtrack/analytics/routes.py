"""HTTP: the analytics JSON API — stats, the event log, customers by score and score explanations."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import Connection

from mailtrack.analytics import metrics, queries
from mailtrack.analytics.params import (
    CursorText,
    DayText,
    choice,
    day,
    decode_cursor,
    encode_cursor,
    from_micros,
    micros,
    one_of,
    text,
    unprocessable,
)
from mailtrack.analytics.sendtime import best_send_time, customer_best_hours
from mailtrack.db import utcnow
from mailtrack.maintenance.routes import customer_links
from mailtrack.maintenance.security import TEXT_PATTERN, ErrorOut
from mailtrack.messages.queries import CHANNELS, SOURCES
from mailtrack.tenants.auth import API_KEY_RESPONSES, ApiTenant, EngineDep
from mailtrack.tenants.queries import get_tenant
from mailtrack.tracking.tables import EVENT_TYPES

router = APIRouter(prefix="/api/v1", tags=["analytics"], responses=API_KEY_RESPONSES)
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "no such customer"}}


class CardsOut(BaseModel):
    """Headline figures of a cohort; rates are fractions 0–1 (in `change`: differences of fractions)."""

    sent: int
    delivered: int
    open_rate: float
    click_rate: float
    bounce_rate: float
    click_to_open_rate: float
    machine_open_share: float


class PeriodOut(BaseModel):
    """Local calendar days, both inclusive, in the salon's timezone."""

    from_: dt.date = Field(serialization_alias="from")
    to: dt.date
    days: int
    timezone: str


class BucketOut(BaseModel):
    """Scored customers whose score falls in `range`; percent is 0–100 of all scored customers."""

    range: str
    customers: int
    percent: float


class EngagedOut(BaseModel):
    """A customer by the platform's own id."""

    customer_id: str
    name: str
    score: int


class LinkOut(BaseModel):
    """A link's human clicks; unique_clicks counts messages with a human click on it."""

    url: str
    clicks: int
    unique_clicks: int


class CustomerRef(BaseModel):
    """A customer as the platform knows them."""

    id: str
    name: str
    email: str


class EventOut(BaseModel):
    """One event, with the customer, message, campaign and (for clicks) link it concerns."""

    type: str
    occurred_at: dt.datetime
    customer: CustomerRef
    message_id: str
    channel: str
    campaign: str | None
    url: str | None
    device: str | None
    client: str | None
    os: str | None
    machine: bool
    machine_reason: str | None
    bounce: str | None
    status: str | None
    diagnostic: str | None
    ip: str | None
    referer: str | None
    user_agent: str | None


class StatsOut(BaseModel):
    """Every dashboard figure for a period (see docs/metrics.md for each definition)."""

    period: PeriodOut
    previous_period: PeriodOut
    cards: CardsOut
    previous: CardsOut
    change: CardsOut
    counts: dict[str, float] = Field(description="The rollup sums the cards are computed from.")
    engagement_buckets: list[BucketOut]
    top_engaged: list[EngagedOut]
    best_send_time: dict[str, Any] | None
    top_links: list[LinkOut]
    devices: dict[str, float]
    clients: dict[str, float]
    recent_events: list[EventOut]


class EventsPage(BaseModel):
    """A page of events, newest first; pass `next` as `cursor` for the following page."""

    events: list[EventOut]
    next: str | None = Field(description="`cursor` for the following page; null on the last one.")


class CustomerSlotOut(BaseModel):
    """When a customer opens mail: the local weekday and hour to send them mail."""

    weekday: str
    hour: int
    opens: int


class ScoredCustomerOut(BaseModel):
    """A scored customer; last_engagement is their latest human open or click."""

    customer_id: str
    name: str
    email: str
    score: int
    last_engagement: dt.datetime | None
    best_send_time: CustomerSlotOut | None = Field(
        default=None, description="Their own best weekday and hour (local), from ≥ 5 first opens; else null."
    )


class CustomersPage(BaseModel):
    """A page of customers, best score first; pass `next` as `cursor` for the following page."""

    customers: list[ScoredCustomerOut]
    next: str | None = Field(description="`cursor` for the following page; null on the last one.")


class ScoreInputsOut(BaseModel):
    """The stored aggregates the score is computed from."""

    tracked_sent: int
    tracked_bounced: int
    tracked_delivered: int
    messages_opened: int
    messages_clicked: int
    weighted_open_share: float | None
    weighted_click_share: float | None
    do_not_track: bool
    last_sent_at: dt.datetime | None
    last_open_at: dt.datetime | None
    last_click_at: dt.datetime | None
    unsubscribed_at: dt.datetime | None
    complained_at: dt.datetime | None
    hard_bounced_at: dt.datetime | None


class ScoreExplanationOut(BaseModel):
    """A customer's engagement score with its inputs, the formula and the reasoning in plain words."""

    customer: CustomerRef
    score: int | None = Field(description="null: the customer has no score (explanation says why).")
    bucket: str | None
    formula: str
    explanation: str
    inputs: ScoreInputsOut


def _timezone(conn: Connection, tenant_id: int) -> str:
    tenant = get_tenant(conn, tenant_id=tenant_id)
    if tenant is None:  # the key authenticated a moment ago; the salon was deleted since
        raise HTTPException(status.HTTP_404_NOT_FOUND, "salon not found")
    return tenant.timezone


# --- stats ------------------------------------------------------------------------------------------


def _period_out(period: metrics.Period, timezone: str) -> PeriodOut:
    return PeriodOut(from_=period.first, to=period.last, days=period.days, timezone=timezone)


def _event_out(record: queries.EventRecord) -> EventOut:
    values = {name: getattr(record, name) for name in EventOut.model_fields if name != "customer"}
    customer = CustomerRef(id=record.customer_id, name=record.customer_name, email=record.customer_email)
    return EventOut(customer=customer, **values)


def _breakdowns(opens: dict[tuple[str, str], int]) -> tuple[dict[str, float], dict[str, float]]:
    devices: dict[str, int] = defaultdict(int)
    clients: dict[str, int] = defaultdict(int)
    for (device, client), opened in opens.items():
        devices[device] += opened
        clients[client] += opened
    return metrics.fractions(devices), metrics.fractions(clients)


@router.get(
    "/stats",
    responses={404: {"model": ErrorOut, "description": "the salon was deleted after the key was checked"}},
)
def get_stats(
    tenant_id: ApiTenant,
    engine: EngineDep,
    first: Annotated[
        DayText, Query(alias="from", description="First local day (default: `to` − 29 days).")
    ] = None,
    last: Annotated[
        DayText,
        Query(
            alias="to",
            description="Last local day, inclusive (default: today); at most 1096 days from `from`, which "
            "must not be later, and the period before must start in 1970 or later.",
        ),
    ] = None,
    source: Annotated[str | None, one_of(SOURCES), Query(description="Empty: any source.")] = None,
    campaign: Annotated[
        str | None,
        text({"maxLength": 300, "pattern": TEXT_PATTERN}),
        Query(max_length=300, pattern=TEXT_PATTERN, description="A campaign name."),
    ] = None,
    channel: Annotated[str | None, one_of(CHANNELS), Query(description="Empty: any channel.")] = None,
) -> StatsOut:
    """Every dashboard figure for the cohort of messages sent in a period (default: the last 30 days)."""
    now = utcnow()
    first, last = day("from", first), day("to", last)
    source_filter = choice("source", source, SOURCES)
    channel_filter = choice("channel", channel, CHANNELS)
    with engine.connect() as conn:
        timezone = _timezone(conn, tenant_id)
        try:
            period = metrics.parse_period(first, last, today=metrics.local_today(timezone, now))
        except metrics.PeriodError as exc:
            raise unprocessable("to" if last else "from", str(exc)) from None
        campaign_id = None
        if campaign is not None and campaign.strip():
            found = queries.campaign_id_by_name(conn, tenant_id=tenant_id, name=campaign.strip())
            campaign_id = queries.NO_CAMPAIGN_MATCH if found is None else found

        def cohort(of: metrics.Period) -> queries.CohortFilter:
            start, end = of.utc_bounds(timezone)
            return queries.CohortFilter(tenant_id, start, end, channel_filter, source_filter, campaign_id)

        current = cohort(period)
        totals = queries.message_totals(conn, cohort=current)
        before = queries.message_totals(conn, cohort=cohort(period.previous()))
        cards, previous = metrics.compute_cards(totals), metrics.compute_cards(before)
        devices, clients = _breakdowns(queries.first_open_breakdown(conn, cohort=current))
        buckets = queries.score_bucket_counts(conn, tenant_id=tenant_id, now=now)
        engaged = queries.top_engaged(conn, tenant_id=tenant_id, now=now)
        links = queries.top_links(conn, cohort=current)
        recent = queries.list_events(conn, tenant_id=tenant_id, limit=10)
        best = best_send_time(conn, tenant_id=tenant_id, timezone=timezone)
    counts = totals.counts()
    counts["tracked_delivered"] = metrics.tracked_delivered(totals)
    return StatsOut(
        period=_period_out(period, timezone),
        previous_period=_period_out(period.previous(), timezone),
        cards=CardsOut.model_validate(cards, from_attributes=True),
        previous=CardsOut.model_validate(previous, from_attributes=True),
        change=CardsOut.model_validate(metrics.card_changes(cards, previous), from_attributes=True),
        counts=counts,
        engagement_buckets=[BucketOut.model_validate(b) for b in metrics.engagement_buckets(buckets)],
        top_engaged=[EngagedOut(customer_id=c.external_id, name=c.name, score=c.score) for c in engaged],
        best_send_time=best,
        top_links=[LinkOut(url=k.url, clicks=k.clicks, unique_clicks=k.unique_clicks) for k in links],
        devices=devices,
        clients=clients,
        recent_events=[_event_out(record) for record in recent],
    )


# --- events -----------------------------------------------------------------------------------------


@router.get("/events")
def get_events(
    tenant_id: ApiTenant,
    engine: EngineDep,
    q: Annotated[
        str | None,
        text({"maxLength": 200, "pattern": TEXT_PATTERN}),
        Query(max_length=200, pattern=TEXT_PATTERN, description="Part of a customer's name or email."),
    ] = None,
    event_type: Annotated[
        str | None, one_of(EVENT_TYPES), Query(alias="type", description="Only events of this type.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: CursorText = None,
) -> EventsPage:
    """The salon's events, newest first; `q` matches name or email ignoring case and accents."""
    wanted_type = choice("type", event_type, EVENT_TYPES)
    before = None
    if cursor:
        at, event_id = decode_cursor(cursor)
        before = (from_micros(at), event_id)
    with engine.connect() as conn:
        records = queries.list_events(
            conn, tenant_id=tenant_id, query=q, event_type=wanted_type, before=before, limit=limit + 1
        )
    page = records[:limit]
    following = encode_cursor(micros(page[-1].occurred_at), page[-1].id) if len(records) > limit else None
    return EventsPage(events=[_event_out(record) for record in page], next=following)


# --- customers --------------------------------------------------------------------------------------


@router.get(
    "/customers", responses={200: {"links": customer_links("$response.body#/customers/0/customer_id")}}
)
def get_customers(
    tenant_id: ApiTenant,
    engine: EngineDep,
    min_score: Annotated[int, Query(ge=0, le=100)] = 0,
    max_score: Annotated[int, Query(ge=0, le=100, description="Not below `min_score`.")] = 100,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: CursorText = None,
) -> CustomersPage:
    """Scored customers with min_score ≤ score ≤ max_score (VIP and win-back segments), best first."""
    if min_score > max_score:
        raise unprocessable("max_score", f"`min_score` ({min_score}) is above `max_score` ({max_score})")
    after = None
    if cursor:
        score, customer_id = decode_cursor(cursor)
        after = (min(max(score, -1), 101), customer_id)  # scores are 0–100; the database's are 32-bit
    with engine.connect() as conn:
        found = queries.customers_by_score(
            conn,
            tenant_id=tenant_id,
            now=utcnow(),
            min_score=min_score,
            max_score=max_score,
            after=after,
            limit=limit + 1,
        )
        page = found[:limit]
        best = customer_best_hours(conn, tenant_id=tenant_id, customer_ids=[c.external_id for c in page])
    following = encode_cursor(page[-1].score, page[-1].id) if len(found) > limit else None
    return CustomersPage(
        customers=[
            ScoredCustomerOut(
                customer_id=c.external_id,
                name=c.name,
                email=c.email,
                score=c.score,
                last_engagement=c.last_engagement,
                best_send_time=best.get(c.external_id),
            )
            for c in page
        ],
        next=following,
    )


@router.get("/customers/{customer_id}/score", responses=_NOT_FOUND)
def get_customer_score(
    tenant_id: ApiTenant,
    engine: EngineDep,
    customer_id: Annotated[
        str,
        Path(min_length=1, max_length=200, pattern=TEXT_PATTERN, description="The platform's customer id."),
    ],
) -> ScoreExplanationOut:
    """Explain a customer's engagement score: its inputs, the formula, and the result in plain words."""
    with engine.connect() as conn:
        record = queries.customer_record(conn, tenant_id=tenant_id, external_id=customer_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no customer {customer_id!r} in this salon")
    inputs = record.inputs
    verdict = metrics.judge_score(inputs, now=utcnow())
    return ScoreExplanationOut(
        customer=CustomerRef(id=record.external_id, name=inputs.name, email=record.email),
        score=verdict.score,
        bucket=None if verdict.score is None else metrics.bucket_label(metrics.bucket_index(verdict.score)),
        formula=metrics.SCORE_FORMULA,
        explanation=verdict.explanation,
        inputs=ScoreInputsOut(
            tracked_sent=inputs.tracked_sent,
            tracked_bounced=inputs.tracked_bounced,
            tracked_delivered=inputs.tracked_delivered,
            messages_opened=inputs.messages_opened,
            messages_clicked=inputs.messages_clicked,
            weighted_open_share=inputs.open_share,
            weighted_click_share=inputs.click_share,
            do_not_track=inputs.do_not_track,
            last_sent_at=inputs.last_sent_at,
            last_open_at=record.last_open_at,
            last_click_at=record.last_click_at,
            unsubscribed_at=inputs.unsubscribed_at,
            complained_at=inputs.complained_at,
            hard_bounced_at=inputs.hard_bounced_at,
        ),
    )
