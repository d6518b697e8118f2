"""Client addresses behind proxies, and truncation for anonymization."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailtrack.tracking.ipaddr import anonymize_ip, client_ip

PROXIES = ["10.0.0.0/8", "::1"]


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("81.2.3.4", "81.2.3.0"),
        ("2001:db8:1234:5678::1", "2001:db8:1234::"),
        ("::ffff:81.2.3.4", "81.2.3.0"),
        (" 81.2.3.4 ", "81.2.3.0"),
        ("not an address", None),
        ("", None),
    ],
)
def test_anonymize_truncates_to_the_network(ip: str, expected: str | None) -> None:
    assert anonymize_ip(ip) == expected


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("81.2.3.4", "1.1.1.1", "81.2.3.4"),  # an untrusted peer's header is ignored
        ("10.1.1.1", "81.2.3.4", "81.2.3.4"),
        ("10.1.1.1", "6.6.6.6, 81.2.3.4", "81.2.3.4"),  # what the client wrote first is not believed
        ("10.1.1.1", "81.2.3.4, 10.2.2.2", "81.2.3.4"),  # trusted hops are skipped
        ("10.1.1.1", "2001:db8::7", "2001:db8::7"),
        ("::1", "81.2.3.4", "81.2.3.4"),
        ("10.1.1.1", "garbage, 81.2.3.4", "81.2.3.4"),
        ("10.1.1.1", "81.2.3.4, garbage", "10.1.1.1"),  # a malformed last hop: trust nothing
        ("10.1.1.1", "10.3.3.3", "10.1.1.1"),
        ("10.1.1.1", None, "10.1.1.1"),
        (None, "81.2.3.4", None),
    ],
)
def test_forwarded_for_is_read_only_from_trusted_proxies(
    peer: str | None, forwarded: str | None, expected: str | None
) -> None:
    assert client_ip(peer, forwarded, PROXIES) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_ip("10.1.1.1", "81.2.3.4", []) == "10.1.1.1"


@given(st.one_of(st.text(max_size=60), st.just("10.9.9.9")), st.text(max_size=300))
def test_never_raises_and_answers_the_peer_or_a_real_address(peer: str, forwarded: str) -> None:
    result = client_ip(peer, forwarded, PROXIES)
    assert result == peer or ipaddress.ip_address(result or "")
    truncated = anonymize_ip(peer)
    assert truncated is None or ipaddress.ip_address(truncated)
