"""`/u`: the unsubscribe page (GET) and the RFC 8058 one-click unsubscribe (POST)."""

from __future__ import annotations

import html
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from mailtrack.db import write_transaction
from mailtrack.maintenance.security import BODY_LIMIT_RESPONSES
from mailtrack.messages.tokens import TokenKind
from mailtrack.tracking.hits import Hit, Tracking, event_for, page
from mailtrack.tracking.ingest import EventIn, ingest_batch

router = APIRouter(tags=["tracking"])
TokenText = Annotated[str, Path(max_length=300, description="A signed unsubscribe token.")]
_NOT_FOUND = page("Link not found", "This unsubscribe link is not valid.")
_UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown token", "content": {"text/html": {"schema": {"type": "string"}}}}
}


def _store(engine: Engine, event: EventIn) -> None:
    with write_transaction(engine) as conn:
        ingest_batch(conn, [event])


def _tracking(request: Request) -> Tracking:
    tracking: Tracking = request.app.state.tracking
    return tracking


@router.get("/u/{token}", response_class=HTMLResponse, responses=_UNKNOWN)
async def unsubscribe_page(request: Request, token: TokenText) -> HTMLResponse:
    """Show the unsubscribe page; nothing changes until the form is posted."""
    if _tracking(request).codec.decode(token, kind=TokenKind.UNSUBSCRIBE) is None:
        return HTMLResponse(_NOT_FOUND, status_code=404)
    form = (
        f'<form method="post" action="/u/{html.escape(token)}">'
        "<p>Stop receiving marketing email from this salon?</p>"
        '<button type="submit">Unsubscribe</button></form>'
    )
    return HTMLResponse(page("Unsubscribe", form, raw=True))


@router.post("/u/{token}", response_class=HTMLResponse, responses={**_UNKNOWN, **BODY_LIMIT_RESPONSES})
async def unsubscribe(request: Request, token: TokenText) -> HTMLResponse:
    """Unsubscribe (RFC 8058 one-click: no cookie or form field needed); repeating it changes nothing."""
    tracking = _tracking(request)
    decoded = tracking.codec.decode(token, kind=TokenKind.UNSUBSCRIBE)
    if decoded is None:
        return HTMLResponse(_NOT_FOUND, status_code=404)
    wanted = ("user-agent", "x-forwarded-for")
    hit = Hit(
        "POST",
        {name: request.headers[name] for name in wanted if name in request.headers},
        request.client.host if request.client else None,
    )
    event = event_for(tracking, hit, decoded, "unsubscribed")
    event.external_event_id = f"unsubscribe:{decoded.message_id}"  # one unsubscribe per message
    # Written at once rather than journaled: the page below must not say "unsubscribed" before the
    # database (and so the suppression list) has it. Unsubscribes are rare; this costs nothing.
    await run_in_threadpool(_store, tracking.engine, event)
    return HTMLResponse(
        page("Unsubscribed", "You will not receive marketing email from this salon any more.")
    )


@router.api_route(
    "/u/{token}", methods=["DELETE", "OPTIONS", "PATCH", "PUT", "TRACE"], include_in_schema=False
)
async def unsubscribe_other_methods() -> None:
    """405 naming both methods of /u/{token}: the framework's own 405 names only the first route's."""
    raise HTTPException(405, headers={"Allow": "GET, HEAD, POST"})
