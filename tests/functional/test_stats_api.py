"""The analytics API over a real socket: stats, the event log, customer segments and score explanations."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from mailtrack.analytics import metrics
from mailtrack.db import utcnow
from mailtrack.messages.tables import customers
from mailtrack.tracking.ingest import EventIn
from mailtrack.tracking.useragent import UserAgentInfo
from tests.factories import ingest, make_api_key, make_customer, make_message, make_tenant
from tests.functional.conftest import LiveServer

IPHONE = UserAgentInfo("mobile", "apple_mail", "iOS", False, "")
DESKTOP = UserAgentInfo("desktop", "other", "Windows", False, "")
PROXY = UserAgentInfo("unknown", "apple_mail", "", True, "apple_privacy_proxy")
CARDS = {
    "sent",
    "delivered",
    "open_rate",
    "click_rate",
    "bounce_rate",
    "click_to_open_rate",
    "machine_open_share",
}


@pytest.fixture
def server(live_server: LiveServer) -> LiveServer:
    """The live server (its app includes the analytics API)."""
    return live_server


def _client(server: LiveServer, tenant_id: int) -> httpx.Client:
    key = make_api_key(server.engine, tenant_id)
    return server.client(headers={"Authorization": f"Bearer {key}"})


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def _sent(engine: Engine, tenant_id: int, customer_id: int, at: dt.datetime, **options: Any) -> int:
    message = make_message(engine, tenant_id, customer_id, sent_at=at, **options)
    ingest(engine, EventIn(tenant_id, message, "sent", at))
    return message


def _external_id(engine: Engine, customer_id: int) -> str:
    with engine.connect() as conn:
        found: str = conn.execute(
            select(customers.c.external_id).where(customers.c.id == customer_id)
        ).scalar_one()
    return found


def test_every_analytics_endpoint_needs_an_api_key(server: LiveServer) -> None:
    with server.client() as client:
        for path in ("/api/v1/stats", "/api/v1/events", "/api/v1/customers", "/api/v1/customers/c1/score"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": "Bearer mtk_nope"}).status_code == 401, path


def test_bad_parameters_answer_422_with_the_reason(server: LiveServer) -> None:
    tenant = make_tenant(server.engine)
    cases = [
        ("/api/v1/stats?from=2026-13-01&to=2026-12-31", "`from` must be a date as YYYY-MM-DD"),
        ("/api/v1/stats?from=yesterday", "`from` must be a date"),
        ("/api/v1/stats?from=2026-08-05&to=2026-08-01", "is after `to`"),
        ("/api/v1/stats?from=2020-01-01&to=2026-01-01", "at most 1096 days"),
        ("/api/v1/stats?channel=fax", "`channel` must be one of marketing, transactional, system"),
        ("/api/v1/stats?source=newsletter", "`source` must be one of campaign, automation, system"),
        ("/api/v1/events?type=viewed", "`type` must be one of sent, delivered"),
        ("/api/v1/events?cursor=bm9wZQ", "`cursor` is not a cursor this API returned"),
        ("/api/v1/events?cursor=!!!", "`cursor` is not a cursor"),
        ("/api/v1/events?limit=0", "limit"),
        ("/api/v1/events?limit=501", "limit"),
        ("/api/v1/customers?min_score=90&max_score=10", "`min_score` (90) is above `max_score` (10)"),
        ("/api/v1/customers?min_score=101", "min_score"),
        ("/api/v1/customers?cursor=MS4yLjM", "`cursor` is not a cursor"),
    ]
    with _client(server, tenant.id) as client:
        for path, reason in cases:
            response = client.get(path)
            assert response.status_code == 422, path
            assert reason in response.text, (path, response.text)
        empty_filters = client.get("/api/v1/stats?from=2026-08-01&to=2026-08-01&channel=&source=&campaign=")
    assert empty_filters.status_code == 200, "an empty filter means no filter"


def test_stats_compare_a_dst_week_with_the_week_before(server: LiveServer) -> None:
    engine = server.engine
    tenant = make_tenant(engine, timezone="America/New_York")
    people = [make_customer(engine, tenant.id) for _ in range(6)]
    link = ("https://salon.example/book",)
    # The week before: five tracked messages, one opened; the last is Saturday 23:30 local.
    earlier = [_sent(engine, tenant.id, person, _utc("2026-03-03T15:00")) for person in people[:4]]
    _sent(engine, tenant.id, people[4], _utc("2026-03-08T04:30"))
    # This week (DST starts on its first night): 00:30 local Sunday, a Tuesday, untracked system mail.
    night = _sent(engine, tenant.id, people[0], _utc("2026-03-08T05:30"), links=link)
    tuesday = _sent(engine, tenant.id, people[1], _utc("2026-03-10T14:00"))
    _sent(
        engine,
        tenant.id,
        people[2],
        _utc("2026-03-10T14:00"),
        channel="system",
        source="system",
        tracked=False,
    )
    _sent(engine, tenant.id, people[5], _utc("2026-03-15T04:30"))  # 00:30 EDT on the next Sunday
    ingest(
        engine,
        EventIn(tenant.id, earlier[0], "opened", _utc("2026-03-03T18:00"), agent=IPHONE),
        EventIn(tenant.id, night, "clicked", _utc("2026-03-08T12:00"), agent=DESKTOP, link_position=0),
        EventIn(tenant.id, tuesday, "opened", _utc("2026-03-10T14:01"), agent=PROXY),
        EventIn(tenant.id, tuesday, "opened", _utc("2026-03-10T19:00"), agent=IPHONE),
    )
    with _client(server, tenant.id) as client:
        stats = client.get("/api/v1/stats", params={"from": "2026-03-08", "to": "2026-03-14"}).json()
        nope = client.get("/api/v1/stats?from=2026-03-08&to=2026-03-14&campaign=Nope").json()
        feed = client.get("/api/v1/events?limit=10").json()
    assert set(stats) >= {
        "cards",
        "previous",
        "change",
        "engagement_buckets",
        "top_engaged",
        "best_send_time",
        "top_links",
        "devices",
        "clients",
        "recent_events",
    }
    assert set(stats["cards"]) == set(stats["previous"]) == set(stats["change"]) == CARDS
    assert stats["period"] == {
        "from": "2026-03-08",
        "to": "2026-03-14",
        "days": 7,
        "timezone": "America/New_York",
    }
    assert (stats["previous_period"]["from"], stats["previous_period"]["to"]) == ("2026-03-01", "2026-03-07")
    assert stats["cards"] == {
        "sent": 3,
        "delivered": 3,
        "open_rate": 1.0,  # 2 opened of 2 tracked: the system message is not tracked
        "click_rate": 0.5,
        "bounce_rate": 0.0,
        "click_to_open_rate": 0.5,
        "machine_open_share": 0.5,
    }
    assert stats["previous"] == {
        "sent": 5,
        "delivered": 5,
        "open_rate": 0.2,
        "click_rate": 0.0,
        "bounce_rate": 0.0,
        "click_to_open_rate": 0.0,
        "machine_open_share": 0.0,
    }
    change = stats["change"]
    assert (change["sent"], change["delivered"]) == (-2, -2)
    assert change["open_rate"] == pytest.approx(0.8)
    assert (change["click_rate"], change["click_to_open_rate"], change["machine_open_share"]) == (
        0.5,
        0.5,
        0.5,
    )
    assert stats["top_links"] == [{"url": link[0], "clicks": 1, "unique_clicks": 1}]
    assert stats["devices"] == {"desktop": 0.5, "mobile": 0.5}
    assert stats["clients"] == {"apple_mail": 0.5, "other": 0.5}
    assert stats["recent_events"] == feed["events"]
    # The feed is the salon's latest activity, whatever the period: next Sunday's message comes first.
    newest = [(e["type"], e["machine"], e["machine_reason"]) for e in stats["recent_events"][:3]]
    assert newest == [("sent", False, None), ("opened", False, None), ("opened", True, "apple_privacy_proxy")]
    assert stats["counts"]["machine_opens"] == 1
    assert stats["best_send_time"] is None, "a handful of opens: no recommendation, never an invented slot"
    assert nope["cards"] == nope["previous"] == dict.fromkeys(CARDS, 0)
    assert nope["top_links"] == []
    assert nope["devices"] == {}


def test_event_search_and_pages_over_http(server: LiveServer) -> None:
    engine = server.engine
    tenant, other = make_tenant(engine), make_tenant(engine)
    anna = make_customer(engine, tenant.id, name="Anna Kovács", email="anna@example.com")
    bela = make_customer(engine, tenant.id, name="Béla Nagy")
    start = _utc("2026-08-03T08:00")
    for day in range(3):
        for person in (anna, bela):
            _sent(engine, tenant.id, person, start + dt.timedelta(days=day))
    _sent(engine, other.id, make_customer(engine, other.id, name="Anna Kovács"), start)
    with _client(server, tenant.id) as client:
        found = client.get("/api/v1/events", params={"q": "kovacs"}).json()
        pages: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = client.get("/api/v1/events", params={"limit": 4, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200
            pages += page.json()["events"]
            cursor = page.json()["next"]
            if cursor is None:
                break
        everything = client.get("/api/v1/events?limit=500").json()
        none_delivered = client.get("/api/v1/events?type=delivered").json()
    assert [event["customer"]["name"] for event in found["events"]] == ["Anna Kovács"] * 3
    assert found["events"][0]["customer"] == {
        "id": _external_id(engine, anna),
        "name": "Anna Kovács",
        "email": "anna@example.com",
    }
    assert found["next"] is None
    assert pages == everything["events"]
    assert len(pages) == 6, "another salon's events never show"
    assert [event["occurred_at"] for event in pages] == sorted(
        (e["occurred_at"] for e in pages), reverse=True
    )
    assert pages[0]["occurred_at"] == "2026-08-05T08:00:00Z"
    assert none_delivered == {"events": [], "next": None}


def test_customer_segments_scores_and_isolation(server: LiveServer) -> None:
    engine = server.engine
    tenant, other = make_tenant(engine, timezone="UTC"), make_tenant(engine)
    names = ("Vera", "Mira", "Cole", "Ugo")
    people = {name: make_customer(engine, tenant.id, name=name) for name in names}
    stranger = make_customer(engine, other.id, name="Vera")
    recent = utcnow().replace(minute=0, second=0) - dt.timedelta(days=10)
    older = recent - dt.timedelta(days=30)  # weighs half as much as the recent message
    mail = {
        name: (_sent(engine, tenant.id, i, older), _sent(engine, tenant.id, i, recent))
        for name, i in people.items()
    }
    hour = dt.timedelta(hours=1)
    ingest(
        engine,
        *(
            EventIn(tenant.id, m, "clicked", at + hour, agent=DESKTOP)
            for m, at in zip(mail["Vera"], (older, recent), strict=True)
        ),
        EventIn(tenant.id, mail["Mira"][1], "opened", recent + hour, agent=IPHONE),  # 0.6 × 2/3 → 40
        EventIn(tenant.id, mail["Ugo"][1], "opened", recent + hour, agent=IPHONE),
        EventIn(tenant.id, mail["Ugo"][1], "unsubscribed", recent + 2 * hour),
    )
    with _client(server, tenant.id) as client:
        vip = client.get("/api/v1/customers?min_score=81").json()
        first = client.get("/api/v1/customers?max_score=20&limit=1").json()
        second = client.get(
            "/api/v1/customers", params={"max_score": 20, "limit": 1, "cursor": first["next"]}
        ).json()
        explained = client.get(f"/api/v1/customers/{_external_id(engine, people['Mira'])}/score").json()
        foreign = client.get(f"/api/v1/customers/{_external_id(engine, stranger)}/score")
        unknown = client.get("/api/v1/customers/nobody/score")
        stats = client.get("/api/v1/stats").json()
    assert [(c["name"], c["score"]) for c in vip["customers"]] == [("Vera", 100)]
    assert vip["customers"][0]["last_engagement"] == (recent + hour).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [c["name"] for c in first["customers"] + second["customers"]] == ["Cole", "Ugo"]
    assert second["next"] is None
    assert (explained["score"], explained["bucket"]) == (40, "21-40")
    assert explained["inputs"]["weighted_open_share"] == pytest.approx(2 / 3)
    assert explained["inputs"]["tracked_delivered"] == 2
    assert "rounded to 40" in explained["explanation"]
    assert explained["formula"] == metrics.SCORE_FORMULA
    assert foreign.status_code == unknown.status_code == 404
    assert [(c["name"], c["score"]) for c in stats["top_engaged"]] == [("Vera", 100), ("Mira", 40)]
    assert [(b["range"], b["customers"], b["percent"]) for b in stats["engagement_buckets"]] == [
        ("0-20", 2, 50.0),
        ("21-40", 1, 25.0),
        ("41-60", 0, 0.0),
        ("61-80", 0, 0.0),
        ("81-100", 1, 25.0),
    ]
    assert stats["period"]["days"] == 30
    assert stats["cards"]["sent"] == 4, "the default period is the last 30 days: only the recent mail"
