"""All configuration, from `MAILTRACK_*` environment variables, in one settings class."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The built-in secret lets `mailtrack demo` and the tests start with no setup; `serve` refuses it.
DEMO_SECRET_KEY = "mailtrack-demo-secret-do-not-use-in-production"  # noqa: S105  (public on purpose; refused by serve)


class InsecureSettingsError(RuntimeError):
    """Raised when a production command would run with a demo-only setting."""


class Settings(BaseSettings):
    """Mailtrack's settings; every field reads `MAILTRACK_<FIELD>` from the environment."""

    model_config = SettingsConfigDict(env_prefix="MAILTRACK_", env_file=None, extra="ignore")

    database_url: str = Field(
        default="sqlite:///./mailtrack.db",
        description="SQLAlchemy URL: SQLite file by default, `postgresql+psycopg://…` in production.",
    )
    secret_key: SecretStr = Field(
        default=SecretStr(DEMO_SECRET_KEY),
        description="Signs tracking tokens and sessions. `serve` refuses the built-in default.",
    )
    old_secret_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Previous secrets (JSON list), still accepted when verifying tokens during rotation.",
    )
    base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Public base URL written into pixels, links and unsubscribe headers.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDR ranges whose X-Forwarded-For header is believed (JSON list).",
    )
    journal_dir: Path = Field(
        default=Path("./var/journal"),
        description="Where tracking hits are journaled before the database has them (local disk).",
    )
    journal_fsync: bool = Field(
        default=False,
        description="fdatasync the journal before answering a hit: survives power loss, not only crashes.",
    )
    journal_applier: Literal["process", "thread"] = Field(
        default="process",
        description="Apply the journal from a child process (a core of its own) or a thread of the server.",
    )
    journal_max_bytes: int = Field(
        default=1 << 30,
        ge=1 << 20,
        description="Journal bytes waiting for the database beyond which hits are answered but not recorded.",
    )
    ingest_batch_max: int = Field(
        default=5000, ge=1, le=100_000, description="Most journaled hits applied in one transaction."
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")

    # Sending (`"send": true`) through an SMTP relay.
    smtp_host: str | None = Field(
        default=None, description="SMTP relay host; unset = Mailtrack sends nothing."
    )
    smtp_port: int = Field(default=587, ge=1, le=65535, description="SMTP relay port.")
    smtp_security: str = Field(
        default="starttls", pattern="^(starttls|tls|none)$", description="starttls, tls (implicit) or none."
    )
    smtp_username: str | None = Field(default=None, description="SMTP AUTH user (with smtp_password).")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP AUTH password.")
    smtp_timeout_seconds: float = Field(default=30.0, gt=0, description="Per-command SMTP timeout.")
    mail_from: str = Field(default="noreply@localhost", description="Default From address of sent mail.")
    bounce_domain: str | None = Field(
        default=None, description="Domain of VERP envelope senders (bounces+<token>@domain); unset = From's."
    )
    smtp_max_attempts: int = Field(default=8, ge=1, le=50, description="Tries before a 4xx becomes a bounce.")

    # Inbound bounce and complaint mail.
    inbound_smtp_host: str = Field(default="127.0.0.1", description="Address of the inbound SMTP listener.")
    inbound_smtp_port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of the inbound SMTP listener; unset = not started."
    )

    # Provider webhooks (`POST /api/v1/webhooks/<provider>`); a provider whose secret is unset answers 404.
    ses_topic_arns: list[str] = Field(default_factory=list, description="Allowed SNS TopicArns (JSON list).")
    sendgrid_public_key: str | None = Field(default=None, description="SendGrid signed-webhook public key.")
    mailgun_signing_key: SecretStr | None = Field(default=None, description="Mailgun webhook signing key.")
    postmark_webhook_user: str | None = Field(default=None, description="Postmark webhook basic-auth user.")
    postmark_webhook_password: SecretStr | None = Field(default=None, description="…and its password.")
    webhook_max_age_seconds: int = Field(default=300, ge=10, description="Older signed webhooks are refused.")

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for proxy in value:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"not an address or CIDR range: {proxy!r}") from None
        return value

    @field_validator("base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def is_sqlite(self) -> bool:
        """True when the configured database is a SQLite file."""
        return self.database_url.startswith("sqlite")

    def uses_demo_secret(self) -> bool:
        """True when tokens would be signed with the public built-in secret."""
        return self.secret_key.get_secret_value() == DEMO_SECRET_KEY

    def require_production_secret(self) -> None:
        """Refuse to go on with the built-in secret (anyone could forge tracking tokens)."""
        if self.uses_demo_secret():
            raise InsecureSettingsError(
                "MAILTRACK_SECRET_KEY is the built-in demo secret; set a long random value "
                '(e.g. `python -c "import secrets; print(secrets.token_urlsafe(48))"`), '
                "or use `mailtrack demo`."
            )
        if len(self.secret_key.get_secret_value()) < 32:
            raise InsecureSettingsError("MAILTRACK_SECRET_KEY must be at least 32 characters long.")

    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None for other backends or in-memory databases."""
        if not self.is_sqlite:
            return None
        path = self.database_url.split("///", 1)[-1]
        return None if path in ("", ":memory:") else Path(path)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
