"""The ASGI application: tracking endpoints, the platform API and the dashboard in one app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text

from mailtrack import __version__
from mailtrack.config import Settings, get_settings
from mailtrack.db import make_engine
from mailtrack.tracking import import_routes

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """Build the application for these settings (environment settings by default)."""
    settings = settings or get_settings()
    engine = engine or make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="Mailtrack",
        version=__version__,
        summary="Email tracking for a salon-booking platform.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine

    @app.get("/healthz", tags=["operations"])
    def healthz() -> JSONResponse:
        """200 when the database answers, 503 otherwise."""
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:  # any driver error means "not healthy"; the log says which
            log.exception("health check: database unreachable")
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    app.include_router(import_routes.router)
    return app
