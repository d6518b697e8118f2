"""Inbound bounce and complaint mail: find the message it is about, then store its event or quarantine it.

The SMTP listener, `POST /api/v1/inbound` and `mailtrack inbound` all call `process_inbound`, so the
three ways in classify, attribute and store alike. Attribution tries the strongest evidence first:

1. a VERP envelope recipient `bounces+<token>@…` (the listener knows it from RCPT TO);
2. a VERP token in the To, Delivered-To, X-Original-To or Return-Path headers, the ARF
   Original-Mail-From, or quoted headers of the original;
3. the original Message-ID, quoted in the report (message/rfc822, text/rfc822-headers, inline copies)
   or named by In-Reply-To / References, matched against `messages.smtp_message_id`;
4. a tracking URL (/o/, /c/, /u/ + token) in the quoted original (body or List-Unsubscribe header).

Tokens are HMAC-signed, so a forged or mangled one simply does not decode. An API caller only ever
attributes to its own salon's messages: anything else is unattributable for it, and quarantined.
Storing goes through `ingest_batch` (the one way events enter), keyed by an external event id derived
from (message, event, bounce kind, status, recipient), so the same bounce delivered twice is one event.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError

from mailtrack.config import Settings
from mailtrack.db import utcnow, write_transaction
from mailtrack.delivery import mailparse
from mailtrack.delivery.bounces import Classification, classify
from mailtrack.delivery.tables import quarantine
from mailtrack.messages.tables import messages
from mailtrack.messages.tokens import TokenCodec, TokenKind, TrackingToken
from mailtrack.tracking.ingest import EventIn, ingest_batch

log = logging.getLogger(__name__)

# What each classification stores; auto_reply stores nothing and unknown is quarantined.
EVENT_FOR_KIND = {
    "bounce": "bounced",
    "delay": "bounced",
    "delivered": "delivered",
    "complaint": "complained",
}
_URL_KINDS = {"o": TokenKind.OPEN, "c": TokenKind.CLICK, "u": TokenKind.UNSUBSCRIBE}
_MAX_EVENT_AGE = dt.timedelta(days=365)
_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Attribution:
    """The message an inbound report is about, and which evidence named it."""

    tenant_id: int
    message_id: int
    external_id: str
    via: str  # verp | message_id | tracking_url

    def as_dict(self) -> dict[str, Any]:
        """The `attributed` object of the classification JSON (message_id is the caller's own id)."""
        return {"message_id": self.external_id, "tenant_id": self.tenant_id, "via": self.via}


@dataclass(slots=True)
class InboundResult:
    """What processing one inbound message found and did."""

    classification: Classification
    attribution: Attribution | None = None
    stored_event: str | None = None
    duplicate: bool = False
    quarantine_id: int | None = None
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The classification JSON plus `stored` (null on a dry run)."""
        data = self.classification.as_dict(self.attribution.as_dict() if self.attribution else None)
        data["stored"] = (
            None
            if self.dry_run
            else {
                "event": self.stored_event,
                "duplicate": self.duplicate,
                "quarantine_id": self.quarantine_id,
            }
        )
        return data


def codec_from_settings(settings: Settings) -> TokenCodec:
    """The token codec the app signs with: the current secret first, then the rotated-out ones."""
    return TokenCodec(
        [
            settings.secret_key.get_secret_value(),
            *(old.get_secret_value() for old in settings.old_secret_keys),
        ]
    )


def process_inbound(
    engine: Engine,
    codec: TokenCodec,
    raw: bytes,
    *,
    source: str,
    envelope_recipients: Sequence[str] = (),
    tenant_id: int | None = None,
    dry_run: bool = False,
) -> InboundResult:
    """Classify one raw message and, unless a dry run, store its event or quarantine it."""
    classification = classify(raw)
    if dry_run:
        return InboundResult(classification, dry_run=True)
    for attempt in range(1, _ATTEMPTS + 1):
        result = InboundResult(classification)
        try:
            with write_transaction(engine) as conn:
                _store(conn, codec, raw, result, source, envelope_recipients, tenant_id)
        except IntegrityError:
            # Two copies of one report stored at once: the loser retries and finds the winner's row.
            if attempt == _ATTEMPTS:
                raise
            continue
        return result
    raise AssertionError("unreachable")  # pragma: no cover


def _store(
    conn: Connection,
    codec: TokenCodec,
    raw: bytes,
    result: InboundResult,
    source: str,
    envelope_recipients: Sequence[str],
    tenant_id: int | None,
) -> None:
    classification = result.classification
    event_type = EVENT_FOR_KIND.get(classification.kind)
    if classification.kind == "auto_reply":
        return  # an out-of-office reply says nothing about delivery
    if event_type is None:
        _quarantine(conn, raw, result, "unrecognized", source, envelope_recipients, tenant_id)
        return
    result.attribution = attribute(
        conn, codec, classification, envelope_recipients=envelope_recipients, tenant_id=tenant_id
    )
    if result.attribution is None:
        _quarantine(conn, raw, result, "unattributed", source, envelope_recipients, tenant_id)
        return
    event = EventIn(
        tenant_id=result.attribution.tenant_id,
        message_id=result.attribution.message_id,
        type=event_type,
        occurred_at=_occurred_at(classification.date),
        bounce_kind=(classification.bounce or "hard") if event_type == "bounced" else None,
        status=(classification.status or "")[:16] or None,
        diagnostic=classification.diagnostic,
        external_event_id=_event_key(result.attribution, event_type, classification),
    )
    stored = ingest_batch(conn, [event])
    result.stored_event = event_type if stored.stored else None
    result.duplicate = stored.duplicates > 0
    log.info(
        "inbound %s: %s %s for message %s (salon %s) via %s%s",
        source,
        classification.kind,
        classification.status or "",
        result.attribution.external_id,
        result.attribution.tenant_id,
        result.attribution.via,
        " (duplicate)" if result.duplicate else "",
    )


def attribute(
    conn: Connection,
    codec: TokenCodec,
    classification: Classification,
    *,
    envelope_recipients: Sequence[str] = (),
    tenant_id: int | None = None,
) -> Attribution | None:
    """The message the report is about, from the strongest evidence; only `tenant_id`'s if given."""
    evidence = classification.evidence
    verp = [tag for address in envelope_recipients for tag in verp_tags(address)] + evidence.verp_tokens
    for text in verp:
        found = _by_token(conn, codec.decode_verp(text, kind=TokenKind.BOUNCE), "verp", tenant_id)
        if found:
            return found
    for message_id in evidence.message_ids:
        found = _by_smtp_message_id(conn, message_id, tenant_id)
        if found:
            return found
    for path, text in evidence.tracking_tokens:
        found = _by_token(conn, codec.decode(text, kind=_URL_KINDS[path]), "tracking_url", tenant_id)
        if found:
            return found
    return None


def verp_tags(address: str) -> list[str]:
    """The +tag of an address's local part (`bounces+<tag>@domain` → [tag]), if it has one."""
    local = address.strip().strip("<>").rpartition("@")[0]
    _, plus, tag = local.partition("+")
    return [tag] if plus and tag else []


def _by_token(
    conn: Connection, token: TrackingToken | None, via: str, tenant_id: int | None
) -> Attribution | None:
    if token is None or (tenant_id is not None and token.tenant_id != tenant_id):
        return None
    row = conn.execute(
        select(messages.c.external_id).where(
            messages.c.id == token.message_id, messages.c.tenant_id == token.tenant_id
        )
    ).first()
    return Attribution(token.tenant_id, token.message_id, row.external_id, via) if row else None


def _by_smtp_message_id(conn: Connection, message_id: str, tenant_id: int | None) -> Attribution | None:
    query = select(messages.c.id, messages.c.tenant_id, messages.c.external_id).where(
        messages.c.smtp_message_id == message_id[:300]
    )
    if tenant_id is not None:
        query = query.where(messages.c.tenant_id == tenant_id)
    rows = conn.execute(query.limit(2)).all()
    # Message-IDs are random, so two rows would mean a caller registered someone else's id: no guess.
    if len(rows) != 1:
        return None
    return Attribution(rows[0].tenant_id, rows[0].id, rows[0].external_id, "message_id")


def _event_key(attribution: Attribution, event_type: str, classification: Classification) -> str:
    # One report can arrive by SMTP and by a pipe, or be re-sent by the MTA with other Received
    # headers: the facts it states, not its bytes, make it the same event.
    facts = "|".join(
        (
            str(attribution.message_id),
            event_type,
            classification.bounce or "",
            classification.status or "",
            (classification.recipient or "").lower(),
        )
    )
    return "inbound:" + hashlib.sha256(facts.encode("utf-8")).hexdigest()[:40]


def _occurred_at(reported: dt.datetime | None) -> dt.datetime:
    # The report's Date header when plausible (reprocessing an old bounce keeps its time), else now.
    now = utcnow()
    if reported is None or reported > now or reported < now - _MAX_EVENT_AGE:
        return now
    return reported


def _quarantine(
    conn: Connection,
    raw: bytes,
    result: InboundResult,
    reason: str,
    source: str,
    envelope_recipients: Sequence[str],
    tenant_id: int | None,
) -> None:
    fingerprint = hashlib.sha256(f"{tenant_id or ''}:".encode() + raw).hexdigest()
    existing = conn.execute(select(quarantine.c.id).where(quarantine.c.fingerprint == fingerprint)).scalar()
    if existing is not None:
        result.quarantine_id, result.duplicate = int(existing), True
        return
    classification = result.classification
    head = mailparse.parse_headers(raw)
    headers = "\n".join(
        f"{name}: {mailparse.decode_header_value(value)}" for name, value in mailparse.raw_headers(head)
    )
    inserted = conn.execute(
        insert(quarantine).values(
            tenant_id=tenant_id,
            received_at=utcnow(),
            source=source[:8],
            reason=reason,
            kind=classification.kind,
            bounce_kind=classification.bounce,
            status=_cut(classification.status, 16),
            recipient=_cut(classification.recipient, 320),
            original_message_id=_cut(classification.original_message_id, 300),
            envelope_recipient=_cut(next(iter(envelope_recipients), None), 320),
            sender=_cut(mailparse.header(head, "from"), 320),
            subject=_cut(mailparse.header(head, "subject"), 998),
            headers=headers[:16384],
            classification=json.dumps(classification.as_dict(), ensure_ascii=False),
            fingerprint=fingerprint,
        )
    )
    key = inserted.inserted_primary_key
    result.quarantine_id = int(key[0]) if key else None
    log.warning(
        "inbound %s: %s message quarantined (%s): from %r, subject %r",
        source,
        classification.kind,
        reason,
        mailparse.header(head, "from")[:200],
        mailparse.header(head, "subject")[:200],
    )


def _cut(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else None
