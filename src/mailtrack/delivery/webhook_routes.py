"""HTTP: `POST /api/v1/webhooks/{ses|sendgrid|mailgun|postmark}`, signed delivery events from ESPs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from mailtrack.config import Settings
from mailtrack.delivery.inbound import codec_from_settings
from mailtrack.delivery.webhook_auth import SNS_TYPES, WebhookRejected
from mailtrack.delivery.webhooks import MAX_BODY_BYTES, PROVIDERS, Webhooks
from mailtrack.maintenance.security import RATE_LIMIT_RESPONSES, ErrorOut
from mailtrack.messages.tokens import TokenCodec

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"], responses=RATE_LIMIT_RESPONSES)


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


class WebhookOut(BaseModel):
    """What one call did (`subscription`: SNS subscription `confirmed` or `unsubscribed`, else null)."""

    received: int
    stored: int
    duplicates: int
    ignored: int
    unattributed: int
    quarantined: int
    subscription: str | None


_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "not this provider's payload (the detail says why)"},
    401: {"model": ErrorOut, "description": "missing or bad signature or credentials"},
    403: {"model": ErrorOut, "description": "stale timestamp, replayed call, or SNS topic not allowed"},
    404: {"model": ErrorOut, "description": "this provider is not configured (its secret is unset)"},
    413: {"model": ErrorOut, "description": f"body over {MAX_BODY_BYTES // 1024 // 1024} MiB"},
    503: {"model": ErrorOut, "description": "storage or certificate fetch failed; the provider retries"},
}
_TEXT = {"type": "string", "minLength": 1}
# What each provider posts, as far as this endpoint relies on it (other fields are ignored), and how
# it is authenticated.
_PROVIDERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ses": (
        "Amazon SES through SNS",
        "One SNS message, signed with SNS's certificate, from a topic in `MAILTRACK_SES_TOPIC_ARNS`; "
        "a SubscriptionConfirmation is confirmed. SNS posts it as text/plain.",
        {
            "type": "object",
            "required": [
                "Type",
                "MessageId",
                "TopicArn",
                "Timestamp",
                "SignatureVersion",
                "Signature",
                "SigningCertURL",
            ],
            "properties": {
                "Type": {"enum": list(SNS_TYPES)},
                **dict.fromkeys(("MessageId", "TopicArn", "Timestamp", "Signature"), _TEXT),
                "SignatureVersion": {"enum": ["1", "2"]},
                "SigningCertURL": {"type": "string", "format": "uri"},
                "Message": {"type": "string", "description": "The SES notification, as JSON text."},
            },
        },
    ),
    "sendgrid": (
        "SendGrid",
        "A JSON array of events, signed (ECDSA) in the X-Twilio-Email-Event-Webhook-Signature and "
        "-Timestamp headers.",
        {"type": "array", "items": {"description": "An event object; anything else is counted as ignored."}},
    ),
    "mailgun": (
        "Mailgun",
        "One event object, signed (HMAC) in its `signature` block.",
        {
            "type": "object",
            "required": ["signature", "event-data"],
            "properties": {
                "signature": {
                    "type": "object",
                    "required": ["timestamp", "token", "signature"],
                    "properties": {"timestamp": _TEXT, "token": _TEXT, "signature": _TEXT},
                },
                "event-data": {"type": "object"},
            },
        },
    ),
    "postmark": (
        "Postmark",
        "One record (by its RecordType: Bounce, Delivery, SpamComplaint, SubscriptionChange…; others are "
        "counted as ignored), with HTTP basic credentials.",
        {"type": "object"},
    ),
}
# Documents Postmark's credentials; the call itself checks them (401 with a Basic challenge).
_postmark_basic = HTTPBasic(
    auto_error=False, scheme_name="postmarkBasic", description="Postmark's webhook user."
)


async def receive_webhook(provider: str, request: Request) -> JSONResponse:
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


def _endpoint(provider: str) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def endpoint(request: Request) -> JSONResponse:
        return await receive_webhook(provider, request)

    return endpoint


# One operation a provider, so that each documents its own payload; another name answers 404.
for _provider, (_name, _about, _schema) in _PROVIDERS.items():
    _content = {"application/json": {"schema": _schema}}
    if _provider == "ses":
        _content["text/plain"] = {"schema": {"type": "string", "contentMediaType": "application/json"}}
    router.add_api_route(
        f"/{_provider}",
        _endpoint(_provider),
        methods=["POST"],
        response_model=WebhookOut,
        responses=_RESPONSES,
        summary=f"{_name} delivery events",
        description=f"{_about} Stores its delivery events once each (by the provider's event id).",
        operation_id=f"{_provider}_webhook",
        dependencies=[Depends(_postmark_basic)] if _provider == "postmark" else [],
        openapi_extra={"requestBody": {"required": True, "content": _content}},
    )
