"""A real server on a loopback socket, for tests that speak HTTP the way clients do."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine

from mailtrack.app import create_app
from mailtrack.config import Settings
from tests.live import free_port, serving


@dataclass(frozen=True)
class LiveServer:
    """A running Mailtrack server."""

    url: str
    engine: Engine
    settings: Settings
    app: FastAPI

    def settle(self) -> None:
        """Wait until every hit answered so far is in the database (hits are journaled first)."""
        self.app.state.tracking.journal.wait_until_applied()

    def client(self, **kwargs: object) -> httpx.Client:
        """An HTTP client bound to the server."""
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def live_server(settings: Settings, engine: Engine) -> Iterator[LiveServer]:
    """Serve the app on 127.0.0.1 for the duration of a test."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = settings.model_copy(update={"base_url": url})
    app = create_app(settings, engine=engine)
    with serving(app, port=port):
        yield LiveServer(url, engine, settings, app)
