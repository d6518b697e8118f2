"""Settings: environment variables, validation, and the refusal of demo secrets outside the demo."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mailtrack.config import DEMO_SECRET_KEY, InsecureSettingsError, Settings


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILTRACK_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("MAILTRACK_BASE_URL", "https://t.salon.example/")
    monkeypatch.setenv("MAILTRACK_TRUSTED_PROXIES", '["10.0.0.0/8"]')
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.base_url == "https://t.salon.example"
    assert settings.trusted_proxies == ["10.0.0.0/8"]
    assert not settings.is_sqlite


def test_the_demo_secret_is_refused_for_production() -> None:
    with pytest.raises(InsecureSettingsError, match="demo secret"):
        Settings(secret_key=DEMO_SECRET_KEY).require_production_secret()
    with pytest.raises(InsecureSettingsError, match="32 characters"):
        Settings(secret_key="short").require_production_secret()
    Settings(secret_key="x" * 40).require_production_secret()


def test_bad_values_are_rejected_with_a_reason() -> None:
    with pytest.raises(ValidationError, match="CIDR"):
        Settings(trusted_proxies=["nonsense"])
    with pytest.raises(ValidationError):
        Settings(ingest_batch_max=0)


def test_secrets_do_not_leak_into_reprs() -> None:
    assert "x" * 40 not in repr(Settings(secret_key="x" * 40))
