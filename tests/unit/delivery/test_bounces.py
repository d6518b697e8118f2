"""The bounce parser: a corpus of real MTA formats, broken and hostile mail, fuzzing for crashes and hangs."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailtrack.delivery import bounces
from mailtrack.delivery.bounces import KINDS, classify

T = TypeVar("T")

CORPUS = Path(__file__).resolve().parents[2] / "data" / "bounces"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
NAMES = sorted(EXPECTED)
FIELDS = ("kind", "bounce", "status", "recipient", "parser")


def _raw(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def _observed(raw: bytes) -> dict[str, Any]:
    result = classify(raw)
    return {name: getattr(result, name) for name in FIELDS}


def finishes(work: Callable[[], T], *, within: float = 60.0) -> T:
    """The result of `work`, failing the test if it has not returned by `within` seconds.

    A watchdog for hangs (a parser loop that never ends would block the suite), not a speed check:
    bounded work here takes milliseconds.
    """
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), f"still running after {within} s: the parser hangs"
    assert result, "the parser raised (see the thread's traceback above)"
    return result[0]


def _lf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n")


def test_the_corpus_covers_many_mtas_and_every_file_has_an_expectation() -> None:
    files = sorted(path.name for path in CORPUS.glob("*.eml"))
    assert files == NAMES
    assert len(files) >= 25
    kinds = {expected["kind"] for expected in EXPECTED.values()}
    assert kinds == {"bounce", "delay", "delivered", "complaint", "auto_reply", "unknown"}


@pytest.mark.parametrize("name", NAMES)
def test_corpus_message_is_classified_exactly(name: str) -> None:
    assert _observed(_raw(name)) == EXPECTED[name]


def test_parser_accuracy_over_the_corpus() -> None:
    """Prints one line per file and the accuracy (run with -s to see it); every file must be right."""
    right = 0
    lines = []
    for name in NAMES:
        observed = _observed(_raw(name))
        good = all(observed[key] == value for key, value in EXPECTED[name].items())
        right += good
        lines.append(f"  {'ok  ' if good else 'FAIL'} {name:32} {observed}")
    accuracy = right / len(NAMES)
    print(f"\nbounce parser accuracy over {len(NAMES)} corpus messages: {accuracy:.3f}")
    print("\n".join(lines))
    assert accuracy == 1.0


@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b"\r"], ids=["crlf", "lf", "cr"])
@pytest.mark.parametrize("name", NAMES)
def test_line_endings_do_not_change_the_classification(name: str, ending: bytes) -> None:
    raw = _lf(_raw(name)).replace(b"\n", ending)
    assert _observed(raw) == EXPECTED[name]


def test_classification_json_has_the_documented_shape() -> None:
    data = classify(_raw("postfix_user_unknown.eml")).as_dict()
    assert data == {
        "kind": "bounce",
        "bounce": "hard",
        "status": "5.1.1",
        "diagnostic": "550 5.1.1 <kovacs.anna@example.hu>: Recipient address rejected: User unknown in "
        "virtual mailbox table",
        "recipient": "kovacs.anna@example.hu",
        "original_message_id": "<Kq7vR2xJ0pTz4mWbN8sLdA@track.mailtrack.example>",
        "reporting_mta": "mail.szepsegszalon.hu",
        "parser": "dsn",
        "attributed": None,
    }
    assert json.loads(json.dumps(data)) == data


def test_attribution_evidence_is_collected_from_headers_and_quoted_content() -> None:
    evidence = classify(_raw("exim_user_unknown.eml")).evidence
    assert evidence.verp_tokens[0] == "aecagqkfd3u3vqt6jcc7wpdkmubzabcd"  # Envelope-to / To first
    assert evidence.message_ids == ["<Vw7gM4hAb5VoX9cDu1yTja@track.mailtrack.example>"]
    # The quoted copy was quoted-printable: its soft line break splits the click token.
    assert ("c", "AQIBqgRXk2cHd9Lw1Te5YfUb") in evidence.tracking_tokens
    assert ("u", "AQMBqgRXk2cHd9Lw1Te5YfUb") in evidence.tracking_tokens
    arf = classify(_raw("arf_yahoo.eml")).evidence
    assert "aecagqkfd3u3vqt6jcc7wpdkmushijkl" in arf.verp_tokens  # Original-Mail-From
    assert ("u", "AQMBo4sBJo0Oz5Th2yAf3sCu") in arf.tracking_tokens  # List-Unsubscribe of the original
    gmail = classify(_raw("gmail_user_unknown.eml")).evidence
    assert gmail.message_ids == ["<Gh6pV3qJk4ExG8lMd0hCsj@track.mailtrack.example>"]


def test_an_auto_reply_that_mentions_failure_words_is_still_an_auto_reply() -> None:
    # The Gmail vacation reply in the corpus says "does not exist": headers decide before heuristics.
    assert classify(_raw("oof_gmail_en.eml")).kind == "auto_reply"


def test_status_codes_are_not_confused_with_addresses_and_dates() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example\nSubject: Undelivered Mail Returned to Sender\n\n"
        b"Resolver 4.2.2.1 timed out on 5.12.2024; the remote said:\n"
        b"<x@example.org>: 550 5.7.1 Message rejected as spam\n"
    )
    result = classify(raw)
    assert (result.kind, result.bounce, result.status, result.recipient) == (
        "bounce",
        "hard",
        "5.7.1",
        "x@example.org",
    )


def test_a_base64_encoded_delivery_status_part_is_decoded() -> None:
    fields = base64.encodebytes(
        b"Reporting-MTA: dns; gw.example\n\nFinal-Recipient: rfc822; b@example.org\n"
        b"Action: failed\nStatus: 5.1.1\n"
    )
    raw = (
        b"From: postmaster@gw.example\nSubject: Delivery failure\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        b"--b\nContent-Type: text/plain\n\nFailed.\n"
        b"--b\nContent-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
        + fields
        + b"--b--\n"
    )
    assert _observed(raw) == {
        "kind": "bounce",
        "bounce": "hard",
        "status": "5.1.1",
        "recipient": "b@example.org",
        "parser": "dsn",
    }


def test_unknown_charsets_and_8bit_headers_decode_without_errors() -> None:
    raw = (
        b"From: =?x-no-such-charset?Q?M=FCller?= <MAILER-DAEMON@mx.example>\n"
        b"Subject: Unzustellbar: Ihr Termin f\xfcr Freitag \xff\xfe\n"
        b'Content-Type: text/plain; charset="rot13"\n\n'
        b"<m@example.de>: 550 5.1.1 Benutzer unbekannt \xe4\xf6\xfc (user unknown)\n"
    )
    result = classify(raw)
    assert (result.kind, result.status, result.recipient) == ("bounce", "5.1.1", "m@example.de")


def test_truncated_mime_never_raises_and_a_truncated_dsn_still_reads_its_fields() -> None:
    raw = _lf(_raw("sendmail_user_unknown.eml"))
    cut = raw.index(b"Remote-MTA:")  # mid delivery-status, no closing boundary at all
    assert _observed(raw[:cut])["status"] == "5.1.1"
    for size in range(0, len(raw), 97):
        assert classify(raw[:size]).kind in KINDS


def test_non_bounce_and_empty_input_are_unknown() -> None:
    for raw in (b"", b"\r\n\r\n", b"hello", b"From: a@b\nSubject: Lunch?\n\nSee you at noon.\n"):
        assert classify(raw).kind == "unknown"


def test_deeply_nested_rfc822_is_bounded() -> None:
    depth = 3000
    nested = b"Content-Type: message/rfc822\n\n" * depth + b"Subject: core\n\nbody\n"
    raw = b"From: MAILER-DAEMON@mx.example\nSubject: Undeliverable\n" + nested
    assert finishes(lambda: classify(raw).kind) in KINDS


def test_a_huge_attachment_is_not_scanned() -> None:
    dsn = _lf(_raw("postfix_user_unknown.eml"))
    boundary = b"--4WdK2m1Qz9z1x3.1722928461/mail.szepsegszalon.hu--"
    attachment = (
        b"--4WdK2m1Qz9z1x3.1722928461/mail.szepsegszalon.hu\n"
        b"Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
        + (b"JVBERi0xLjcKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFIvRmlsdGVyIC9GbGF0ZURlY29kZT4+\n" * 120_000)
    )
    raw = dsn.replace(boundary, attachment + boundary)
    assert len(raw) > 9 * 1024 * 1024
    assert finishes(lambda: _observed(raw)) == EXPECTED["postfix_user_unknown.eml"]


def test_thousands_of_tiny_parts_are_bounded() -> None:
    parts = b"".join(b"--b\nContent-Type: text/plain\n\nx 550 5.1.1\n" for _ in range(40_000))
    raw = b"From: MAILER-DAEMON@mx.example\nContent-Type: multipart/mixed; boundary=b\n\n" + parts
    assert finishes(lambda: classify(raw).kind) in KINDS


# Fuzzing: `_classify` is the parser without `classify`'s last-resort exception guard, so a crash in
# any stage fails here instead of being logged and hidden.
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=8192))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    assert bounces._classify(raw).kind in KINDS


_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.integers(0, 4096)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
)


def _mutate(raw: bytes, mutations: list[tuple[str, int, Any]]) -> bytes:
    data = bytearray(raw)
    for kind, where, value in mutations:
        at = where % (len(data) + 1)
        if kind == "flip" and at < len(data):
            data[at] = value
        elif kind == "cut":
            del data[at : at + value]
        elif kind == "insert":
            data[at:at] = value
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.sampled_from(NAMES), st.lists(_MUTATION, min_size=1, max_size=8))
def test_mutated_corpus_messages_never_crash_or_hang(
    name: str, mutations: list[tuple[str, int, Any]]
) -> None:
    result = bounces._classify(_mutate(_raw(name), mutations))
    assert result.kind in KINDS
    assert result.bounce in (None, "hard", "soft")
    assert result.status is None or len(result.status) <= 9
