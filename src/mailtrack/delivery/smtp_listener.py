"""An SMTP listener (aiosmtpd) for bounce and feedback-loop mail: every message is parsed and stored.

Point the bounce domain's MX (or a relay's transport) here. Every message is answered 250 once it is
stored or quarantined, so nothing is lost and the sending MTA stops retrying; only an oversized
message is refused (552), and a database failure answers 451 so that the MTA tries again later.
Attribution uses the envelope recipient first: the VERP address `bounces+<token>@…` the bounce was
sent back to.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import Engine

from mailtrack.delivery.inbound import process_inbound
from mailtrack.delivery.mailparse import MAX_MESSAGE_BYTES
from mailtrack.messages.tokens import TokenCodec

log = logging.getLogger(__name__)


class InboundHandler:
    """aiosmtpd handler: each DATA is classified, attributed and stored off the event loop."""

    def __init__(self, engine: Engine, codec: TokenCodec, *, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        """Store into `engine`, verifying tokens with `codec`."""
        self.engine = engine
        self.codec = codec
        self.max_bytes = max_bytes

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        """Store one received message; 250 when stored or quarantined, 552 oversized, 451 on failure."""
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):  # only when the server decodes data, which we never ask for
            raw = raw.encode("utf-8", "surrogateescape")
        if len(raw) > self.max_bytes:
            return "552 5.3.4 Message too big for system"
        try:
            result = await asyncio.to_thread(
                process_inbound,
                self.engine,
                self.codec,
                raw,
                source="smtp",
                envelope_recipients=list(envelope.rcpt_tos),
            )
        except Exception:  # database down or locked: the MTA keeps the mail and retries
            log.exception("inbound smtp: could not store a message from %s", session.peer)
            return "451 4.3.0 Temporary failure storing the message, try again later"
        outcome = result.stored_event or ("quarantined" if result.quarantine_id else "not stored")
        return f"250 2.0.0 OK: {result.classification.kind}, {outcome}"


def start_listener(engine: Engine, codec: TokenCodec, host: str, port: int) -> Controller:
    """Start an SMTP listener on host:port in its own thread; call `.stop()` on the result to end it."""
    controller = Controller(
        InboundHandler(engine, codec),
        hostname=host,
        port=port,
        data_size_limit=MAX_MESSAGE_BYTES,
        # Bounces about internationalized addresses arrive with MAIL FROM:<> SMTPUTF8 (RFC 6531).
        enable_SMTPUTF8=True,
        ident="Mailtrack inbound",
    )
    controller.start()
    log.info("inbound smtp listening on %s:%s", host, port)
    return controller
