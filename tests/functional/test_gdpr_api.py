"""GDPR over HTTP: export and erase through the API; an erased customer's old links still redirect."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from mailtrack.messages.tables import customers
from mailtrack.tracking.tables import events
from tests.factories import make_api_key, make_tenant
from tests.functional.conftest import LiveServer

AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0"
HTML = '<p>Hi Anna, <a href="https://salon.example/book">book</a></p>'


@pytest.fixture
def server(live_server: LiveServer) -> str:
    """The application's base URL on a loopback port."""
    return live_server.url


def api(url: str, key: str) -> httpx.Client:
    """An API client authenticated with the salon's key."""
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def register(client: httpx.Client) -> dict[str, Any]:
    """Register a marketing message to Anna; returns the API's answer."""
    answer = client.post(
        "/api/v1/messages",
        json={
            "customer": {"id": "anna-1", "name": "Anna Kovács", "email": "anna@example.com"},
            "channel": "marketing",
            "campaign": "May",
            "html": HTML,
        },
    )
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def tracking_paths(html: str) -> tuple[str, str]:
    """The pixel and the first click path in instrumented HTML."""
    pixel = re.search(r"http://127\.0\.0\.1:\d+(/o/[^\"]+)", html)
    click = re.search(r"http://127\.0\.0\.1:\d+(/c/[^\"]+)", html)
    assert pixel is not None
    assert click is not None
    return pixel.group(1), click.group(1)


def test_export_then_erase_then_old_links_still_redirect(live_server: LiveServer, engine: Engine) -> None:
    server = live_server.url
    tenant = make_tenant(engine)
    key, other_key = make_api_key(engine, tenant.id), make_api_key(engine, make_tenant(engine).id)
    with api(server, key) as client, httpx.Client(base_url=server, timeout=10) as reader:
        pixel, click = tracking_paths(register(client)["html"])
        assert reader.get(pixel, headers={"User-Agent": AGENT}).status_code == 200
        opened = reader.get(click, headers={"User-Agent": AGENT}, follow_redirects=False)
        assert (opened.status_code, opened.headers["location"]) == (302, "https://salon.example/book")
        live_server.settle()

        export = client.get("/api/v1/customers/anna-1/export")
        assert export.status_code == 200
        assert export.headers["cache-control"] == "no-store"
        data = export.json()
        assert data["customer"]["email"] == "anna@example.com"
        assert [event["type"] for event in data["events"]] == ["opened", "clicked"]
        assert data["events"][1]["url"] == "https://salon.example/book"
        assert data["events"][1]["user_agent"] == AGENT
        assert data["link_clicks"][0]["human_clicks"] == 1

        with api(server, other_key) as stranger:
            assert stranger.get("/api/v1/customers/anna-1/export").status_code == 404
            assert stranger.delete("/api/v1/customers/anna-1").status_code == 404
        assert client.get("/api/v1/customers/nobody/export").status_code == 404

        erased = client.delete("/api/v1/customers/anna-1")
        assert (erased.status_code, erased.content) == (204, b"")
        assert client.delete("/api/v1/customers/anna-1").status_code == 404
        assert client.get("/api/v1/customers/anna-1/export").status_code == 404

        again = reader.get(click, headers={"User-Agent": AGENT}, follow_redirects=False)
        assert (again.status_code, again.headers["location"]) == (302, "https://salon.example/book")
        assert reader.get(pixel, headers={"User-Agent": AGENT}).status_code == 200
        live_server.settle()

    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0, "nothing recorded"
        people = conn.execute(select(customers.c.external_id, customers.c.name, customers.c.email)).all()
    assert [(person.name, person.email) for person in people] == [("", "")]
    assert people[0].external_id.startswith("erased-")


def test_the_routes_need_an_api_key(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        assert client.get("/api/v1/customers/anna-1/export").status_code == 401
        assert client.delete("/api/v1/customers/anna-1").status_code == 401


def test_the_routes_are_in_the_openapi_document(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/api/v1/customers/{customer_id}/export"]) == {"get"}
    assert set(paths["/api/v1/customers/{customer_id}"]) == {"delete"}
    assert "404" in paths["/api/v1/customers/{customer_id}"]["delete"]["responses"]
