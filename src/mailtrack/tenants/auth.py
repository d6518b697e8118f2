"""API-key authentication for the platform's HTTP API."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from mailtrack.maintenance.security import RATE_LIMIT_RESPONSES, ErrorOut
from mailtrack.tenants.queries import tenant_for_api_key

_bearer = HTTPBearer(auto_error=False, description="A salon's API key (`mailtrack apikey create`).")


def get_engine(request: Request) -> Engine:
    """The application's database engine."""
    engine: Engine = request.app.state.engine
    return engine


def api_tenant(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    engine: Annotated[Engine, Depends(get_engine)],
) -> int:
    """The salon whose API key authenticated this request; 401 otherwise."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    with engine.connect() as conn:
        tenant_id = tenant_for_api_key(conn, api_key=credentials.credentials)
    if tenant_id is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return tenant_id


ApiTenant = Annotated[int, Depends(api_tenant)]
# Every router of API-key operations documents the answers the dependency above can give, and the
# rate limit the security middleware applies to every `/api/` path (by API key).
API_KEY_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorOut,
        "description": "missing, invalid or revoked API key (`Authorization: Bearer <key>`)",
        "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string", "const": "Bearer"}}},
    },
    **RATE_LIMIT_RESPONSES,
}
EngineDep = Annotated[Engine, Depends(get_engine)]
