"""User-agent classifier: the real-agent corpus, edge cases, properties and the `ua` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mailtrack.cli.ua import ua_command
from mailtrack.tracking.useragent import (
    CLIENTS,
    DEVICES,
    MAX_USER_AGENT_LENGTH,
    REASONS,
    UserAgentInfo,
    classify_user_agent,
    is_apple_proxy_ip,
)

CORPUS_PATH = Path(__file__).resolve().parents[2] / "data" / "user_agents.jsonl"
CORPUS: list[dict[str, Any]] = [
    json.loads(line) for line in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if line.strip()
]

APPLE_MAIL_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def _assert_allowed(info: UserAgentInfo) -> None:
    assert info.device in DEVICES
    assert info.client in CLIENTS
    assert isinstance(info.os, str)
    assert isinstance(info.machine, bool)
    assert info.reason in REASONS
    # A reason is exactly what makes a fetch a machine's.
    assert (info.reason != "") == info.machine


def test_corpus_is_large_and_well_formed() -> None:
    assert len(CORPUS) >= 60
    for row in CORPUS:
        assert set(row) == {"ua", "device", "client", "machine", "note"}, row
        assert row["device"] in DEVICES, row
        assert row["client"] in CLIENTS, row
        assert isinstance(row["machine"], bool), row
        assert row["note"], row
    assert len({row["ua"] for row in CORPUS}) == len(CORPUS), "duplicate agents in the corpus"


@pytest.mark.parametrize(
    "row", [pytest.param(row, id=f"{i:02d}-{row['ua'][:40]}") for i, row in enumerate(CORPUS)]
)
def test_corpus_agent(row: dict[str, Any]) -> None:
    info = classify_user_agent(row["ua"])
    assert (info.device, info.client, info.machine) == (row["device"], row["client"], row["machine"]), row[
        "note"
    ]
    _assert_allowed(info)


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (APPLE_MAIL_IPHONE, UserAgentInfo("mobile", "apple_mail", "iOS", False, "")),
        (
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Mobile/15E148",
            UserAgentInfo("tablet", "apple_mail", "iPadOS", False, ""),
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
            UserAgentInfo("desktop", "apple_mail", "macOS", False, ""),
        ),
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            UserAgentInfo("unknown", "gmail", "", False, ""),
        ),
        (
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
            UserAgentInfo("unknown", "yahoo", "", False, ""),
        ),
        (
            "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.14931; Pro)",
            UserAgentInfo("desktop", "outlook", "Windows", False, ""),
        ),
        (CHROME_WINDOWS, UserAgentInfo("desktop", "other", "Windows", False, "")),
        ("Mozilla/5.0", UserAgentInfo("unknown", "apple_mail", "", True, "apple_privacy_proxy")),
        ("  Mozilla/5.0 \t", UserAgentInfo("unknown", "apple_mail", "", True, "apple_privacy_proxy")),
        ("python-requests/2.31.0", UserAgentInfo("unknown", "unknown", "", True, "http_library")),
        ("Barracuda Sentinel (EE)", UserAgentInfo("unknown", "unknown", "", True, "link_scanner")),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "HeadlessChrome/119.0.6045.123 Safari/537.36",
            UserAgentInfo("unknown", "unknown", "", True, "headless_browser"),
        ),
        (
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            UserAgentInfo("unknown", "unknown", "", True, "bot"),
        ),
        ("Amazon CloudFront", UserAgentInfo("unknown", "unknown", "", True, "unrecognized_agent")),
    ],
)
def test_full_classification(user_agent: str, expected: UserAgentInfo) -> None:
    assert classify_user_agent(user_agent) == expected


@pytest.mark.parametrize("user_agent", [None, "", "   ", "\t\r\n", "-"])
def test_missing_agent_is_a_machine_fetch(user_agent: str | None) -> None:
    assert classify_user_agent(user_agent) == UserAgentInfo(
        "unknown", "unknown", "", True, "empty_user_agent"
    )


def test_as_dict_has_exactly_the_contract_keys() -> None:
    info = classify_user_agent(APPLE_MAIL_IPHONE)
    assert info.as_dict() == {
        "device": "mobile",
        "client": "apple_mail",
        "os": "iOS",
        "machine": False,
        "reason": "",
    }
    assert json.loads(json.dumps(info.as_dict())) == info.as_dict()


def test_results_are_cached_by_string() -> None:
    assert classify_user_agent(CHROME_WINDOWS) is classify_user_agent(CHROME_WINDOWS)


def test_huge_agent_is_truncated_before_classification() -> None:
    padded = CHROME_WINDOWS + " x" * 500_000
    assert classify_user_agent(padded) == classify_user_agent(padded[:MAX_USER_AGENT_LENGTH])


def test_control_characters_are_neutralized() -> None:
    assert classify_user_agent("Mozilla/5.0\x00") == classify_user_agent("Mozilla/5.0")
    _assert_allowed(classify_user_agent("curl/8.4.0\r\nX-Injected: 1"))


def test_non_string_input_does_not_raise() -> None:
    # Typed callers pass str; raw header bytes or a stray object must still never raise.
    assert classify_user_agent(cast(Any, b"Mozilla/5.0")).reason == "apple_privacy_proxy"
    _assert_allowed(classify_user_agent(cast(Any, b"\xff\xfe\x00garbage")))
    _assert_allowed(classify_user_agent(cast(Any, 42)))


@settings(deadline=None, max_examples=150)
@given(st.text(max_size=300))
def test_any_text_classifies_to_allowed_values(user_agent: str) -> None:
    _assert_allowed(classify_user_agent(user_agent))


@settings(deadline=None, max_examples=60)
@given(
    st.lists(
        st.sampled_from(
            [
                "Mozilla/5.0",
                " (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
                " (Windows NT 10.0; Win64; x64)",
                " (Linux; Android 13; SM-S918B; wv)",
                " AppleWebKit/605.1.15 (KHTML, like Gecko)",
                " Mobile/15E148",
                " Safari/604.1",
                " Chrome/120.0.0.0",
                " Microsoft Outlook 16.0",
                " GoogleImageProxy",
                " bot",
                "\x00",
                "\U0001f600",
            ]
        ),
        max_size=8,
    ).map("".join)
)
def test_agent_like_fragments_classify_to_allowed_values(user_agent: str) -> None:
    _assert_allowed(classify_user_agent(user_agent))


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("17.58.63.1", True),
        ("17.0.0.0", True),
        (" 17.255.255.255 ", True),
        ("::ffff:17.1.2.3", True),
        ("18.0.0.1", False),
        ("172.17.0.1", False),
        ("2620:149::1", False),
        ("", False),
        (None, False),
        ("17.1.2", False),
        ("17.1.2.3:443", False),
        ("not an ip", False),
        ("\x00\xff", False),
        ("1" * 10_000, False),
    ],
)
def test_is_apple_proxy_ip(ip: str | None, expected: bool) -> None:
    assert is_apple_proxy_ip(ip) is expected


@given(st.text(max_size=100))
def test_is_apple_proxy_ip_never_raises(ip: str) -> None:
    assert isinstance(is_apple_proxy_ip(ip), bool)


def _ua_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(ua_command)
    return app


def test_ua_command_json_prints_one_object_per_line() -> None:
    stdin = "\n".join(["Mozilla/5.0", APPLE_MAIL_IPHONE, "", "curl/8.4.0"]) + "\n"
    result = CliRunner().invoke(_ua_app(), ["--json"], input=stdin)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["reason"] for line in lines] == [
        "apple_privacy_proxy",
        "",
        "empty_user_agent",
        "http_library",
    ]
    assert all(set(line) == {"device", "client", "os", "machine", "reason"} for line in lines)
    assert lines[1] == {
        "device": "mobile",
        "client": "apple_mail",
        "os": "iOS",
        "machine": False,
        "reason": "",
    }


def test_ua_command_plain_output_is_tab_separated() -> None:
    result = CliRunner().invoke(_ua_app(), [], input=f"{CHROME_WINDOWS}\r\ncurl/8.4.0\n")
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()
    assert first.split("\t") == ["desktop", "other", "Windows", "human", "-", CHROME_WINDOWS]
    assert second.split("\t")[:5] == ["unknown", "unknown", "-", "machine", "http_library"]


def test_ua_command_survives_invalid_utf8() -> None:
    result = CliRunner().invoke(_ua_app(), ["--json"], input=b"\xff\xfe\x00bad\nMozilla/5.0\n")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
