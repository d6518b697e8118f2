"""`mailtrack serve` logs no request lines: each would carry a reader's address and message token."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import Engine

from mailtrack.config import Settings
from tests.factories import make_instrumented_message
from tests.live import free_port, served


def test_requests_leave_no_address_or_token_in_the_server_log(
    database_url: str, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    pixel, clicks = make_instrumented_message(engine, settings, html='<a href="https://a.example/">a</a>')
    click = clicks[0]
    port, log = free_port(), tmp_path / "serve.log"
    with (
        log.open("wb") as output,
        served(database_url, port, settings.journal_dir, output=output),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        assert client.get(pixel).status_code == 200
        assert client.get(click).status_code == 302
        assert client.get("/c/unknown").status_code == 404
        assert client.get("/manager/login").status_code == 200
    text = log.read_text()
    assert "Application startup complete" in text, "the server logs at INFO"
    for leak in (pixel, click, "/c/unknown", "/manager/login", '"GET '):
        assert leak not in text
