"""`mailtrack inbound`: process one bounce, DSN or complaint message from a file or stdin (an MTA pipe)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO

import typer
from sqlalchemy.exc import SQLAlchemyError

from mailtrack.cli.common import fail, open_engine, print_json
from mailtrack.delivery.bounces import classify
from mailtrack.delivery.inbound import InboundResult, codec_from_settings, process_inbound
from mailtrack.delivery.mailparse import MAX_MESSAGE_BYTES

# sysexits(3): an MTA pipe defers the message on 75 (try again later) and bounces it on 65 (bad data).
EX_DATAERR = 65
EX_TEMPFAIL = 75


def _read(file: str) -> bytes:
    if file == "-":
        stream: IO[bytes] = sys.stdin.buffer
    else:
        path = Path(file)
        if not path.is_file():
            raise fail(f"no such file: {file}")
        stream = path.open("rb")
    with stream:
        raw = stream.read(MAX_MESSAGE_BYTES + 1)  # never read more than one byte past the limit
    if len(raw) > MAX_MESSAGE_BYTES:
        raise fail(f"message over {MAX_MESSAGE_BYTES} bytes", EX_DATAERR)
    if not raw.strip():
        raise fail("empty message", EX_DATAERR)
    return raw


def _describe(result: InboundResult) -> str:
    data = result.as_dict()
    lines = [f"kind: {data['kind']}" + (f" ({data['bounce']})" if data["bounce"] else "")]
    for name in ("status", "recipient", "diagnostic", "original_message_id", "reporting_mta", "parser"):
        if data[name]:
            lines.append(f"{name}: {data[name]}")
    if result.attribution:
        found = result.attribution
        lines.append(f"attributed: message {found.external_id} (salon {found.tenant_id}) via {found.via}")
    if result.dry_run:
        lines.append("stored: nothing (dry run)")
    elif result.quarantine_id is not None:
        lines.append(f"quarantined: #{result.quarantine_id}" + (" (already)" if result.duplicate else ""))
    elif result.stored_event:
        lines.append(f"stored: {result.stored_event}")
    else:
        lines.append("stored: nothing" + (" (already stored)" if result.duplicate else ""))
    return "\n".join(lines)


def inbound_command(
    file: str = typer.Argument("-", help="The raw message (RFC 5322); - reads stdin."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Classify only: touch no database."),
    json_output: bool = typer.Option(False, "--json", help="Print the classification as one JSON object."),
) -> None:
    """Process one bounce, DSN or complaint message (file or stdin), as an MTA pipe would."""
    raw = _read(file)
    if dry_run:
        # No settings, no engine: a dry run classifies, and works without any database at all.
        result = InboundResult(classify(raw), dry_run=True)
    else:
        try:
            settings, engine = open_engine()
            try:
                result = process_inbound(engine, codec_from_settings(settings), raw, source="cli")
            finally:
                engine.dispose()
        except SQLAlchemyError as exc:
            raise fail(f"database unavailable, try again later: {exc}", EX_TEMPFAIL) from None
    if json_output:
        print_json(result.as_dict())
    else:
        sys.stdout.write(_describe(result) + "\n")
