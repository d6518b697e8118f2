"""HTTP: `POST /api/v1/events/import`, the JSON Lines import of historical events."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from mailtrack.maintenance.security import ErrorOut
from mailtrack.tenants.auth import API_KEY_RESPONSES, ApiTenant, EngineDep
from mailtrack.tracking.importer import import_lines

router = APIRouter(prefix="/api/v1", tags=["import"], responses=API_KEY_RESPONSES)
MAX_IMPORT_BYTES = 64 * 1024 * 1024


class RejectedLineOut(BaseModel):
    """A line that was not imported (lines count from 1)."""

    line: int
    error: str


class ImportOut(BaseModel):
    """What the import did; a line already imported (same event) counts as a duplicate."""

    imported: int
    duplicates: int
    rejected: list[RejectedLineOut]


@router.post(
    "/events/import",
    responses={413: {"model": ErrorOut, "description": "body over 64 MiB: split the file"}},
    openapi_extra={
        "requestBody": {
            "description": "JSON Lines, one event a line (docs/import.md); an empty body imports nothing.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            "required": False,
        }
    },
)
async def import_events(request: Request, tenant_id: ApiTenant, engine: EngineDep) -> ImportOut:
    """Import historical events, one JSON object per line; reports imported, duplicates and rejected lines."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_IMPORT_BYTES:
        raise HTTPException(413, f"import bodies are limited to {MAX_IMPORT_BYTES} bytes; split the file")
    body = bytearray()
    async for part in request.stream():
        body.extend(part)
        if len(body) > MAX_IMPORT_BYTES:
            raise HTTPException(413, f"import bodies are limited to {MAX_IMPORT_BYTES} bytes; split the file")
    lines = bytes(body).splitlines()
    report = await run_in_threadpool(import_lines, engine, tenant_id=tenant_id, lines=lines)
    return ImportOut.model_validate(report.as_dict())
