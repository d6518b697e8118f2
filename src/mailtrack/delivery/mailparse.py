"""Defensive MIME reading for inbound mail: any bytes parse, any header decodes, all work is capped.

Bounce mail is written by hundreds of MTAs, some of them broken, and anyone can send it to us. Every
function here returns something usable instead of raising, and the work one message can cause is
bounded: only the first `PARSE_BYTES` are parsed, attachments are dropped, decoded text is kept up to
`TEXT_BUDGET`, and walks are iterative (no recursion limit to hit) with a cap on parts and depth.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from collections.abc import Iterator
from email import policy
from email.header import decode_header
from email.message import Message
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value
from typing import cast

MAX_MESSAGE_BYTES = 10 * 1024 * 1024  # accepted on every way in: HTTP 413, SMTP 552, CLI error beyond it
# A report's notification, status fields and quoted headers come first; what follows is the quoted
# original's body and attachments, which never decide a classification.
PARSE_BYTES = 2 * 1024 * 1024
TEXT_BUDGET = 256 * 1024  # decoded text kept across all parts; flufl.bounce and heuristics see no more
LINE_BUDGET = 6000  # lines kept across all parts, for the same reason
MAX_PARTS = 300
MAX_DEPTH = 12
MAX_HEADER_CHARS = 4000
HEADER_BYTES = 256 * 1024
# Parts whose payload is a list of field blocks, not MIME parts: read with `field_blocks`, not walked.
FIELD_TYPES = frozenset(
    {"message/delivery-status", "message/global-delivery-status", "message/feedback-report"}
)

# What `walk` yields: (part, depth, quoted), quoted meaning inside a message/* part.
Walked = list[tuple[Message, int, bool]]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_FOLD = re.compile(r"\n[ \t]*")
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/]")
EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)


def parse(raw: bytes) -> Message | None:
    """The message in `raw` (its first PARSE_BYTES), slimmed for analysis; None if it cannot be parsed."""
    # One line-ending convention makes boundaries and field blocks match whatever the MTA wrote
    # (CRLF on the wire, LF from a pipe, bare CR from a few old Mac-era gateways).
    data = raw[:PARSE_BYTES].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    try:
        # compat32 never raises when a header is read later (the default policy can, on malformed
        # addresses or encoded words); we decode headers ourselves in `decode_header_value`.
        message = BytesParser(policy=policy.compat32).parsebytes(data)
    except Exception:  # noqa: BLE001  (RecursionError on absurd nesting, or any parser bug: nothing to analyse)
        return None
    _slim(message)
    return message


def parse_headers(raw: bytes) -> Message:
    """Only the top-level header block of `raw` (empty when unreadable)."""
    data = raw[:HEADER_BYTES].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    try:
        return BytesParser(policy=policy.compat32).parsebytes(data, headersonly=True)
    except Exception:  # noqa: BLE001  (as in `parse`: an unreadable message has no headers to show)
        return Message()


def _slim(message: Message) -> None:
    # Prune to what `walk` will ever show (MAX_PARTS, MAX_DEPTH), drop attachments and cut text to a
    # shared budget, so that flufl.bounce's line-by-line detectors (dozens of passes over every line)
    # and our own regexes never scan megabytes or thousands of parts.
    budget = TEXT_BUDGET
    lines = LINE_BUDGET
    parts = 0
    stack = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        parts += 1
        payload = part.get_payload()
        if isinstance(payload, list):
            room = 0 if depth >= MAX_DEPTH else max(0, MAX_PARTS - parts - len(stack))
            children: list[Message] = [child for child in payload if isinstance(child, Message)][:room]
            if len(children) != len(payload):
                part.set_payload(cast("list[Message | str]", children))
            stack.extend((child, depth + 1) for child in reversed(children))
            continue
        if not isinstance(payload, str):
            continue
        maintype = content_type(part).split("/", 1)[0]
        keep = payload[:budget] if maintype in ("text", "message", "multipart") else ""
        keep, lines = _head_lines(keep, lines)
        budget -= len(keep)
        if len(keep) != len(payload):
            part.set_payload(keep)


def _head_lines(text: str, room: int) -> tuple[str, int]:
    # Lines matter as much as bytes: each flufl.bounce pattern is one pass over every line.
    end = 0
    while room > 0 and end < len(text):
        found = text.find("\n", end)
        end = len(text) if found < 0 else found + 1
        room -= 1
    return text[:end], room


def walk(message: Message) -> Iterator[tuple[Message, int, bool]]:
    """Each part as (part, depth, quoted): pre-order, iterative, capped; quoted = inside message/*."""
    stack: list[tuple[Message, int, bool]] = [(message, 0, False)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, depth, quoted = stack.pop()
        seen += 1
        yield part, depth, quoted
        kind = content_type(part)
        payload = part.get_payload()
        if kind in FIELD_TYPES or not isinstance(payload, list) or depth >= MAX_DEPTH:
            continue
        inner = quoted or kind.startswith("message/")
        children = [child for child in payload if isinstance(child, Message)]
        stack.extend((child, depth + 1, inner) for child in reversed(children))


def content_type(part: Message) -> str:
    """The part's content type, lower case; text/plain when absent or unreadable."""
    try:
        return part.get_content_type().lower()
    except Exception:  # noqa: BLE001  (a header the parser kept but cannot interpret)
        return "text/plain"


def param(part: Message, name: str) -> str:
    """A Content-Type parameter, decoded; empty when absent or unreadable."""
    try:
        value = part.get_param(name)
    except Exception:  # noqa: BLE001  (unparseable parameters: treat as absent)
        return ""
    if value is None:
        return ""
    if isinstance(value, tuple):
        try:
            return collapse_rfc2231_value(value)
        except (LookupError, ValueError, TypeError):  # RFC 2231 value with a bogus charset
            return str(value[2])
    return str(value)


def raw_headers(part: Message) -> list[tuple[str, str]]:
    """The part's headers as parsed (values may carry surrogate-escaped 8-bit bytes)."""
    try:
        return [(str(name), str(value)) for name, value in part.raw_items()]
    except Exception:  # noqa: BLE001  (a header object that does not stringify)
        return []


def header(part: Message, name: str) -> str:
    """The first header of that name, decoded and unfolded; empty when absent."""
    wanted = name.lower()
    for key, value in raw_headers(part):
        if key.lower() == wanted:
            return decode_header_value(value)
    return ""


def header_all(part: Message, name: str) -> list[str]:
    """Every header of that name, decoded and unfolded."""
    wanted = name.lower()
    return [decode_header_value(value) for key, value in raw_headers(part) if key.lower() == wanted]


def decode_header_value(value: str) -> str:
    """A header value as text: 8-bit bytes as UTF-8 (or cp1252), encoded words decoded, no controls."""
    text = bytes_to_text(value[:MAX_HEADER_CHARS].encode("utf-8", "surrogateescape"), None)
    text = _FOLD.sub(" ", text)
    if "=?" in text:
        text = _decode_words(text)
    return _CONTROL.sub("", text).strip()


def _decode_words(text: str) -> str:
    try:
        return "".join(
            chunk if isinstance(chunk, str) else bytes_to_text(chunk, charset)
            for chunk, charset in decode_header(text)
        )
    except Exception:  # noqa: BLE001  (a malformed encoded word: keep the text as it came)
        return text


def bytes_to_text(data: bytes, charset: str | None) -> str:
    """Bytes decoded with the declared charset, else UTF-8, else cp1252 with replacement characters."""
    for candidate in (charset, "utf-8"):
        if candidate and candidate.lower() not in ("unknown-8bit", "x-unknown"):
            text = _decode(data, candidate)
            if text is not None:
                return text
    return data.decode("cp1252", errors="replace")


def _decode(data: bytes, charset: str) -> str | None:
    try:
        return data.decode(charset)
    except (LookupError, ValueError, TypeError):  # unknown or non-text codec, or bytes it rejects
        return None


def part_bytes(part: Message) -> bytes:
    """A leaf part's body, transfer-decoded; empty for multiparts."""
    payload = part.get_payload()
    if not isinstance(payload, str):
        return b""
    raw = payload.encode("utf-8", "surrogateescape")
    encoding = header(part, "content-transfer-encoding").lower()
    try:
        if "base64" in encoding:
            cleaned = _NOT_B64.sub(b"", raw)
            # Truncated base64 still yields its whole quanta, instead of failing on the padding.
            return base64.b64decode(cleaned[: len(cleaned) - len(cleaned) % 4])
        if "quoted-printable" in encoding:
            return quopri.decodestring(raw)
    except (binascii.Error, ValueError):
        return raw
    return raw


def part_text(part: Message) -> str:
    """A leaf part's body as text, whatever its transfer encoding and (possibly wrong) charset."""
    return bytes_to_text(part_bytes(part), param(part, "charset") or None)


def field_blocks(part: Message) -> list[dict[str, str]]:
    """The field blocks of a delivery-status or feedback-report part, names lower-cased, first wins."""
    payload = part.get_payload()
    encoding = header(part, "content-transfer-encoding").lower()
    if isinstance(payload, list) and "base64" not in encoding and "quoted-printable" not in encoding:
        blocks: list[dict[str, str]] = []
        for block in payload:
            if not isinstance(block, Message):
                continue
            fields: dict[str, str] = {}
            for name, value in raw_headers(block):
                fields.setdefault(name.lower(), decode_header_value(value))
            blocks.append(fields)
            rest = block.get_payload()
            # A line the header parser did not accept ends its block early; the rest is still fields.
            if isinstance(rest, str) and rest.strip():
                blocks.extend(parse_fields(rest))
        return [block for block in blocks if block]
    if isinstance(payload, list):
        # An encoded report was read as field blocks of base64 text: undo that, then decode.
        joined = "\n".join(str(block.get_payload()) for block in payload if isinstance(block, Message))
        copy = Message()
        copy["Content-Transfer-Encoding"] = encoding
        copy.set_payload(joined)
        return parse_fields(part_text(copy))
    return parse_fields(part_text(part))


def parse_fields(text: str) -> list[dict[str, str]]:
    """RFC 822-style field blocks separated by blank lines, with folded continuation lines."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines()[:5000]:
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
            continue
        if line[0] in " \t" and last is not None:
            current[last] = (current[last] + " " + line.strip())[:MAX_HEADER_CHARS]
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if colon and _FIELD_NAME.fullmatch(name):
            last = name.lower()
            if last in current:
                last = None  # a repeated field: the first one wins, its continuation lines are dropped
            else:
                current[last] = _CONTROL.sub("", value.strip())[:MAX_HEADER_CHARS]
    if current:
        blocks.append(current)
    return blocks


def first_address(text: str) -> str | None:
    """The first email address in a header or field value (`rfc822; <a@b>`, `Name <a@b>`…)."""
    match = EMAIL.search(text)
    return match.group(0) if match else None
