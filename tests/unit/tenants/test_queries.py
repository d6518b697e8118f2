"""Salons, settings with their audit trail, API keys and manager logins."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from mailtrack.db import utcnow, write_transaction
from mailtrack.tenants.queries import (
    InvalidTimezoneError,
    authenticate_manager,
    create_api_key,
    create_manager,
    create_tenant,
    get_settings,
    tenant_for_api_key,
    update_settings,
)
from mailtrack.tenants.tables import api_keys, settings_audit
from tests.factories import make_tenant


def test_a_new_salon_has_the_privacy_defaults(engine: Engine) -> None:
    tenant = make_tenant(engine, timezone="America/New_York")
    with engine.connect() as conn:
        settings = get_settings(conn, tenant_id=tenant.id)
    assert (settings.track_marketing, settings.track_transactional, settings.honor_dnt) == (True, True, True)
    assert (settings.retention_days, settings.ip_anonymize_days) == (90, 30)


def test_unknown_timezones_are_refused(engine: Engine) -> None:
    with pytest.raises(InvalidTimezoneError), write_transaction(engine) as conn:
        create_tenant(conn, name="x", timezone="Europe/Atlantis")


def test_every_real_settings_change_leaves_an_audit_line(engine: Engine) -> None:
    tenant = make_tenant(engine)
    with write_transaction(engine) as conn:
        update_settings(conn, tenant_id=tenant.id, changes={"retention_days": 60, "track_marketing": True})
        update_settings(conn, tenant_id=tenant.id, changes={"retention_days": 60})
        with pytest.raises(ValueError, match="unknown settings"):
            update_settings(conn, tenant_id=tenant.id, changes={"tenant_id": 2})
    with engine.connect() as conn:
        audit = conn.execute(
            select(settings_audit.c.field, settings_audit.c.old_value, settings_audit.c.new_value)
        ).all()
    assert [tuple(row) for row in audit] == [("retention_days", "90", "60")]


def test_api_keys_authenticate_their_salon_until_revoked(engine: Engine) -> None:
    first, second = make_tenant(engine), make_tenant(engine)
    with write_transaction(engine) as conn:
        key = create_api_key(conn, tenant_id=first.id)
        other = create_api_key(conn, tenant_id=second.id)
    with engine.connect() as conn:
        assert tenant_for_api_key(conn, api_key=key) == first.id
        assert tenant_for_api_key(conn, api_key=other) == second.id
        assert tenant_for_api_key(conn, api_key=key + "x") is None
        assert tenant_for_api_key(conn, api_key="Bearer " + key) is None
        stored = conn.execute(select(api_keys.c.key_hash)).scalars().all()
    assert key not in stored, "only a hash of the key is kept"
    with write_transaction(engine) as conn:
        conn.execute(update(api_keys).values(revoked_at=utcnow()))
    with engine.connect() as conn:
        assert tenant_for_api_key(conn, api_key=key) is None


def test_manager_logins(engine: Engine) -> None:
    tenant = make_tenant(engine)
    with write_transaction(engine) as conn:
        manager = create_manager(conn, tenant_id=tenant.id, email=" Boss@Salon.HU ", password="long enough")
    with engine.connect() as conn:
        assert authenticate_manager(conn, email="boss@salon.hu", password="long enough") == manager
        assert authenticate_manager(conn, email="boss@salon.hu", password="long enougH") is None
        assert authenticate_manager(conn, email="nobody@salon.hu", password="long enough") is None
    with pytest.raises(ValueError, match="8 characters"), write_transaction(engine) as conn:
        create_manager(conn, tenant_id=tenant.id, email="b@c.d", password="short")
    with pytest.raises(IntegrityError), write_transaction(engine) as conn:
        create_manager(conn, tenant_id=tenant.id, email="boss@salon.hu", password="another one")
