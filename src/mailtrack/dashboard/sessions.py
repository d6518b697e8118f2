"""Manager sessions: signed cookies, CSRF tokens bound to them, and login throttling.

A session is a cookie `manager id . tenant id . version . expiry . nonce . signature`, signed with
HMAC-SHA256 under a key derived from `MAILTRACK_SECRET_KEY` (previous secrets still verify, so a key
rotation does not log everyone out). Nothing is stored per session on the server; the only server state
is each manager's session *version* (table `manager_sessions`): logging out bumps it, which invalidates
every cookie issued before, on every device and every app node.

CSRF: every form carries a token that is an HMAC of the session's nonce (or, on the login form, of a
random pre-session cookie's value). An attacker's page can neither read the cookie nor compute the HMAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from fastapi import Request, Response
from sqlalchemy import Engine

from mailtrack.config import Settings
from mailtrack.dashboard import queries

SESSION_COOKIE = "mt_session"
LOGIN_COOKIE = "mt_login"
COOKIE_PATH = "/manager"
SESSION_SECONDS = 12 * 3600  # one working day; then the manager logs in again
THROTTLE_FAILURES = 5
THROTTLE_WINDOW_SECONDS = 15 * 60
THROTTLE_IP_FAILURES = 50  # failures from one address over every email, against spraying
_THROTTLE_MAX_KEYS = 100_000  # bound the memory an attacker can make us spend


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _derive(secret: str, label: bytes) -> bytes:
    # Distinct labels keep session, CSRF and tracking-token MACs from ever being interchangeable.
    return hmac.new(secret.encode(), b"mailtrack/dashboard/" + label, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class SessionData:
    """What a valid session cookie says."""

    manager_id: int
    tenant_id: int
    version: int
    expires: int
    nonce: str


class SessionCodec:
    """Signs and verifies session cookies and CSRF tokens with keys derived from the app's secrets."""

    def __init__(self, settings: Settings) -> None:
        secrets_in_use = [settings.secret_key.get_secret_value()]
        secrets_in_use += [old.get_secret_value() for old in settings.old_secret_keys]
        self._session_keys = [_derive(secret, b"session/v1") for secret in secrets_in_use]
        self._csrf_key = _derive(secrets_in_use[0], b"csrf/v1")

    def _sign(self, payload: str, key: bytes) -> str:
        return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())

    def issue(self, *, manager_id: int, tenant_id: int, version: int, now: float | None = None) -> str:
        """A new session cookie value, valid for SESSION_SECONDS."""
        expires = int((now if now is not None else time.time()) + SESSION_SECONDS)
        payload = f"{manager_id}.{tenant_id}.{version}.{expires}.{_b64(secrets.token_bytes(16))}"
        return f"{payload}.{self._sign(payload, self._session_keys[0])}"

    def read(self, value: str | None, *, now: float | None = None) -> SessionData | None:
        """The session a cookie value holds, or None when it is malformed, forged or expired."""
        if not value or len(value) > 400:
            return None
        payload, _, signature = value.rpartition(".")
        if not any(hmac.compare_digest(signature, self._sign(payload, key)) for key in self._session_keys):
            return None
        try:
            manager, tenant, version, expires, nonce = payload.split(".")
            data = SessionData(int(manager), int(tenant), int(version), int(expires), nonce)
        except ValueError:
            return None
        if data.expires <= (now if now is not None else time.time()):
            return None
        return data

    def csrf_token(self, purpose: str, nonce: str) -> str:
        """The CSRF token of a form bound to a nonce (the session's, or the login cookie's)."""
        mac = hmac.new(self._csrf_key, f"{purpose}:{nonce}".encode(), hashlib.sha256).digest()
        return _b64(mac[:24])

    def csrf_ok(self, purpose: str, nonce: str | None, token: str | None) -> bool:
        """Whether a submitted token is the one for this nonce (constant-time)."""
        if not nonce or not token:
            return False
        return hmac.compare_digest(token, self.csrf_token(purpose, nonce))


class LoginThrottle:
    """Failed logins per (email, address) and per address in a sliding window, in this process's memory.

    In memory on purpose: it needs no schema and no shared store. With several app nodes each node
    counts on its own, so the effective limit is multiplied by the node count (docs/dashboard.md).
    """

    def __init__(
        self,
        *,
        limit: int = THROTTLE_FAILURES,
        ip_limit: int = THROTTLE_IP_FAILURES,
        window: float = THROTTLE_WINDOW_SECONDS,
    ) -> None:
        self._limit, self._ip_limit, self._window = limit, ip_limit, window
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        stamps = self._failures.get(key, deque())
        while stamps and stamps[0] <= now - self._window:
            stamps.popleft()
        if not stamps:
            self._failures.pop(key, None)
        return stamps

    def retry_after(self, email: str, ip: str, *, now: float | None = None) -> int | None:
        """Seconds until this email may be tried again from this address, or None when it may now."""
        moment = now if now is not None else time.monotonic()
        with self._lock:
            for key, limit in (((email, ip), self._limit), (("", ip), self._ip_limit)):
                stamps = self._recent(key, moment)
                if len(stamps) >= limit:
                    return max(1, int(stamps[-limit] + self._window - moment) + 1)
        return None

    def failed(self, email: str, ip: str, *, now: float | None = None) -> None:
        """Count one failed attempt."""
        moment = now if now is not None else time.monotonic()
        with self._lock:
            if len(self._failures) >= _THROTTLE_MAX_KEYS:
                self._failures.clear()  # crude, but bounded; only under a flood of distinct keys
            for key in ((email, ip), ("", ip)):
                self._failures.setdefault(key, deque()).append(moment)

    def succeeded(self, email: str, ip: str) -> None:
        """Forget the failures of this email from this address."""
        with self._lock:
            self._failures.pop((email, ip), None)


@dataclass(frozen=True, slots=True)
class DashboardUser:
    """The signed-in manager, their salon and the CSRF token for their forms."""

    manager_id: int
    tenant_id: int
    email: str
    tenant_name: str
    timezone: str
    csrf: str


def codec_for(request: Request) -> SessionCodec:
    """The app's session codec (built once per app from its settings)."""
    state = request.app.state
    codec: SessionCodec | None = getattr(state, "dashboard_codec", None)
    if codec is None:
        codec = SessionCodec(state.settings)
        state.dashboard_codec = codec
    return codec


def throttle_for(request: Request) -> LoginThrottle:
    """The app's login throttle (one per app, in memory)."""
    state = request.app.state
    throttle: LoginThrottle | None = getattr(state, "dashboard_throttle", None)
    if throttle is None:
        throttle = LoginThrottle()
        state.dashboard_throttle = throttle
    return throttle


def current_user(request: Request) -> DashboardUser | None:
    """The manager this request's session cookie names, if it is valid and not logged out."""
    codec = codec_for(request)
    data = codec.read(request.cookies.get(SESSION_COOKIE))
    if data is None:
        return None
    engine: Engine = request.app.state.engine
    with engine.connect() as conn:
        found = queries.session_manager(conn, manager_id=data.manager_id)
    # A bumped version (logout), a deleted manager or a manager moved to another salon ends the session.
    if found is None or found.tenant_id != data.tenant_id or found.version != data.version:
        return None
    return DashboardUser(
        manager_id=found.manager_id,
        tenant_id=found.tenant_id,
        email=found.email,
        tenant_name=found.tenant_name,
        timezone=found.timezone,
        csrf=codec.csrf_token("session", data.nonce),
    )


def session_csrf_ok(request: Request, token: str | None) -> bool:
    """Whether a form's CSRF token belongs to this request's session."""
    codec = codec_for(request)
    data = codec.read(request.cookies.get(SESSION_COOKIE))
    return data is not None and codec.csrf_ok("session", data.nonce, token)


def _secure(request: Request) -> bool:
    settings: Settings = request.app.state.settings
    return settings.base_url.startswith("https://")


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    """Attach the session cookie: HttpOnly, SameSite=Lax, Secure when served over https."""
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    """Remove the session cookie from the browser."""
    response.delete_cookie(
        SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="lax", secure=_secure(request)
    )


def login_nonce(request: Request, response: Response) -> str:
    """The login form's pre-session nonce, set as a cookie when the browser has none yet."""
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or len(nonce) > 64:
        nonce = _b64(secrets.token_bytes(16))
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=SESSION_SECONDS,
            path=COOKIE_PATH,
            httponly=True,
            samesite="lax",
            secure=_secure(request),
        )
    return nonce
