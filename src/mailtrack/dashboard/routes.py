"""The dashboard's router (every manager page) and its static files.

Wire it into the app with:

    app.include_router(dashboard_routes.router)
    app.mount(
        dashboard_routes.STATIC_URL,
        StaticFiles(directory=dashboard_routes.STATIC_DIR),
        name="dashboard-static",
    )
"""

from __future__ import annotations

from fastapi import APIRouter

from mailtrack.dashboard import (
    routes_auth,
    routes_customers,
    routes_dashboard,
    routes_export,
    routes_settings,
)
from mailtrack.dashboard.web import DASHBOARD, STATIC_DIR, STATIC_URL

__all__ = ["DASHBOARD", "STATIC_DIR", "STATIC_URL", "router"]

router = APIRouter(include_in_schema=False)
for _module in (routes_auth, routes_dashboard, routes_customers, routes_settings, routes_export):
    router.include_router(_module.router)
