"""The OpenAPI document is true: schemathesis runs every one of its checks against a real server.

Each documented operation is fuzzed from its schema (valid and invalid inputs, then stateful sequences
along the documented and inferred links), and every answer must be documented: its status, content
type, headers and body schema; valid input accepted, invalid input refused; no server error; `Allow`
listing the documented methods; authentication enforced; an erased customer gone.
"""

from __future__ import annotations

import base64
import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine

from mailtrack.app import create_app
from mailtrack.config import Settings
from mailtrack.tracking.ingest import EventIn
from tests.factories import ingest, make_api_key, make_customer, make_message, make_tenant
from tests.live import free_port, serving

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
POSTMARK = ("postmark-hook", "postmark-secret")
# Per-operation settings (schemathesis.toml).
CONFIG = f"""
# What is wrong with these requests cannot be said in JSON Schema, so a request the schema admits may
# still be refused with a 422 naming the parameter: on /stats, `from` after `to`, a period over 1096
# days or one whose previous period starts before 1970; on /customers, `min_score` above `max_score`;
# on /messages with "send": true, an address that cannot be sent to (RFC 5322 plus IDNA, which no
# pattern states exactly) or a customer without any (an empty `email` means the one on file).
[[operations]]
include-path = ["/api/v1/stats", "/api/v1/customers", "/api/v1/messages"]
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"
]

# Postmark authenticates with HTTP basic credentials instead of the API key.
[[operations]]
include-path = "/api/v1/webhooks/postmark"
headers = {{ Authorization = "Basic {base64.b64encode(":".join(POSTMARK).encode()).decode()}" }}
"""


def _seed(engine: Engine, tenant_id: int) -> None:
    """Customers with mail, opens, clicks and a bounce: pages, scores and events to answer with."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for n in range(3):
        person = make_customer(engine, tenant_id, name=f"Vendég {n}")
        for day in range(4):
            at = now - dt.timedelta(days=day + 1, hours=n)
            message = make_message(engine, tenant_id, person, sent_at=at, links=("https://salon.example/",))
            kinds = ["sent", "delivered", "opened", "clicked"] if (n + day) % 3 else ["sent", "bounced"]
            ingest(
                engine,
                *(
                    EventIn(tenant_id, message, kind, at + dt.timedelta(minutes=i), link_position=0)
                    if kind == "clicked"
                    else EventIn(tenant_id, message, kind, at + dt.timedelta(minutes=i))
                    for i, kind in enumerate(kinds)
                ),
            )


def test_the_openapi_document_matches_the_api(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    if not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None:
        pytest.fail("schemathesis is not installed: `make test` installs the dev dependencies")
    tenant = make_tenant(engine)
    key = make_api_key(engine, tenant.id)
    _seed(engine, tenant.id)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    port = free_port()
    # A relay is configured (nothing listens there) so `"send": true` is exercised instead of answering
    # 501, and two webhook providers, so that their calls are verified instead of answering 404.
    configured = settings.model_copy(
        update={
            "base_url": f"http://127.0.0.1:{port}",
            "smtp_host": "127.0.0.1",
            "smtp_port": free_port(),
            "mailgun_signing_key": SecretStr("mailgun-signing-key"),
            "postmark_webhook_user": POSTMARK[0],
            "postmark_webhook_password": SecretStr(POSTMARK[1]),
        }
    )
    with serving(create_app(configured, engine=engine), port=port) as url:
        result = subprocess.run(
            [
                str(SCHEMATHESIS),
                "--config-file",
                str(config),
                "run",
                f"{url}/openapi.json",
                "-H",
                f"Authorization: Bearer {key}",
                "--checks",
                "all",
                "--max-examples",
                "50",
                "--seed",
                "1",
                # Their bodies are raw (JSON Lines; one RFC 5322 message), documented as plain strings:
                # schemathesis would send random text, never a line or message to parse, so the run
                # would only see 400s for unreadable input. Their parsers are tested on their own
                # (tests/unit/tracking/test_importer.py; the mail parser is fuzzed in
                # tests/unit/delivery/test_bounces.py) and over HTTP in test_api_import.py.
                "--exclude-path",
                "/api/v1/events/import",
                "--exclude-path",
                "/api/v1/inbound",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    assert result.returncode == 0, result.stdout[-8000:]
