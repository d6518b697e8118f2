"""The hot path's journal line, read straight from the ASGI request, records what `event_for` would."""

from __future__ import annotations

import datetime as dt
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from mailtrack.config import Settings
from mailtrack.messages.tokens import TokenCodec, TokenKind, TrackingToken
from mailtrack.tracking.hits import Hit, LinkCache, Tracking, event_for, journal_line
from mailtrack.tracking.journal import DO_NOT_TRACK
from mailtrack.tracking.journal_records import decode

SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuv"
TRACKING = Tracking(
    settings=Settings(database_url="sqlite://", secret_key=SECRET, trusted_proxies=["10.0.0.0/8"]),
    engine=mock.Mock(),
    journal=mock.Mock(),
    codec=TokenCodec([SECRET]),
    links=LinkCache(mock.Mock()),
)
NAMES = st.sampled_from(["user-agent", "referer", "dnt", "sec-gpc", "x-forwarded-for", "accept", "host"])
# Header values as an HTTP server hands them over: Latin-1 bytes without CR or LF.
VALUES = st.binary(max_size=1200).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b"")) | (
    st.sampled_from([b"1", b" 1 ", b"0", b"203.0.113.9, 10.1.2.3", b"garbage, 10.0.0.1"])
)


@given(
    headers=st.lists(st.tuples(NAMES, VALUES), max_size=8),
    method=st.sampled_from(["GET", "HEAD"]),
    peer=st.sampled_from([None, "198.51.100.4", "10.0.0.7"]),
    kind=st.sampled_from(["opened", "clicked"]),
)
def test_the_journal_line_records_what_event_for_does(
    headers: list[tuple[str, bytes]], method: str, peer: str | None, kind: str
) -> None:
    token = TrackingToken(
        TokenKind.CLICK if kind == "clicked" else TokenKind.OPEN, 3, 7, 2 if kind == "clicked" else 0
    )
    scope = {
        "type": "http",
        "method": method,
        "client": (peer, 50000) if peer else None,
        "headers": [(name.encode(), value) for name, value in headers],
    }
    before = int(dt.datetime.now(dt.UTC).timestamp())
    recorded = decode(journal_line(TRACKING, scope, token, kind))
    # The framework's view of the same request: the last of repeated headers counts.
    hit = Hit(method, {name: value.decode("latin-1") for name, value in headers}, peer)
    expected = event_for(TRACKING, hit, token, kind)
    assert before <= recorded.occurred_at.timestamp() <= before + 2
    asks_privacy = any(hit.headers.get(name, "").strip() == "1" for name in ("dnt", "sec-gpc"))
    if asks_privacy:
        assert (recorded.type, recorded.tenant_id, recorded.message_id) == (DO_NOT_TRACK, 3, 7)
        assert recorded.user_agent is recorded.ip is recorded.referer is None, "nothing about the request"
    else:
        recorded.occurred_at = expected.occurred_at
        assert recorded == expected
