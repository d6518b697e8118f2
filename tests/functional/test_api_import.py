"""The platform API over a real socket: health, authentication and the JSON Lines import."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from mailtrack.tracking.tables import events
from tests.factories import make_api_key, make_tenant
from tests.functional.conftest import LiveServer

LINES = [
    {
        "type": "sent",
        "message_id": "m1",
        "event_id": "a",
        "occurred_at": "2026-08-03T16:00:00Z",
        "customer": {"id": "c1", "name": "Éva Tóth", "email": "eva@example.com"},
    },
    {"type": "delivered", "message_id": "m1", "event_id": "b", "occurred_at": "2026-08-03T16:00:05Z"},
]


def test_healthz_answers_ok(live_server: LiveServer) -> None:
    with live_server.client() as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_import_needs_a_valid_key(live_server: LiveServer) -> None:
    with live_server.client() as client:
        assert client.post("/api/v1/events/import", content=b"").status_code == 401
        bad = client.post("/api/v1/events/import", content=b"", headers={"Authorization": "Bearer mtk_nope"})
    assert bad.status_code == 401
    assert "invalid" in bad.json()["detail"]


def test_import_over_http_is_idempotent_and_scoped_to_the_keys_salon(live_server: LiveServer) -> None:
    tenant, other = make_tenant(live_server.engine), make_tenant(live_server.engine)
    key, other_key = make_api_key(live_server.engine, tenant.id), make_api_key(live_server.engine, other.id)
    body = "\n".join(json.dumps(line) for line in LINES) + "\n{broken\n"
    with live_server.client(headers={"Authorization": f"Bearer {key}"}) as client:
        first = client.post("/api/v1/events/import", content=body)
        second = client.post("/api/v1/events/import", content=body)
    assert first.status_code == 200
    assert first.json()["imported"] == 2
    assert first.json()["rejected"][0]["line"] == 3
    assert second.json()["imported"] == 0
    assert second.json()["duplicates"] == 2
    with live_server.client(headers={"Authorization": f"Bearer {other_key}"}) as client:
        elsewhere = client.post("/api/v1/events/import", content=json.dumps(LINES[1]))
    assert elsewhere.json()["imported"] == 0, "another salon's message id is unknown to this key"
    with live_server.engine.connect() as conn:
        per_tenant: dict[int, int] = dict(
            conn.execute(select(events.c.tenant_id, func.count()).group_by(events.c.tenant_id)).all()
        )
    assert per_tenant == {tenant.id: 2}
