"""Helpers every CLI command shares: settings, engine, JSON output, progress on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console
from sqlalchemy import Engine

from mailtrack.config import Settings, get_settings
from mailtrack.db import make_engine
from mailtrack.migrations import upgrade

# Progress bars and logs go to stderr so that stdout carries only results (and --json stays parseable).
stderr = Console(stderr=True)


def open_engine(*, migrate: bool = True) -> tuple[Settings, Engine]:
    """Settings from the environment and an engine on a migrated database."""
    settings = get_settings()
    engine = make_engine(settings.database_url)
    if migrate:
        upgrade(engine)
    return settings, engine


def print_json(data: Any) -> None:
    """Print one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print an error on stderr and return the exit to raise."""
    stderr.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)
