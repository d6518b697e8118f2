"""`/o` and `/c` as raw ASGI, answered before the framework: they are nearly all of the traffic.

The framework's stack (its error and telemetry middleware, routing, validation, response classes) costs
several times the work of the hit itself, so the application hands these two paths straight to
`TrackingFastPath` (see `MailtrackApp` in app.py), which adds the security headers itself. Under
`mailtrack serve` most hits do not even get here: Mailtrack's HTTP protocol (`protocol.py`) answers them
with the same `answer_now` before any ASGI; this path serves what it hands over, and other servers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from mailtrack.maintenance.metrics import HITS
from mailtrack.maintenance.security import SECURITY_HEADERS, TRACKING_PREFIXES
from mailtrack.messages.tokens import TokenKind, TrackingToken
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
# A stored URL was checked when the message was registered; one that could still split the header is
# answered as not found rather than written (uvicorn's own check, for the path that bypasses it).
_UNSAFE_HEADER_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")


def header_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    """Headers as they go on the wire (`name: value\\r\\n` each), for `protocol.py`."""
    return b"".join(b"%s: %s\r\n" % pair for pair in headers)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a tracking request gets, and the journal line to make durable before it gets it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    head: bytes  # the same headers, encoded
    body: bytes
    line: bytes | None = None
    message_id: int | None = None  # for the log, when the line cannot be journaled


_PIXEL = Answer(200, _PIXEL_HEADERS, header_lines(_PIXEL_HEADERS), PIXEL_GIF)
_LINK_NOT_FOUND = Answer(404, _NOT_FOUND_HEADERS, header_lines(_NOT_FOUND_HEADERS), _NOT_FOUND)
_REDIRECT_HEAD = header_lines(_REDIRECT_HEADERS)
_CLICK_TO_LOOK_UP = "mailtrack.click_to_look_up"  # scope key: a click's token whose link is not cached


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

    def answer_now(self, scope: Scope) -> Answer | None:
        """The answer, or None when a click's link is not cached and must be read from the database."""
        tracking, path = self.tracking, scope["path"]
        if path.startswith("/o/"):
            HITS.inc("open")
            token = tracking.codec.decode(path[3:].removesuffix(".gif"), kind=TokenKind.OPEN)
            if token is None:
                tracking.rejected_tokens += 1
                return _PIXEL
            return self._recorded(_PIXEL, scope, token, "opened")
        HITS.inc("click")
        token = tracking.codec.decode(path[3:], kind=TokenKind.CLICK)
        if token is None:
            tracking.rejected_tokens += 1
            return _LINK_NOT_FOUND
        url = tracking.links.cached(token)
        if url is None:
            scope[_CLICK_TO_LOOK_UP] = token  # counted and checked: whoever answers it reads its link
            return None
        return self._redirect(scope, token, url)

    async def answer_after_lookup(self, scope: Scope) -> Answer:
        """The answer to a click `answer_now` left: its link read from the database (or not found)."""
        token: TrackingToken = scope.pop(_CLICK_TO_LOOK_UP)
        url = await self.tracking.links.target(token)
        return _LINK_NOT_FOUND if url is None else self._redirect(scope, token, url)

    def _redirect(self, scope: Scope, token: TrackingToken, url: str) -> Answer:
        location = url.encode("utf-8")
        if _UNSAFE_HEADER_VALUE.search(location):
            log.error("link %d of message %d is not a safe Location", token.link_position, token.message_id)
            return _LINK_NOT_FOUND
        return Answer(
            302,
            [(b"location", location), *_REDIRECT_HEADERS],
            b"location: " + location + b"\r\n" + _REDIRECT_HEAD,
            b"",
            journal_line(self.tracking, scope, token, "clicked"),
            token.message_id,
        )

    def _recorded(self, answer: Answer, scope: Scope, token: TrackingToken, kind: str) -> Answer:
        line = journal_line(self.tracking, scope, token, kind)
        return Answer(answer.status, answer.headers, answer.head, answer.body, line, token.message_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The protocol (`protocol.py`) hands over a click it could not answer with its token checked.
        answer = None if _CLICK_TO_LOOK_UP in scope else self.answer_now(scope)
        if answer is None:
            answer = await self.answer_after_lookup(scope)
        if answer.line is not None:
            # Answered only once journaled; a hit that cannot be still gets its pixel or redirect.
            try:
                await self.tracking.journal.append_line(answer.line)
            except Exception:
                log.exception("hit on message %s not recorded", answer.message_id)
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else answer.body})


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
