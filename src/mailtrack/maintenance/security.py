"""Hardening as one pure ASGI middleware: security headers, request body limit, API and login rate limits.

Added last, it is the outermost user middleware and so also wraps the tracking fast path (`/o`, `/c`);
there it only appends the headers (a few microseconds a hit), with no body check or rate limit: opens
arrive in bursts through a few image proxies, and one proxy address is thousands of readers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailtrack.maintenance import metrics
from mailtrack.maintenance.settings import OperationsSettings, get_operations_settings
from mailtrack.tracking.hits import page
from mailtrack.tracking.ipaddr import client_ip

# Routes that enforce a larger limit of their own (JSON Lines import, raw bounce messages).
OWN_BODY_LIMIT = ("/api/v1/events/import", "/api/v1/inbound")
TRACKING_PREFIXES = ("/o/", "/c/")
# Swagger UI and ReDoc load their scripts from a CDN with inline bootstrapping: no CSP there.
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
LOGIN_PATH = "/manager/login"


def _inline_style_hashes() -> str:
    # The tracking pages (unsubscribe, link not found) carry one small inline <style>; allowing exactly
    # that block by its hash keeps them styled without 'unsafe-inline'.
    styles = re.findall(r"<style>(.*?)</style>", page("", ""), flags=re.DOTALL)
    return "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()}'" for style in styles
    )


CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; "
    f"style-src 'self'{_inline_style_hashes()}; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_COMMON_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"x-frame-options", b"DENY"),
)
SECURITY_HEADERS = ((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()), *_COMMON_HEADERS)


class ErrorOut(BaseModel):
    """An error the API answers (except 422): `{"detail": "<what went wrong>"}`, as the framework does."""

    detail: str


# Text the API stores or searches for: no NUL (PostgreSQL refuses it in text). As a validated pattern
# it also refuses lone surrogates, which no database can encode as UTF-8.
TEXT_PATTERN = r"^[^\x00]*$"
# For the OpenAPI document: the answers this middleware gives before any route runs.
RATE_LIMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorOut,
        "description": "too many requests from this API key (or address without one); retry later",
        "headers": {
            "Retry-After": {
                "description": "Seconds until a request is allowed again.",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    }
}
BODY_LIMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorOut, "description": "request body over `MAILTRACK_MAX_BODY_BYTES` (1 MiB by default)"}
}


class BodyTooLargeError(HTTPException):
    """The request body is over the limit (raised from `receive`; the app answers 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class RateLimiter:
    """Token buckets by key, in memory: `rate` requests a second on average, `burst` at once."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, when)

    def take(self, key: str) -> float:
        """0 when the request may go on (a token is taken), else the seconds until a token is back."""
        now = self._clock()
        tokens, when = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if tokens >= 1.0:
            if key not in self._buckets and len(self._buckets) >= self.max_keys:
                self._forget_idle(now)
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        # Buckets that refilled completely hold no information; if that is not enough, drop the oldest.
        full_after = self.burst / self.rate
        self._buckets = {key: v for key, v in self._buckets.items() if now - v[1] < full_after}
        while len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]


def _with_headers(message: Message, extra: tuple[tuple[bytes, bytes], ...]) -> Message:
    headers = list(message.get("headers", ()))  # a copy: responses may share one header list
    present = {header[0] for header in headers}  # ASGI header names are lower-case
    headers += [header for header in extra if header[0] not in present]
    return {**message, "headers": headers}


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


class SecurityMiddleware:
    """Security headers on every response, a body size limit (413) and rate limits (429)."""

    def __init__(self, app: ASGIApp, *, settings: OperationsSettings | None = None) -> None:
        self.app = app
        settings = settings or get_operations_settings()
        self.max_body = settings.max_body_bytes
        self.api = (
            RateLimiter(settings.api_rate_per_second, settings.api_rate_burst)
            if settings.api_rate_per_second > 0
            else None
        )
        self.login = (
            RateLimiter(settings.login_rate_per_minute / 60.0, settings.login_rate_burst)
            if settings.login_rate_per_minute > 0
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        extra = _COMMON_HEADERS if path in DOCS_PATHS else SECURITY_HEADERS

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = _with_headers(message, extra)
            await send(message)

        if path.startswith(TRACKING_PREFIXES):
            await self.app(scope, receive, send_secured)
            return
        wait = self._rate_limited(scope, path)
        if wait is not None:
            retry = str(max(1, math.ceil(wait))).encode()
            await _reply(send_secured, 429, "too many requests", [(b"retry-after", retry)])
            return
        if path.startswith(OWN_BODY_LIMIT):
            await self.app(scope, receive, send_secured)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            metrics.BODY_TOO_LARGE.inc()
            await _reply(send_secured, 413, f"request body over {self.max_body} bytes", [])
            return
        await self._limited_body(scope, receive, send_secured)

    async def _limited_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Bodies without Content-Length (chunked) are counted as they are read.
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    metrics.BODY_TOO_LARGE.inc()
                    raise BodyTooLargeError(self.max_body)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError as exc:  # raised outside the framework's own exception handling
            if started:
                raise
            await _reply(send, 413, str(exc.detail), [])

    def _rate_limited(self, scope: Scope, path: str) -> float | None:
        if path == LOGIN_PATH and scope["method"] == "POST" and self.login is not None:
            limiter, scope_name, key = self.login, "login", "ip:" + (self._client(scope) or "")
        elif path.startswith("/api/") and self.api is not None:
            limiter, scope_name = self.api, "api"
            authorization = _header(scope, b"authorization")
            if authorization:  # keyed by the key's hash: the key itself is never kept
                key = "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:32]
            else:
                key = "ip:" + (self._client(scope) or "")
        else:
            return None
        wait = limiter.take(key)
        if wait <= 0:
            return None
        metrics.RATE_LIMITED.inc(scope_name)
        return wait

    @staticmethod
    def _client(scope: Scope) -> str | None:
        peer = scope.get("client")
        app = scope.get("app")
        settings = getattr(getattr(app, "state", None), "settings", None)
        proxies: list[str] = getattr(settings, "trusted_proxies", None) or []
        return client_ip(peer[0] if peer else None, _header(scope, b"x-forwarded-for"), proxies)


async def _reply(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    response_headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})
