"""Maintenance tests: the database fixture also holds the tables maintenance needs (until migrated)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from mailtrack.db import metadata
from mailtrack.delivery.tables import quarantine
from mailtrack.maintenance.tables import events_ip_pending, maintenance_leases


def ensure_maintenance_schema(engine: Engine) -> None:
    """Create the tables and index maintenance needs when migrations did not yet (no-op once they do)."""
    metadata.create_all(engine, tables=[maintenance_leases, quarantine])
    events_ip_pending.create(engine, checkfirst=True)


@pytest.fixture
def engine(engine: Engine) -> Engine:
    """The shared engine fixture, on a database that has the maintenance tables."""
    ensure_maintenance_schema(engine)
    return engine
