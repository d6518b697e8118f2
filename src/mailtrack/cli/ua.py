"""`mailtrack ua`: classify user-agent strings read from stdin, one per line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import typer

from mailtrack.tracking.useragent import classify_user_agent


def ua_command(
    json_output: bool = typer.Option(
        False, "--json", help="Print one JSON object per input line (device, client, os, machine, reason)."
    ),
) -> None:
    """Classify user-agent strings, one per stdin line."""
    for line in _stdin_lines():
        user_agent = line.rstrip("\r\n")
        info = classify_user_agent(user_agent)
        if json_output:
            typer.echo(json.dumps(info.as_dict()))
            continue
        fields = [
            info.device,
            info.client,
            info.os or "-",
            "machine" if info.machine else "human",
            info.reason or "-",
            user_agent.replace("\t", " "),
        ]
        typer.echo("\t".join(fields))


def _stdin_lines() -> Iterator[str]:
    # Bytes where we can: a log line with invalid UTF-8 must cost one odd answer, not the whole run.
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text-only stdin (an embedding host, a test harness)
        yield from sys.stdin
        return
    for raw in buffer:
        yield raw.decode("utf-8", errors="replace")
