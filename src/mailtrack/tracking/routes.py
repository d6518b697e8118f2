"""The hot paths mail clients hit: `/o` (open pixel), `/c` (click redirect), `/u` (unsubscribe).

Rules: a pixel always answers with the GIF (a broken token or a database outage must never break an
email); a click redirects only to the URL stored for its token; an unsubscribe GET only shows a page,
POST unsubscribes (RFC 8058). A hit carrying DNT or GPC records nothing and marks the customer
do-not-track, but a click still redirects.
"""

from __future__ import annotations

import html
import logging
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from mailtrack.config import Settings
from mailtrack.db import utcnow, write_transaction
from mailtrack.messages.queries import link_url, mark_do_not_track
from mailtrack.messages.tokens import TokenCodec, TokenKind, TrackingToken
from mailtrack.tracking.ingest import EventIn
from mailtrack.tracking.ipaddr import client_ip
from mailtrack.tracking.writer import IngestWriter

log = logging.getLogger(__name__)
router = APIRouter(tags=["tracking"])

# The smallest transparent 1×1 GIF (43 bytes).
PIXEL_GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
MAX_AGENT_CHARS = 1024
MAX_REFERER_CHARS = 1000

TokenText = Annotated[str, Path(max_length=300, description="A signed tracking token.")]


def _pixel() -> Response:
    return Response(PIXEL_GIF, media_type="image/gif", headers=NO_CACHE)


def _privacy_signal(request: Request) -> bool:
    return request.headers.get("dnt", "").strip() == "1" or request.headers.get("sec-gpc", "").strip() == "1"


def _hit(request: Request, token: TrackingToken, kind: str, settings: Settings) -> EventIn:
    agent = request.headers.get("user-agent")
    referer = request.headers.get("referer")
    peer = request.client.host if request.client else None
    return EventIn(
        tenant_id=token.tenant_id,
        message_id=token.message_id,
        type=kind,
        occurred_at=utcnow(),
        user_agent=agent[:MAX_AGENT_CHARS] if agent else None,
        ip=client_ip(peer, request.headers.get("x-forwarded-for"), settings.trusted_proxies),
        referer=referer[:MAX_REFERER_CHARS] if referer else None,
        link_position=token.link_position if kind == "clicked" else None,
        machine_reason="head_request" if request.method == "HEAD" else None,
    )


async def _record(request: Request, event: EventIn) -> None:
    """Store the hit, or for a DNT/GPC hit mark the customer do-not-track instead."""
    engine: Engine = request.app.state.engine
    if _privacy_signal(request):
        await run_in_threadpool(_remember_do_not_track, engine, event.tenant_id, event.message_id)
        return
    writer: IngestWriter = request.app.state.writer
    await writer.submit(event)


def _remember_do_not_track(engine: Engine, tenant_id: int, message_id: int) -> None:
    with write_transaction(engine) as conn:
        mark_do_not_track(conn, tenant_id=tenant_id, message_id=message_id)


def _codec(request: Request) -> TokenCodec:
    codec: TokenCodec = request.app.state.token_codec
    return codec


@router.api_route(
    "/o/{token}",
    methods=["GET", "HEAD"],
    response_class=Response,
    responses={200: {"content": {"image/gif": {}}, "description": "always the 1×1 GIF"}},
)
async def open_pixel(request: Request, token: TokenText) -> Response:
    """The open pixel: always a 1×1 GIF; records an open for a valid token when tracking is allowed."""
    decoded = _codec(request).decode(token.removesuffix(".gif"), kind=TokenKind.OPEN)
    if decoded is None:
        request.app.state.rejected_tokens += 1
        return _pixel()
    try:
        await _record(request, _hit(request, decoded, "opened", request.app.state.settings))
    except Exception:  # noqa: BLE001  (the pixel must render whatever happened to the database)
        log.exception("open of message %s not recorded", decoded.message_id)
    return _pixel()


@lru_cache(maxsize=65536)
def _cached_link(engine: Engine, tenant_id: int, message_id: int, position: int) -> str | None:
    # A link's target never changes once stored, so it can be cached for the life of the process.
    with engine.connect() as conn:
        return link_url(conn, tenant_id=tenant_id, message_id=message_id, position=position)


def _lookup_link(engine: Engine, token: TrackingToken) -> str | None:
    return _cached_link(engine, token.tenant_id, token.message_id, token.link_position)


@router.api_route(
    "/c/{token}",
    methods=["GET", "HEAD"],
    response_class=RedirectResponse,
    status_code=302,
    responses={302: {"description": "to the stored URL"}, 404: {"description": "unknown link"}},
)
async def click_redirect(request: Request, token: TokenText) -> Response:
    """Redirect to the URL stored for this link token (never one from the request) and record the click."""
    decoded = _codec(request).decode(token, kind=TokenKind.CLICK)
    engine: Engine = request.app.state.engine
    url = await run_in_threadpool(_lookup_link, engine, decoded) if decoded else None
    if decoded is None or url is None:
        request.app.state.rejected_tokens += decoded is None
        return HTMLResponse(
            _page("Link not found", "This link is not valid or has expired."), status_code=404
        )
    try:
        await _record(request, _hit(request, decoded, "clicked", request.app.state.settings))
    except Exception:  # noqa: BLE001  (the reader must reach the link even if the click is not stored)
        log.exception("click of message %s not recorded", decoded.message_id)
    return RedirectResponse(
        url, status_code=302, headers={"Cache-Control": "no-store", "Referrer-Policy": "origin"}
    )


@router.get("/u/{token}", response_class=HTMLResponse, responses={404: {"description": "unknown token"}})
async def unsubscribe_page(request: Request, token: TokenText) -> HTMLResponse:
    """Show the unsubscribe page; nothing changes until the form is posted."""
    if _codec(request).decode(token, kind=TokenKind.UNSUBSCRIBE) is None:
        return HTMLResponse(_page("Link not found", "This unsubscribe link is not valid."), status_code=404)
    form = (
        f'<form method="post" action="/u/{html.escape(token)}">'
        "<p>Stop receiving marketing email from this salon?</p>"
        '<button type="submit">Unsubscribe</button></form>'
    )
    return HTMLResponse(_page("Unsubscribe", form, raw=True))


@router.post("/u/{token}", response_class=HTMLResponse, responses={404: {"description": "unknown token"}})
async def unsubscribe(request: Request, token: TokenText) -> HTMLResponse:
    """Unsubscribe (RFC 8058 one-click: no cookie or form field needed); repeating it changes nothing."""
    decoded = _codec(request).decode(token, kind=TokenKind.UNSUBSCRIBE)
    if decoded is None:
        return HTMLResponse(_page("Link not found", "This unsubscribe link is not valid."), status_code=404)
    event = _hit(request, decoded, "unsubscribed", request.app.state.settings)
    event.external_event_id = f"unsubscribe:{decoded.message_id}"  # one unsubscribe per message
    event.machine_reason = None
    writer: IngestWriter = request.app.state.writer
    await writer.submit(event)
    return HTMLResponse(
        _page("Unsubscribed", "You will not receive marketing email from this salon any more.")
    )


def _page(title: str, body: str, *, raw: bool = False) -> str:
    content = body if raw else f"<p>{html.escape(body)}</p>"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{content}</body></html>"
    )
