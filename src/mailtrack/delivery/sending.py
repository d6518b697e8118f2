"""Sending with `"send": true`: refuse suppressed marketing mail, build the MIME message, queue it.

`queue_for_sending` runs in the same transaction as the message's registration, so a message is
registered and queued together or not at all; the outbox worker (outbox.py) then hands it to the
relay. The envelope sender is the VERP address `bounces+<token>@<bounce domain>`: its token names the
salon and the message, HMAC-signed, so a bounce maps back to its message even when it quotes nothing.
The same token goes out as the DSN ENVID.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from typing import TYPE_CHECKING

from sqlalchemy import Connection, insert, select

from mailtrack.config import Settings
from mailtrack.db import utcnow
from mailtrack.delivery.outbox_tables import outbox
from mailtrack.delivery.suppression import suppression_of
from mailtrack.messages.queries import message_ids
from mailtrack.messages.tables import customers
from mailtrack.messages.tokens import TokenCodec, TokenKind, TrackingToken

if TYPE_CHECKING:
    from mailtrack.messages.routes import MessageRequest, MessageResponse

VERP_PREFIX = "bounces"
# A dot-atom local part (RFC 5322) in ASCII: quoted local parts and SMTPUTF8 ones are refused up front,
# because a relay without SMTPUTF8 could only ever bounce them.
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NEWLINES = re.compile(r"[\r\n\x00]+")


class SendRefusedError(ValueError):
    """The message cannot be sent as asked; `status_code` is the HTTP answer."""

    status_code = 422


class SuppressedError(SendRefusedError):
    """The customer is suppressed for marketing mail in this salon."""

    status_code = 409


def parse_mailbox(value: str, *, what: str, name: str | None = None) -> Address:
    """An address (`Name <a@b>` or `a@b`) as a header-safe Address; IDN domains become punycode."""
    if _NEWLINES.search(value):
        raise SendRefusedError(f"{what}: line breaks are not allowed in an address")
    display, spec = parseaddr(value)
    local, at, domain = spec.rpartition("@")
    if not at or len(local) > 64 or not _LOCAL_PART.fullmatch(local):
        raise SendRefusedError(f"{what}: {value[:100]!r} is not an address Mailtrack can send to")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise SendRefusedError(f"{what}: {domain[:100]!r} is not a valid domain") from None
    labels = ascii_domain.split(".")
    if len(ascii_domain) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise SendRefusedError(f"{what}: {domain[:100]!r} is not a valid domain")
    display = _NEWLINES.sub(" ", name if name is not None else display).strip()
    return Address(display_name=display[:200], username=local, domain=ascii_domain)


def verp_address(codec: TokenCodec, *, tenant_id: int, message_id: int, domain: str) -> str:
    """The envelope sender `bounces+<token>@domain` naming this salon's message."""
    token = codec.encode_verp(TrackingToken(TokenKind.BOUNCE, tenant_id, message_id))
    return f"{VERP_PREFIX}+{token}@{domain}"


def build_mime(
    *,
    sender: Address,
    recipient: Address,
    subject: str,
    html: str | None,
    text: str | None,
    headers: Mapping[str, str],
    date: dt.datetime,
) -> bytes:
    """The message as sent: multipart/alternative (text, then HTML) with the registration's headers."""
    message = EmailMessage(policy=SMTP)  # CRLF line ends, folded headers, RFC 2047 encoded words
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = _NEWLINES.sub(" ", subject)
    message["Date"] = format_datetime(date)
    for name, value in headers.items():  # Message-ID, List-Unsubscribe, List-Unsubscribe-Post
        message[name] = _NEWLINES.sub(" ", value)
    # Quoted-printable keeps every line under 78 octets and the message 7-bit: any relay carries it.
    if text is not None and html is not None:
        message.set_content(text, cte="quoted-printable")
        message.add_alternative(html, subtype="html", cte="quoted-printable")
    elif html is not None:
        message.set_content(html, subtype="html", cte="quoted-printable")
    else:
        message.set_content(text or "", cte="quoted-printable")
    return message.as_bytes()


def queue_for_sending(
    conn: Connection,
    codec: TokenCodec,
    settings: Settings,
    *,
    tenant_id: int,
    body: MessageRequest,
    sender: str | None = None,
) -> MessageResponse:
    """Register the message and queue it in `conn`'s transaction; SendRefusedError (409, 422) if refused."""
    # Both refusals come before registering: a refused message leaves no trace to clean up.
    # Imported here because messages.routes calls this module for its `send` branch.
    from mailtrack.messages.routes import register_message

    from_address = parse_mailbox(sender or settings.mail_from, what="sender")
    email = body.customer.email or _stored_email(conn, tenant_id=tenant_id, external_id=body.customer.id)
    to_address = parse_mailbox(email, what="customer email", name=body.customer.name)
    if body.channel == "marketing":
        suppressed = suppression_of(conn, tenant_id=tenant_id, external_id=body.customer.id)
        if suppressed is not None:
            since, reason = suppressed
            raise SuppressedError(
                f"customer {body.customer.id!r} is suppressed for marketing mail since "
                f"{since:%Y-%m-%d} ({reason}); transactional and system mail still go out"
            )
    response = register_message(conn, codec, settings, tenant_id=tenant_id, body=body)
    message_id = message_ids(conn, tenant_id=tenant_id, external_ids=[response.message_id])[
        response.message_id
    ]
    now = utcnow()
    envelope_from = verp_address(
        codec,
        tenant_id=tenant_id,
        message_id=message_id,
        domain=(settings.bounce_domain or from_address.domain).lower(),
    )
    mime = build_mime(
        sender=from_address,
        recipient=to_address,
        subject=body.subject,
        html=response.html,
        text=response.text,
        headers=response.headers,
        date=now,
    )
    enqueue(
        conn,
        tenant_id=tenant_id,
        message_id=message_id,
        envelope_from=envelope_from,
        recipient=to_address.addr_spec,
        mime=mime,
        now=now,
    )
    return response


def enqueue(
    conn: Connection,
    *,
    tenant_id: int,
    message_id: int,
    envelope_from: str,
    recipient: str,
    mime: bytes,
    now: dt.datetime,
) -> int:
    """Add a message to the outbox, due at once; returns the outbox row's id."""
    return int(
        conn.execute(
            insert(outbox)
            .values(
                tenant_id=tenant_id,
                message_id=message_id,
                envelope_from=envelope_from,
                recipient=recipient,
                mime=mime,
                attempts=0,
                created_at=now,
                next_attempt_at=now,
            )
            .returning(outbox.c.id)
        ).scalar_one()
    )


def _stored_email(conn: Connection, *, tenant_id: int, external_id: str) -> str:
    found = conn.execute(
        select(customers.c.email).where(
            customers.c.tenant_id == tenant_id, customers.c.external_id == external_id
        )
    ).scalar_one_or_none()
    return found or ""
