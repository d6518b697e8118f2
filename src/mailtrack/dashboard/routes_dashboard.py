"""The tracking dashboard page: cards, engagement, send time, links, devices, campaigns, recent events."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import Engine

from mailtrack.analytics.queries import campaign_id_by_name
from mailtrack.dashboard import present, queries, sessions, widgets
from mailtrack.dashboard.web import DASHBOARD, login_redirect, not_found, render
from mailtrack.db import utcnow
from mailtrack.messages.queries import CHANNELS, SOURCES

router = APIRouter(include_in_schema=False)
Text = Annotated[str, Query(max_length=300)]


@router.get(DASHBOARD, response_model=None)
def dashboard(
    request: Request,
    first: Annotated[str, Query(alias="from", max_length=20)] = "",
    last: Annotated[str, Query(alias="to", max_length=20)] = "",
    source: Text = "",
    campaign: Text = "",
    channel: Text = "",
) -> Response:
    """The salon's email tracking dashboard for a period (default: the last 7 days) and filters."""
    began = time.perf_counter()
    user = sessions.current_user(request)
    if user is None:
        return login_redirect(request)
    engine: Engine = request.app.state.engine
    now = utcnow()
    asked = widgets.Filters(first.strip(), last.strip(), source.strip(), campaign.strip(), channel.strip())
    if asked.campaign:
        # Unlike the API (zeros for a campaign about to be sent), a page for a campaign that is not
        # this salon's is a 404: another salon's campaign names are not to be confirmed.
        with engine.connect() as conn:
            if campaign_id_by_name(conn, tenant_id=user.tenant_id, name=asked.campaign) is None:
                return not_found(request, user, "Your salon has no campaign by that name.")
    stats, filters, problem = widgets.load_stats(
        engine, tenant_id=user.tenant_id, filters=asked, timezone=user.timezone, now=now
    )
    with engine.connect() as conn:
        presence = queries.mail_presence(conn, tenant_id=user.tenant_id)
        names = queries.campaign_names(conn, tenant_id=user.tenant_id)
        campaigns = widgets.campaign_cards(
            conn, tenant_id=user.tenant_id, stats=stats, filters=filters, timezone=user.timezone
        )
        opens = (
            queries.observed_open_hours(conn, tenant_id=user.tenant_id)
            if stats.best_send_time is None
            else {}
        )
    context = {
        "stats": stats,
        "filters": filters,
        "params": filters.params(),
        "problem": problem,
        "presence": presence,
        "campaign_names": names,
        "channels": CHANNELS,
        "sources": SOURCES,
        "kpis": widgets.kpis(stats, widgets.KPI_KEYS),
        "machine": widgets.kpis(stats, ("machine_open_share",))[0],
        "secondary": widgets.kpis(stats, ("delivered", "click_to_open_rate")),
        "buckets": widgets.buckets(stats),
        "send_time": widgets.send_time(stats.best_send_time, opens),
        "devices": present.donut(stats.devices, present.DEVICE_LABELS, present.DEVICE_COLORS),
        "clients": widgets.bars(stats.clients, present.CLIENT_LABELS),
        "campaigns": campaigns,
        "presets": [
            (label, widgets.last_days(user.timezone, now, days))
            for label, days in (("7 days", 7), ("30 days", 30), ("90 days", 90))
        ],
        "now": now,
        "tz": user.timezone,
    }
    response = render(request, "dashboard.html", context, user=user)
    # Server-Timing shows the render time in the browser's devtools (and in the tests' measurement).
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - began) * 1000:.1f}"
    return response
