"""Queries of the tenants domain: salons, their settings, API keys and managers."""

from __future__ import annotations

import hashlib
import secrets
import zoneinfo
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, insert, select, update

from mailtrack.db import utcnow
from mailtrack.tenants.tables import api_keys, managers, settings_audit, tenant_settings, tenants

API_KEY_PREFIX = "mtk_"
_password_hasher = PasswordHasher()
# Verifying against a dummy hash for unknown emails keeps login timing from revealing who has an account.
_DUMMY_HASH = _password_hasher.hash("mailtrack-timing-equalizer")


class InvalidTimezoneError(ValueError):
    """The timezone name is not in the IANA database."""


@dataclass(frozen=True, slots=True)
class Tenant:
    """A salon."""

    id: int
    name: str
    timezone: str


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """A salon's tracking and privacy settings."""

    tenant_id: int
    track_marketing: bool
    track_transactional: bool
    honor_dnt: bool
    retention_days: int
    ip_anonymize_days: int
    soft_bounce_threshold: int
    rollup_retention_months: int


def validate_timezone(name: str) -> str:
    """The name itself when it is a known IANA timezone; raises InvalidTimezoneError otherwise."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidTimezoneError(
            f"unknown timezone {name!r} (expected an IANA name such as Europe/Budapest)"
        ) from exc
    return name


def create_tenant(conn: Connection, *, name: str, timezone: str = "Europe/Budapest") -> Tenant:
    """Create a salon with default settings."""
    now = utcnow()
    tenant_id = conn.execute(
        insert(tenants)
        .values(name=name, timezone=validate_timezone(timezone), created_at=now)
        .returning(tenants.c.id)
    ).scalar_one()
    conn.execute(insert(tenant_settings).values(tenant_id=tenant_id, updated_at=now))
    return Tenant(id=tenant_id, name=name, timezone=timezone)


def get_tenant(conn: Connection, *, tenant_id: int) -> Tenant | None:
    """The salon with that id, or None."""
    row = conn.execute(
        select(tenants.c.id, tenants.c.name, tenants.c.timezone).where(tenants.c.id == tenant_id)
    ).first()
    return Tenant(id=row.id, name=row.name, timezone=row.timezone) if row else None


def find_tenant_by_name(conn: Connection, *, name: str) -> Tenant | None:
    """The first salon with that exact name, or None."""
    row = conn.execute(
        select(tenants.c.id, tenants.c.name, tenants.c.timezone)
        .where(tenants.c.name == name)
        .order_by(tenants.c.id)
    ).first()
    return Tenant(id=row.id, name=row.name, timezone=row.timezone) if row else None


def get_settings(conn: Connection, *, tenant_id: int) -> TenantSettings:
    """The salon's settings (every salon has a row, created with it)."""
    row = conn.execute(select(tenant_settings).where(tenant_settings.c.tenant_id == tenant_id)).one()
    return TenantSettings(**{field: getattr(row, field) for field in TenantSettings.__dataclass_fields__})


def update_settings(
    conn: Connection, *, tenant_id: int, changes: dict[str, Any], manager_id: int | None = None
) -> TenantSettings:
    """Apply setting changes, writing one audit line per field that really changed."""
    current = get_settings(conn, tenant_id=tenant_id)
    unknown = set(changes) - set(TenantSettings.__dataclass_fields__) - {"tenant_id"}
    if unknown or "tenant_id" in changes:
        raise ValueError(f"unknown settings: {sorted(unknown | ({'tenant_id'} & set(changes)))}")
    real = {key: value for key, value in changes.items() if getattr(current, key) != value}
    if not real:
        return current
    now = utcnow()
    conn.execute(
        update(tenant_settings).where(tenant_settings.c.tenant_id == tenant_id).values(**real, updated_at=now)
    )
    conn.execute(
        insert(settings_audit),
        [
            {
                "tenant_id": tenant_id,
                "manager_id": manager_id,
                "changed_at": now,
                "field": key,
                "old_value": str(getattr(current, key)),
                "new_value": str(value),
            }
            for key, value in real.items()
        ],
    )
    return get_settings(conn, tenant_id=tenant_id)


def hash_api_key(api_key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def create_api_key(conn: Connection, *, tenant_id: int) -> str:
    """Create an API key for the salon; the clear key is returned once and only its hash is kept."""
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        insert(api_keys).values(
            tenant_id=tenant_id, key_hash=hash_api_key(api_key), prefix=api_key[:12], created_at=utcnow()
        )
    )
    return api_key


def tenant_for_api_key(conn: Connection, *, api_key: str) -> int | None:
    """The salon an API key belongs to, or None for an unknown or revoked key."""
    if not api_key.startswith(API_KEY_PREFIX) or len(api_key) > 200:
        return None
    return conn.execute(
        select(api_keys.c.tenant_id).where(
            api_keys.c.key_hash == hash_api_key(api_key), api_keys.c.revoked_at.is_(None)
        )
    ).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class Manager:
    """A salon manager's login."""

    id: int
    tenant_id: int
    email: str


def create_manager(conn: Connection, *, tenant_id: int, email: str, password: str) -> Manager:
    """Create a manager login with an argon2 password hash."""
    if len(password) < 8:
        raise ValueError("the password must be at least 8 characters long")
    normalized = email.strip().lower()
    if "@" not in normalized:
        raise ValueError(f"not an email address: {email!r}")
    manager_id = conn.execute(
        insert(managers)
        .values(
            tenant_id=tenant_id,
            email=normalized,
            password_hash=_password_hasher.hash(password),
            created_at=utcnow(),
        )
        .returning(managers.c.id)
    ).scalar_one()
    return Manager(id=manager_id, tenant_id=tenant_id, email=normalized)


def authenticate_manager(conn: Connection, *, email: str, password: str) -> Manager | None:
    """The manager when the email and password match, else None (in constant-ish time)."""
    row = conn.execute(
        select(managers.c.id, managers.c.tenant_id, managers.c.email, managers.c.password_hash).where(
            managers.c.email == email.strip().lower()
        )
    ).first()
    try:
        _password_hasher.verify(row.password_hash if row else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    return Manager(id=row.id, tenant_id=row.tenant_id, email=row.email)
