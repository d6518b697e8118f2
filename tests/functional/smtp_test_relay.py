"""A test SMTP relay on loopback (aiosmtpd) that advertises DSN and records what it received."""

from __future__ import annotations

import email
import email.policy
import socket
from collections import deque
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

QUEUED = "250 2.0.0 Ok: queued as 4Bx1yZ3qKz"
DSN_PARAMS = ("RET", "ENVID", "NOTIFY", "ORCPT")


class DsnSMTP(SMTP):
    """aiosmtpd refuses MAIL/RCPT parameters other than SIZE, BODY and SMTPUTF8; this one takes DSN's too."""

    def _getparams(self, params: Any) -> Any:
        result = super()._getparams(params)
        if result is not None:
            for key in DSN_PARAMS:
                result.pop(key, None)  # still recorded in envelope.mail_options / rcpt_options
        return result


class DsnController(Controller):
    """A controller serving DsnSMTP."""

    def factory(self) -> DsnSMTP:
        return DsnSMTP(self.handler, **self.SMTP_kwargs)


@dataclass
class Received:
    """One message as the server got it."""

    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    rcpt_options: list[str]
    content: bytes

    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Relay:
    """The test relay: what it received, and scripted answers to the next RCPTs."""

    port: int
    received: list[Received] = field(default_factory=list)
    rcpt_replies: deque[str] = field(default_factory=deque)
    dsn: bool = True

    async def handle_EHLO(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-DSN", responses[-1]] if self.dsn else responses

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_replies:
            return self.rcpt_replies.popleft()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.received.append(
            Received(
                envelope.mail_from or "",
                list(envelope.mail_options),
                list(envelope.rcpt_tos),
                list(envelope.rcpt_options),
                envelope.original_content or b"",
            )
        )
        return QUEUED


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_relay(handler: Relay, **kwargs: Any) -> Controller:
    """Serve `handler` on its port (kwargs go to aiosmtpd's SMTP, e.g. tls_context, authenticator)."""
    controller = DsnController(handler, hostname="127.0.0.1", port=handler.port, **kwargs)
    controller.start()
    return controller
