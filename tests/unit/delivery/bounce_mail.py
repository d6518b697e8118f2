"""Builders of inbound test mail (DSN, plain-text bounce, ARF) carrying real tokens and Message-IDs."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, update

from mailtrack.db import write_transaction
from mailtrack.messages.tables import messages
from mailtrack.messages.tokens import TokenCodec, TokenKind, TrackingToken
from tests.conftest import TEST_SECRET
from tests.factories import make_customer, make_message

CODEC = TokenCodec([TEST_SECRET])
TRACK = "https://track.mailtrack.example"
BOUNCE_DOMAIN = "bounces.mailtrack.example"
SENT = dt.datetime(2026, 8, 3, 16, 0, tzinfo=dt.UTC)


def verp_address(tenant_id: int, message_id: int) -> str:
    """The VERP envelope sender a message goes out with."""
    token = CODEC.encode_verp(TrackingToken(TokenKind.BOUNCE, tenant_id, message_id))
    return f"bounces+{token}@{BOUNCE_DOMAIN}"


def click_url(tenant_id: int, message_id: int) -> str:
    """A rewritten link of the message."""
    return f"{TRACK}/c/{CODEC.encode(TrackingToken(TokenKind.CLICK, tenant_id, message_id, 0))}"


def sent_message(engine: Engine, tenant_id: int, *, smtp_message_id: str | None = None) -> int:
    """A customer and a message to them, optionally with its SMTP Message-ID; returns the message id."""
    customer_id = make_customer(engine, tenant_id, email="anna@example.hu")
    message_id = make_message(engine, tenant_id, customer_id, sent_at=SENT)
    if smtp_message_id:
        with write_transaction(engine) as conn:
            conn.execute(
                update(messages).where(messages.c.id == message_id).values(smtp_message_id=smtp_message_id)
            )
    return message_id


def dsn(
    *,
    to: str = f"bounces@{BOUNCE_DOMAIN}",
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 <anna@example.hu>: Recipient address rejected: User unknown",
    quoted_message_id: str = "<never-sent@elsewhere.example>",
    received: str = "",
) -> bytes:
    """A Postfix-style RFC 3464 report about anna@example.hu, quoting the original's headers."""
    return f"""{received}Return-Path: <>
From: MAILER-DAEMON@mx.example.hu (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {to}
Date: Mon, 03 Aug 2026 16:00:30 +0000
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"

--BOUNDARY
Content-Description: Notification
Content-Type: text/plain; charset=utf-8

This is the mail system at host mx.example.hu.

<anna@example.hu>: host mx.example.hu said: {diagnostic.split(";", 1)[-1].strip()}

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.hu

Final-Recipient: rfc822; anna@example.hu
Original-Recipient: rfc822;anna@example.hu
Action: {action}
Status: {status}
Diagnostic-Code: {diagnostic}

--BOUNDARY
Content-Type: text/rfc822-headers

Message-ID: {quoted_message_id}
From: Salon <hello@salon.example>
To: anna@example.hu
Subject: Appointment reminder

--BOUNDARY--
""".replace("\n", "\r\n").encode()


def qmail_bounce(*, quoted_body: str) -> bytes:
    """A qmail bounce quoting the original inline (no VERP, no Message-ID): only its body can tell."""
    return f"""Return-Path: <>
From: MAILER-DAEMON@mail.example.hu
To: postmaster@salon.example
Subject: failure notice
Date: Mon, 03 Aug 2026 16:01:00 +0000

Hi. This is the qmail-send program at mail.example.hu.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<anna@example.hu>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

From: Salon <hello@salon.example>
To: anna@example.hu
Subject: Appointment reminder
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

{quoted_body}
""".encode()


def arf(*, original_mail_from: str, recipient: str = "anna@example.hu") -> bytes:
    """An RFC 5965 abuse report, as a mailbox provider's feedback loop sends it."""
    return f"""From: feedback@arf.mail.example
To: fbl@mailtrack.example
Subject: FW: Appointment reminder
Date: Mon, 03 Aug 2026 18:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"

--ARF
Content-Type: text/plain

This is an email abuse report.

--ARF
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleFBL/1.0
Version: 1
Original-Mail-From: <{original_mail_from}>
Original-Rcpt-To: <{recipient}>

--ARF
Content-Type: text/rfc822-headers

From: Salon <hello@salon.example>
To: {recipient}
Subject: Appointment reminder

--ARF--
""".encode()


OUT_OF_OFFICE = b"""From: Anna <anna@example.hu>
To: bounces@bounces.mailtrack.example
Subject: Automatic reply: Appointment reminder
Auto-Submitted: auto-replied

I am out of the office until Monday.
"""

NEWSLETTER = b"""From: News <news@shop.example>
To: bounces@bounces.mailtrack.example
Subject: Summer sale

Everything is 20% off this week.
"""
