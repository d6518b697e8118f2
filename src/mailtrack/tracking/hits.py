"""What a tracking hit means, independent of the web framework: decode, build the event, record it.

The fast path of `/o` and `/c` (`fastpath.py`, in the HTTP protocol or raw ASGI) journals the line of
`journal_line`; the framework route `/u` stores the event of `event_for`. Both take what they record
from the request through `_details`.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from mailtrack.config import Settings
from mailtrack.db import utcnow
from mailtrack.messages.queries import link_url
from mailtrack.messages.tokens import TokenCodec, TrackingToken
from mailtrack.tracking.ingest import EventIn
from mailtrack.tracking.ipaddr import client_ip
from mailtrack.tracking.journal import DO_NOT_TRACK, HitJournal
from mailtrack.tracking.journal_records import record_line

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


@dataclass(slots=True)
class Tracking:
    """Everything a hit needs from the running application."""

    settings: Settings
    engine: Engine
    journal: HitJournal
    codec: TokenCodec
    links: LinkCache
    rejected_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Hit:
    """The parts of an HTTP request that a hit records."""

    method: str
    headers: Mapping[str, str]  # lower-case names
    peer: str | None


def _asks_privacy(dnt: str | None, gpc: str | None) -> bool:
    """True when the request carries Do-Not-Track or Global Privacy Control."""
    return (dnt is not None and dnt.strip() == "1") or (gpc is not None and gpc.strip() == "1")


def _details(
    tracking: Tracking,
    method: str,
    agent: str | None,
    referer: str | None,
    forwarded_for: str | None,
    peer: str | None,
    token: TrackingToken,
    kind: str,
) -> tuple[str | None, str | None, str | None, int | None, str | None]:
    """What a hit records besides ids and time: agent, address, referer, link position, machine reason."""
    return (
        agent[:MAX_AGENT_CHARS] if agent else None,
        client_ip(peer, forwarded_for, tracking.settings.trusted_proxies),
        referer[:MAX_REFERER_CHARS] if referer else None,
        token.link_position if kind == "clicked" else None,
        "head_request" if method == "HEAD" else None,
    )


def event_for(tracking: Tracking, hit: Hit, token: TrackingToken, kind: str) -> EventIn:
    """The event a hit records."""
    headers = hit.headers
    agent, ip, referer, position, reason = _details(
        tracking,
        hit.method,
        headers.get("user-agent"),
        headers.get("referer"),
        headers.get("x-forwarded-for"),
        hit.peer,
        token,
        kind,
    )
    return EventIn(token.tenant_id, token.message_id, kind, utcnow(), agent, ip, referer, position, reason)


def journal_line(tracking: Tracking, scope: Scope, token: TrackingToken, kind: str) -> bytes:
    """The journal line of an open or click, read straight from the ASGI request (the hot path's `event_for`).

    A DNT/GPC hit gives a do-not-track mark that records nothing about the request, not even its address.
    """
    agent = referer = forwarded_for = dnt = gpc = None
    for name, value in scope["headers"]:  # lower-case names; the last of repeated headers counts
        if name == b"user-agent":
            agent = value.decode("latin-1")
        elif name == b"referer":
            referer = value.decode("latin-1")
        elif name == b"x-forwarded-for":
            forwarded_for = value.decode("latin-1")
        elif name == b"dnt":
            dnt = value.decode("latin-1")
        elif name == b"sec-gpc":
            gpc = value.decode("latin-1")
    # Whole seconds, as events are stored; what `int(utcnow().timestamp())` gives, for a tenth of the cost.
    now = int(time.time())
    if _asks_privacy(dnt, gpc):
        return record_line(token.tenant_id, token.message_id, DO_NOT_TRACK, now)
    client = scope.get("client")
    details = _details(
        tracking,
        scope["method"],
        agent,
        referer,
        forwarded_for,
        client[0] if client else None,
        token,
        kind,
    )
    return record_line(token.tenant_id, token.message_id, kind, now, *details)


class LinkCache:
    """Link targets by (tenant, message, position); a stored target never changes, so it can be kept."""

    def __init__(self, engine: Engine, size: int = 65536) -> None:
        self._engine = engine
        self._size = size
        self._urls: dict[tuple[int, int, int], str] = {}

    def cached(self, token: TrackingToken) -> str | None:
        """The URL of a click token if it is in the cache (no coroutine: the hot path's usual case)."""
        return self._urls.get((token.tenant_id, token.message_id, token.link_position))

    async def target(self, token: TrackingToken) -> str | None:
        """The URL stored for a click token, or None; a miss reads the database off the event loop."""
        key = (token.tenant_id, token.message_id, token.link_position)
        url = self._urls.get(key)
        if url is None:
            url = await run_in_threadpool(self._load, key)
            if url is not None:
                if len(self._urls) >= self._size:
                    del self._urls[next(iter(self._urls))]  # oldest first: insertion order
                self._urls[key] = url
        return url

    def _load(self, key: tuple[int, int, int]) -> str | None:
        with self._engine.connect() as conn:
            return link_url(conn, tenant_id=key[0], message_id=key[1], position=key[2])


def page(title: str, body: str, *, raw: bool = False) -> str:
    """A minimal standalone HTML page (unsubscribe, not found)."""
    content = body if raw else f"<p>{html.escape(body)}</p>"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{content}</body></html>"
    )
