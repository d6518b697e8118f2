"""The migrations build exactly the schema the code declares, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from mailtrack import schema
from mailtrack.db import metadata


def test_migrated_database_matches_the_declared_tables(engine: Engine) -> None:
    assert schema  # every domain's tables registered on `metadata`
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == [], "a table or index was changed without a migration (or the reverse)"
