"""`mailtrack serve` logs no request lines: each would carry a reader's address and message token."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import Engine

from mailtrack.config import Settings
from mailtrack.db import write_transaction
from mailtrack.messages.routes import MessageRequest, register_message
from mailtrack.messages.tokens import TokenCodec
from tests.conftest import TEST_SECRET
from tests.factories import make_tenant
from tests.live import free_port, served


def test_requests_leave_no_address_or_token_in_the_server_log(
    database_url: str, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    tenant = make_tenant(engine)
    with write_transaction(engine) as conn:
        message = register_message(
            conn,
            TokenCodec([TEST_SECRET]),
            settings,
            tenant_id=tenant.id,
            body=MessageRequest.model_validate(
                {
                    "customer": {"id": "c1"},
                    "channel": "marketing",
                    "html": '<a href="https://a.example/">a</a>',
                }
            ),
        )
    assert message.html is not None
    pixel = message.html.split('src="', 1)[1].split('"', 1)[0].removeprefix(settings.base_url)
    click = message.html.split('href="', 1)[1].split('"', 1)[0].removeprefix(settings.base_url)
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
