"""Tracking over real HTTP: instrument a message, open it, click it, unsubscribe, read the events back."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from mailtrack.analytics.tables import rollup_messages
from mailtrack.messages.tables import customers, links, messages
from mailtrack.messages.tokens import TokenKind, TrackingToken
from mailtrack.tracking.hits import PIXEL_GIF
from mailtrack.tracking.tables import events
from tests.factories import make_api_key, make_tenant
from tests.functional.conftest import LiveServer

IPHONE_MAIL = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) "
    "AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
)
OUTLOOK = "Mozilla/4.0 (compatible; ms-office; MSOffice 16) Microsoft Outlook 16.0.17328; Pro"
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
HTML = """<html><body><table><tr><td>
<!--[if mso]><v:roundrect href="https://salon.example/book?utm=nl">Book</v:roundrect><![endif]-->
<a href="https://salon.example/book?utm=nl">Book now</a>
<a href="mailto:hello@salon.example">Write</a>
<a href="{{mailtrack_unsubscribe_url}}">Unsubscribe</a>
</td></tr></table></body></html>"""


def register(server: LiveServer, key: str, **overrides: Any) -> dict[str, Any]:
    """Register a message through the API and return the JSON answer."""
    body: dict[str, Any] = {
        "customer": {"id": "c1", "name": "Anna Kovács", "email": "anna@example.com"},
        "channel": "marketing",
        "source": "campaign",
        "campaign": "August newsletter",
        "subject": "Hello",
        "html": HTML,
        "text": "Book: https://salon.example/book?utm=nl\nUnsubscribe: {{mailtrack_unsubscribe_url}}",
    }
    body.update(overrides)
    with server.client(headers={"Authorization": f"Bearer {key}"}) as client:
        response = client.post("/api/v1/messages", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def paths(html: str, prefix: str) -> list[str]:
    """The tracking paths of one kind found in the HTML."""
    return re.findall(rf"http://127\.0\.0\.1:\d+(/{prefix}/[A-Za-z0-9_.-]+)", html)


@pytest.fixture
def salon(live_server: LiveServer) -> tuple[int, str]:
    """A salon and its API key."""
    tenant = make_tenant(live_server.engine)
    return tenant.id, make_api_key(live_server.engine, tenant.id)


def test_marketing_mail_is_instrumented_and_hits_are_recorded(
    live_server: LiveServer, salon: tuple[int, str]
) -> None:
    _, key = salon
    message = register(live_server, key)
    assert message["tracked"] is True
    assert message["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["headers"]["Message-ID"].startswith("<")
    assert "<!--[if mso]>" in message["html"], "Outlook conditional comments survive"
    assert "mailto:hello@salon.example" in message["html"]
    pixel = paths(message["html"], "o")
    clicks = paths(message["html"], "c")
    assert len(pixel) == 1
    assert len(clicks) == 2
    assert clicks[0] == clicks[1], "the VML twin shares its link's position"
    assert "salon.example/book" not in message["html"]
    assert paths(message["text"], "c") == clicks[:1]

    with live_server.client() as client:
        for agent in (IPHONE_MAIL, OUTLOOK, GMAIL_PROXY, "Mozilla/5.0"):
            answer = client.get(pixel[0], headers={"User-Agent": agent})
            assert answer.status_code == 200
            assert answer.content == PIXEL_GIF
            assert answer.headers["content-type"] == "image/gif"
            assert "no-store" in answer.headers["cache-control"]
        click = client.get(clicks[0], headers={"User-Agent": IPHONE_MAIL})
        assert click.status_code == 302
        assert click.headers["location"] == "https://salon.example/book?utm=nl"

    live_server.settle()
    with live_server.engine.connect() as conn:
        rows = conn.execute(
            select(events.c.type, events.c.client, events.c.device, events.c.machine).order_by(events.c.id)
        ).all()
        totals = conn.execute(
            select(func.sum(rollup_messages.c.opened), func.sum(rollup_messages.c.machine_opens))
        ).one()
    assert [tuple(row) for row in rows] == [
        ("opened", "apple_mail", "mobile", False),
        ("opened", "outlook", "desktop", False),
        ("opened", "gmail", "unknown", False),
        ("opened", "apple_mail", "unknown", True),
        ("clicked", "apple_mail", "mobile", False),
    ]
    assert tuple(totals) == (1, 1)


def test_system_mail_is_never_instrumented(live_server: LiveServer, salon: tuple[int, str]) -> None:
    _, key = salon
    message = register(live_server, key, channel="system", source="system", campaign=None)
    assert message["tracked"] is False
    assert paths(message["html"], "o") == []
    assert paths(message["html"], "c") == []
    assert "https://salon.example/book?utm=nl" in message["html"]
    assert "List-Unsubscribe" not in message["headers"]


def test_transactional_tracking_can_be_switched_off(live_server: LiveServer, salon: tuple[int, str]) -> None:
    from mailtrack.db import write_transaction
    from mailtrack.tenants.queries import update_settings

    tenant_id, key = salon
    assert register(live_server, key, channel="transactional", message_id="t1")["tracked"] is True
    with write_transaction(live_server.engine) as conn:
        update_settings(conn, tenant_id=tenant_id, changes={"track_transactional": False})
    off = register(live_server, key, channel="transactional", message_id="t2")
    assert off["tracked"] is False
    assert paths(off["html"], "o") == []


@pytest.mark.parametrize("header", [{"DNT": "1"}, {"Sec-GPC": "1"}])
def test_dnt_and_gpc_record_nothing_but_still_redirect(
    live_server: LiveServer, salon: tuple[int, str], header: dict[str, str]
) -> None:
    _, key = salon
    first = register(live_server, key, message_id="a")
    with live_server.client() as client:
        assert client.get(paths(first["html"], "o")[0], headers=header).content == PIXEL_GIF
        click = client.get(paths(first["html"], "c")[0], headers=header)
        assert click.status_code == 302
        assert click.headers["location"] == "https://salon.example/book?utm=nl"
        # Even a later hit without the header records nothing for a do-not-track customer.
        client.get(paths(first["html"], "o")[0], headers={"User-Agent": IPHONE_MAIL})
    live_server.settle()  # the mark is journaled like any hit: it holds once the database has it
    later = register(live_server, key, message_id="b")
    assert later["tracked"] is False, "later mail to a do-not-track customer is not instrumented"
    live_server.settle()
    with live_server.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0
        assert conn.execute(select(customers.c.do_not_track)).scalar_one() is True


def test_broken_tokens(live_server: LiveServer, salon: tuple[int, str]) -> None:
    _, key = salon
    message = register(live_server, key)
    pixel, click = paths(message["html"], "o")[0], paths(message["html"], "c")[0]
    tampered_click = click[:-2] + ("A" if click[-2] != "A" else "B") + click[-1]
    with live_server.client() as client:
        for bad in ("/o/x", "/o/" + "A" * 250, pixel[:-6], "/o/%00%ff.gif", pixel.replace("/o/", "/o/a")):
            answer = client.get(bad)
            assert answer.status_code == 200, bad
            assert answer.content == PIXEL_GIF
        for bad in ("/c/x", tampered_click, "/c/" + pixel.removeprefix("/o/").removesuffix(".gif")):
            answer = client.get(bad)
            assert answer.status_code == 404, bad
            assert "location" not in answer.headers
        live_server.settle()
        with live_server.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0
        # A URL in the query string is never a redirect target: the stored URL is.
        assert (
            client.get(click + "?url=https://evil.example/").headers["location"].startswith("https://salon.")
        )


def test_another_salons_token_is_checked_against_its_message(
    live_server: LiveServer, salon: tuple[int, str]
) -> None:
    _, key = salon
    message = register(live_server, key)
    live_server.settle()
    with live_server.engine.connect() as conn:
        row = conn.execute(select(messages.c.id, messages.c.tenant_id)).one()
    codec = live_server_codec(live_server)
    forged = codec.encode(TrackingToken(TokenKind.CLICK, row.tenant_id + 1, row.id, 0))
    with live_server.client() as client:
        assert client.get(f"/c/{forged}").status_code == 404
        assert (
            client.get(
                f"/o/{codec.encode(TrackingToken(TokenKind.OPEN, row.tenant_id + 1, row.id))}"
            ).status_code
            == 200
        )
    live_server.settle()
    with live_server.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0
    assert message["tracked"]


def live_server_codec(server: LiveServer) -> Any:
    """The token codec the server signs with."""
    from mailtrack.messages.tokens import TokenCodec

    return TokenCodec([server.settings.secret_key.get_secret_value()])


def test_unsubscribe_get_shows_a_page_and_post_unsubscribes_once(
    live_server: LiveServer, salon: tuple[int, str]
) -> None:
    _, key = salon
    message = register(live_server, key)
    target = message["headers"]["List-Unsubscribe"].strip("<>")
    assert target in message["html"]
    with httpx.Client(timeout=10) as client:
        page = client.get(target)
        assert page.status_code == 200
        assert "<form" in page.text
        live_server.settle()
        with live_server.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0
        for _ in range(2):
            done = client.post(
                target,
                content=b"List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert done.status_code == 200
        assert client.post(target[:-3] + "xyz").status_code == 404
    live_server.settle()
    with live_server.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 1
        person = conn.execute(select(customers.c.unsubscribed_at, customers.c.suppression_reason)).one()
    assert person.unsubscribed_at is not None
    assert person.suppression_reason == "unsubscribed"


def test_head_requests_are_machine_clicks(live_server: LiveServer, salon: tuple[int, str]) -> None:
    _, key = salon
    message = register(live_server, key)
    with live_server.client() as client:
        answer = client.head(paths(message["html"], "c")[0], headers={"User-Agent": IPHONE_MAIL})
    assert answer.status_code == 302
    live_server.settle()
    with live_server.engine.connect() as conn:
        row = conn.execute(select(events.c.machine, events.c.machine_reason)).one()
        assert conn.execute(select(func.count()).select_from(links)).scalar_one() == 1
    assert tuple(row) == (True, "head_request")


def test_bad_registration_input_gets_a_clear_4xx(live_server: LiveServer, salon: tuple[int, str]) -> None:
    _, key = salon
    with live_server.client(headers={"Authorization": f"Bearer {key}"}) as client:
        missing = client.post("/api/v1/messages", json={"channel": "marketing"})
        wrong = client.post("/api/v1/messages", json={"customer": {"id": "c"}, "channel": "fax"})
        garbage = client.post(
            "/api/v1/messages", content=b"\xff\x00", headers={"Content-Type": "application/json"}
        )
        first = client.post(
            "/api/v1/messages", json={"customer": {"id": "c"}, "channel": "marketing", "message_id": "x"}
        )
        again = client.post(
            "/api/v1/messages", json={"customer": {"id": "c"}, "channel": "marketing", "message_id": "x"}
        )
    assert (missing.status_code, wrong.status_code, garbage.status_code) == (422, 422, 422)
    assert (first.status_code, again.status_code) == (201, 409)
