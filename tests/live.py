"""Serve any ASGI app built in a test on a loopback socket (for apps with routes or middleware added)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from mailtrack.tracking.protocol import HTTP_PROTOCOL


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(app: ASGIApp, *, port: int | None = None, http: str = HTTP_PROTOCOL) -> Iterator[str]:
    """Run the app (lifespan included) on 127.0.0.1 until the block ends; yields its base URL.

    `http` is Uvicorn's protocol: Mailtrack's, as `mailtrack serve` runs, unless a test asks otherwise.
    """
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", http=http)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30  # generous: a loaded 2-core machine starts slowly
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
