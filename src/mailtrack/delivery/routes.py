"""HTTP: `POST /api/v1/inbound`, one raw bounce, delivery report or complaint message from the platform."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from mailtrack.config import Settings
from mailtrack.delivery.inbound import codec_from_settings, process_inbound
from mailtrack.delivery.mailparse import MAX_MESSAGE_BYTES
from mailtrack.maintenance.security import ErrorOut
from mailtrack.messages.tokens import TokenCodec
from mailtrack.tenants.auth import API_KEY_RESPONSES, ApiTenant, EngineDep

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["inbound"], responses=API_KEY_RESPONSES)


def _codec(request: Request) -> TokenCodec:
    # The app keeps its codec with the tracking state; built from the settings when mounted elsewhere.
    state = request.app.state
    codec = getattr(getattr(state, "tracking", None), "codec", None)
    if isinstance(codec, TokenCodec):
        return codec
    settings: Settings = state.settings
    return codec_from_settings(settings)


def _too_large() -> HTTPException:
    return HTTPException(413, f"inbound messages are limited to {MAX_MESSAGE_BYTES} bytes")


@router.post(
    "/inbound",
    responses={
        400: {"model": ErrorOut, "description": "empty body: send one raw RFC 5322 message"},
        413: {"model": ErrorOut, "description": "message over 10 MiB"},
    },
    openapi_extra={
        "requestBody": {"content": {"message/rfc822": {"schema": {"type": "string"}}}, "required": True}
    },
)
async def inbound_message(request: Request, tenant_id: ApiTenant, engine: EngineDep) -> dict[str, Any]:
    """Classify one raw bounce/DSN/ARF message and store its event for this salon (or quarantine it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_MESSAGE_BYTES:
        log.info("inbound: refused a %s-byte body from salon %s", declared, tenant_id)
        raise _too_large()
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_MESSAGE_BYTES:  # never hold more than the limit, whatever was declared
            log.info("inbound: refused an oversized streamed body from salon %s", tenant_id)
            raise _too_large()
    if not body.strip():
        log.info("inbound: empty body from salon %s", tenant_id)
        raise HTTPException(400, "empty body: send one raw RFC 5322 message")
    result = await run_in_threadpool(
        process_inbound, engine, _codec(request), bytes(body), source="api", tenant_id=tenant_id
    )
    return result.as_dict()
