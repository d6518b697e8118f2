"""Query parameters of the analytics API: their documented schemas, their checks and the page cursors.

Each parameter's schema in the OpenAPI document says exactly which values are accepted; what a schema
cannot say (`from` after `to`, `min_score` above `max_score`) is refused with a 422 of the same shape.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import struct
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import HTTPException, Query
from fastapi.exceptions import RequestValidationError
from pydantic import WithJsonSchema

from mailtrack.analytics.metrics import EARLIEST_DAY, LATEST_DAY

log = logging.getLogger(__name__)
# A cursor is two signed 64-bit integers, base64url without padding: 22 characters, the last one
# carrying 4 bits of data and 2 zero bits. "" is the same as no cursor.
CURSOR_PATTERN = r"^([A-Za-z0-9_-]{21}[AQgw])?$"
_CURSOR = struct.Struct(">qq")
# YYYY-MM-DD within EARLIEST_DAY … LATEST_DAY (1970–2999); `format: date` also rules out 2026-02-30.
DAY_PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class InvalidParameterError(RequestValidationError, HTTPException):
    """A parameter this request cannot use (e.g. `from` after `to`): 422, shaped as every other 422.

    (The first base's handler answers it.) It is also an HTTPException(422) whose `detail` is the
    reason, for the dashboard, which calls the route functions directly.
    """

    def __init__(self, name: str, message: str) -> None:
        RequestValidationError.__init__(
            self, [{"type": "value_error", "loc": ("query", name), "msg": message}]
        )
        HTTPException.__init__(self, 422, message)  # (the constant's name differs across Starlette versions)


def unprocessable(name: str, message: str) -> InvalidParameterError:
    """The 422 for parameter `name`, logged."""
    log.info("analytics API: refused a request: %s", message)
    return InvalidParameterError(name, message)


def text(schema: dict[str, Any]) -> WithJsonSchema:
    """The documented schema of an optional text parameter: a string (absent is None, never "null")."""
    return WithJsonSchema({"type": "string", **schema})


def one_of(values: Sequence[str]) -> WithJsonSchema:
    """The documented schema of a filter: one of `values`, or empty for any."""
    return text({"enum": ["", *values]})


DayText = Annotated[str | None, text({"anyOf": [{"const": ""}, {"format": "date", "pattern": DAY_PATTERN}]})]
CursorText = Annotated[
    str | None,
    text({"pattern": CURSOR_PATTERN}),
    Query(description="`next` of the previous page (opaque); empty: the first page."),
]


def choice(name: str, value: str | None, allowed: Sequence[str]) -> str | None:
    """The filter's value, None for no filter; 422 for a value not allowed."""
    # An empty value means "no filter": HTML forms send `channel=` for "any".
    if not value:
        return None
    if value not in allowed:
        raise unprocessable(name, f"`{name}` must be one of {', '.join(allowed)}; got {value!r}")
    return value


def day(name: str, value: str | None) -> str | None:
    """The day as given (None for none); 422 unless it is YYYY-MM-DD within the supported years."""
    # Checked here rather than by the framework, for a message that says what a day looks like.
    if value and not re.fullmatch(DAY_PATTERN, value):
        raise unprocessable(
            name, f"`{name}` must be a date as YYYY-MM-DD from {EARLIEST_DAY} to {LATEST_DAY}, got {value!r}"
        )
    return value or None


def encode_cursor(first: int, second: int) -> str:
    """The cursor for a page that follows (first, second)."""
    return base64.urlsafe_b64encode(_CURSOR.pack(first, second)).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    """The two integers of a cursor; 422 for text that is not one."""
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise unprocessable(
            "cursor", "`cursor` is not a cursor this API returned; pass `next` from the previous page"
        )
    first, second = _CURSOR.unpack(base64.urlsafe_b64decode(cursor + "=="))
    return first, second


def micros(moment: dt.datetime) -> int:
    """Microseconds since 1970 (UTC)."""
    return (moment - _EPOCH) // dt.timedelta(microseconds=1)


def from_micros(value: int) -> dt.datetime:
    """The moment `micros` gave; a value beyond the datetime range is its first or last moment."""
    try:
        return _EPOCH + dt.timedelta(microseconds=value)
    except OverflowError:  # any 64-bit value is a cursor: "before everything" or "after everything"
        return dt.datetime.min.replace(tzinfo=dt.UTC) if value < 0 else dt.datetime.max.replace(tzinfo=dt.UTC)
