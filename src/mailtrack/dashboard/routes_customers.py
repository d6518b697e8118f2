"""Customer pages: search by name or email, a customer's whole history with verdicts, score explanations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import Engine

from mailtrack.analytics import metrics
from mailtrack.analytics import queries as analytics_queries
from mailtrack.dashboard import present, queries, sessions
from mailtrack.dashboard.web import DASHBOARD, login_redirect, not_found, render, see_other, url_with
from mailtrack.db import utcnow

router = APIRouter(include_in_schema=False)
CUSTOMERS = f"{DASHBOARD}/customers"
CUSTOMER = f"{DASHBOARD}/customer"
SCORE = f"{DASHBOARD}/customer/score"
HISTORY_MESSAGES = 100
CustomerId = Annotated[str, Query(alias="id", max_length=200)]


@router.get(CUSTOMERS, response_model=None)
def search(request: Request, q: Annotated[str, Query(max_length=200)] = "") -> Response:
    """Customers whose name or email contains the query; a single match opens their history."""
    user = sessions.current_user(request)
    if user is None:
        return login_redirect(request)
    engine: Engine = request.app.state.engine
    with engine.connect() as conn:
        found = queries.search_customers(conn, tenant_id=user.tenant_id, query=q) if q.strip() else []
    if len(found) == 1:
        return see_other(url_with(CUSTOMER, {"id": found[0].external_id}))
    context = {"q": q, "found": found, "tz": user.timezone}
    return render(request, "customers.html", context, user=user)


@router.get(CUSTOMER, response_model=None)
def history(request: Request, external_id: CustomerId = "") -> Response:
    """A customer's whole history: every message with a plain verdict, and each message's events."""
    user = sessions.current_user(request)
    if user is None:
        return login_redirect(request)
    engine: Engine = request.app.state.engine
    now = utcnow()
    with engine.connect() as conn:
        person = queries.customer_by_external_id(conn, tenant_id=user.tenant_id, external_id=external_id)
        if person is None:
            return not_found(request, user, "Your salon has no customer with that id.")
        mail = queries.customer_messages(
            conn, tenant_id=user.tenant_id, customer_id=person.id, limit=HISTORY_MESSAGES
        )
        trail = queries.customer_events(
            conn, tenant_id=user.tenant_id, customer_id=person.id, message_ids=[m.id for m in mail]
        )
        record = analytics_queries.customer_record(conn, tenant_id=user.tenant_id, external_id=external_id)
    verdict = metrics.judge_score(record.inputs, now=now) if record else None
    timeline = [
        (
            message,
            present.message_verdict(message, trail.get(message.id, []), timezone=user.timezone, now=now),
            trail.get(message.id, []),
        )
        for message in mail
    ]
    context = {
        "person": person,
        "timeline": timeline,
        "score": verdict.score if verdict else None,
        "truncated": len(mail) >= HISTORY_MESSAGES,
        "tz": user.timezone,
    }
    return render(request, "customer.html", context, user=user)


@router.get(SCORE, response_model=None)
def score(request: Request, external_id: CustomerId = "") -> Response:
    """Why a customer has the engagement score they have (the same judgement as the API's)."""
    user = sessions.current_user(request)
    if user is None:
        return login_redirect(request)
    engine: Engine = request.app.state.engine
    with engine.connect() as conn:
        record = analytics_queries.customer_record(conn, tenant_id=user.tenant_id, external_id=external_id)
    if record is None:
        return not_found(request, user, "Your salon has no customer with that id.")
    verdict = metrics.judge_score(record.inputs, now=utcnow())
    bucket = None if verdict.score is None else metrics.bucket_index(verdict.score)
    context = {
        "external_id": external_id,
        "email": record.email,
        "inputs": record.inputs,
        "verdict": verdict,
        "bucket": None if bucket is None else metrics.bucket_label(bucket),
        "segment": None if bucket is None else present.SEGMENTS[bucket],
        "formula": metrics.SCORE_FORMULA,
        "last_open_at": record.last_open_at,
        "last_click_at": record.last_click_at,
        "tz": user.timezone,
    }
    return render(request, "score.html", context, user=user)
