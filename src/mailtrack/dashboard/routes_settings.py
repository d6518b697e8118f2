"""The settings page: tracking per channel, raw-event retention, IP anonymization, and the audit trail."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response
from sqlalchemy import Engine

from mailtrack.dashboard import queries, sessions
from mailtrack.dashboard.web import DASHBOARD, csrf_failed, login_redirect, render, see_other
from mailtrack.db import write_transaction
from mailtrack.tenants.queries import TenantSettings, get_settings, update_settings

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)
SETTINGS = f"{DASHBOARD}/settings"
RETENTION_CHOICES = (30, 60, 90, 180, 365, 730)
RETENTION_RANGE = (1, 3650)
IP_CHOICES = (-1, 0, 1, 7, 14, 30, 60, 90)
IP_RANGE = (-1, 3650)
FIELD_LABELS = {
    "track_marketing": "Tracking of marketing mail",
    "track_transactional": "Tracking of transactional mail",
    "honor_dnt": "Honour Do Not Track",
    "retention_days": "Raw-event retention",
    "ip_anonymize_days": "IP addresses",
    "soft_bounce_threshold": "Soft bounces before suppression",
    "rollup_retention_months": "Aggregate retention",
}


def ip_policy(days: int) -> str:
    """An IP-anonymization setting in words."""
    if days < 0:
        return "not stored at all"
    if days == 0:
        return "anonymized immediately"
    return f"kept {days} day{'s' if days != 1 else ''}, then anonymized"


def audit_value(field: str, value: str | None) -> str:
    """A stored audit value in words ("True" → "on", "-1" IPs → "not stored at all")."""
    if value is None:
        return "–"
    if value in ("True", "False"):
        return "on" if value == "True" else "off"
    if field == "ip_anonymize_days" and value.lstrip("-").isdigit():
        return ip_policy(int(value))
    if field == "retention_days" and value.isdigit():
        return f"{value} days"
    return value


def _page(
    request: Request,
    user: sessions.DashboardUser,
    current: TenantSettings,
    *,
    saved: int | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    engine: Engine = request.app.state.engine
    with engine.connect() as conn:
        trail = queries.audit_trail(conn, tenant_id=user.tenant_id)
    retention = sorted({*RETENTION_CHOICES, current.retention_days})
    ip_days = sorted({*IP_CHOICES, current.ip_anonymize_days})
    context: dict[str, Any] = {
        "current": current,
        "retention_choices": retention,
        "ip_choices": [(days, ip_policy(days)) for days in ip_days],
        "trail": trail,
        "labels": FIELD_LABELS,
        "audit_value": audit_value,
        "saved": saved,
        "error": error,
        "tz": user.timezone,
    }
    return render(request, "settings.html", context, user=user, status_code=status_code)


@router.get(SETTINGS, response_model=None)
def settings_page(request: Request, saved: Annotated[int | None, Query(ge=0, le=100)] = None) -> Response:
    """The salon's tracking and privacy settings, with who changed what and when."""
    user = sessions.current_user(request)
    if user is None:
        return login_redirect(request)
    engine: Engine = request.app.state.engine
    with engine.connect() as conn:
        current = get_settings(conn, tenant_id=user.tenant_id)
    return _page(request, user, current, saved=saved)


def _int(text: str, name: str, bounds: tuple[int, int]) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{name} must be a whole number of days") from None
    if not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{name} must be between {bounds[0]} and {bounds[1]} days")
    return value


@router.post(SETTINGS, response_model=None)
def save_settings(
    request: Request,
    csrf: Annotated[str, Form(max_length=200)] = "",
    track_marketing: Annotated[str, Form(max_length=10)] = "",
    track_transactional: Annotated[str, Form(max_length=10)] = "",
    retention_days: Annotated[str, Form(max_length=10)] = "",
    ip_anonymize_days: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Save the settings; each changed field writes an audit line naming this manager."""
    user = sessions.current_user(request)
    if user is None:
        return login_redirect(request)
    if not sessions.session_csrf_ok(request, csrf):
        return csrf_failed(request, user)
    engine: Engine = request.app.state.engine
    try:
        changes: dict[str, Any] = {
            # An unchecked checkbox sends nothing: absence means off.
            "track_marketing": track_marketing == "on",
            "track_transactional": track_transactional == "on",
            "retention_days": _int(retention_days, "Raw-event retention", RETENTION_RANGE),
            "ip_anonymize_days": _int(ip_anonymize_days, "IP anonymization", IP_RANGE),
        }
    except ValueError as exc:
        with engine.connect() as conn:
            current = get_settings(conn, tenant_id=user.tenant_id)
        return _page(request, user, current, error=str(exc), status_code=422)
    with write_transaction(engine) as conn:
        before = get_settings(conn, tenant_id=user.tenant_id)
        after = update_settings(conn, tenant_id=user.tenant_id, changes=changes, manager_id=user.manager_id)
    changed = sum(getattr(before, key) != getattr(after, key) for key in changes)
    if changed:
        log.info("dashboard: manager %s changed %d setting(s)", user.manager_id, changed)
    return see_other(f"{SETTINGS}?saved={changed}")
