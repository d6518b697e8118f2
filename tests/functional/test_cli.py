"""The `mailtrack` command line, run as a real process against each backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from mailtrack.migrations import alembic_config
from mailtrack.tenants.queries import authenticate_manager, tenant_for_api_key
from tests.conftest import TEST_SECRET

MAILTRACK = [sys.executable, "-m", "mailtrack.cli"]


def run(
    database_url: str, *args: str, stdin: str = "", secret: str | None = TEST_SECRET
) -> subprocess.CompletedProcess[str]:
    """Run `mailtrack ARGS` with this test's database."""
    # A journal directory of its own: journals are adopted by whichever process finds them.
    journal = tempfile.mkdtemp(prefix="mailtrack-journal-")
    env = {**os.environ, "MAILTRACK_DATABASE_URL": database_url, "MAILTRACK_JOURNAL_DIR": journal}
    env.pop("MAILTRACK_SECRET_KEY", None)
    if secret is not None:
        env["MAILTRACK_SECRET_KEY"] = secret
    return subprocess.run(
        [*MAILTRACK, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120, check=False
    )


def last_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON object a --json command printed last on stdout."""
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def test_salon_key_and_manager_creation(database_url: str, engine: Engine) -> None:
    tenant_id = last_json(run(database_url, "tenant", "create", "--name", "Szépség Szalon", "--json"))[
        "tenant_id"
    ]
    assert isinstance(tenant_id, int)
    api_key = last_json(run(database_url, "apikey", "create", "--tenant", str(tenant_id), "--json"))[
        "api_key"
    ]
    assert isinstance(api_key, str)
    created = run(
        database_url,
        "manager",
        "create",
        "--tenant",
        str(tenant_id),
        "--email",
        "Boss@Salon.hu",
        "--password-stdin",
        stdin="correct horse battery\n",
    )
    assert created.returncode == 0, created.stderr
    with engine.connect() as conn:
        assert tenant_for_api_key(conn, api_key=api_key) == tenant_id
        manager = authenticate_manager(conn, email="boss@salon.hu", password="correct horse battery")
        assert authenticate_manager(conn, email="boss@salon.hu", password="wrong") is None
    assert manager is not None
    assert manager.tenant_id == tenant_id


def test_clear_errors_for_bad_input(database_url: str) -> None:
    zone = run(database_url, "tenant", "create", "--name", "X", "--timezone", "Mars/Olympus")
    assert zone.returncode == 2
    assert "unknown timezone" in zone.stderr
    missing = run(database_url, "apikey", "create", "--tenant", "999")
    assert missing.returncode == 2
    assert "no salon with id 999" in missing.stderr
    short = run(
        database_url,
        "manager",
        "create",
        "--tenant",
        "999",
        "--email",
        "a@b.c",
        "--password-stdin",
        stdin="x\n",
    )
    assert short.returncode == 2


def test_import_reads_a_file_or_stdin(database_url: str, tmp_path: Path) -> None:
    tenant_id = last_json(run(database_url, "tenant", "create", "--name", "S", "--json"))["tenant_id"]
    line = json.dumps(
        {
            "type": "sent",
            "message_id": "m1",
            "event_id": "1",
            "occurred_at": "2026-08-03T16:00:00Z",
            "customer": {"id": "c1"},
        }
    )
    path = tmp_path / "events.jsonl"
    path.write_text(line + "\nnot json\n")
    from_file = last_json(run(database_url, "import", "--tenant", str(tenant_id), str(path)))
    from_stdin = last_json(run(database_url, "import", "--tenant", str(tenant_id), "-", stdin=line + "\n"))
    assert (from_file["imported"], from_file["duplicates"]) == (1, 0)
    assert [item["line"] for item in from_file["rejected"]] == [2]
    assert "not valid JSON" in from_file["rejected"][0]["error"]
    assert from_stdin == {"imported": 0, "duplicates": 1, "rejected": []}
    absent = run(database_url, "import", "--tenant", str(tenant_id), str(tmp_path / "absent.jsonl"))
    assert absent.returncode == 2
    assert "no such file" in absent.stderr


@pytest.mark.parametrize("secret", [None, "short"])
def test_serve_refuses_the_demo_secret(database_url: str, secret: str | None) -> None:
    result = run(database_url, "serve", "--port", "1", secret=secret)
    assert result.returncode == 2
    assert "MAILTRACK_SECRET_KEY" in result.stderr


def test_db_upgrade_is_idempotent(database_url: str, engine: Engine) -> None:
    assert run(database_url, "db", "upgrade").returncode == 0
    assert run(database_url, "db", "upgrade").returncode == 0
    with engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
    assert version == ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
