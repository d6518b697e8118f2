"""Manager login and logout: argon2 passwords, signed session cookies, CSRF, throttled failures."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Engine

from mailtrack.config import Settings
from mailtrack.dashboard import queries, sessions
from mailtrack.dashboard.web import (
    DASHBOARD,
    LOGIN,
    csrf_failed,
    error_page,
    render,
    safe_next,
    see_other,
)
from mailtrack.db import write_transaction
from mailtrack.tenants.queries import authenticate_manager
from mailtrack.tracking.ipaddr import client_ip

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)


def _login_page(
    request: Request, *, next_url: str, email: str = "", error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    probe = Response()
    nonce = sessions.login_nonce(request, probe)
    context = {
        "csrf": sessions.codec_for(request).csrf_token("login", nonce),
        "next_url": next_url,
        "email": email,
        "error": error,
        "signed_out": request.query_params.get("signed_out") == "1",
    }
    response = render(request, "login.html", context, user=None, status_code=status_code)
    for header, value in probe.raw_headers:
        if header == b"set-cookie":
            response.raw_headers.append((header, value))
    return response


def _peer(request: Request) -> str:
    settings: Settings = request.app.state.settings
    peer = request.client.host if request.client else None
    forwarded = request.headers.get("x-forwarded-for")
    return client_ip(peer, forwarded, settings.trusted_proxies) or "unknown"


@router.get("/manager", response_model=None)
@router.get("/manager/", response_model=None)
def manager_home() -> RedirectResponse:
    """The manager area's root: the dashboard."""
    return see_other(DASHBOARD)


@router.get(LOGIN, response_model=None)
def login_form(
    request: Request, next_url: Annotated[str | None, Query(alias="next", max_length=2000)] = None
) -> Response:
    """The login form (a signed-in manager goes straight to the dashboard)."""
    if sessions.current_user(request) is not None:
        return see_other(safe_next(next_url))
    return _login_page(request, next_url=safe_next(next_url))


@router.post(LOGIN, response_model=None)
def login(
    request: Request,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next_url: Annotated[str, Form(alias="next", max_length=2000)] = "",
) -> Response:
    """Check the password; on success start a session, after 5 failures in 15 minutes answer 429."""
    codec = sessions.codec_for(request)
    if not codec.csrf_ok("login", request.cookies.get(sessions.LOGIN_COOKIE), csrf):
        log.info("dashboard: login refused, bad CSRF token")
        return csrf_failed(request, None)
    target = safe_next(next_url)
    normalized = email.strip().lower()
    address = _peer(request)
    throttle = sessions.throttle_for(request)
    wait = throttle.retry_after(normalized, address)
    if wait is not None:
        log.warning("dashboard: login throttled for %s from %s", normalized, address)
        minutes = max(1, round(wait / 60))
        refused = error_page(
            request,
            None,
            429,
            "Too many attempts",
            f"Too many failed logins for this email from your network. For your security, wait about "
            f"{minutes} minute{'s' if minutes != 1 else ''} before trying again.",
        )
        refused.headers["Retry-After"] = str(wait)
        return refused
    engine: Engine = request.app.state.engine
    with engine.connect() as conn:
        manager = authenticate_manager(conn, email=normalized, password=password) if normalized else None
        found = queries.session_manager(conn, manager_id=manager.id) if manager else None
    if manager is None or found is None or found.tenant_id != manager.tenant_id:
        throttle.failed(normalized, address)
        log.info("dashboard: failed login for %s from %s", normalized, address)
        return _login_page(
            request,
            next_url=target,
            email=email,
            error="That email and password do not match. Check them and try again.",
            status_code=401,
        )
    throttle.succeeded(normalized, address)
    cookie = codec.issue(manager_id=found.manager_id, tenant_id=found.tenant_id, version=found.version)
    response = see_other(target)
    sessions.set_session_cookie(request, response, cookie)
    response.delete_cookie(sessions.LOGIN_COOKIE, path=sessions.COOKIE_PATH)
    log.info("dashboard: manager %s signed in", found.manager_id)
    return response


@router.post("/manager/logout", response_model=None)
def logout(request: Request, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    """End every session of this manager (the session version is bumped) and clear the cookie."""
    user = sessions.current_user(request)
    if user is not None:
        if not sessions.session_csrf_ok(request, csrf):
            return csrf_failed(request, user)
        engine: Engine = request.app.state.engine
        with write_transaction(engine) as conn:
            queries.bump_session_version(conn, manager_id=user.manager_id, tenant_id=user.tenant_id)
        log.info("dashboard: manager %s signed out", user.manager_id)
    response = see_other(f"{LOGIN}?signed_out=1")
    sessions.clear_session_cookie(request, response)
    return response
