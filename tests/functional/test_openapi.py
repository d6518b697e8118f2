"""The OpenAPI document drives schemathesis against a real server: no request may cause a server error.

Every operation is fuzzed from its documented schema (valid and invalid inputs, stateful sequences);
any 5xx fails. Full response conformance (documented status codes) is tracked separately.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mailtrack.app import create_app
from mailtrack.config import Settings
from tests.factories import make_api_key, make_tenant
from tests.live import free_port, serving

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_no_request_built_from_the_schema_causes_a_server_error(settings: Settings, engine: Engine) -> None:
    if not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None:
        pytest.fail("schemathesis is not installed: `make test` installs the dev dependencies")
    tenant = make_tenant(engine)
    key = make_api_key(engine, tenant.id)
    port = free_port()
    # A relay is configured (nothing listens there) so `"send": true` is exercised instead of answering 501.
    configured = settings.model_copy(
        update={"base_url": f"http://127.0.0.1:{port}", "smtp_host": "127.0.0.1", "smtp_port": free_port()}
    )
    with serving(create_app(configured, engine=engine), port=port) as url:
        result = subprocess.run(
            [
                str(SCHEMATHESIS),
                "run",
                f"{url}/openapi.json",
                "-H",
                f"Authorization: Bearer {key}",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "25",
                "--seed",
                "1",
                # Raw bodies (JSON Lines, RFC 5322 mail) schemathesis cannot generate; their parsers are
                # tested on their own (the mail parser is fuzzed in tests/unit/delivery/test_bounces.py).
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
    assert result.returncode == 0, result.stdout[-6000:]
