"""A real server on a loopback socket, for tests that speak HTTP the way clients do."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine

from mailtrack.app import create_app
from mailtrack.config import Settings


@dataclass(frozen=True)
class LiveServer:
    """A running Mailtrack server."""

    url: str
    engine: Engine
    settings: Settings

    def client(self, **kwargs: object) -> httpx.Client:
        """An HTTP client bound to the server."""
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)  # type: ignore[arg-type]


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def live_server(settings: Settings, engine: Engine) -> Iterator[LiveServer]:
    """Serve the app on 127.0.0.1 for the duration of a test."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = settings.model_copy(update={"base_url": url})
    app = create_app(settings, engine=engine)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    yield LiveServer(url, engine, settings)
    server.should_exit = True
    thread.join(timeout=10)
