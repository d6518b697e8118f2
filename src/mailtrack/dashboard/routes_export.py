"""CSV exports, streamed and formula-safe: events, customer scores, a segment, one customer's history."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import Engine

from mailtrack.analytics import metrics
from mailtrack.analytics import queries as analytics_queries
from mailtrack.dashboard import present, queries, sessions
from mailtrack.dashboard.csvsafe import csv_stream
from mailtrack.dashboard.web import DASHBOARD, error_page, login_redirect, not_found
from mailtrack.db import utcnow
from mailtrack.tracking.tables import EVENT_TYPES

router = APIRouter(include_in_schema=False)
EXPORT = f"{DASHBOARD}/export"
PAGE = 500  # rows per database round trip; each page uses a short connection of its own
EVENT_HEADER = (
    "occurred_at_utc",
    "occurred_at_local",
    "type",
    "customer_id",
    "customer_name",
    "customer_email",
    "message_id",
    "channel",
    "campaign",
    "url",
    "device",
    "client",
    "os",
    "machine",
    "machine_reason",
    "bounce",
    "status",
    "diagnostic",
    "ip",
    "referer",
    "user_agent",
)
SCORE_HEADER = ("customer_id", "name", "email", "score", "segment", "last_engagement_utc")


def _csv(rows: Iterator[Sequence[object]], header: Sequence[str], filename: str) -> StreamingResponse:
    return StreamingResponse(
        csv_stream(header, rows),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _iso(moment: dt.datetime | None) -> str:
    return "" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _event_rows(
    engine: Engine,
    *,
    tenant_id: int,
    timezone: str,
    q: str | None,
    event_type: str | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> Iterator[list[object]]:
    # Keyset pages newest first, the event log's own paging, so a large export never holds a long read.
    before = (end, 0) if end is not None else None
    while True:
        with engine.connect() as conn:
            page = analytics_queries.list_events(
                conn, tenant_id=tenant_id, query=q, event_type=event_type, before=before, limit=PAGE
            )
        for r in page:
            if start is not None and r.occurred_at < start:
                return
            yield [
                _iso(r.occurred_at),
                present.local(r.occurred_at, timezone, "%Y-%m-%d %H:%M:%S"),
                r.type,
                r.customer_id,
                r.customer_name,
                r.customer_email,
                r.message_id,
                r.channel,
                r.campaign,
                r.url,
                r.device,
                r.client,
                r.os,
                r.machine,
                r.machine_reason,
                r.bounce,
                r.status,
                r.diagnostic,
                r.ip,
                r.referer,
                r.user_agent,
            ]
        if len(page) < PAGE:
            return
        before = (page[-1].occurred_at, page[-1].id)


@router.get(f"{EXPORT}/events.csv", response_model=None)
def export_events(
    request: Request,
    q: Annotated[str, Query(max_length=200)] = "",
    event_type: Annotated[str, Query(alias="type", max_length=20)] = "",
    first: Annotated[str, Query(alias="from", max_length=20)] = "",
    last: Annotated[str, Query(alias="to", max_length=20)] = "",
) -> Response:
    """The salon's events (optionally one customer search, one type, local days from/to), newest first."""
    user = sessions.current_user(request)
    if user is None:
        return login_redirect(request)
    if event_type and event_type not in EVENT_TYPES:
        return error_page(
            request, user, 422, "Unknown event type", f"Choose one of {', '.join(EVENT_TYPES)}."
        )
    start = end = None
    if first or last:
        try:
            period = metrics.parse_period(
                first or None, last or None, today=metrics.local_today(user.timezone, utcnow())
            )
        except metrics.PeriodError as exc:
            return error_page(request, user, 422, "Invalid period", str(exc))
        start, end = period.utc_bounds(user.timezone)
    engine: Engine = request.app.state.engine
    rows = _event_rows(
        engine,
        tenant_id=user.tenant_id,
        timezone=user.timezone,
        q=q or None,
        event_type=event_type or None,
        start=start,
        end=end,
    )
    return _csv(rows, EVENT_HEADER, f"mailtrack-events-{utcnow():%Y%m%d}.csv")


def _score_rows(
    engine: Engine, *, tenant_id: int, low: int, high: int, segment: str | None
) -> Iterator[list[object]]:
    now, after = utcnow(), None
    while True:
        with engine.connect() as conn:
            page = analytics_queries.customers_by_score(
                conn, tenant_id=tenant_id, now=now, min_score=low, max_score=high, after=after, limit=PAGE
            )
        for c in page:
            name = segment or present.SEGMENTS[metrics.bucket_index(c.score)]
            yield [c.external_id, c.name, c.email, c.score, name, _iso(c.last_engagement)]
        if len(page) < PAGE:
            return
        after = (page[-1].score, page[-1].id)


@router.get(f"{EXPORT}/scores.csv", response_model=None)
def export_scores(request: Request) -> Response:
    """Every scored customer with their engagement score and segment, best first."""
    user = sessions.current_user(request)
    if user is None:
        return login_redirect(request)
    engine: Engine = request.app.state.engine
    rows = _score_rows(engine, tenant_id=user.tenant_id, low=0, high=100, segment=None)
    return _csv(rows, SCORE_HEADER, f"mailtrack-scores-{utcnow():%Y%m%d}.csv")


@router.get(f"{EXPORT}/segment.csv", response_model=None)
def export_segment(request: Request, segment: Annotated[str, Query(max_length=40)] = "") -> Response:
    """One engagement bucket as a segment for the platform to target (e.g. 81–100 as "VIP")."""
    user = sessions.current_user(request)
    if user is None:
        return login_redirect(request)
    if segment not in present.SEGMENTS:
        return error_page(
            request, user, 422, "Unknown segment", f"Choose one of {', '.join(present.SEGMENTS)}."
        )
    low, high = metrics.BUCKETS[present.SEGMENTS.index(segment)]
    engine: Engine = request.app.state.engine
    rows = _score_rows(engine, tenant_id=user.tenant_id, low=low, high=high, segment=segment)
    slug = segment.lower().replace(" ", "-")
    return _csv(rows, SCORE_HEADER, f"mailtrack-segment-{slug}-{utcnow():%Y%m%d}.csv")


@router.get(f"{EXPORT}/customer.csv", response_model=None)
def export_customer(
    request: Request, external_id: Annotated[str, Query(alias="id", max_length=200)] = ""
) -> Response:
    """One customer's events (a data-access request, or the "she never got it" conversation)."""
    user = sessions.current_user(request)
    if user is None:
        return login_redirect(request)
    engine: Engine = request.app.state.engine
    with engine.connect() as conn:
        person = queries.customer_by_external_id(conn, tenant_id=user.tenant_id, external_id=external_id)
        if person is None:
            return not_found(request, user, "Your salon has no customer with that id.")
        mail = queries.customer_messages(conn, tenant_id=user.tenant_id, customer_id=person.id, limit=10_000)
        trail = queries.customer_events(
            conn,
            tenant_id=user.tenant_id,
            customer_id=person.id,
            message_ids=[m.id for m in mail],
            limit=100_000,
        )
    rows: list[list[object]] = []
    for message in mail:
        for e in trail.get(message.id, []):
            rows.append(
                [
                    _iso(e.occurred_at),
                    present.local(e.occurred_at, user.timezone, "%Y-%m-%d %H:%M:%S"),
                    e.type,
                    person.external_id,
                    person.name,
                    person.email,
                    message.external_id,
                    message.channel,
                    message.campaign,
                    e.url,
                    e.device,
                    e.client,
                    e.os,
                    e.machine,
                    e.machine_reason,
                    e.bounce_kind,
                    e.status,
                    e.diagnostic,
                    e.ip,
                    e.referer,
                    e.user_agent,
                ]
            )
    rows.sort(key=lambda row: str(row[0]), reverse=True)
    return _csv(iter(rows), EVENT_HEADER, "mailtrack-customer-history.csv")
