"""Channel policy: which mail may carry a pixel and rewritten links."""

from __future__ import annotations

from mailtrack.tenants.queries import TenantSettings


def tracking_allowed(*, channel: str, settings: TenantSettings, customer_do_not_track: bool) -> bool:
    """True when a message on this channel to this customer may be instrumented.

    System mail (password resets, security alerts) is never tracked; transactional mail only while the
    salon leaves it on; nothing is tracked for a customer who asked not to be (DNT / GPC).
    """
    if customer_do_not_track or channel == "system":
        return False
    if channel == "transactional":
        return settings.track_transactional
    return settings.track_marketing
