"""Provider webhooks: verify the call, normalize its events, attribute them, store them once.

`Webhooks.handle` does it all for one call (the route runs it in a thread). The nonce of a signed
call (SNS MessageId, SendGrid signature, Mailgun token) is remembered in the transaction that stores
its events: a replayed call is refused (403), yet a call that failed to store can be retried, since its
nonce was rolled back with it. Each event is stored once, under the external event id
`<provider>:<provider's event id>`, so a provider delivering the same event again with a fresh
signature changes nothing. Attribution reuses the inbound path (inbound.attribute): a VERP token or a
Message-ID the platform passed through the ESP's metadata, or the Message-ID the ESP reports.
Unattributable bounces, complaints and unsubscribes are quarantined for review with inbound mail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection, Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from mailtrack.config import Settings
from mailtrack.db import utcnow, write_transaction
from mailtrack.delivery.bounces import Classification
from mailtrack.delivery.evidence import Evidence
from mailtrack.delivery.inbound import Attribution, attribute
from mailtrack.delivery.outbox_tables import webhook_nonces
from mailtrack.delivery.suppression import suppress_repeated_soft_bounces
from mailtrack.delivery.tables import quarantine
from mailtrack.delivery.webhook_auth import (
    CertificateCache,
    Fetcher,
    WebhookRejected,
    default_fetcher,
    is_sns_url,
    load_sendgrid_key,
    verify_basic_auth,
    verify_mailgun,
    verify_sendgrid,
    verify_sns,
)
from mailtrack.delivery.webhook_events import (
    BadPayloadError,
    Parsed,
    ProviderEvent,
    mailgun_events,
    postmark_events,
    sendgrid_events,
    ses_events,
)
from mailtrack.messages.tables import messages
from mailtrack.messages.tokens import TokenCodec
from mailtrack.tracking.ingest import EventIn, ingest_batch

log = logging.getLogger(__name__)

PROVIDERS = ("ses", "sendgrid", "mailgun", "postmark")
MAX_BODY_BYTES = 1024 * 1024
# What an unattributable event is kept for: the facts that suppress a customer.
_QUARANTINED = {"bounced": "bounce", "complained": "complaint", "unsubscribed": "unsubscribe"}
# Fields some providers fill with the bounced message itself; no email body is ever stored.
_BODY_FIELDS = {"Content", "Body", "HtmlBody", "TextBody", "body-plain", "body-html", "stripped-text"}
_ATTEMPTS = 3
_PURGE_CHANCE = 0.02


@dataclass(slots=True)
class WebhookResult:
    """What one call did: the JSON the route answers."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    ignored: int = 0
    unattributed: int = 0
    quarantined: int = 0
    subscription: str | None = None


class Webhooks:
    """Verifies and stores the webhook calls of the providers configured in `settings`."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        codec: TokenCodec,
        *,
        fetcher: Fetcher = default_fetcher,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        """Verify with `settings`' secrets; `fetcher` gets SNS certificates and confirmation URLs."""
        self.settings, self.engine, self.codec = settings, engine, codec
        self.fetcher, self.clock = fetcher, clock
        self.certificates = CertificateCache(fetcher)
        self._sendgrid_key: ec.EllipticCurvePublicKey | None = None

    def configured(self, provider: str) -> bool:
        """True when the provider's secret (or SNS topic allow-list) is set."""
        settings = self.settings
        return {
            "ses": bool(settings.ses_topic_arns),
            "sendgrid": bool(settings.sendgrid_public_key),
            "mailgun": settings.mailgun_signing_key is not None,
            "postmark": bool(settings.postmark_webhook_user)
            and settings.postmark_webhook_password is not None,
        }.get(provider, False)

    def handle(self, provider: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """Verify, normalize and store one call (lower-case header names); WebhookRejected says the status."""
        if not self.configured(provider):
            raise WebhookRejected(404, f"webhook provider {provider!r} is not configured")
        if len(body) > MAX_BODY_BYTES:
            raise WebhookRejected(413, f"webhook bodies are limited to {MAX_BODY_BYTES} bytes")
        try:
            return asdict(self._handle(provider, headers, body))
        except BadPayloadError as exc:
            raise WebhookRejected(400, str(exc)) from None

    def _handle(self, provider: str, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        now, max_age = self.clock(), self.settings.webhook_max_age_seconds
        if provider == "ses":
            return self._ses(headers, body, now)
        if provider == "sendgrid":
            nonce, timestamp = verify_sendgrid(headers, body, key=self._sendgrid(), now=now, max_age=max_age)
            return self._commit(provider, sendgrid_events(_json(body)), nonce, timestamp)
        if provider == "mailgun":
            payload = _json(body)
            if not isinstance(payload, dict):
                raise BadPayloadError(
                    "Mailgun posts a JSON object (form-encoded legacy webhooks are not supported)"
                )
            key = self.settings.mailgun_signing_key
            assert key is not None  # configured() checked it
            token, timestamp = verify_mailgun(
                payload, signing_key=key.get_secret_value(), now=now, max_age=max_age
            )
            return self._commit(provider, mailgun_events(payload), token, timestamp)
        user, password = self.settings.postmark_webhook_user, self.settings.postmark_webhook_password
        assert user is not None  # configured() checked both
        assert password is not None
        verify_basic_auth(headers, user=user, password=password.get_secret_value())
        # Postmark signs nothing and sends no timestamp: a replay can only repeat events, and those
        # are stored once by their ids.
        return self._commit(provider, postmark_events(_json(body)), None, None)

    def _ses(self, headers: Mapping[str, str], body: bytes, now: dt.datetime) -> WebhookResult:
        message = _json(body)
        if not isinstance(message, dict):
            raise BadPayloadError("SNS posts a JSON object (turn raw message delivery off)")
        declared = headers.get("x-amz-sns-message-type")
        if declared is not None and declared != message.get("Type"):
            raise BadPayloadError("x-amz-sns-message-type does not match the message's Type")
        max_age = self.settings.webhook_max_age_seconds
        timestamp = verify_sns(
            message,
            topics=self.settings.ses_topic_arns,
            certificates=self.certificates,
            now=now,
            max_age=max_age,
        )
        message_id, kind, topic = message["MessageId"], message["Type"], message["TopicArn"]
        if kind == "SubscriptionConfirmation":
            url = message.get("SubscribeURL")
            if not is_sns_url(url, certificate=False):
                raise BadPayloadError("SubscribeURL is not an https SNS URL")
            assert isinstance(url, str)
            with self.engine.connect() as conn:
                if nonce_seen(conn, provider="ses", nonce=message_id):
                    raise WebhookRejected(403, "replayed call")
            try:
                self.fetcher(url)  # visiting the URL is what confirms the subscription
            except Exception as exc:  # SNS sends the confirmation again when we answer 503
                log.warning("webhook ses: could not confirm the subscription to %s: %s", topic, exc)
                raise WebhookRejected(503, "could not confirm the subscription; retry later") from exc
            log.info("webhook ses: confirmed the subscription to %s", topic)
            return self._commit("ses", Parsed(), message_id, timestamp, subscription="confirmed")
        if kind == "UnsubscribeConfirmation":
            log.warning("webhook ses: %s unsubscribed this endpoint; SES events stop arriving", topic)
            return self._commit("ses", Parsed(), message_id, timestamp, subscription="unsubscribed")
        return self._commit(
            "ses", ses_events(_json(message["Message"]), fallback_id=message_id), message_id, timestamp
        )

    def _sendgrid(self) -> ec.EllipticCurvePublicKey:
        if self._sendgrid_key is None:
            try:
                self._sendgrid_key = load_sendgrid_key(self.settings.sendgrid_public_key or "")
            except ValueError as exc:
                log.error("webhook sendgrid: %s", exc)
                raise WebhookRejected(503, "the SendGrid verification key is misconfigured") from None
        return self._sendgrid_key

    def _commit(
        self,
        provider: str,
        parsed: Parsed,
        nonce: str | None,
        timestamp: float | None,
        *,
        subscription: str | None = None,
    ) -> WebhookResult:
        expires = None
        if timestamp is not None:
            # Past this moment check_fresh refuses the timestamp anyway, so the nonce need not be kept.
            expires = dt.datetime.fromtimestamp(
                timestamp + self.settings.webhook_max_age_seconds + 60, dt.UTC
            )
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with write_transaction(self.engine) as conn:
                    fresh = (
                        nonce is None
                        or expires is None
                        or remember_nonce(conn, provider=provider, nonce=nonce, expires_at=expires)
                    )
                    if not fresh:
                        raise WebhookRejected(403, "replayed call")
                    result = store_events(conn, self.codec, provider, parsed.events)
            except IntegrityError:
                # The same call or event stored concurrently: the retry finds the winner's rows.
                if attempt == _ATTEMPTS:
                    raise
                continue
            result.ignored, result.subscription = parsed.ignored, subscription
            log.info("webhook %s: %s", provider, asdict(result))
            return result
        raise AssertionError("unreachable")  # pragma: no cover


def nonce_seen(conn: Connection, *, provider: str, nonce: str) -> bool:
    """True when this provider's nonce was already used."""
    found = conn.execute(
        select(webhook_nonces.c.nonce).where(
            webhook_nonces.c.provider == provider, webhook_nonces.c.nonce == _digest(nonce)
        )
    ).first()
    return found is not None


def remember_nonce(conn: Connection, *, provider: str, nonce: str, expires_at: dt.datetime) -> bool:
    """Record a nonce; False when it was already used (a replay)."""
    if random.random() < _PURGE_CHANCE:  # expired nonces are useless; sweep them now and then
        conn.execute(delete(webhook_nonces).where(webhook_nonces.c.expires_at < utcnow()))
    if nonce_seen(conn, provider=provider, nonce=nonce):
        return False
    conn.execute(
        insert(webhook_nonces).values(provider=provider, nonce=_digest(nonce), expires_at=expires_at)
    )
    return True


def store_events(
    conn: Connection, codec: TokenCodec, provider: str, events: Sequence[ProviderEvent]
) -> WebhookResult:
    """Attribute and ingest normalized events; quarantine unattributable bounces and complaints."""
    result = WebhookResult(received=len(events))
    found: dict[tuple[tuple[str, ...], ...], Attribution | None] = {}
    batch: list[EventIn] = []
    for event in events:
        clues = (event.tokens, event.message_ids, event.envelopes)
        if clues not in found:
            evidence = Evidence(verp_tokens=list(event.tokens), message_ids=list(event.message_ids))
            found[clues] = attribute(
                conn, codec, Classification(evidence=evidence), envelope_recipients=list(event.envelopes)
            )
        attribution = found[clues]
        if attribution is None:
            result.unattributed += 1
            if event.type in _QUARANTINED and _quarantine(conn, provider, event):
                result.quarantined += 1
            continue
        batch.append(
            EventIn(
                tenant_id=attribution.tenant_id,
                message_id=attribution.message_id,
                type=event.type,
                occurred_at=event.occurred_at,
                bounce_kind=event.bounce_kind,
                status=event.status[:16] if event.status else None,
                diagnostic=event.diagnostic,
                external_event_id=f"{provider}:{event.event_id}",
            )
        )
    stored = ingest_batch(conn, batch)
    result.stored, result.duplicates = stored.stored, stored.duplicates
    soft = sorted({e.message_id for e in batch if e.type == "bounced" and e.bounce_kind == "soft"})
    if soft:
        customer_ids = conn.execute(select(messages.c.customer_id).where(messages.c.id.in_(soft))).scalars()
        suppress_repeated_soft_bounces(conn, customer_ids=set(customer_ids), at=utcnow())
    return result


def _quarantine(conn: Connection, provider: str, event: ProviderEvent) -> bool:
    fingerprint = _digest(f"webhook:{provider}:{event.event_id}")
    if conn.execute(select(quarantine.c.id).where(quarantine.c.fingerprint == fingerprint)).first():
        return False
    source = {key: value for key, value in event.source.items() if key not in _BODY_FIELDS}
    classification = {
        "kind": _QUARANTINED[event.type],
        "bounce": event.bounce_kind,
        "status": event.status,
        "diagnostic": event.diagnostic,
        "recipient": event.recipient,
        "original_message_id": next(iter(event.message_ids), None),
        "reporting_mta": None,
        "parser": f"webhook:{provider}",
        "attributed": None,
    }
    conn.execute(
        insert(quarantine).values(
            tenant_id=None,
            received_at=utcnow(),
            source=provider[:8],
            reason="unattributed",
            kind=_QUARANTINED[event.type],
            bounce_kind=event.bounce_kind,
            status=(event.status or "")[:16] or None,
            recipient=(event.recipient or "")[:320] or None,
            original_message_id=next(iter(event.message_ids), "")[:300] or None,
            envelope_recipient=next(iter(event.envelopes), "")[:320] or None,
            # The provider's event, ASCII-escaped: it may hold NULs and lone surrogates.
            headers=json.dumps(source, default=str)[:16384],
            classification=json.dumps(classification, ensure_ascii=False),
            fingerprint=fingerprint,
        )
    )
    log.warning("webhook %s: unattributable %s %s quarantined", provider, event.type, event.event_id[:80])
    return True


def _json(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadPayloadError("the body is not JSON") from None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
