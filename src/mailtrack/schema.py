"""Every table, imported in one place so the metadata (and Alembic) sees the whole schema."""

from mailtrack.analytics import tables as analytics_tables
from mailtrack.dashboard import tables as dashboard_tables
from mailtrack.db import metadata
from mailtrack.delivery import outbox_tables as delivery_outbox_tables
from mailtrack.delivery import tables as delivery_tables
from mailtrack.maintenance import tables as maintenance_tables
from mailtrack.messages import tables as messages_tables
from mailtrack.tenants import tables as tenants_tables
from mailtrack.tracking import tables as tracking_tables

__all__ = [
    "analytics_tables",
    "dashboard_tables",
    "delivery_outbox_tables",
    "delivery_tables",
    "maintenance_tables",
    "messages_tables",
    "metadata",
    "tenants_tables",
    "tracking_tables",
]
