"""Database wiring: the bulk insert's shortcut conversions equal SQLAlchemy's own."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from mailtrack.db import UTCDateTime, _sqlite_utc_text

ZONES = st.sampled_from(
    [dt.UTC, dt.timezone(dt.timedelta(hours=2)), dt.timezone(dt.timedelta(hours=-9, minutes=-30))]
)
# hypothesis takes naive bounds and attaches the zones itself.
EARLIEST, LATEST = dt.datetime(2, 1, 1), dt.datetime(9998, 12, 30)  # noqa: DTZ001


@given(moment=st.datetimes(min_value=EARLIEST, max_value=LATEST, timezones=ZONES))
def test_sqlite_text_of_a_utc_datetime_is_what_sqlalchemy_would_store(moment: dt.datetime) -> None:
    dialect = sqlite.dialect()
    processor = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert processor is not None
    assert _sqlite_utc_text(moment) == processor(moment)
