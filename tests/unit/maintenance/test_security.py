"""Hardening middleware: security headers everywhere, 413 over the body limit, 429 over the rate limit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine

from mailtrack.app import create_app
from mailtrack.config import Settings
from mailtrack.maintenance.security import CONTENT_SECURITY_POLICY, RateLimiter, SecurityMiddleware
from mailtrack.maintenance.settings import OperationsSettings
from mailtrack.messages.tokens import TokenCodec, TokenKind, TrackingToken
from mailtrack.tracking.hits import page
from tests.conftest import TEST_SECRET
from tests.factories import make_api_key, make_customer, make_message, make_tenant
from tests.live import serving

SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
    "x-frame-options": "DENY",
    "content-security-policy": CONTENT_SECURITY_POLICY,
}


def secured_app(settings: Settings, engine: Engine, **limits: float) -> FastAPI:
    """The real application with the hardening middleware added last, as app.py does."""
    app = create_app(settings, engine=engine)
    # This test's limits instead of the environment's (app.py may have added the middleware already).
    app.user_middleware = [entry for entry in app.user_middleware if entry.cls != SecurityMiddleware]  # type: ignore[comparison-overlap]
    app.add_middleware(SecurityMiddleware, settings=OperationsSettings(**limits))  # type: ignore[arg-type]
    return app


@contextmanager
def secured_client(settings: Settings, engine: Engine, **limits: float) -> Iterator[httpx.Client]:
    """A client of the secured app, served on a loopback port."""
    with (
        serving(secured_app(settings, engine, **limits)) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        yield client


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    """A client of the secured app with a 2 KiB body limit."""
    with secured_client(settings, engine, max_body_bytes=2048) as test_client:
        yield test_client


def test_the_policy_forbids_inline_scripts_and_framing() -> None:
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert "style-src 'self' 'sha256-" in CONTENT_SECURITY_POLICY, "the tracking pages' one style block"
    assert "<style>" in page("t", "b")


def test_every_response_carries_the_security_headers(client: httpx.Client, engine: Engine) -> None:
    tenant = make_tenant(engine)
    message = make_message(
        engine,
        tenant.id,
        make_customer(engine, tenant.id),
        sent_at=dt.datetime.now(dt.UTC),
        links=("https://x.example/",),
    )
    click = TokenCodec([TEST_SECRET]).encode(TrackingToken(TokenKind.CLICK, tenant.id, message, 0))
    answers = {
        "health": client.get("/healthz"),
        "pixel": client.get("/o/not-a-token.gif"),
        "unknown link": client.get("/c/not-a-token"),
        "api 401": client.get("/api/v1/customers/c1/export"),
        "framework 404": client.get("/nowhere"),
    }
    redirect = client.get(f"/c/{click}", follow_redirects=False)
    for name, answer in {**answers, "redirect": redirect}.items():
        for header, value in SECURITY.items():
            if name == "redirect" and header == "referrer-policy":
                continue
            assert answer.headers.get(header) == value, (name, header)
    assert answers["pixel"].headers["content-type"] == "image/gif"
    assert redirect.status_code == 302
    assert redirect.headers["referrer-policy"] == "origin", "a header the app set itself is kept"


def test_the_api_docs_keep_working_without_the_policy(client: httpx.Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "content-security-policy" not in docs.headers
    assert docs.headers["x-content-type-options"] == "nosniff"


def test_a_body_over_the_limit_is_refused_with_413(client: httpx.Client) -> None:
    declared = client.post("/api/v1/messages", content=b"{" + b" " * 4096 + b"}")
    assert declared.status_code == 413
    assert declared.headers["x-frame-options"] == "DENY"

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b" " * 512

    chunked = client.post(
        "/api/v1/messages",
        content=chunks(),
        headers={"Authorization": "Bearer mtk_x", "content-type": "application/json"},
    )
    assert chunked.status_code == 413, "a body without Content-Length is counted as it is read"
    small = client.post("/api/v1/messages", json={"customer": {"id": "c"}})
    assert small.status_code == 401, "under the limit the request goes on"


def test_import_and_inbound_keep_their_own_limits(client: httpx.Client) -> None:
    answer = client.post("/api/v1/events/import", content=b"{}\n" * 2000)
    assert answer.status_code == 401, "not refused for its size: the import checks its own limit"


def test_api_calls_over_the_rate_get_429_with_retry_after(settings: Settings, engine: Engine) -> None:
    tenant = make_tenant(engine)
    key, other = make_api_key(engine, tenant.id), make_api_key(engine, tenant.id)
    with secured_client(settings, engine, api_rate_per_second=0.5, api_rate_burst=3) as client:
        headers = {"Authorization": f"Bearer {key}"}
        statuses = [
            client.get("/api/v1/customers/nobody/export", headers=headers).status_code for _ in range(4)
        ]
        assert statuses == [404, 404, 404, 429]
        refused = client.get("/api/v1/customers/nobody/export", headers=headers)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "2"
        assert refused.json() == {"detail": "too many requests"}
        other_key = client.get(
            "/api/v1/customers/nobody/export", headers={"Authorization": f"Bearer {other}"}
        )
        assert other_key.status_code == 404, "each API key has its own bucket"
        assert client.get("/healthz").status_code == 200, "only the API is limited"
        assert client.get("/o/x.gif").status_code == 200, "never the tracking hits"


def test_login_attempts_are_limited_per_address(settings: Settings, engine: Engine) -> None:
    with secured_client(settings, engine, login_rate_per_minute=2, login_rate_burst=2) as client:
        statuses = [client.post("/manager/login", data={"email": "a@b.c"}).status_code for _ in range(3)]
    assert statuses[2] == 429
    assert 429 not in statuses[:2]


def test_the_rate_limiter_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 2.0, clock=lambda: now[0])
    assert [limiter.take("k") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("k") == pytest.approx(0.5)
    now[0] = 0.5
    assert limiter.take("k") == 0.0
    assert limiter.take("other") == 0.0


def test_the_rate_limiter_forgets_idle_keys_when_full() -> None:
    now = [0.0]
    limiter = RateLimiter(1.0, 1.0, max_keys=3, clock=lambda: now[0])
    for key in ("a", "b", "c"):
        limiter.take(key)
    now[0] = 10.0
    limiter.take("d")
    assert limiter.take("a") == 0.0, "forgotten buckets start full again"
    assert len(limiter._buckets) <= 3
