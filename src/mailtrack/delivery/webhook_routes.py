"""HTTP: `POST /api/v1/webhooks/{ses|sendgrid|mailgun|postmark}`, signed delivery events from ESPs."""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from mailtrack.config import Settings
from mailtrack.delivery.inbound import codec_from_settings
from mailtrack.delivery.webhook_auth import WebhookRejected
from mailtrack.delivery.webhooks import MAX_BODY_BYTES, PROVIDERS, Webhooks
from mailtrack.messages.tokens import TokenCodec

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])


def webhooks_for(app: FastAPI) -> Webhooks:
    """The app's Webhooks (tests put one with their own certificate fetcher in app.state.webhooks)."""
    hooks = getattr(app.state, "webhooks", None)
    if isinstance(hooks, Webhooks):
        return hooks
    settings: Settings = app.state.settings
    codec = getattr(getattr(app.state, "tracking", None), "codec", None)
    hooks = Webhooks(
        settings,
        app.state.engine,
        codec if isinstance(codec, TokenCodec) else codec_from_settings(settings),
    )
    app.state.webhooks = hooks  # one per app: it caches SNS certificates and the SendGrid key
    return hooks


def _reject(provider: str, status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    log.info("webhook %s: refused (%s): %s", provider[:20], status, reason)
    return JSONResponse({"detail": reason}, status_code=status, headers=headers)


@router.post(
    "/{provider}",
    responses={
        400: {"description": "not this provider's payload"},
        401: {"description": "missing or bad signature or credentials"},
        403: {"description": "stale timestamp, replayed call, or SNS topic not allowed"},
        404: {"description": "unknown or unconfigured provider"},
        413: {"description": "body over 1 MiB"},
        503: {"description": "storage or certificate fetch failed; the provider retries"},
    },
)
async def provider_webhook(provider: str, request: Request) -> JSONResponse:
    """Verify one provider call and store its delivery events (idempotent by the provider's event id)."""
    hooks = webhooks_for(request.app)
    if provider not in PROVIDERS or not hooks.configured(provider):
        return _reject(provider, 404, "unknown or unconfigured webhook provider")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _reject(provider, 413, f"webhook bodies are limited to {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_BODY_BYTES:  # never hold more than the limit, whatever was declared
            return _reject(provider, 413, f"webhook bodies are limited to {MAX_BODY_BYTES} bytes")
    headers = {name.lower(): value for name, value in request.headers.items()}
    try:
        result = await run_in_threadpool(hooks.handle, provider, headers, bytes(body))
    except WebhookRejected as exc:
        return _reject(provider, exc.status, exc.reason, exc.headers)
    except SQLAlchemyError:
        log.exception("webhook %s: could not store the call", provider)
        return JSONResponse({"detail": "storage unavailable; retry later"}, status_code=503)
    return JSONResponse(result)
