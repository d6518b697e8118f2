"""Inbound bounce and complaint mail: raw bytes in, one classification out (pure: no database).

Evidence is weighed strongest first, and the first stage that recognizes the message decides:

1. an RFC 5965 feedback report (ARF, `message/feedback-report`) → complaint;
2. an RFC 3464 delivery status notification (`message/delivery-status`) → bounce, delay or delivered,
   from the Action, Status and Diagnostic-Code of the most severe recipient;
3. an auto-reply (RFC 3834 `Auto-Submitted: auto-replied`, `X-Autoreply`, `Precedence: auto_reply`, or
   an out-of-office subject) → auto_reply, which is not a bounce;
4. flufl.bounce's detectors, for the non-standard formats of real MTAs (qmail, Exim, Yahoo, GroupWise…);
5. our own heuristics: SMTP status codes and well-known phrases in the notification text.

Stages 4 and 5 only run on mail that looks like a bounce (sender, subject or X-Failed-Recipients), so
a newsletter or a human reply that happens to say "does not exist" stays `unknown`. Attribution
evidence (VERP tags, the original Message-ID, tracking URLs) is collected for `inbound.py`.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any

from flufl.bounce import all_failures

from mailtrack.delivery import mailparse
from mailtrack.delivery.evidence import Evidence, collect_evidence
from mailtrack.delivery.mailparse import Walked, content_type, first_address, header

log = logging.getLogger(__name__)

KINDS = ("bounce", "delay", "delivered", "complaint", "auto_reply", "unknown")
MAX_DIAGNOSTIC = 1000
NOTIFICATION_BUDGET = 64 * 1024

# RFC 3463 enhanced status codes: class 2/4/5, subject 0-7, detail up to 3 digits. The guards keep
# IPv4 addresses (4.2.2.1), versions and dates from passing for one.
_ENHANCED = r"[245]\.[0-7]\.\d{1,3}(?!\d|\.\d)"
_STATUS = re.compile(rf"(?<![\w.])({_ENHANCED})")
_SMTP_STATUS = re.compile(r"(?<!\d)[45]\d\d[ \t-]+\(?#?([45]\.[0-7]\.\d{1,3})(?!\d|\.\d)")
_HASH_STATUS = re.compile(r"#([45]\.[0-7]\.\d{1,3})(?!\d|\.\d)")
_BASIC_CODE = re.compile(r"(?<![\w.])([45])[0-5]\d(?=[ :-])")
_MAILBOX_FULL = re.compile(
    r"mail\s?box (?:is )?full|over\s?quota|quota (?:exceeded|exceed)"
    r"|exceeded (?:the |his |her )?(?:storage|quota)|insufficient (?:system )?storage|out of storage"
    r"|storage space|mailbox size limit|disk quota"
    r"|mailfolder is over|mailbox has exceeded",
    re.IGNORECASE,
)
_NO_DOMAIN = re.compile(
    r"host or domain name not found|no such domain|domain (?:not found|does not exist)|unrouteable"
    r"|name service error|host not found|no mx (?:record|host)",
    re.IGNORECASE,
)
_NO_USER = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient|address)|does ?n[o']t exist"
    r"|doesn't have an? \S+ account|no mailbox here|mailbox unavailable|mailbox not found"
    r"|recipient ?not ?found|user not found|invalid (?:recipient|mailbox)|unknown (?:recipient|address)"
    r"|address rejected|account (?:is )?(?:disabled|inactive)|not a valid mailbox|no longer (?:valid|active)",
    re.IGNORECASE,
)
_DELAY_WORDS = re.compile(
    r"delayed|will (?:be )?retr(?:y|ied)|not yet been delivered|still being retried"
    r"|delivery attempts will continue",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|returned mail|returned to sender|delivery (?:status notification|failure|failed"
    r"|has failed|problem|report|delayed|notification)|failure notice|mail delivery failed|non[- ]?delivery"
    r"|could not be delivered|not delivered|delivery (?:warning|incomplete)|delayed mail|message status"
    r"|permanent (?:delivery )?failure|warning: could not send|mail system error|unzustellbar"
    r"|nem kézbesíthető|kézbesítési",
    re.IGNORECASE,
)
_DAEMON_SENDER = re.compile(r"mailer-daemon|mail-daemon|postmaster|mdaemon|mail delivery", re.IGNORECASE)
_OOF_SUBJECT = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|fw|fwd|wg)\s*:\s*)*"
    r"(?:automatic reply|auto(?:matic)?[ -]?reply|auto[ -]?response|out of (?:the )?office|abwesenheit"
    r"|automatische antwort|házon kívül|automatikus válasz|réponse automatique|fuori sede"
    r"|risposta automatica|autosvar)",
    re.IGNORECASE,
)
# Where a plain-text bounce starts quoting the original: status codes below it are not the bounce's.
_COPY_FOLLOWS = re.compile(
    r"^.{0,20}(?:below this line is a copy|this is a copy of the message|original message follows"
    r"|----- original message|message header follows|returned mail follows|copy of the original message"
    r"|headers of the original message|original message headers)",
    re.IGNORECASE | re.MULTILINE,
)
_TAG = re.compile(r"<[^>]{0,2000}>")
_ACTION_RANK = {"failed": 3, "delayed": 2, "delivered": 1, "relayed": 1, "expanded": 1}


@dataclass(slots=True)
class Classification:
    """What an inbound message is (docs/bounces.md describes each field)."""

    kind: str = "unknown"
    bounce: str | None = None
    status: str | None = None
    diagnostic: str | None = None
    recipient: str | None = None
    original_message_id: str | None = None
    reporting_mta: str | None = None
    parser: str = "heuristic"
    date: dt.datetime | None = None
    evidence: Evidence = field(default_factory=Evidence)

    def as_dict(self, attributed: dict[str, Any] | None = None) -> dict[str, Any]:
        """The classification JSON, with `attributed` as inbound.py found it (null here)."""
        return {
            "kind": self.kind,
            "bounce": self.bounce,
            "status": self.status,
            "diagnostic": self.diagnostic,
            "recipient": self.recipient,
            "original_message_id": self.original_message_id,
            "reporting_mta": self.reporting_mta,
            "parser": self.parser,
            "attributed": attributed,
        }


def classify(raw: bytes) -> Classification:
    """Classify one raw RFC 5322 message; never raises, whatever the bytes."""
    try:
        return _classify(raw)
    except Exception:  # the last line of defence: a parser bug must not lose mail
        log.exception("bounce parser failed; classifying the message as unknown")
        return Classification()


def _classify(raw: bytes) -> Classification:
    message = mailparse.parse(raw)
    if message is None:
        return Classification()
    parts = list(mailparse.walk(message))
    result = (
        _arf(message, parts)
        or _dsn(parts)
        or _auto_reply(message)
        or _flufl(message, parts)
        or _heuristic(message, parts)
        or Classification()
    )
    result.evidence = collect_evidence(message, parts)
    result.original_message_id = result.original_message_id or next(iter(result.evidence.message_ids), None)
    result.date = _date(header(message, "date"))
    return result


def _arf(message: Message, parts: Walked) -> Classification | None:
    reports = [part for part, _, _ in parts if content_type(part) == "message/feedback-report"]
    if not reports:
        return None
    fields: dict[str, str] = {}
    for block in mailparse.field_blocks(reports[0]):
        for name, value in block.items():
            fields.setdefault(name, value)
    feedback = (fields.get("feedback-type", "").split() or ["abuse"])[0].lower()
    # not-spam (RFC 6430) is the opposite of a complaint; auth-failure (RFC 6591) is a DMARC report.
    kind = "unknown" if feedback in ("not-spam", "auth-failure") else "complaint"
    return Classification(
        kind=kind,
        diagnostic=f"feedback-type: {feedback}",
        recipient=first_address(fields.get("original-rcpt-to", "")),
        reporting_mta=_mta(fields.get("reporting-mta", "")),
        parser="arf",
    )


def _dsn(parts: Walked) -> Classification | None:
    blocks = [
        block
        for part, _, _ in parts
        if content_type(part) in ("message/delivery-status", "message/global-delivery-status")
        for block in mailparse.field_blocks(part)
    ]
    best: tuple[int, str, dict[str, str]] | None = None
    for block in blocks:
        action = _action(block)
        rank = _ACTION_RANK.get(action, 0)
        if rank and (best is None or rank > best[0]):
            best = (rank, action, block)
    if best is None:
        return None
    _, action, block = best
    diagnostic = _clean(re.sub(r"^\s*[\w-]+\s*;\s*", "", block.get("diagnostic-code", ""))) or None
    status = _first(_STATUS, block.get("status", "")) or _status_in(diagnostic or "")
    specific = _status_in(diagnostic or "")
    if status and status.endswith(".0.0") and specific and specific[0] == status[0]:
        status = specific  # Exim and others write a generic X.0.0; the remote's own code says more
    recipient = first_address(block.get("original-recipient", "")) or first_address(
        block.get("final-recipient", "")
    )
    reporting = next((_mta(b["reporting-mta"]) for b in blocks if b.get("reporting-mta")), None)
    result = Classification(
        status=status, diagnostic=diagnostic, recipient=recipient, reporting_mta=reporting, parser="dsn"
    )
    if action == "failed":
        result.kind = "bounce"
        result.status = status or _status_from_phrases(diagnostic or "")
        result.bounce = _severity(result.status, diagnostic or "", default="hard")
    elif action == "delayed":
        result.kind, result.bounce = "delay", "soft"
    else:
        result.kind = "delivered"
    return result


def _action(block: dict[str, str]) -> str:
    action = block.get("action", "").strip().lower()
    for name in ("failed", "error", "delayed", "delivered", "relayed", "expanded"):
        if action.startswith(name):
            return "failed" if name == "error" else name  # OpenSMTPD writes the non-standard "error"
    if not action and block.get("final-recipient"):
        # No Action at all (broken gateways): the status class says what happened.
        status = _first(_STATUS, block.get("status", ""))
        if status:
            return {"5": "failed", "4": "delayed", "2": "delivered"}[status[0]]
    return ""


def _auto_reply(message: Message) -> Classification | None:
    submitted = header(message, "auto-submitted").lower()
    flagged = (
        submitted.startswith("auto-replied")
        or header(message, "x-autoreply").lower() not in ("", "no")
        or header(message, "x-autorespond") != ""
        or header(message, "precedence").lower() == "auto_reply"
        or bool(_OOF_SUBJECT.search(header(message, "subject")))
    )
    if not flagged or _looks_like_bounce(message):
        return None
    return Classification(kind="auto_reply", recipient=first_address(header(message, "from")))


def _looks_like_bounce(message: Message) -> bool:
    if header(message, "x-failed-recipients"):
        return True
    return bool(
        _DAEMON_SENDER.search(header(message, "from")) or _BOUNCE_SUBJECT.search(header(message, "subject"))
    )


def _flufl(message: Message, parts: Walked) -> Classification | None:
    if not _looks_like_bounce(message):
        return None
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a detector choking on odd input; our heuristics get a turn
        log.debug("flufl.bounce failed on a message", exc_info=True)
        return None
    found = sorted(address.decode("ascii", "replace") for address in (permanent or temporary))
    if not found:
        return None
    text = _notification(parts)
    status = _status_in(text)
    default = "hard" if permanent else "soft"
    if not status:
        status = _status_from_phrases(text) if permanent else None
    return Classification(
        kind="bounce" if permanent else "delay",
        bounce=_severity(status, text, default=default) if permanent else "soft",
        status=status,
        diagnostic=_diagnostic_line(text, status),
        recipient=_pick_recipient(message, found),
        parser="flufl",
    )


def _heuristic(message: Message, parts: Walked) -> Classification | None:
    if not _looks_like_bounce(message):
        return None
    text = _notification(parts)
    status = _status_in(text) or _status_from_phrases(text)
    if status is None:
        return None  # a bounce-looking message that names no reason: left for review, not guessed
    subject = header(message, "subject")
    delayed = status.startswith("4") and bool(_DELAY_WORDS.search(subject) or _DELAY_WORDS.search(text))
    return Classification(
        kind="delay" if delayed else "bounce",
        bounce="soft" if delayed else _severity(status, text, default="hard"),
        status=status,
        diagnostic=_diagnostic_line(text, status),
        recipient=_heuristic_recipient(message, text),
        parser="heuristic",
    )


def _severity(status: str | None, text: str, *, default: str) -> str:
    """Hard (permanent) or soft (transient): the status class, except that a full mailbox is soft."""
    full = bool(_MAILBOX_FULL.search(text))
    if status:
        # X.2.2 mailbox full and X.3.1 mail system full: Gmail and others send them as 5.x.x, yet the
        # address is fine and later mail may well arrive, so they must not suppress the customer.
        if status[1:] in (".2.2", ".3.1") or (full and not _NO_USER.search(text)):
            return "soft"
        return "hard" if status.startswith("5") else "soft"
    if full:
        return "soft"
    basic = _first(_BASIC_CODE, text)
    if basic:
        return "hard" if basic == "5" else "soft"
    if _NO_USER.search(text) or _NO_DOMAIN.search(text):
        return "hard"
    return default


def _status_in(text: str) -> str | None:
    return _first(_SMTP_STATUS, text) or _first(_HASH_STATUS, text) or _first_non_success(text)


def _first_non_success(text: str) -> str | None:
    for match in _STATUS.finditer(text):
        if not match.group(1).startswith("2"):
            return match.group(1)
    return None


def _status_from_phrases(text: str) -> str | None:
    # No code in the text: the phrase decides (RFC 3463 X.2.2 mailbox full, X.1.2 bad domain, X.1.1).
    if _MAILBOX_FULL.search(text):
        return "4.2.2"
    if _NO_DOMAIN.search(text):
        return "5.1.2"
    if _NO_USER.search(text):
        return "5.1.1"
    return None


def _first(pattern: re.Pattern[str], text: str) -> str | None:
    match = pattern.search(text)
    return match.group(1) if match else None


def _notification(parts: Walked) -> str:
    """The human-readable report the MTA wrote, without the quoted original."""
    plain: list[str] = []
    html: list[str] = []
    for part, _, quoted in parts:
        kind = content_type(part)
        if quoted or isinstance(part.get_payload(), list) or kind not in ("text/plain", "text/html"):
            continue
        text = mailparse.part_text(part)[:NOTIFICATION_BUDGET]
        if kind == "text/plain":
            plain.append(text)
        else:
            html.append(_TAG.sub(" ", text))
    text = "\n".join(plain or html)
    cut = _COPY_FOLLOWS.search(text)
    return (text[: cut.start()] if cut else text)[:NOTIFICATION_BUDGET]


def _diagnostic_line(text: str, status: str | None) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if status and status in line:
            # Start at the SMTP reply ("550 5.1.1 …"), not at a transcript's timestamp or arrow.
            reply = re.search(rf"[45]\d\d[ \t-]+\(?#?{re.escape(status)}", line)
            return _clean(line[reply.start() :] if reply else line) or None
        if _NO_USER.search(line) or _MAILBOX_FULL.search(line) or _NO_DOMAIN.search(line):
            # "…to the following addresses:" puts the reason on the next line.
            following = lines[index + 1] if line.endswith(":") and index + 1 < len(lines) else ""
            return _clean(f"{line} {following}") or None
    return None


def _heuristic_recipient(message: Message, text: str) -> str | None:
    failed = first_address(header(message, "x-failed-recipients"))
    if failed:
        return failed
    rcpt = re.search(r"rcpt to:\s*<([^<>\s]+@[^<>\s]+)>", text, re.IGNORECASE)
    if rcpt:
        return rcpt.group(1)
    return _pick_recipient(message, [match.group(0) for match in mailparse.EMAIL.finditer(text)])


def _pick_recipient(message: Message, candidates: list[str]) -> str | None:
    # The bounce's own sender and addressee (us) and daemon addresses are never the failed recipient.
    ours = {(first_address(header(message, name)) or "").lower() for name in ("from", "to", "return-path")}
    for candidate in candidates:
        lowered = candidate.lower()
        if lowered not in ours and not _DAEMON_SENDER.search(lowered.split("@", 1)[0]):
            return candidate
    return None


def _mta(value: str) -> str | None:
    return _clean(re.sub(r"^\s*[\w-]+\s*;\s*", "", value))[:255] or None


def _clean(text: str) -> str:
    return " ".join(text.split())[:MAX_DIAGNOSTIC]


def _date(value: str) -> dt.datetime | None:
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).replace(microsecond=0)
