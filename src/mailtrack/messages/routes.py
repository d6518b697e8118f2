"""HTTP: `POST /api/v1/messages`, registering and instrumenting one outgoing message."""

from __future__ import annotations

import secrets
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from mailtrack.config import Settings
from mailtrack.db import utcnow, write_transaction
from mailtrack.delivery.sending import SendRefusedError, SuppressedError, queue_for_sending
from mailtrack.maintenance.routes import customer_links
from mailtrack.maintenance.security import BODY_LIMIT_RESPONSES, TEXT_PATTERN, ErrorOut
from mailtrack.messages.policy import tracking_allowed
from mailtrack.messages.queries import (
    CustomerIn,
    MessageIn,
    create_messages,
    ensure_campaign,
    message_ids,
    store_links,
    upsert_customers,
)
from mailtrack.messages.rewrite import instrument
from mailtrack.messages.tables import customers
from mailtrack.messages.tokens import TokenCodec, TokenKind, TrackingToken
from mailtrack.tenants.auth import API_KEY_RESPONSES, ApiTenant, EngineDep
from mailtrack.tenants.queries import get_settings

router = APIRouter(prefix="/api/v1", tags=["messages"], responses=API_KEY_RESPONSES)


class DuplicateMessageError(ValueError):
    """The salon already registered a message with this id."""


MAX_BODY_CHARS = 2_000_000


class CustomerBody(BaseModel):
    """The recipient, as the platform knows them."""

    model_config = ConfigDict(extra="forbid", strict=True)
    id: Annotated[str, Field(min_length=1, max_length=200, pattern=TEXT_PATTERN)]
    name: Annotated[str, Field(max_length=300, pattern=TEXT_PATTERN)] = ""
    email: Annotated[str, Field(max_length=320, pattern=TEXT_PATTERN)] = ""


class MessageRequest(BaseModel):
    """A message to register and instrument (its body is returned, never stored)."""

    # Strict: `"send": 0` or `"send": "yes"` is an error, not a guess (JSON has true and false).
    model_config = ConfigDict(extra="forbid", strict=True)
    customer: CustomerBody
    channel: Literal["marketing", "transactional", "system"]
    source: Literal["campaign", "automation", "system"] | None = None
    campaign: Annotated[str, Field(max_length=300, pattern=TEXT_PATTERN)] | None = None
    message_id: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")] | None = Field(
        default=None, description="Your own id for the message; generated when absent."
    )
    subject: Annotated[str, Field(max_length=998, pattern=TEXT_PATTERN)] = ""
    html: Annotated[str, Field(max_length=MAX_BODY_CHARS, pattern=TEXT_PATTERN)] | None = None
    text: Annotated[str, Field(max_length=MAX_BODY_CHARS, pattern=TEXT_PATTERN)] | None = None
    send: bool = False
    sender: Annotated[str, Field(max_length=320, pattern=TEXT_PATTERN)] | None = Field(
        default=None,
        description='From header for "send": true, e.g. "Salon <hello@salon.hu>"; default MAIL_FROM.',
    )


class MessageResponse(BaseModel):
    """The instrumented message, ready to send."""

    message_id: str
    tracked: bool
    suppressed: bool = Field(
        description="The customer is suppressed for marketing mail (reason in the dashboard)."
    )
    html: str | None
    text: str | None
    headers: dict[str, str]
    links: int = Field(description="How many distinct links were rewritten.")
    skipped_links: list[str] = Field(description="Links left untouched because they were unsafe to track.")


def register_message(
    conn: Connection, codec: TokenCodec, settings: Settings, *, tenant_id: int, body: MessageRequest
) -> MessageResponse:
    """Register the message and return it instrumented according to the salon's policy."""
    source = body.source or ("system" if body.channel == "system" else "campaign")
    person = body.customer
    customer_id = upsert_customers(
        conn, tenant_id=tenant_id, people=[CustomerIn(person.id, person.name, person.email)]
    )[person.id]
    customer = conn.execute(
        select(customers.c.do_not_track, customers.c.suppressed_at).where(customers.c.id == customer_id)
    ).one()
    tracked = tracking_allowed(
        channel=body.channel,
        settings=get_settings(conn, tenant_id=tenant_id),
        customer_do_not_track=customer.do_not_track,
    )
    campaign_id = (
        ensure_campaign(conn, tenant_id=tenant_id, name=body.campaign, source=source)
        if body.campaign
        else None
    )
    external_id = body.message_id or f"msg_{secrets.token_urlsafe(12)}"
    if message_ids(conn, tenant_id=tenant_id, external_ids=[external_id]):
        raise DuplicateMessageError(external_id)
    domain = urlsplit(settings.base_url).hostname or "mailtrack.invalid"
    smtp_message_id = f"<{secrets.token_urlsafe(18)}@{domain}>"
    message_id = create_messages(
        conn,
        tenant_id=tenant_id,
        batch=[
            MessageIn(
                external_id,
                customer_id,
                body.channel,
                source,
                campaign_id,
                tracked,
                utcnow(),
                smtp_message_id,
            )
        ],
    )[external_id]

    def url(kind: TokenKind, path: str, position: int = 0) -> str:
        token = codec.encode(TrackingToken(kind, tenant_id, message_id, position))
        return f"{settings.base_url}/{path}/{token}"

    unsubscribe_url = url(TokenKind.UNSUBSCRIBE, "u")
    result = instrument(
        body.html,
        body.text,
        click_url=lambda position: url(TokenKind.CLICK, "c", position),
        pixel_url=url(TokenKind.OPEN, "o") + ".gif" if tracked else None,
        rewrite_links=tracked,
        unsubscribe_url=unsubscribe_url,
    )
    store_links(conn, tenant_id=tenant_id, message_id=message_id, urls=result.links)
    headers = {"Message-ID": smtp_message_id}
    if body.channel == "marketing":
        # RFC 8058: mailbox providers show an unsubscribe button that POSTs here, with no cookies.
        headers["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return MessageResponse(
        message_id=external_id,
        tracked=tracked,
        suppressed=customer.suppressed_at is not None,
        html=result.html,
        text=result.text,
        headers=headers,
        links=len(result.links),
        skipped_links=result.skipped,
    )


def _register(
    engine: Engine, codec: TokenCodec, settings: Settings, tenant_id: int, body: MessageRequest
) -> MessageResponse:
    with write_transaction(engine) as conn:
        if body.send:  # registered and queued in one transaction, or neither
            return queue_for_sending(
                conn, codec, settings, tenant_id=tenant_id, body=body, sender=body.sender
            )
        return register_message(conn, codec, settings, tenant_id=tenant_id, body=body)


# Every 422 has the framework's shape; the address refusals name the field they concern.
VALIDATION_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}


def _refused_address(exc: SendRefusedError) -> RequestValidationError:
    field = ("sender",) if str(exc).startswith("sender") else ("customer", "email")
    return RequestValidationError([{"type": "value_error", "loc": ("body", *field), "msg": str(exc)}])


@router.post(
    "/messages",
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"links": customer_links("$request.body#/customer/id")},
        400: {"model": ErrorOut, "description": "the body is not JSON (e.g. not UTF-8)"},
        409: {
            "model": ErrorOut,
            "description": "message_id already registered, or marketing mail to a suppressed customer",
        },
        **BODY_LIMIT_RESPONSES,
        422: {
            "description": 'invalid body; with `"send": true`, also an address that cannot be sent to '
            "(the sender, or the customer's email: the one given, else the one on file)",
            "content": VALIDATION_ERROR,
        },
        501: {"model": ErrorOut, "description": '`"send": true` but sending is not configured'},
    },
)
async def create_message(
    request: Request, body: MessageRequest, tenant_id: ApiTenant, engine: EngineDep
) -> MessageResponse:
    """Register one outgoing message and return it instrumented (pixel, rewritten links, headers)."""
    outbox = getattr(request.app.state, "outbox", None)
    if body.send and outbox is None:
        raise HTTPException(
            status.HTTP_501_NOT_IMPLEMENTED,
            "sending through Mailtrack's SMTP relay is not configured; send the returned message yourself",
        )
    try:
        response = await run_in_threadpool(
            _register, engine, request.app.state.tracking.codec, request.app.state.settings, tenant_id, body
        )
    except SuppressedError as exc:  # marketing mail to a suppressed customer
        raise HTTPException(exc.status_code, str(exc)) from None
    except SendRefusedError as exc:  # an address that cannot be sent to
        raise _refused_address(exc) from None
    except (IntegrityError, DuplicateMessageError):
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"message_id {body.message_id!r} is already registered"
        ) from None
    if body.send and outbox is not None:
        outbox.wake()  # committed: send now rather than at the next poll
    return response
