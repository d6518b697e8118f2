"""Settings of the operations layer (scheduler, limits), from `MAILTRACK_*` environment variables."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperationsSettings(BaseSettings):
    """Maintenance schedule and request limits; every field reads `MAILTRACK_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="MAILTRACK_", env_file=None, extra="ignore")

    maintenance_enabled: bool = Field(
        default=True, description="Run retention and anonymization inside `serve` (off: use cron)."
    )
    maintenance_interval_minutes: float = Field(
        default=60, gt=0, le=24 * 60, description="Minutes between maintenance runs in `serve`."
    )
    maintenance_jitter: float = Field(
        default=0.1, ge=0, le=0.5, description="Random spread of the interval, as a fraction of it."
    )
    maintenance_first_delay_seconds: float = Field(
        default=60, ge=0, description="Wait after startup before the first run (plus jitter)."
    )
    maintenance_chunk_rows: int = Field(
        default=5000, ge=1, le=1_000_000, description="Rows deleted or anonymized per transaction."
    )
    maintenance_lease_seconds: float = Field(
        default=600, gt=0, description="How long a salon's lease lasts without renewal (crash recovery)."
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest request body, except import and inbound."
    )
    api_rate_per_second: float = Field(
        default=100, ge=0, description="API requests per second per API key (or address); 0 = no limit."
    )
    api_rate_burst: float = Field(default=500, ge=1, description="API requests allowed in one burst.")
    login_rate_per_minute: float = Field(
        default=10, ge=0, description="Login attempts per minute per address; 0 = no limit."
    )
    login_rate_burst: float = Field(default=10, ge=1, description="Login attempts allowed in one burst.")


@lru_cache(maxsize=1)
def get_operations_settings() -> OperationsSettings:
    """The process-wide operations settings, read once from the environment."""
    return OperationsSettings()
