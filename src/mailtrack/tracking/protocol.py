"""Uvicorn's HTTP protocol with the open pixel and click redirect answered inside it, without ASGI.

A hit is a few microseconds of our own work (decode the token, build the journal line), but served as
an ASGI request it also pays for a task, a request cycle with its event, the message dicts, a check of
every response header and two socket writes: more than the hit itself. Here a tracking request is
answered from the parser's callback: the journal line is queued, and once it is durable the whole
response (status, headers, body) leaves in one write. Everything else — and any tracking request that
needs to wait for the database (a click on a link not cached yet), arrives pipelined behind another
request, or has a percent-encoded path — goes through the ordinary ASGI path, where `TrackingFastPath`
answers it the same way.

`mailtrack serve` runs Uvicorn with `http=HTTP_PROTOCOL`; with any other app (no `MailtrackApp` inside)
the class behaves exactly as Uvicorn's own. It relies on that protocol's per-request state (`url`,
`parser`, `scope`, `cycle`, `flow`, `on_response_complete`): Uvicorn is pinned in constraints.txt, and
`tests/functional/test_tracking_protocol.py` speaks raw HTTP to it, so an upgrade that changes them fails
there.
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.server import ServerState

from mailtrack.tracking.fastpath import Answer, TrackingFastPath, header_lines

__all__ = ["HTTP_PROTOCOL", "TrackingHttpProtocol"]

HTTP_PROTOCOL = "mailtrack.tracking.protocol:TrackingHttpProtocol"

log = logging.getLogger(__name__)

_PREFIXES = (b"/o/", b"/c/")
_STATUS_LINES = {
    status: f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode() for status in (200, 302, 404)
}
# The protocol sets the request cycle's event when the request ends or the client leaves; nobody waits
# on a tracking cycle's, so one shared event spares creating one per hit.
_UNWAITED = asyncio.Event()


def find_fast_path(app: Any) -> TrackingFastPath | None:
    """The tracking fast path of the Mailtrack app inside Uvicorn's middleware wrappers, if there is one."""
    for _ in range(8):  # Uvicorn wraps the app in at most a couple of middlewares
        fast_path = getattr(app, "tracking_fast_path", None)
        if isinstance(fast_path, TrackingFastPath):
            return fast_path
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


class _TrackingCycle(RequestResponseCycle):
    """The request cycle of a hit answered by the protocol: just the state Uvicorn's protocol reads."""

    def __init__(self, scope: Any, keep_alive: bool) -> None:  # no super().__init__: nothing else is used
        self.scope = scope
        self.keep_alive = keep_alive
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.more_body = True
        self.body = bytearray()
        self.message_event = _UNWAITED


class TrackingHttpProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol, answering `/o/…` and `/c/…` itself when the app is Mailtrack's."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # A root path or a concurrency limit is Uvicorn's to apply: such a server keeps the ASGI path.
        plain = config.root_path or config.limit_concurrency is not None
        self._fast_path = None if plain else find_fast_path(self.app)
        self._default_headers: list[tuple[bytes, bytes]] | None = None
        self._default_head = b""

    def on_headers_complete(self) -> None:
        """Answer a tracking hit here when it can be; hand anything else to Uvicorn."""
        fast_path, url, owed = self._fast_path, self.url, self.cycle
        if fast_path is None or not url.startswith(_PREFIXES) or (owed and not owed.response_complete):
            super().on_headers_complete()  # not ours, or pipelined behind a response still owed
            return
        parser = self.parser
        method = parser.get_method()
        path, _, query = url.partition(b"#")[0].partition(b"?")  # a fragment is no part of either
        if (
            method not in (b"GET", b"HEAD")
            or b"%" in path
            or not path.isascii()
            or parser.should_upgrade()
            or self.flow.write_paused  # a client not reading its answers waits in Uvicorn's path
        ):
            super().on_headers_complete()
            return
        http_version = parser.get_http_version()
        scope = self.scope
        scope["method"] = method.decode()
        scope["path"] = path.decode()
        scope["raw_path"] = path
        scope["query_string"] = query
        if http_version != "1.1":
            scope["http_version"] = http_version
        try:
            answer = fast_path.answer_now(scope)  # type: ignore[arg-type]  # an HTTPScope is a Scope
        except Exception:
            log.exception("tracking hit not answered by the protocol")
            answer = None
        if answer is None:  # a click whose link must be read from the database first
            super().on_headers_complete()
            return
        cycle = self.cycle = _TrackingCycle(scope, http_version != "1.0" and parser.should_keep_alive())
        # Never answered from inside the parser: a request pipelined behind this one must find it owed
        # and queue (answering here would also arm the keep-alive timer under that request).
        if answer.line is None:
            self.loop.call_soon(self._respond, cycle, answer)
            return
        try:
            durable = fast_path.tracking.journal.append_line(answer.line)
        except Exception:
            log.exception("hit on message %s not recorded", answer.message_id)
            self.loop.call_soon(self._respond, cycle, answer)
            return
        durable.add_done_callback(lambda done: self._journaled(done, cycle, answer))

    def _journaled(self, done: asyncio.Future[None], cycle: _TrackingCycle, answer: Answer) -> None:
        # Answered only once journaled; a hit that cannot be still gets its pixel or redirect.
        if not done.cancelled() and done.exception() is not None:
            log.error("hit on message %s not recorded: %s", answer.message_id, done.exception())
        self._respond(cycle, answer)

    def _respond(self, cycle: _TrackingCycle, answer: Answer) -> None:
        cycle.response_started = cycle.response_complete = True
        if cycle.disconnected:
            return
        default = self.server_state.default_headers  # Uvicorn replaces the list when the Date changes
        if default is not self._default_headers:
            self._default_headers, self._default_head = default, header_lines(default)
        scope = cycle.scope
        parts = [_STATUS_LINES[answer.status], self._default_head, answer.head]
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if scope["method"] != "HEAD":
            parts.append(answer.body)
        self.transport.write(b"".join(parts))
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(scope),
                scope["method"],
                get_path_with_query_string(scope),
                scope["http_version"],
                answer.status,
            )
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()
