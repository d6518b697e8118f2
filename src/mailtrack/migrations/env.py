"""Alembic environment: migrations run on the engine handed over in the config attributes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from mailtrack import schema
from mailtrack.maintenance.partitions import comparison_filter, deployed_metadata

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):
    raise RuntimeError("run migrations through mailtrack.migrations.upgrade(engine)")

assert schema  # every domain's tables registered on the metadata deployed_metadata copies
with engine.connect() as connection:
    context.configure(
        connection=connection,
        # Autogenerate compares with the schema as built on this backend, partitions of events aside.
        target_metadata=deployed_metadata(connection.dialect.name),
        include_object=comparison_filter(connection),
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite can only ALTER by copying tables
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
