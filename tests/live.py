"""Servers on a loopback socket: any ASGI app built in a test, or `mailtrack serve` as its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import uvicorn
from starlette.types import ASGIApp

from mailtrack.tracking.protocol import HTTP_PROTOCOL
from tests.conftest import TEST_SECRET


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def uvicorn_thread(config: uvicorn.Config) -> Iterator[tuple[uvicorn.Server, threading.Thread]]:
    """Run a Uvicorn server (lifespan included) on a thread until the block ends."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30  # generous: a loaded 2-core machine starts slowly
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield server, thread
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serving(app: ASGIApp, *, port: int | None = None, http: str = HTTP_PROTOCOL) -> Iterator[str]:
    """Run the app (lifespan included) on 127.0.0.1 until the block ends; yields its base URL.

    `http` is Uvicorn's protocol: Mailtrack's, as `mailtrack serve` runs, unless a test asks otherwise.
    """
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", http=http)
    with uvicorn_thread(config):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def served(
    database_url: str, port: int, journal: Path, *, output: IO[bytes] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`mailtrack serve` as a real process, answering on the port; its stdout and stderr go to `output`."""
    env = {
        **os.environ,
        "MAILTRACK_DATABASE_URL": database_url,
        "MAILTRACK_SECRET_KEY": TEST_SECRET,
        "MAILTRACK_JOURNAL_DIR": str(journal),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "mailtrack.cli", "serve", "--port", str(port)],
        env=env,
        stdout=output or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if output else subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, "the server exited"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
