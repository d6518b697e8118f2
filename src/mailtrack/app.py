"""The ASGI application: tracking endpoints, the platform API and the dashboard in one app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sqlalchemy import Engine, text
from starlette.types import Receive, Scope, Send

from mailtrack import __version__
from mailtrack.analytics import routes as analytics_routes
from mailtrack.analytics.sendtime import warm_cache
from mailtrack.config import Settings, get_settings
from mailtrack.dashboard import routes as dashboard_routes
from mailtrack.db import make_engine
from mailtrack.delivery import routes as delivery_routes
from mailtrack.delivery import webhook_routes
from mailtrack.delivery.outbox import OutboxWorker
from mailtrack.delivery.smtp_relay import SmtpRelay
from mailtrack.maintenance import routes as maintenance_routes
from mailtrack.maintenance.metrics import metrics_endpoint
from mailtrack.maintenance.scheduler import MaintenanceScheduler
from mailtrack.maintenance.security import SecurityMiddleware
from mailtrack.messages import routes as message_routes
from mailtrack.messages.tokens import TokenCodec
from mailtrack.tracking import import_routes
from mailtrack.tracking import routes as tracking_routes
from mailtrack.tracking.fastpath import OPENAPI_PATHS, TrackingFastPath
from mailtrack.tracking.hits import LinkCache, Tracking
from mailtrack.tracking.journal import HitJournal
from mailtrack.tracking.useragent import classify_user_agent

log = logging.getLogger(__name__)


class HealthOut(BaseModel):
    """`ok` when the database answers, else `unavailable` (with 503)."""

    status: Literal["ok", "unavailable"]


def _warm_send_times(engine: Engine) -> None:
    try:
        warm_cache(engine)
    except Exception:  # a warm-up is an optimization: the page computes it when asked
        log.exception("send-time warm-up failed")


class MailtrackApp(FastAPI):
    """The FastAPI application, with tracking hits answered before the framework's middleware stack."""

    tracking_fast_path: TrackingFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast_path = self.tracking_fast_path
        if fast_path is not None and fast_path.handles(scope):
            scope["app"] = self
            await fast_path(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """Build the application for these settings (environment settings by default)."""
    settings = settings or get_settings()
    engine = engine or make_engine(settings.database_url)

    journal = HitJournal(
        engine,
        settings.journal_dir,
        fsync=settings.journal_fsync,
        batch_max=settings.ingest_batch_max,
        max_bytes=settings.journal_max_bytes,
        applier=settings.journal_applier,
        database_url=settings.database_url,
    )

    scheduler = MaintenanceScheduler(engine)
    # "send": true goes through this worker; without MAILTRACK_SMTP_HOST the API answers 501.
    outbox = (
        OutboxWorker(engine, SmtpRelay.from_settings(settings), max_attempts=settings.smtp_max_attempts)
        if settings.smtp_host
        else None
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Load the user-agent patterns before the first hit instead of during it.
        classify_user_agent(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
        )
        await journal.start()
        await scheduler.start()
        if outbox is not None:
            await outbox.start()
        # The send-time fit takes about a second per salon; do it now rather than on a manager's first view.
        warming = asyncio.create_task(asyncio.to_thread(_warm_send_times, engine))
        yield
        warming.cancel()
        if outbox is not None:
            await outbox.stop()
        await scheduler.stop()
        await journal.stop()
        engine.dispose()

    app = MailtrackApp(
        title="Mailtrack",
        version=__version__,
        summary="Email tracking for a salon-booking platform.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.tracking = Tracking(
        settings=settings,
        engine=engine,
        journal=journal,
        codec=TokenCodec(
            [
                settings.secret_key.get_secret_value(),
                *(old.get_secret_value() for old in settings.old_secret_keys),
            ]
        ),
        links=LinkCache(engine),
    )
    app.tracking_fast_path = TrackingFastPath(app.state.tracking)
    app.add_middleware(SecurityMiddleware)
    app.state.maintenance = scheduler
    app.state.outbox = outbox

    @app.get(
        "/healthz",
        tags=["operations"],
        response_model=HealthOut,
        responses={503: {"model": HealthOut, "description": "the database does not answer"}},
    )
    def healthz() -> JSONResponse:
        """200 when the database answers, 503 otherwise."""
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:  # any driver error means "not healthy"; the log says which
            log.exception("health check: database unreachable")
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    app.include_router(tracking_routes.router)
    app.include_router(message_routes.router)
    app.include_router(import_routes.router)
    app.include_router(analytics_routes.router)
    app.include_router(delivery_routes.router)
    app.include_router(webhook_routes.router)
    app.include_router(dashboard_routes.router)
    app.include_router(maintenance_routes.router)
    app.add_api_route(
        "/metrics", metrics_endpoint, methods=["GET"], tags=["operations"], response_class=PlainTextResponse
    )
    app.mount(
        dashboard_routes.STATIC_URL,
        StaticFiles(directory=dashboard_routes.STATIC_DIR),
        name="dashboard-static",
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema["paths"] = {**OPENAPI_PATHS, **schema["paths"]}  # the fast path is not a framework route
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
    return app
