"""`/o` and `/c` as raw ASGI, answered before the framework: they are nearly all of the traffic.

The framework's stack (its error and telemetry middleware, routing, validation, response classes) costs
several times the work of the hit itself, so the application hands these two paths straight to
`TrackingFastPath` (see `MailtrackApp` in app.py), which adds the security headers itself.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import Receive, Scope, Send

from mailtrack.maintenance.metrics import HITS
from mailtrack.maintenance.security import SECURITY_HEADERS, TRACKING_PREFIXES
from mailtrack.messages.tokens import TokenKind
from mailtrack.tracking.hits import NO_CACHE, PIXEL_GIF, Tracking, journal_line, page

log = logging.getLogger(__name__)

_PIXEL_HEADERS = [
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(PIXEL_GIF)).encode()),
    *((name.lower().encode(), value.encode()) for name, value in NO_CACHE.items()),
    *SECURITY_HEADERS,
]
_NOT_FOUND = page("Link not found", "This link is not valid or has expired.").encode()
_NOT_FOUND_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-length", str(len(_NOT_FOUND)).encode()),
    (b"cache-control", b"no-store"),
    *SECURITY_HEADERS,
]
_REDIRECT_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"origin"),
    (b"content-length", b"0"),
    *((name, value) for name, value in SECURITY_HEADERS if name != b"referrer-policy"),
]


class TrackingFastPath:
    """Answers the open pixel and click redirects, given the running application's `Tracking`."""

    def __init__(self, tracking: Tracking) -> None:
        self.tracking = tracking

    @staticmethod
    def handles(scope: Scope) -> bool:
        """True for the requests this handler answers: GET or HEAD of `/o/…` and `/c/…`."""
        return (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and scope["path"].startswith(TRACKING_PREFIXES)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One coroutine for the whole hit: each further `async def` layer costs a frame per request.
        tracking, path = self.tracking, scope["path"]
        if path.startswith("/o/"):
            HITS.inc("open")
            token = tracking.codec.decode(path[3:].removesuffix(".gif"), kind=TokenKind.OPEN)
            tracking.rejected_tokens += token is None
            kind, status, headers, body = "opened", 200, _PIXEL_HEADERS, PIXEL_GIF
        else:
            HITS.inc("click")
            token = tracking.codec.decode(path[3:], kind=TokenKind.CLICK)
            links = tracking.links
            url = None if token is None else links.cached(token) or await links.target(token)
            if url is None:
                tracking.rejected_tokens += token is None
                token, kind, status, headers, body = None, "", 404, _NOT_FOUND_HEADERS, _NOT_FOUND
            else:
                kind, status, body = "clicked", 302, b""
                headers = [(b"location", url.encode("utf-8")), *_REDIRECT_HEADERS]
        if token is not None:
            # Answered only once journaled; a hit that cannot be still gets its pixel or redirect.
            try:
                await tracking.journal.append_line(journal_line(tracking, scope, token, kind))
            except Exception:
                log.exception("%s of message %s not recorded", kind, token.message_id)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


OPENAPI_PATHS: dict[str, Any] = {
    "/o/{token}": {
        "get": {
            "tags": ["tracking"],
            "summary": "Open pixel",
            "description": "Always a 1×1 GIF, uncacheable; records an open for a valid token when tracking "
            "is allowed. A `.gif` suffix is accepted. DNT/GPC hits record nothing and mark the customer "
            "do-not-track.",
            "operationId": "open_pixel",
            "parameters": [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {
                    "description": "the pixel",
                    "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}},
                }
            },
        }
    },
    "/c/{token}": {
        "get": {
            "tags": ["tracking"],
            "summary": "Click redirect",
            "description": "302 to the URL stored for this link token (never one from the request); records "
            "the click. HEAD requests are recorded as machine clicks.",
            "operationId": "click_redirect",
            "parameters": [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "302": {
                    "description": "to the stored URL",
                    "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                },
                "404": {
                    "description": "unknown link",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
            },
        }
    },
}
