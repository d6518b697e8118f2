"""The migrations build exactly the schema the code declares, on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, insert, inspect, select, text

from mailtrack import schema
from mailtrack.db import utcnow, write_transaction
from mailtrack.maintenance.partitions import comparison_filter, deployed_metadata, is_partitioned
from mailtrack.migrations import alembic_config, upgrade
from mailtrack.tracking.tables import event_external_ids, events
from tests.factories import make_tenant


def test_migrated_database_matches_the_declared_tables(engine: Engine) -> None:
    assert schema  # every domain's tables registered on `metadata`
    with engine.connect() as conn:
        # The declared tables as built on this backend (PostgreSQL partitions events and keeps its
        # external ids unique in event_external_ids); the partitions themselves are storage, not schema.
        context = MigrationContext.configure(conn, opts={"include_object": comparison_filter(conn)})
        differences = compare_metadata(context, deployed_metadata(conn.dialect.name))
    assert differences == [], "a table or index was changed without a migration (or the reverse)"


def _events_at(engine: Engine) -> list[tuple[int, str | None, dt.datetime]]:
    with engine.connect() as conn:
        query = select(events.c.id, events.c.external_event_id, events.c.occurred_at).order_by(events.c.id)
        return [tuple(row) for row in conn.execute(query)]


def test_0008_moves_existing_events_into_partitions_and_back(engine: Engine) -> None:
    command.downgrade(alembic_config(engine), "0007")
    make_tenant(engine)  # retention 90 days: older rows are expired for every salon
    now = utcnow()
    moments = [
        now,
        now - dt.timedelta(days=10),
        dt.datetime(2001, 5, 1, tzinfo=dt.UTC),
        now + dt.timedelta(days=60 * 365),  # far ahead
    ]
    row = {"tenant_id": 1, "message_id": 1, "customer_id": 1, "type": "delivered"}
    with write_transaction(engine) as conn:
        for n, moment in enumerate(moments):
            external = f"ses:{n}" if n % 2 == 0 else None
            conn.execute(insert(events).values({**row, "occurred_at": moment, "external_event_id": external}))
    before = _events_at(engine)

    upgrade(engine)
    assert _events_at(engine) == before
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            assert is_partitioned(conn)
            homes: dict[int, str] = dict(
                conn.execute(text("SELECT id, tableoid::regclass::text FROM events")).all()
            )
            assert homes == {
                1: f"events_{now:%Y%m%d}",
                2: f"events_{moments[1]:%Y%m%d}",
                3: "events_default",  # expired for every salon
                4: "events_default",  # far ahead
            }
            stored_ids = conn.execute(select(event_external_ids.c.external_event_id)).scalars()
            assert sorted(stored_ids) == ["ses:0", "ses:2"]
            next_id = conn.execute(insert(events).values({**row, "occurred_at": now}).returning(events.c.id))
            assert next_id.scalar_one() == 5, "the id sequence carried over"
        else:
            assert not is_partitioned(conn)

    command.downgrade(alembic_config(engine), "0007")
    with engine.connect() as conn:
        assert not is_partitioned(conn)
        assert "event_external_ids" not in inspect(conn).get_table_names()
        unique = {ix["name"]: ix["unique"] for ix in inspect(conn).get_indexes("events")}
        assert unique["ix_events_tenant_id_external_event_id"]
    assert _events_at(engine) == before
    upgrade(engine)
