"""Session cookies, CSRF tokens and login throttling, without a server."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from mailtrack.config import Settings
from mailtrack.dashboard.sessions import SESSION_SECONDS, LoginThrottle, SessionCodec

SECRET = "unit-test-secret-0123456789-abcdefghijklmnop"


def _codec(secret: str = SECRET, old: tuple[str, ...] = ()) -> SessionCodec:
    return SessionCodec(Settings(secret_key=SecretStr(secret), old_secret_keys=[SecretStr(s) for s in old]))


def test_a_cookie_round_trips_until_it_expires() -> None:
    codec = _codec()
    cookie = codec.issue(manager_id=7, tenant_id=3, version=2, now=1_000_000)
    data = codec.read(cookie, now=1_000_001)
    assert data is not None
    assert (data.manager_id, data.tenant_id, data.version) == (7, 3, 2)
    assert data.expires == 1_000_000 + SESSION_SECONDS
    assert codec.read(cookie, now=1_000_000 + SESSION_SECONDS) is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c.replace("7.3.2", "8.3.2", 1),  # another manager
        lambda c: c.replace("7.3.2", "7.4.2", 1),  # another salon
        lambda c: c.replace("7.3.2", "7.3.3", 1),  # a forged session version
        lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),  # a broken signature
        lambda c: c.rsplit(".", 1)[0],  # no signature
        lambda c: "",
        lambda c: "x" * 500,
        lambda c: "a.b.c.d.e." + c.rsplit(".", 1)[1],
    ],
)
def test_a_tampered_cookie_is_refused(tamper: object) -> None:
    codec = _codec()
    cookie = codec.issue(manager_id=7, tenant_id=3, version=2, now=1_000_000)
    assert callable(tamper)
    assert codec.read(tamper(cookie), now=1_000_001) is None


def test_another_secret_cannot_read_a_cookie_but_a_rotated_one_still_can() -> None:
    cookie = _codec("first-secret-0123456789-0123456789-abc").issue(manager_id=1, tenant_id=1, version=0)
    assert _codec().read(cookie) is None
    assert _codec(old=("first-secret-0123456789-0123456789-abc",)).read(cookie) is not None


def test_csrf_tokens_are_bound_to_their_nonce_and_purpose() -> None:
    codec = _codec()
    token = codec.csrf_token("session", "nonce-1")
    assert codec.csrf_ok("session", "nonce-1", token)
    assert not codec.csrf_ok("session", "nonce-2", token)
    assert not codec.csrf_ok("login", "nonce-1", token)
    assert not codec.csrf_ok("session", "nonce-1", "")
    assert not codec.csrf_ok("session", None, token)
    assert _codec("another-secret-0123456789-0123456789-x").csrf_token("session", "nonce-1") != token


def test_five_failures_block_an_email_from_an_address_for_the_window() -> None:
    throttle = LoginThrottle(limit=5, ip_limit=50, window=900)
    for second in range(5):
        assert throttle.retry_after("a@x", "1.2.3.4", now=100 + second) is None
        throttle.failed("a@x", "1.2.3.4", now=100 + second)
    wait = throttle.retry_after("a@x", "1.2.3.4", now=110)
    assert wait is not None
    assert 790 <= wait <= 900
    assert throttle.retry_after("b@x", "1.2.3.4", now=110) is None  # another email
    assert throttle.retry_after("a@x", "5.6.7.8", now=110) is None  # another address
    assert throttle.retry_after("a@x", "1.2.3.4", now=100 + 900) is None  # the first failure expired


def test_a_success_clears_the_count_and_spraying_one_address_is_blocked() -> None:
    throttle = LoginThrottle(limit=5, ip_limit=8, window=900)
    for _ in range(4):
        throttle.failed("a@x", "1.2.3.4", now=100)
    throttle.succeeded("a@x", "1.2.3.4")
    throttle.failed("a@x", "1.2.3.4", now=101)
    assert throttle.retry_after("a@x", "1.2.3.4", now=102) is None
    for index in range(8):
        throttle.failed(f"user{index}@x", "9.9.9.9", now=100)
    assert throttle.retry_after("new@x", "9.9.9.9", now=101) is not None
