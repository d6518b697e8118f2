"""Tracking tokens: round trips, forgery and tampering, rotation, and the VERP form."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailtrack.messages.tokens import MAX_TOKEN_CHARS, TokenCodec, TokenKind, TrackingToken

SECRET = "test-secret-0123456789abcdef"
CODEC = TokenCodec([SECRET])
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"

ids = st.integers(min_value=0, max_value=2**63 - 1)
positions = st.integers(min_value=0, max_value=65535)


@st.composite
def tokens(draw: st.DrawFn) -> TrackingToken:
    kind = draw(st.sampled_from(TokenKind))
    position = draw(positions) if kind is TokenKind.CLICK else 0
    return TrackingToken(kind, draw(ids), draw(ids), position)


def sign(body: bytes, secret: str = SECRET) -> bytes:
    """Build raw token bytes with a valid MAC, as someone holding the key could."""
    key = hmac.new(secret.encode(), b"mailtrack-token-v1", hashlib.sha256).digest()
    return body + hmac.new(key, body, hashlib.sha256).digest()[:12]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@given(tokens())
@example(TrackingToken(TokenKind.CLICK, 2**63 - 1, 2**63 - 1, 65535))
@example(TrackingToken(TokenKind.OPEN, 0, 0))
def test_round_trip_in_both_forms(token: TrackingToken) -> None:
    text = CODEC.encode(token)
    verp = CODEC.encode_verp(token)
    assert CODEC.decode(text) == token
    assert CODEC.decode_verp(verp) == token
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,47}", text)
    assert re.fullmatch(r"[a-z2-7]{26,56}", verp)


def test_lengths_are_compact() -> None:
    typical = TrackingToken(TokenKind.CLICK, 1_000, 1_000_000, 5)
    largest = TrackingToken(TokenKind.CLICK, 2**63 - 1, 2**63 - 1, 65535)
    assert len(CODEC.encode(typical)) == 27
    assert len(CODEC.encode_verp(typical)) == 32
    assert len(CODEC.encode(largest)) == 47
    assert len(CODEC.encode_verp(largest)) == 56  # fits a 64-octet local part with a short prefix


def test_encoding_is_deterministic_and_depends_on_every_field() -> None:
    base = TrackingToken(TokenKind.CLICK, 7, 42, 3)
    variants = [
        base,
        TrackingToken(TokenKind.CLICK, 8, 42, 3),
        TrackingToken(TokenKind.CLICK, 7, 43, 3),
        TrackingToken(TokenKind.CLICK, 7, 42, 4),
        TrackingToken(TokenKind.OPEN, 7, 42),
        TrackingToken(TokenKind.UNSUBSCRIBE, 7, 42),
        TrackingToken(TokenKind.BOUNCE, 7, 42),
    ]
    assert CODEC.encode(base) == CODEC.encode(base)
    assert len({CODEC.encode(token) for token in variants}) == len(variants)


@given(tokens(), st.data())
def test_any_single_character_change_is_rejected(token: TrackingToken, data: st.DataObject) -> None:
    text = CODEC.encode(token)
    index = data.draw(st.integers(0, len(text) - 1))
    char = data.draw(st.sampled_from(B64_ALPHABET).filter(lambda c: c != text[index]))
    assert CODEC.decode(text[:index] + char + text[index + 1 :]) is None


@given(tokens(), st.data())
def test_any_single_character_change_of_the_verp_form_is_rejected(
    token: TrackingToken, data: st.DataObject
) -> None:
    text = CODEC.encode_verp(token)
    index = data.draw(st.integers(0, len(text) - 1))
    char = data.draw(st.sampled_from(B32_ALPHABET).filter(lambda c: c != text[index]))
    assert CODEC.decode_verp(text[:index] + char + text[index + 1 :]) is None


@given(tokens(), st.data())
def test_truncated_or_extended_tokens_are_rejected(token: TrackingToken, data: st.DataObject) -> None:
    text = CODEC.encode(token)
    cut = data.draw(st.integers(0, len(text) - 1))
    suffix = data.draw(st.text(alphabet=B64_ALPHABET + "=", min_size=1, max_size=8))
    assert CODEC.decode(text[:cut]) is None
    assert CODEC.decode(text + suffix) is None
    verp = CODEC.encode_verp(token)
    assert CODEC.decode_verp(verp[: cut % len(verp)]) is None
    assert CODEC.decode_verp(verp + "a") is None


@given(tokens())
def test_padding_whitespace_and_standard_base64_are_rejected(token: TrackingToken) -> None:
    text = CODEC.encode(token)
    for variant in (text + "=", text + "==", text + "=" * (-len(text) % 4 or 4), " " + text, text + "\n"):
        assert CODEC.decode(variant) is None
    standard = text.replace("-", "+").replace("_", "/")
    if standard != text:
        assert CODEC.decode(standard) is None


def test_unused_bits_in_the_last_character_are_rejected() -> None:
    # 20 bytes leave 2 spare bits in the last base64 character: another spelling of the same bytes.
    text = CODEC.encode(TrackingToken(TokenKind.CLICK, 1_000, 1_000_000, 5))
    spare = B64_ALPHABET[B64_ALPHABET.index(text[-1]) | 1]
    assert spare != text[-1]
    assert base64.urlsafe_b64decode(text[:-1] + spare + "=") == base64.urlsafe_b64decode(text + "=")
    assert CODEC.decode(text[:-1] + spare) is None


def test_verp_form_ignores_case() -> None:
    token = TrackingToken(TokenKind.BOUNCE, 12, 345)
    verp = CODEC.encode_verp(token)
    assert verp == verp.lower()
    assert CODEC.decode_verp(verp.upper()) == token
    assert CODEC.decode_verp(verp[:5].upper() + verp[5:]) == token
    assert CODEC.decode(verp) is None  # the two forms are not interchangeable text


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
@example("")
@example("AAAA")
@example("=" * 30)
@example("A" * (MAX_TOKEN_CHARS + 1))
def test_decoding_arbitrary_text_never_raises(text: str) -> None:
    assert CODEC.decode(text) is None
    assert CODEC.decode_verp(text) is None


@pytest.mark.parametrize("junk", [None, 42, b"AAAAAAAAAAAAAAAAAAAAAAAAAA", ["x"], 3.5])
def test_decoding_non_strings_answers_none(junk: object) -> None:
    assert CODEC.decode(junk) is None
    assert CODEC.decode_verp(junk) is None


def test_huge_and_non_ascii_input_is_rejected() -> None:
    text = CODEC.encode(TrackingToken(TokenKind.OPEN, 1, 2))
    assert CODEC.decode(text + "A" * (MAX_TOKEN_CHARS - len(text) + 1)) is None
    assert CODEC.decode("A" * 10_000_000) is None
    assert CODEC.decode(text[:-1] + "é") is None
    assert CODEC.decode(text[:-1] + "\uff21") is None  # fullwidth A must not be normalized into an A


def test_another_secret_cannot_verify_or_forge() -> None:
    token = TrackingToken(TokenKind.CLICK, 1, 2, 3)
    other = TokenCodec(["another-secret"])
    assert other.decode(CODEC.encode(token)) is None
    assert CODEC.decode(other.encode(token)) is None
    assert other.encode(token) != CODEC.encode(token)


def test_rotation_first_key_signs_all_keys_verify() -> None:
    token = TrackingToken(TokenKind.UNSUBSCRIBE, 5, 6)
    old, new = TokenCodec(["old-secret"]), TokenCodec(["new-secret"])
    rotated = TokenCodec(["new-secret", "old-secret"])
    assert rotated.decode(old.encode(token)) == token
    assert rotated.decode_verp(old.encode_verp(token)) == token
    assert rotated.encode(token) == new.encode(token)
    assert old.decode(rotated.encode(token)) is None


def test_str_and_bytes_secrets_are_the_same_key() -> None:
    token = TrackingToken(TokenKind.OPEN, 1, 2)
    assert TokenCodec([SECRET.encode()]).encode(token) == CODEC.encode(token)


@pytest.mark.parametrize("secrets", [[], (), [""], ["ok", b""], SECRET, SECRET.encode()])
def test_missing_or_empty_secrets_are_refused(secrets: object) -> None:
    with pytest.raises(ValueError, match="secret"):
        TokenCodec(secrets)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "token",
    [
        TrackingToken(TokenKind.CLICK, -1, 1, 0),
        TrackingToken(TokenKind.CLICK, 1, 2**63, 0),
        TrackingToken(TokenKind.CLICK, 1, 1, 65536),
        TrackingToken(TokenKind.CLICK, 1, 1, -1),
        TrackingToken(TokenKind.OPEN, 1, 1, 1),
        TrackingToken(TokenKind.OPEN, True, 1),
    ],
)
def test_out_of_range_tokens_are_refused(token: TrackingToken) -> None:
    with pytest.raises(ValueError, match=r"must|only"):
        CODEC.encode(token)


def test_expected_kind_filters_tokens() -> None:
    click = CODEC.encode(TrackingToken(TokenKind.CLICK, 1, 2, 0))
    assert CODEC.decode(click, kind=TokenKind.CLICK) is not None
    assert CODEC.decode(click, kind=TokenKind.OPEN) is None
    bounce = CODEC.encode_verp(TrackingToken(TokenKind.BOUNCE, 1, 2))
    assert CODEC.decode_verp(bounce, kind=TokenKind.BOUNCE) is not None
    assert CODEC.decode_verp(bounce, kind=TokenKind.UNSUBSCRIBE) is None


def test_validly_signed_but_malformed_bodies_are_rejected() -> None:
    # Even a key holder cannot make the decoder accept anything encode would not produce.
    assert CODEC.decode(b64(sign(bytes([1, 2, 1, 2, 3])))) == TrackingToken(TokenKind.CLICK, 1, 2, 3)
    malformed = {
        "unknown kind": bytes([1, 9, 1, 2]),
        "kind zero": bytes([1, 0, 1, 2]),
        "wrong version": bytes([2, 1, 1, 2]),
        "non-minimal varint": bytes([1, 1, 0x81, 0x00, 2]),
        "trailing byte": bytes([1, 1, 1, 2, 0]),
        "position on an open token": bytes([1, 1, 1, 2, 3]),
        "missing position": bytes([1, 2, 1, 2]),
        "truncated varint": bytes([1, 1, 1, 0x80]),
        "id over 2**63-1": bytes([1, 1, 1, *([0xFF] * 9), 0x01]),
        "ten-byte varint": bytes([1, 1, 1, *([0x80] * 9), 0x01]),
        "position over 65535": bytes([1, 2, 1, 2, 0x80, 0x80, 0x04]),
    }
    for name, body in malformed.items():
        assert CODEC.decode(b64(sign(body))) is None, name
        assert CODEC.decode_verp(base64.b32encode(sign(body)).decode().rstrip("=").lower()) is None, name


@given(secret=st.text(min_size=1, max_size=100), body=st.binary(max_size=64))
def test_the_precomputed_mac_is_hmac_sha256(secret: str, body: bytes) -> None:
    codec = TokenCodec([secret])
    key = hmac.new(secret.encode(), b"mailtrack-token-v1", hashlib.sha256).digest()
    assert codec._mac(0, body) == hmac.new(key, body, hashlib.sha256).digest()[:12]
