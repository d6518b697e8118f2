"""What in an inbound report may name the original message: VERP tags, Message-IDs, tracking URLs.

Pure extraction, no database: `inbound.py` decides which candidate names a message we know. Nothing
here is trusted: tokens are HMAC-checked when decoded, and Message-IDs must match exactly one message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from typing import TypeVar

from mailtrack.delivery import mailparse
from mailtrack.delivery.mailparse import Walked, content_type, header, header_all

MAX_CANDIDATES = 20
# Headers where a bounce carries the address it was sent back to (our VERP envelope sender).
ENVELOPE_HEADERS = ("to", "delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "return-path")

# A +tag in base32 (the VERP form of a token), in any local part: a wrong candidate fails its MAC.
_VERP = re.compile(r"[A-Za-z0-9._=-]{1,64}\+([A-Za-z2-7]{16,120})@", re.IGNORECASE)
# Message-ID of a quoted original, and Gmail's X-Original-Message-ID in its per-message DSN fields.
_MESSAGE_ID_LINE = re.compile(
    r"^[ \t]*(?:x-original-)?message-id[ \t]*:\s*(<[^<>\s]{3,250}>)", re.IGNORECASE | re.MULTILINE
)
_ANGLE_ID = re.compile(r"<[^<>\s@]{1,200}@[^<>\s]{1,200}>")
# DSN ENVID (RFC 3461), returned as Original-Envelope-Id: a sender may put its VERP token there.
_ENVID = re.compile(r"^original-envelope-id[ \t]*:[ \t]*(\S{4,120})", re.IGNORECASE | re.MULTILINE)
_TRACKING_URL = re.compile(r"/([ocu])/([A-Za-z0-9_-]{20,200})")
_T = TypeVar("_T")


@dataclass(slots=True)
class Evidence:
    """Candidates naming the original message, strongest kind first; never part of the JSON."""

    verp_tokens: list[str] = field(default_factory=list)  # +tags: top-level headers first, then quoted
    message_ids: list[str] = field(default_factory=list)  # quoted Message-IDs, then In-Reply-To/References
    tracking_tokens: list[tuple[str, str]] = field(default_factory=list)  # ("o"|"c"|"u", token)


def collect_evidence(message: Message, parts: Walked) -> Evidence:
    """Every candidate in the report's headers, field blocks, quoted headers and quoted text."""
    evidence = Evidence()
    for name in ENVELOPE_HEADERS:
        for value in header_all(message, name):
            evidence.verp_tokens.extend(_VERP.findall(value))
    text = _quoted_text(parts)
    # Quoted-printable copies quoted inline keep their soft line breaks and =3D escapes.
    unfolded = text.replace("=\n", "").replace("=3D", "=").replace("=3d", "=")
    evidence.verp_tokens.extend(_VERP.findall(text))
    evidence.verp_tokens.extend(_ENVID.findall(text))
    evidence.message_ids.extend(_MESSAGE_ID_LINE.findall(text))
    for name in ("in-reply-to", "references"):
        evidence.message_ids.extend(_ANGLE_ID.findall(header(message, name)))
    evidence.tracking_tokens.extend((m.group(1), m.group(2)) for m in _TRACKING_URL.finditer(unfolded))
    evidence.verp_tokens = _unique(evidence.verp_tokens)
    evidence.message_ids = _unique(evidence.message_ids)
    evidence.tracking_tokens = _unique(evidence.tracking_tokens)
    return evidence


def _quoted_text(parts: Walked) -> str:
    # Everything below the top-level headers, as text: part and quoted-message headers (Message-ID,
    # List-Unsubscribe, Return-Path), report fields, and text bodies, within one budget.
    chunks: list[str] = []
    budget = mailparse.TEXT_BUDGET
    for part, depth, _ in parts:
        kind = content_type(part)
        pieces = []
        if depth:
            pieces.append("\n".join(f"{name}: {value}" for name, value in mailparse.raw_headers(part)))
        if kind in mailparse.FIELD_TYPES:
            blocks = mailparse.field_blocks(part)
            pieces.append("\n".join(f"{name}: {value}" for block in blocks for name, value in block.items()))
        elif kind.startswith("text/") and not isinstance(part.get_payload(), list):
            pieces.append(mailparse.part_text(part))
        for piece in pieces:
            chunks.append(piece[:budget])
            budget -= len(chunks[-1])
        if budget <= 0:
            break
    return "\n".join(chunks)


def _unique(items: list[_T]) -> list[_T]:
    return list(dict.fromkeys(items))[:MAX_CANDIDATES]
