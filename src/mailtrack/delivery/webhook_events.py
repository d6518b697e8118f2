"""Provider events → our delivery events: what each ESP's webhook says, in our words (docs/webhooks.md).

Pure functions over parsed JSON, no database. Every field comes from outside, so each is read with a
type check and any shape yields events, ignored entries or `BadPayloadError` (400), never an exception of
another kind. Opens and clicks are ignored: our own pixel and links measure them, with machine-open
detection and the do-not-track rules an ESP knows nothing of; counting both would double them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailtrack.db import utcnow
from mailtrack.delivery.smtp_relay import bounce_kind

TOKEN_KEY = "mailtrack_token"  # noqa: S105  (a metadata key naming a VERP token, not a secret)
MESSAGE_ID_KEY = "mailtrack_message_id"  # the Message-ID returned by POST /api/v1/messages
MAX_DIAGNOSTIC = 1000
_MAX_AGE = dt.timedelta(days=365)
_STATUS = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_FRACTION = re.compile(r"(\.\d{6})\d+")


class BadPayloadError(ValueError):
    """The body is not what this provider sends."""


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """One normalized event with the clues that may name our message."""

    event_id: str  # the provider's own id (or a digest of the event): the idempotency key
    type: str  # sent | delivered | bounced | complained | unsubscribed
    occurred_at: dt.datetime
    recipient: str | None = None
    bounce_kind: str | None = None
    status: str | None = None
    diagnostic: str | None = None
    tokens: tuple[str, ...] = ()
    message_ids: tuple[str, ...] = ()
    envelopes: tuple[str, ...] = ()  # addresses that may be our VERP envelope sender
    source: Mapping[str, Any] = field(default_factory=dict)  # the provider's event, for the quarantine


@dataclass(slots=True)
class Parsed:
    """A call's events, and how many of its entries were deliberately ignored."""

    events: list[ProviderEvent] = field(default_factory=list)
    ignored: int = 0


@dataclass(frozen=True, slots=True)
class _Clues:
    tokens: tuple[str, ...] = ()
    message_ids: tuple[str, ...] = ()
    envelopes: tuple[str, ...] = ()


def ses_events(notification: object, *, fallback_id: str) -> Parsed:
    """An SES notification (feedback notification or event publishing) from an SNS Notification."""
    if not isinstance(notification, dict):
        raise BadPayloadError("the SNS Message is not an SES notification")
    kind = _str(notification.get("notificationType")) or _str(notification.get("eventType"))
    mail = _obj(notification, "mail")
    out = _Collector(_ses_clues(mail), notification)
    if kind == "Bounce":
        bounce = _obj(notification, "bounce")
        hard = bounce.get("bounceType") == "Permanent"
        base, at = _str(bounce.get("feedbackId")) or fallback_id, bounce.get("timestamp")
        for i, person in enumerate(_objects(bounce.get("bouncedRecipients"))):
            text = _str(person.get("diagnosticCode")) or _str(bounce.get("bounceSubType"))
            status = _status(_str(person.get("status"))) or _status(text) or ("5.0.0" if hard else "4.0.0")
            kind_ = bounce_kind(status) if hard else "soft"
            out.add(_nth(base, i), "bounced", at, person.get("emailAddress"), kind_, status, text)
    elif kind == "Complaint" and _obj(notification, "complaint").get("complaintFeedbackType") != "not-spam":
        complaint = _obj(notification, "complaint")
        feedback = f"feedback-type: {_str(complaint.get('complaintFeedbackType')) or 'abuse'}"
        base, at = _str(complaint.get("feedbackId")) or fallback_id, complaint.get("timestamp")
        for i, person in enumerate(_objects(complaint.get("complainedRecipients"))):
            out.add(_nth(base, i), "complained", at, person.get("emailAddress"), diagnostic=feedback)
    elif kind == "Delivery":
        delivery = _obj(notification, "delivery")
        at, response = delivery.get("timestamp"), _str(delivery.get("smtpResponse"))
        for i, person in enumerate(_list(delivery.get("recipients")) or [None]):
            out.add(_nth(fallback_id, i), "delivered", at, person, diagnostic=response)
    elif kind == "DeliveryDelay":
        delay = _obj(notification, "deliveryDelay")
        for i, person in enumerate(_objects(delay.get("delayedRecipients"))):
            text = _str(person.get("diagnosticCode")) or _str(delay.get("delayType"))
            status = _status(_str(person.get("status"))) or _status(text) or "4.0.0"
            out.add(
                _nth(fallback_id, i),
                "bounced",
                delay.get("timestamp"),
                person.get("emailAddress"),
                "soft",
                status,
                text,
            )
    elif kind == "Send":
        out.add(fallback_id, "sent", mail.get("timestamp"), next(iter(_list(mail.get("destination"))), None))
    else:  # Open, Click, Reject, Rendering Failure, Subscription, a not-spam complaint…
        out.parsed.ignored += 1
    return out.parsed


def _ses_clues(mail: Mapping[str, Any]) -> _Clues:
    tags = _obj(mail, "tags")  # SES message tags arrive as {name: [values]}
    metadata = {name: next(iter(_list(tags.get(name))), None) for name in (TOKEN_KEY, MESSAGE_ID_KEY)}
    ids = [_str(_obj(mail, "commonHeaders").get("messageId"))]
    for header in _objects(mail.get("headers")):
        if str(header.get("name", "")).lower() == "message-id":
            ids.append(_str(header.get("value")))
    return _merge(_metadata_clues(metadata), message_ids=ids, envelopes=[_str(mail.get("source"))])


def sendgrid_events(payload: object) -> Parsed:
    """A SendGrid event webhook batch (a JSON array); custom_args arrive as top-level fields."""
    if not isinstance(payload, list):
        raise BadPayloadError("SendGrid posts a JSON array of events")
    parsed = Parsed()
    for item in payload:
        kind = item.get("event") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(kind, str):
            parsed.ignored += 1
            continue
        out = _Collector(_merge(_metadata_clues(item), message_ids=[_str(item.get("smtp-id"))]), item, parsed)
        event_id = _str(item.get("sg_event_id")) or _digest(item)
        at, email, response = item.get("timestamp"), item.get("email"), _str(item.get("response"))
        if kind == "processed":
            out.add(event_id, "sent", at, email)
        elif kind == "delivered":
            out.add(event_id, "delivered", at, email, diagnostic=response)
        elif kind == "deferred":
            out.add(event_id, "bounced", at, email, "soft", _status(response) or "4.0.0", response)
        elif kind == "bounce":
            reason = _str(item.get("reason"))
            status = _status(_str(item.get("status"))) or _status(reason) or "5.0.0"
            # type "blocked" is SendGrid's soft bounce: the receiver refused this message, not the address.
            kind_ = "soft" if item.get("type") == "blocked" else bounce_kind(status)
            out.add(event_id, "bounced", at, email, kind_, status, reason)
        elif kind == "spamreport":
            out.add(event_id, "complained", at, email, diagnostic="spamreport")
        elif kind in ("unsubscribe", "group_unsubscribe"):
            out.add(event_id, "unsubscribed", at, email)
        else:  # open, click, dropped (an address SendGrid already suppresses), group_resubscribe
            parsed.ignored += 1
    return parsed


def mailgun_events(payload: object) -> Parsed:
    """One Mailgun webhook call: `event-data` beside the `signature` block."""
    data = payload.get("event-data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        raise BadPayloadError("Mailgun posts an object with event-data")
    clues = _merge(
        _metadata_clues(_obj(data, "user-variables")),
        message_ids=[_str(_obj(_obj(data, "message"), "headers").get("message-id"))],
        envelopes=[_str(_obj(data, "envelope").get("sender"))],
    )
    out = _Collector(clues, data)
    kind, event_id = data.get("event"), _str(data.get("id")) or _digest(data)
    at, email, delivery = data.get("timestamp"), data.get("recipient"), _obj(data, "delivery-status")
    text = " ".join(filter(None, (_str(delivery.get("message")), _str(delivery.get("description")))))
    if kind == "accepted":
        out.add(event_id, "sent", at, email)
    elif kind == "delivered":
        out.add(event_id, "delivered", at, email, diagnostic=text or None)
    elif kind == "failed" and not str(data.get("reason", "")).startswith("suppress-"):
        code = delivery.get("code")
        basic = f"{code} " if isinstance(code, int) and not isinstance(code, bool) else ""
        permanent = data.get("severity") == "permanent"
        found = _status(_str(delivery.get("enhanced-code"))) or _status(text)
        status = found or ("5.0.0" if permanent else "4.0.0")
        kind_ = bounce_kind(status) if permanent else "soft"
        out.add(event_id, "bounced", at, email, kind_, status, (basic + text).strip() or None)
    elif kind == "complained":
        out.add(event_id, "complained", at, email, diagnostic="complained")
    elif kind == "unsubscribed":
        out.add(event_id, "unsubscribed", at, email)
    else:  # opened, clicked, stored, failed for an address Mailgun suppresses (reason suppress-*)
        out.parsed.ignored += 1
    return out.parsed


# Postmark bounce types: what each one tells us about the recipient (docs/webhooks.md).
_POSTMARK_HARD = {"HardBounce", "BadEmailAddress"}
_POSTMARK_SOFT = {"Transient", "SoftBounce", "DnsError", "Blocked", "DMARCPolicy", "Unknown"}


def postmark_events(payload: object) -> Parsed:
    """One Postmark webhook call (one record: Bounce, Delivery, SpamComplaint, SubscriptionChange…)."""
    if not isinstance(payload, dict):
        raise BadPayloadError("Postmark posts one JSON object")
    out = _Collector(_metadata_clues(_obj(payload, "Metadata")), payload)
    record, kind = payload.get("RecordType"), payload.get("Type")
    pm_id, recipient = _str(payload.get("MessageID")) or "", _str(payload.get("Recipient")) or ""
    raw_id = payload.get("ID")
    bounce_id = str(raw_id) if isinstance(raw_id, int) and not isinstance(raw_id, bool) else _str(raw_id)
    bounce_key = f"bounce:{bounce_id or _digest(payload)}"
    at, email = payload.get("BouncedAt"), payload.get("Email")
    details = _str(payload.get("Details")) or _str(payload.get("Description"))
    if record == "Bounce" and (kind in _POSTMARK_HARD or kind in _POSTMARK_SOFT):
        hard = kind in _POSTMARK_HARD
        status = _status(details) or ("5.0.0" if hard else "4.0.0")
        out.add(bounce_key, "bounced", at, email, bounce_kind(status) if hard else "soft", status, details)
    elif record == "SpamComplaint" or (record == "Bounce" and kind == "SpamComplaint"):
        out.add(bounce_key, "complained", at, email, diagnostic="SpamComplaint")
    elif record == "Bounce" and kind == "Unsubscribe":  # an unsubscribe request sent by mail
        out.add(bounce_key, "unsubscribed", at, email)
    elif record == "Delivery":
        key = f"delivery:{pm_id}:{recipient}" if pm_id else _digest(payload)
        out.add(key, "delivered", payload.get("DeliveredAt"), recipient, diagnostic=details)
    elif (
        record == "SubscriptionChange"
        and payload.get("SuppressSending") is True
        and payload.get("SuppressionReason")
        == "ManualSuppression"  # bounces and complaints come on their own
    ):
        changed = _str(payload.get("ChangedAt")) or ""
        out.add(f"subscription:{pm_id}:{recipient}:{changed}", "unsubscribed", changed, recipient)
    else:  # Open, Click, AutoResponder, AddressChange, resubscriptions…
        out.parsed.ignored += 1
    return out.parsed


class _Collector:
    """Appends normalized events sharing one set of clues and one source object."""

    def __init__(self, clues: _Clues, source: Mapping[str, Any], parsed: Parsed | None = None) -> None:
        self.clues, self.source = clues, source
        self.parsed = parsed if parsed is not None else Parsed()

    def add(
        self,
        event_id: str,
        event_type: str,
        at: object,
        recipient: object,
        bounce_kind: str | None = None,
        status: str | None = None,
        diagnostic: str | None = None,
    ) -> None:
        self.parsed.events.append(
            ProviderEvent(
                event_id=event_id[:150],
                type=event_type,
                occurred_at=occurred_at(at),
                recipient=_str(recipient),
                bounce_kind=bounce_kind,
                status=status,
                diagnostic=diagnostic[:MAX_DIAGNOSTIC] if diagnostic else None,
                tokens=self.clues.tokens,
                message_ids=self.clues.message_ids,
                envelopes=self.clues.envelopes,
                source=self.source,
            )
        )


def _nth(base: str, index: int) -> str:
    # One notification may name several recipients; each gets its own stable id.
    return f"{base}:{index}" if index else base


def occurred_at(value: object) -> dt.datetime:
    """A provider timestamp (epoch seconds or ISO 8601) as UTC to the second; now when implausible."""
    now = utcnow()
    moment: dt.datetime | None = None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            moment = dt.datetime.fromtimestamp(value, dt.UTC)
        elif isinstance(value, str) and len(value) < 64:
            moment = dt.datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip().replace("Z", "+00:00")))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError, OSError):
        moment = None
    if moment is None or moment > now + dt.timedelta(minutes=5) or moment < now - _MAX_AGE:
        return now
    return moment.astimezone(dt.UTC).replace(microsecond=0)


def _metadata_clues(values: Mapping[str, Any]) -> _Clues:
    token, message_id = _str(values.get(TOKEN_KEY)), _str(values.get(MESSAGE_ID_KEY))
    if token and "@" in token:
        return _Clues(envelopes=(token,), message_ids=(_angle(message_id),) if message_id else ())
    return _Clues(
        tokens=(token.strip(),) if token else (), message_ids=(_angle(message_id),) if message_id else ()
    )


def _merge(
    clues: _Clues, *, message_ids: Sequence[str | None] = (), envelopes: Sequence[str | None] = ()
) -> _Clues:
    ids = list(dict.fromkeys([*clues.message_ids, *(_angle(m) for m in message_ids if m)]))
    found = list(dict.fromkeys([*clues.envelopes, *(e for e in envelopes if e)]))
    return _Clues(clues.tokens, tuple(ids[:5]), tuple(found[:5]))


def _angle(message_id: str) -> str:
    # Mailgun and SES tags drop the angle brackets RFC 5322 puts around a Message-ID.
    stripped = message_id.strip()
    return (stripped if stripped.startswith("<") else f"<{stripped}>")[:300]


def _status(text: str | None) -> str | None:
    if not text:
        return None
    for match in _STATUS.finditer(text):
        if match.group(1) != "2":
            return ".".join(match.groups())
    return None


def _digest(item: Mapping[str, Any]) -> str:
    # No id from the provider: the event's own content, canonically serialized, is its identity.
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _str(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    # JSON may carry NUL (PostgreSQL refuses it in text) and lone surrogates (not encodable as UTF-8).
    cleaned = value[:2000].replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return cleaned or None


def _obj(container: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = container.get(key)
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value[:1000] if isinstance(value, list) else []


def _objects(value: object) -> list[Mapping[str, Any]]:
    return [item for item in _list(value) if isinstance(item, dict)]
