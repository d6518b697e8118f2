"""Import of historical events (JSON Lines), shared by `mailtrack import` and the HTTP API.

Lines are validated one by one; a bad line is reported with its number and reason and never stops or
corrupts the rest. Lines are written in chunks, each in its own transaction, through `ingest_batch`,
so imported opens and clicks are classified and aggregated exactly like live hits.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, Engine, select

from mailtrack.db import refresh_statistics_as_tables_grow, write_transaction
from mailtrack.messages.policy import tracking_allowed
from mailtrack.messages.queries import (
    CustomerIn,
    MessageIn,
    create_messages,
    ensure_campaign,
    link_positions_for_urls,
    message_ids,
    upsert_customers,
)
from mailtrack.messages.tables import customers, messages
from mailtrack.tenants.queries import get_settings
from mailtrack.tracking.ingest import EventIn, IngestResult, ingest_batch

CHUNK_LINES = 2000
MAX_LINE_BYTES = 64 * 1024


def _aware(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("occurred_at needs a timezone (e.g. 2026-08-03T16:00:00Z)")
    return value.astimezone(dt.UTC).replace(microsecond=0)


def _http_url(value: str) -> str:
    if not value.lower().startswith(("http://", "https://")) or any(ord(ch) < 32 for ch in value):
        raise ValueError("url must be an absolute http(s) URL without control characters")
    return value


Text = Annotated[str, Field(max_length=2000)]


class CustomerLine(BaseModel):
    """The customer a message went to."""

    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, Field(min_length=1, max_length=200)]
    name: Annotated[str, Field(max_length=300)] = ""
    email: Annotated[str, Field(max_length=320)] = ""


class ImportLine(BaseModel):
    """One line of an import file (CONTRACTS.md: import format)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["sent", "delivered", "opened", "clicked", "bounced", "unsubscribed", "complained"]
    message_id: Annotated[str, Field(min_length=1, max_length=200)]
    occurred_at: Annotated[dt.datetime, AfterValidator(_aware)]
    event_id: Annotated[str, Field(min_length=1, max_length=180)] | None = None
    customer: CustomerLine | None = None
    channel: Literal["marketing", "transactional", "system"] | None = None
    source: Literal["campaign", "automation", "system"] | None = None
    campaign: Annotated[str, Field(max_length=300)] | None = None
    user_agent: Text | None = None
    ip: Annotated[str, Field(max_length=64)] | None = None
    referer: Text | None = None
    url: Annotated[str, Field(max_length=2048), AfterValidator(_http_url)] | None = None
    bounce: Literal["hard", "soft"] | None = None
    status: Annotated[str, Field(max_length=16)] | None = None
    diagnostic: Text | None = None


@dataclass
class ImportReport:
    """What an import did: the JSON the CLI prints and the API returns."""

    imported: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, line: int, error: str) -> None:
        """Record a line that was not imported, and why."""
        self.rejected.append({"line": line, "error": error})

    def as_dict(self) -> dict[str, Any]:
        """The report as CONTRACTS.md spells it."""
        return {"imported": self.imported, "duplicates": self.duplicates, "rejected": self.rejected}


def parse_line(raw: str | bytes) -> ImportLine:
    """Validate one line; raises ValueError with a readable reason."""
    if len(raw) > MAX_LINE_BYTES:
        raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("each line must be a JSON object")
    try:
        return ImportLine.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'line'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(reasons) from None


def import_lines(
    engine: Engine,
    *,
    tenant_id: int,
    lines: Iterable[str | bytes],
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import JSON Lines events for a salon; `progress` is told how many lines each chunk held."""
    report = ImportReport()
    chunk: list[tuple[int, ImportLine]] = []
    chunks = 0

    def write() -> None:
        nonlocal chunks
        _write_chunk(engine, tenant_id, chunk, report)
        chunks += 1
        refresh_statistics_as_tables_grow(engine, chunks)
        if progress:
            progress(len(chunk))

    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            chunk.append((number, parse_line(raw)))
        except ValueError as exc:
            report.reject(number, str(exc))
        if len(chunk) >= CHUNK_LINES:
            write()
            chunk = []
    if chunk:
        write()
    report.rejected.sort(key=lambda item: int(item["line"]))
    return report


def _write_chunk(
    engine: Engine, tenant_id: int, chunk: list[tuple[int, ImportLine]], report: ImportReport
) -> None:
    with write_transaction(engine) as conn:
        resolved = _resolve_messages(conn, tenant_id, chunk, report)
        batch = _events(conn, tenant_id, resolved, report)
        result: IngestResult = ingest_batch(conn, batch)
    report.imported += result.stored
    report.duplicates += result.duplicates


def _resolve_messages(
    conn: Connection, tenant_id: int, chunk: list[tuple[int, ImportLine]], report: ImportReport
) -> list[tuple[int, ImportLine, int]]:
    settings = get_settings(conn, tenant_id=tenant_id)
    people = [line.customer for _, line in chunk if line.customer is not None]
    customer_ids = upsert_customers(
        conn, tenant_id=tenant_id, people=[CustomerIn(p.id, p.name, p.email) for p in people]
    )
    dnt = _do_not_track(conn, tenant_id, list(customer_ids.values()))
    known = message_ids(
        conn, tenant_id=tenant_id, external_ids=sorted({line.message_id for _, line in chunk})
    )
    campaign_ids: dict[tuple[str, str], int] = {}
    wanted: dict[str, MessageIn] = {}
    for _, line in chunk:
        if line.message_id in known or line.message_id in wanted or line.customer is None:
            continue
        channel = line.channel or "marketing"
        source = line.source or ("system" if channel == "system" else "campaign")
        campaign_id = None
        if line.campaign:
            key = (line.campaign, source)
            if key not in campaign_ids:
                campaign_ids[key] = ensure_campaign(
                    conn, tenant_id=tenant_id, name=line.campaign, source=source
                )
            campaign_id = campaign_ids[key]
        customer_id = customer_ids[line.customer.id]
        wanted[line.message_id] = MessageIn(
            external_id=line.message_id,
            customer_id=customer_id,
            channel=channel,
            source=source,
            campaign_id=campaign_id,
            tracked=tracking_allowed(
                channel=channel, settings=settings, customer_do_not_track=dnt[customer_id]
            ),
            cohort_at=line.occurred_at,
        )
    known.update(create_messages(conn, tenant_id=tenant_id, batch=list(wanted.values())))
    resolved = []
    for number, line in chunk:
        if line.message_id not in known:
            report.reject(
                number, f"unknown message_id {line.message_id!r}: its first line must carry `customer`"
            )
            continue
        resolved.append((number, line, known[line.message_id]))
    return resolved


def _do_not_track(conn: Connection, tenant_id: int, customer_ids: list[int]) -> dict[int, bool]:
    flags: dict[int, bool] = {}
    for start in range(0, len(customer_ids), 500):
        rows = conn.execute(
            select(customers.c.id, customers.c.do_not_track).where(
                customers.c.tenant_id == tenant_id, customers.c.id.in_(customer_ids[start : start + 500])
            )
        )
        flags.update({row.id: row.do_not_track for row in rows})
    return flags


def _events(
    conn: Connection, tenant_id: int, resolved: list[tuple[int, ImportLine, int]], report: ImportReport
) -> list[EventIn]:
    ids = sorted({message_id for _, _, message_id in resolved})
    tracked: dict[int, bool] = {}
    for start in range(0, len(ids), 500):
        rows = conn.execute(
            select(messages.c.id, messages.c.tracked).where(messages.c.id.in_(ids[start : start + 500]))
        )
        tracked.update({row.id: row.tracked for row in rows})
    positions = link_positions_for_urls(
        conn,
        tenant_id=tenant_id,
        wanted=[
            (message_id, line.url) for _, line, message_id in resolved if line.type == "clicked" and line.url
        ],
    )
    batch = []
    for number, line, message_id in resolved:
        if line.type in ("opened", "clicked") and not tracked[message_id]:
            report.reject(number, f"message {line.message_id!r} is not tracked (system mail or do-not-track)")
            continue
        if line.type == "clicked" and line.url is None:
            report.reject(number, "a clicked line needs `url`")
            continue
        batch.append(
            EventIn(
                tenant_id=tenant_id,
                message_id=message_id,
                type=line.type,
                occurred_at=line.occurred_at,
                user_agent=line.user_agent,
                ip=line.ip,
                referer=line.referer,
                link_position=positions.get((message_id, line.url)) if line.url else None,
                bounce_kind=_bounce_kind(line),
                status=line.status,
                diagnostic=line.diagnostic,
                external_event_id=f"import:{line.event_id}" if line.event_id else None,
            )
        )
    return batch


def _bounce_kind(line: ImportLine) -> str | None:
    if line.type != "bounced":
        return None
    if line.bounce:
        return line.bounce
    # Without an explicit kind, the enhanced status code decides: 5.x.x is permanent.
    return "hard" if line.status and line.status.startswith("5") else "soft"
