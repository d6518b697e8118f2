"""The dashboard in Chromium: every widget against the stats JSON, search, settings, CSV downloads,
a hostile name that stays inert, salon isolation, logout; full-page screenshots on desktop and phone."""

from __future__ import annotations

import csv
import importlib.util
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect
from sqlalchemy import Engine

from mailtrack.analytics import routes as analytics_routes
from mailtrack.config import Settings
from mailtrack.dashboard import present
from mailtrack.tenants.queries import get_settings
from tests.browser.conftest import PHONE, OpenPage, Watched
from tests.dashboard_helpers import (
    DASHBOARD,
    FORMULA,
    HOSTILE,
    SEND_TIME,
    Salon,
    build_salon,
    make_manager,
    serve_dashboard,
)
from tests.factories import make_api_key, make_tenant
from tests.functional.conftest import LiveServer

pytestmark = pytest.mark.browser
SEEDER = importlib.util.find_spec("mailtrack.demo.generator") is not None


@pytest.fixture
def server(settings: Settings, engine: Engine) -> Iterator[LiveServer]:
    """A live server with the dashboard wired in."""
    with serve_dashboard(settings, engine) as live:
        yield live


@pytest.fixture
def salon(server: LiveServer) -> Salon:
    """A salon with a varied week of mail and a manager."""
    return build_salon(server.engine)


def _stats(server: LiveServer, tenant_id: int, page: Watched) -> dict[str, Any]:
    period = page.page.locator(".period")
    key = make_api_key(server.engine, tenant_id)
    answer = httpx.get(
        f"{server.url}/api/v1/stats",
        params={"from": period.get_attribute("data-from") or "", "to": period.get_attribute("data-to") or ""},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 200
    stats: dict[str, Any] = answer.json()
    return stats


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _check_every_widget(page: Watched, stats: dict[str, Any]) -> None:
    """Compare what the manager sees with the API's JSON, widget by widget."""
    view = page.page
    cards, change = stats["cards"], stats["change"]
    for key in ("sent", "open_rate", "click_rate", "bounce_rate", "machine_open_share"):
        card = view.locator(f'.kpi[data-metric="{key}"]')
        shown = f"{cards[key]:,}" if key == "sent" else _pct(cards[key])
        expect(card.locator(".kpi-value")).to_have_text(shown)
        delta = f"{change[key]:+,}" if key == "sent" else f"{change[key] * 100:+.1f} pts"
        expect(card.locator(".change")).to_have_text(delta)
        assert card.get_attribute("title") == present.CARD_DEFINITIONS[key]
        card.focus()  # the definition shows on keyboard focus as well as on hover
        expect(card.locator(".kpi-def")).to_be_visible()
        card.blur()
        expect(card.locator(".kpi-def")).to_be_hidden()
    for bucket in stats["engagement_buckets"]:
        row = view.locator(f'.bar-row[data-range="{bucket["range"]}"]')
        expect(row.locator(".percent")).to_have_text(f"{bucket['percent']:.1f}%")
    expect(view.locator(".engaged .name")).to_have_text([c["name"] for c in stats["top_engaged"]])
    expect(view.locator(".engaged .score")).to_have_text([str(c["score"]) for c in stats["top_engaged"]])
    expect(view.locator(".links td.url span")).to_have_text([link["url"] for link in stats["top_links"]])
    expect(view.locator(".links td.clicks")).to_have_text(
        [f"{link['clicks']:,}" for link in stats["top_links"]]
    )
    expect(view.locator(".links td.unique")).to_have_text(
        [f"{x['unique_clicks']:,}" for x in stats["top_links"]]
    )
    devices = view.locator(".legend li")
    expect(devices.locator(".legend-label")).to_have_text(
        [present.DEVICE_LABELS[k] for k in stats["devices"]]
    )
    expect(devices.locator(".legend-value")).to_have_text([_pct(v) for v in stats["devices"].values()])
    clients = view.locator("#clients .bar-row")
    expect(clients.locator(".bar-label")).to_have_text([present.CLIENT_LABELS[k] for k in stats["clients"]])
    expect(clients.locator(".percent")).to_have_text([_pct(v) for v in stats["clients"].values()])
    events = view.locator(".events .event")
    expect(events).to_have_count(len(stats["recent_events"]))
    for index, event in enumerate(stats["recent_events"]):
        assert events.nth(index).get_attribute("data-type") == event["type"]
        expect(events.nth(index).locator(".who")).to_have_text(
            event["customer"]["name"] or event["customer"]["id"]
        )
    best = stats["best_send_time"]
    if best is None:
        expect(view.locator('[data-notice="not-available"]')).to_be_visible()
    else:
        expect(view.locator("#send-time .slot")).to_have_text(f"{best['weekday']} {best['hour']:02d}:00")
        expect(view.locator("#send-time .expected")).to_have_text(f"{best['expected_open_rate'] * 100:.0f}%")
        if not best["reliable"]:
            expect(view.locator('[data-notice="short-history"]')).to_be_visible()


def test_every_widget_shows_the_stats_json(server: LiveServer, salon: Salon, open_page: OpenPage) -> None:
    page = open_page()
    page.login(server.url, salon.manager_email)
    assert page.page.url.endswith(DASHBOARD)
    _check_every_widget(page, _stats(server, salon.tenant_id, page))
    page.screenshot("dashboard-desktop")
    phone = open_page(PHONE)
    phone.login(server.url, salon.manager_email)
    expect(phone.page.locator('.kpi[data-metric="open_rate"]')).to_be_visible()
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scroll
    phone.screenshot("dashboard-phone")
    assert page.csp_errors == []
    assert phone.csp_errors == []


def test_search_finds_a_customer_and_tells_what_happened(
    server: LiveServer, salon: Salon, open_page: OpenPage
) -> None:
    page = open_page()
    page.login(server.url, salon.manager_email)
    page.page.fill('.search input[name="q"]', "kovacs")  # accents and case ignored
    with page.page.expect_navigation():
        page.page.press('.search input[name="q"]', "Enter")
    expect(page.page.locator("h1.customer-name")).to_have_text("Anna Kovács")
    expect(page.page.locator(".verdict").first).to_contain_text("opened on")
    page.page.goto(f"{server.url}{DASHBOARD}/customers?q=example")
    expect(page.page.locator(".people li")).to_have_count(6)
    page.page.get_by_role("link", name="Quiet Kata").click()
    expect(page.page.locator(".verdict").first).to_contain_text(
        "never opened: likely in the spam folder or unread"
    )
    page.page.goto(f"{server.url}{DASHBOARD}/customers?q=nobody@nowhere")
    expect(page.page.locator(".verdict").first).to_contain_text("mailbox does not exist (5.1.1)")
    page.screenshot("customer-history-bounced")
    page.page.goto(f"{server.url}{DASHBOARD}/customers?q=bela@")
    page.page.locator(".message .trail summary").first.click()
    page.screenshot("customer-history")


def test_changing_a_setting_saves_it_with_an_audit_line(
    server: LiveServer, salon: Salon, open_page: OpenPage
) -> None:
    page = open_page()
    page.login(server.url, salon.manager_email)
    page.page.get_by_role("link", name="Settings").click()
    expect(page.page.get_by_text("No change yet")).to_be_visible()
    expect(page.page.locator(".switch.locked input")).to_be_disabled()
    page.page.uncheck('input[name="track_transactional"]')
    page.page.select_option('select[name="ip_anonymize_days"]', "-1")
    with page.page.expect_navigation():
        page.page.get_by_role("button", name="Save settings").click()
    expect(page.page.locator("[data-saved]")).to_have_text("Saved: 2 changes, recorded below.")
    rows = page.page.locator("table.audit tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text(salon.manager_email)
    expect(page.page.locator("table.audit")).to_contain_text("not stored at all")
    with server.engine.connect() as conn:
        current = get_settings(conn, tenant_id=salon.tenant_id)
    assert (current.track_transactional, current.ip_anonymize_days) == (False, -1)
    page.screenshot("settings")


def test_csv_downloads_are_formula_safe(server: LiveServer, salon: Salon, open_page: OpenPage) -> None:
    page = open_page()
    page.login(server.url, salon.manager_email)
    with page.page.expect_download() as vip:
        page.page.locator('.bar-row[data-range="81-100"] a.export').click()
    rows = list(csv.DictReader(io.StringIO(vip.value.path().read_text("utf-8"))))
    assert vip.value.suggested_filename.startswith("mailtrack-segment-vip-")
    assert rows
    assert {row["segment"] for row in rows} == {"VIP"}
    with page.page.expect_download() as events:
        page.page.get_by_role("link", name="Export all events (CSV)").click()
    cells = [cell for row in csv.reader(io.StringIO(events.value.path().read_text("utf-8"))) for cell in row]
    assert "'" + FORMULA in cells
    assert "'+formula@example.com" in cells
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")]


def test_a_hostile_name_stays_text(server: LiveServer, salon: Salon, open_page: OpenPage) -> None:
    page = open_page()
    page.login(server.url, salon.manager_email)
    hostile = salon.external["hostile"]
    for path in ("", f"/customer?id={hostile}", f"/customer/score?id={hostile}", "/customers?q=example.com"):
        page.page.goto(f"{server.url}{DASHBOARD}{path}")
        page.page.wait_for_load_state("load")
        assert page.page.locator('img[src="x"]').count() == 0, path
        assert HOSTILE in page.page.locator("main").inner_text(), path
    page.page.goto(f"{server.url}{DASHBOARD}/customer?id={hostile}")
    page.screenshot("hostile-name")
    assert page.dialogs == [], "a dialog opened: markup from a customer's name ran"


def test_another_salons_manager_cannot_reach_its_pages(
    server: LiveServer, salon: Salon, open_page: OpenPage
) -> None:
    rival = make_tenant(server.engine, name="Salon Rival")
    make_manager(server.engine, rival.id, "boss@rival.example")
    page = open_page()
    page.login(server.url, "boss@rival.example")
    anna = salon.external["anna"]
    for path in (
        f"/customer?id={anna}",
        f"/customer/score?id={anna}",
        f"?campaign={salon.name} autumn newsletter",
    ):
        answer = page.page.goto(f"{server.url}{DASHBOARD}{path}")
        assert answer is not None
        assert answer.status == 404, path
        expect(page.page.locator("h1")).to_have_text("Not found")
        assert "Kovács" not in page.page.content()
    download = page.context.request.get(f"{server.url}{DASHBOARD}/export/customer.csv?id={anna}")
    assert download.status == 404
    page.page.goto(f"{server.url}{DASHBOARD}")
    expect(page.page.locator('[data-empty="no-mail"]')).to_be_visible()
    page.screenshot("empty-new-salon")


def test_the_send_time_models_answer_is_shown_with_its_heatmap(
    server: LiveServer, salon: Salon, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(analytics_routes, "best_send_time", lambda conn, **_: SEND_TIME)
    page = open_page()
    page.login(server.url, salon.manager_email)
    stats = _stats(server, salon.tenant_id, page)
    assert stats["best_send_time"]["weekday"] == "Thursday"
    _check_every_widget(page, stats)
    best = page.page.locator(".heatmap.wide .hm-best")
    expect(best).to_have_count(1)
    assert (best.get_attribute("data-weekday"), best.get_attribute("data-hour")) == ("3", "10")
    page.screenshot("send-time-model")
    page.screenshot("send-time-card", selector="#send-time")


def test_logout_ends_the_session(server: LiveServer, salon: Salon, open_page: OpenPage) -> None:
    page = open_page()
    page.login(server.url, salon.manager_email)
    with page.page.expect_navigation():
        page.page.get_by_role("button", name="Log out").click()
    expect(page.page.get_by_text("You are logged out.")).to_be_visible()
    page.page.goto(f"{server.url}{DASHBOARD}")
    assert "/manager/login" in page.page.url


@pytest.mark.skipif(not SEEDER, reason="the demo seeder (mailtrack.demo.generator) is not built yet")
def test_seeded_demo_salon_looks_right(settings: Settings, engine: Engine, open_page: OpenPage) -> None:
    from mailtrack.demo.generator import seed_history

    tenant = make_tenant(engine, name="Demo Salon")
    make_manager(engine, tenant.id, "manager@demo.example")
    seed_history(engine, tenant_id=tenant.id, months=4, customers=300, seed=7)
    with serve_dashboard(settings, engine) as live:
        page = open_page()
        page.login(live.url, "manager@demo.example")
        _check_every_widget(page, _stats(live, tenant.id, page))
        began = time.perf_counter()
        page.page.reload()
        page.page.wait_for_load_state("load")
        print(f"\ndemo dashboard reload in Chromium: {(time.perf_counter() - began) * 1000:.0f} ms")
        page.screenshot("demo-desktop")
        page.page.goto(f"{live.url}{DASHBOARD}?from=2000-01-01&to=2000-01-07")  # an empty period
        page.screenshot("demo-empty-period")
        phone = open_page(PHONE)
        phone.login(live.url, "manager@demo.example")
        phone.screenshot("demo-phone")
        assert page.csp_errors == []
        assert phone.csp_errors == []
