"""Rendering shared by the dashboard pages: the Jinja2 environment, security headers, redirects, errors."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from mailtrack.dashboard import present
from mailtrack.dashboard.sessions import DashboardUser

HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
STATIC_URL = "/manager/static"
DASHBOARD = "/manager/connect/email/tracking"
LOGIN = "/manager/login"

# No inline script or style anywhere: charts are SVG with presentation attributes, so the policy can
# forbid both. form-action and frame-ancestors close the classic clickjacking and form-hijack routes.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # search terms in our URLs never leak to a clicked link
    "Cache-Control": "no-store",  # pages hold customer data; a shared computer must not keep them
}


def _asset_version(name: str) -> str:
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]


def url_with(path: str, params: Mapping[str, Any], **overrides: Any) -> str:
    """`path?query` keeping the given parameters, with overrides; empty values are dropped."""
    merged = {**params, **overrides}
    query = urlencode([(key, value) for key, value in merged.items() if value not in (None, "")])
    return f"{path}?{query}" if query else path


# Autoescape is on for every template: names, user agents, referers, URLs and bounce diagnostics
# come from outside and must render as text. StrictUndefined turns a template typo into a test failure.
environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.filters.update(pct=present.pct, number=present.number)
environment.globals.update(
    DASHBOARD=DASHBOARD,
    LOGIN=LOGIN,
    STATIC_URL=STATIC_URL,
    CSS_VERSION=_asset_version("dashboard.css"),
    url_with=url_with,
    present=present,
)
templates = Jinja2Templates(env=environment)


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any],
    *,
    user: DashboardUser | None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """A page from a template, with the security headers every dashboard page carries."""
    response = templates.TemplateResponse(
        request, name, {"user": user, **context}, status_code=status_code, headers=dict(headers or {})
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def safe_next(target: str | None) -> str:
    """Where to go after login: only a path of ours, never another site (no open redirect)."""
    if (
        target
        and target.startswith("/manager/")
        and not target.startswith("//")
        and "\\" not in target
        and not any(ord(ch) < 32 for ch in target)
    ):
        return target
    return DASHBOARD


def login_redirect(request: Request) -> RedirectResponse:
    """Send a visitor without a valid session to the login page, remembering where they were going."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(url_with(LOGIN, {"next": safe_next(target)}), status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


def see_other(url: str) -> RedirectResponse:
    """A 303 redirect (the answer to a successful POST)."""
    response = RedirectResponse(url, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


def error_page(
    request: Request, user: DashboardUser | None, status_code: int, title: str, message: str
) -> HTMLResponse:
    """A plain error page (404, 403, 422, 429) in the dashboard's look."""
    return render(
        request, "error.html", {"title": title, "message": message}, user=user, status_code=status_code
    )


def not_found(request: Request, user: DashboardUser | None, message: str) -> HTMLResponse:
    """404: also the answer for another salon's ids, so they cannot even be confirmed to exist."""
    return error_page(request, user, 404, "Not found", message)


def csrf_failed(request: Request, user: DashboardUser | None) -> HTMLResponse:
    """403 for a form without a valid CSRF token."""
    return error_page(
        request,
        user,
        403,
        "This form has expired",
        "The form was not sent from this dashboard, or your session changed since it was shown. "
        "Go back, reload the page and try again.",
    )
