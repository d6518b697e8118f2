"""Shared benchmark plumbing: scratch databases on both backends and a server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg

PG_ADMIN = os.environ.get("MAILTRACK_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
BENCH_SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuv"  # noqa: S105  (a throwaway bench database)
ROOT = Path(__file__).resolve().parent.parent


def postgres_available() -> bool:
    """True when the PostgreSQL server answers."""
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@contextmanager
def scratch_database(backend: str, name: str) -> Iterator[str]:
    """A new empty database on the backend; dropped afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="mailtrack-bench-") as folder:
            yield f"sqlite:///{folder}/{name}.db"
        return
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type,unused-ignore]
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type,unused-ignore]
    try:
        yield PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type,unused-ignore]


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def server(args: list[str], *, env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends; waits until it answers on the port."""
    process = subprocess.Popen(args, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server {args} did not start") from None
                time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def mailtrack_serve(database_url: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment of `mailtrack serve` on this database."""
    command = [sys.executable, "-m", "mailtrack.cli", "serve", "--port", str(port)]
    env = {
        "MAILTRACK_DATABASE_URL": database_url,
        "MAILTRACK_SECRET_KEY": BENCH_SECRET,
        "MAILTRACK_LOG_LEVEL": "WARNING",
        "MAILTRACK_JOURNAL_DIR": tempfile.mkdtemp(prefix="mailtrack-bench-journal-"),
    }
    return command, env
