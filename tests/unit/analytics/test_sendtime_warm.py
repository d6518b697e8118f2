"""The send-time cache is warmed at startup, so a manager's first dashboard view does not pay for a fit."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine

from mailtrack.analytics import sendtime
from tests.factories import make_tenant
from tests.unit.analytics.test_sendtime import ZONE, local, weekly, write_rollups


def test_warm_cache_fits_salons_with_mail_and_skips_the_rest(engine: Engine) -> None:
    sendtime.clear_cache()
    busy, quiet = make_tenant(engine, timezone=ZONE), make_tenant(engine, timezone=ZONE)
    write_rollups(
        engine, busy.id, weekly(local(2026, 1, 6, 10), 20, opens_after=dt.timedelta(days=2, hours=10))
    )
    try:
        assert sendtime.warm_cache(engine) == 1
        assert set(sendtime._cache) == {busy.id}
        assert quiet.id not in sendtime._cache
    finally:
        sendtime.clear_cache()
