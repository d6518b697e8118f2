"""The manager dashboard over a real socket, on SQLite and PostgreSQL: sessions, CSRF, throttling,
salon isolation, escaping, CSV safety, settings with their audit trail, empty states, speed."""

from __future__ import annotations

import csv
import datetime as dt
import html
import importlib.util
import io
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import Engine

from mailtrack.analytics import routes as analytics_routes
from mailtrack.config import Settings
from mailtrack.db import utcnow
from mailtrack.tenants.queries import TenantSettings, get_settings
from tests.dashboard_helpers import (
    DASHBOARD,
    FORMULA,
    HOSTILE,
    PASSWORD,
    SEND_TIME,
    Salon,
    build_salon,
    csrf_of,
    login,
    make_manager,
    send,
    serve_dashboard,
)
from tests.factories import make_api_key, make_customer, make_tenant
from tests.functional.conftest import LiveServer

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


@contextmanager
def _signed_in(server: LiveServer, email: str) -> Iterator[httpx.Client]:
    with server.client() as client:
        assert login(client, email).status_code == 303
        yield client


def test_login_sets_a_hardened_session_cookie_and_logout_ends_it(server: LiveServer, salon: Salon) -> None:
    with server.client() as client:
        form = client.get("/manager/login")
        assert form.status_code == 200
        assert "HttpOnly" in form.headers["set-cookie"]
        assert "script-src 'self'" in form.headers["content-security-policy"]
        answer = client.post(
            "/manager/login",
            data={"email": salon.manager_email.upper(), "password": PASSWORD, "csrf": csrf_of(form.text)},
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == DASHBOARD
        cookie = next(v for v in answer.headers.get_list("set-cookie") if v.startswith("mt_session="))
        flags = [part.strip().lower() for part in cookie.split(";")]
        assert "httponly" in flags
        assert "samesite=lax" in flags
        assert "path=/manager" in flags
        assert "secure" not in flags  # plain http in this test; see the https test below
        page = client.get(DASHBOARD)
        assert page.status_code == 200
        assert salon.name in page.text
        assert page.headers["cache-control"] == "no-store"
        stolen = client.cookies.get("mt_session")
        out = client.post("/manager/logout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303
        assert out.headers["location"].startswith("/manager/login")
    # The cookie issued before logout no longer opens anything (its session version is stale).
    with server.client(cookies={"mt_session": stolen}) as replay:
        again = replay.get(DASHBOARD)
        assert again.status_code == 303
        assert again.headers["location"].startswith("/manager/login?next=")


def test_cookie_is_secure_when_served_over_https(settings: Settings, engine: Engine) -> None:
    tenant = make_tenant(engine)
    make_manager(engine, tenant.id, "tls@salon.example")
    with (
        serve_dashboard(settings, engine, base_url="https://mail.salon.example") as live,
        live.client() as client,
    ):
        form = client.get("/manager/login")
        nonce = form.headers["set-cookie"].split(";")[0].split("=", 1)[1]
        assert "secure" in [part.strip().lower() for part in form.headers["set-cookie"].split(";")]
        # httpx keeps Secure cookies off plain http, as browsers do; hand the login cookie over ourselves.
        answer = client.post(
            "/manager/login",
            data={"email": "tls@salon.example", "password": PASSWORD, "csrf": csrf_of(form.text)},
            headers={"Cookie": f"mt_login={nonce}"},
        )
        assert answer.status_code == 303
        cookie = next(v for v in answer.headers.get_list("set-cookie") if v.startswith("mt_session="))
        assert "secure" in [part.strip().lower() for part in cookie.split(";")]


def test_wrong_password_is_refused_without_a_session(server: LiveServer, salon: Salon) -> None:
    with server.client() as client:
        answer = login(client, salon.manager_email, "not the password")
        assert answer.status_code == 401
        assert "do not match" in answer.text
        assert "mt_session" not in client.cookies
        assert client.get(DASHBOARD).status_code == 303
        assert login(client, "nobody@nowhere.example").status_code == 401


def test_five_failures_in_a_row_throttle_that_email_with_429(server: LiveServer, salon: Salon) -> None:
    with server.client() as client:
        for _ in range(5):
            assert login(client, salon.manager_email, "guess").status_code == 401
        blocked = login(client, salon.manager_email)  # even the right password waits now
        assert blocked.status_code == 429
        assert "Too many failed logins" in blocked.text
        assert int(blocked.headers["retry-after"]) > 60
        other = make_tenant(server.engine)
        make_manager(server.engine, other.id, "other@salon.example")
        assert login(client, "other@salon.example").status_code == 303  # other emails are not locked out


def test_forms_without_a_valid_csrf_token_are_refused(server: LiveServer, salon: Salon) -> None:
    with server.client() as client:
        client.get("/manager/login")
        for token in ("", "forged-token"):
            answer = client.post(
                "/manager/login", data={"email": salon.manager_email, "password": PASSWORD, "csrf": token}
            )
            assert answer.status_code == 403
    with _signed_in(server, salon.manager_email) as client:
        before = _settings(server, salon)
        for data in ({}, {"csrf": "forged"}):
            posted = client.post(
                f"{DASHBOARD}/settings", data={**data, "retention_days": "30", "ip_anonymize_days": "-1"}
            )
            assert posted.status_code == 403
            assert "This form has expired" in posted.text
            assert client.post("/manager/logout", data=data).status_code == 403
        assert _settings(server, salon) == before
        assert client.get(DASHBOARD).status_code == 200  # the refused logout left the session alone
    # A token from another session does not fit this one.
    with _signed_in(server, salon.manager_email) as first, _signed_in(server, salon.manager_email) as second:
        token = csrf_of(first.get(f"{DASHBOARD}/settings").text)
        assert (
            second.post(f"{DASHBOARD}/settings", data={"csrf": token, "retention_days": "30"}).status_code
            == 403
        )


def _settings(server: LiveServer, salon: Salon) -> TenantSettings:
    with server.engine.connect() as conn:
        return get_settings(conn, tenant_id=salon.tenant_id)


def test_pages_and_exports_need_a_session(server: LiveServer) -> None:
    with server.client() as client:
        for path in (
            "",
            "/settings",
            "/customers?q=a",
            "/customer?id=c1",
            "/export/events.csv",
            "/export/scores.csv",
        ):
            answer = client.get(DASHBOARD + path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/manager/login?next="), path


def test_a_manager_cannot_reach_another_salons_data(server: LiveServer, salon: Salon) -> None:
    rival = build_salon(server.engine, name="Salon Borealis", manager_email="boss@borealis.example")
    anna = salon.external["anna"]
    with _signed_in(server, rival.manager_email) as client:
        for path in (
            f"/customer?id={anna}",
            f"/customer/score?id={anna}",
            f"/export/customer.csv?id={anna}",
            f"?campaign={salon.name} autumn newsletter",
        ):
            answer = client.get(DASHBOARD + path)
            assert answer.status_code == 404, path
            assert "Anna" not in answer.text
        # Searches and exports only ever see the rival's own customers.
        found = client.get(f"{DASHBOARD}/customers", params={"q": "anna"})
        assert found.status_code == 303  # exactly one match: the rival's own Anna
        assert rival.external["anna"] in found.headers["location"]
        # Compared by column, not by substring: ids come from a counter, so `c1` is a prefix of `c10`.
        exported = {
            name: {
                row["customer_id"]
                for row in csv.DictReader(io.StringIO(client.get(f"{DASHBOARD}/{path}").text))
            }
            for name, path in (("events", "export/events.csv"), ("scores", "export/scores.csv"))
        }
        for customers in exported.values():
            assert customers.isdisjoint(salon.external.values())
        assert rival.external["anna"] in exported["events"]
        own = client.get(DASHBOARD, params={"campaign": f"{rival.name} autumn newsletter"})
        assert own.status_code == 200


def test_csv_exports_neutralize_formulas(server: LiveServer, salon: Salon) -> None:
    with _signed_in(server, salon.manager_email) as client:
        for path in (
            "/export/events.csv",
            "/export/scores.csv",
            f"/export/customer.csv?id={salon.external['formula']}",
        ):
            answer = client.get(DASHBOARD + path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"].startswith("text/csv")
            assert answer.headers["content-disposition"].startswith("attachment;")
            rows = list(csv.reader(io.StringIO(answer.text)))
            cells = [cell for row in rows[1:] for cell in row]
            assert "'" + FORMULA in cells, path
            assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], path
        events = list(csv.DictReader(io.StringIO(client.get(f"{DASHBOARD}/export/events.csv").text)))
        assert {"'+formula@example.com"} == {
            e["customer_email"] for e in events if e["customer_id"] == salon.external["formula"]
        }


def test_segment_export_lists_the_bucket_for_the_platform(server: LiveServer, salon: Salon) -> None:
    with _signed_in(server, salon.manager_email) as client:
        vip = client.get(f"{DASHBOARD}/export/segment.csv", params={"segment": "VIP"})
        assert vip.status_code == 200
        assert "segment-vip" in vip.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(vip.text)))
        assert rows, "Béla (opened and clicked his only tracked mail) is a VIP"
        assert all(int(row["score"]) >= 81 and row["segment"] == "VIP" for row in rows)
        assert salon.external["bela"] in {row["customer_id"] for row in rows}
        assert salon.external["quiet"] not in {row["customer_id"] for row in rows}
        assert client.get(f"{DASHBOARD}/export/segment.csv", params={"segment": "Nope"}).status_code == 422


def test_outside_text_is_escaped_everywhere(server: LiveServer, salon: Salon) -> None:
    with _signed_in(server, salon.manager_email) as client:
        pages = [
            client.get(DASHBOARD).text,
            client.get(f"{DASHBOARD}/customer", params={"id": salon.external["hostile"]}).text,
            client.get(f"{DASHBOARD}/customer/score", params={"id": salon.external["hostile"]}).text,
            client.get(f"{DASHBOARD}/customer", params={"id": salon.external["gone"]}).text,
            client.get(f"{DASHBOARD}/customer", params={"id": salon.external["bela"]}).text,
            client.get(f"{DASHBOARD}/customers", params={"q": "example.com"}).text,
        ]
    for page in pages:
        assert HOSTILE not in page
        assert "<script>alert(2)" not in page
        assert "<b>16</b>" not in page
        assert "<i>x</i>" not in page
    assert html.escape(HOSTILE, quote=False) in pages[0]
    assert "Microsoft Outlook &lt;b&gt;16&lt;/b&gt;" in pages[4]
    assert "https://ref.example/&lt;i&gt;x&lt;/i&gt;" in pages[4]
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in pages[3]


def test_customer_history_speaks_plainly(server: LiveServer, salon: Salon) -> None:
    with _signed_in(server, salon.manager_email) as client:
        gone = client.get(f"{DASHBOARD}/customer", params={"id": salon.external["gone"]}).text
        quiet = client.get(f"{DASHBOARD}/customer", params={"id": salon.external["quiet"]}).text
        anna = client.get(f"{DASHBOARD}/customer", params={"id": salon.external["anna"]}).text
        bela = client.get(f"{DASHBOARD}/customer", params={"id": salon.external["bela"]}).text
        search = client.get(f"{DASHBOARD}/customers", params={"q": "KOVACS"})
    assert "bounced on" in gone
    assert "mailbox does not exist (5.1.1)" in gone
    assert "never opened: likely in the spam folder or unread" in quiet
    assert "opened on" in anna
    assert "and clicked on" in anna
    assert "system mail is never tracked" in bela
    assert search.status_code == 303
    assert salon.external["anna"] in search.headers["location"]


def test_settings_change_is_saved_with_an_audit_line(server: LiveServer, salon: Salon) -> None:
    with _signed_in(server, salon.manager_email) as client:
        page = client.get(f"{DASHBOARD}/settings")
        assert "No change yet" in page.text
        assert 'value="90" selected' in page.text
        assert 'value="30" selected' in page.text
        assert "always off" in page.text  # system mail, locked
        saved = client.post(
            f"{DASHBOARD}/settings",
            data={
                "csrf": csrf_of(page.text),
                "track_marketing": "on",
                "retention_days": "180",
                "ip_anonymize_days": "-1",
            },
        )
        assert saved.status_code == 303
        assert saved.headers["location"].endswith("saved=3")
        after = client.get(saved.headers["location"]).text
        assert "Saved: 3 changes" in after
        assert salon.manager_email in after
        assert "Tracking of transactional mail" in after
        assert "on → <strong>off</strong>" in after
        assert "not stored at all" in after
        bad = client.post(
            f"{DASHBOARD}/settings",
            data={"csrf": csrf_of(after), "retention_days": "0", "ip_anonymize_days": "30"},
        )
        assert bad.status_code == 422
        assert "between 1 and 3650" in bad.text
    current = _settings(server, salon)
    assert (current.track_transactional, current.retention_days, current.ip_anonymize_days) == (
        False,
        180,
        -1,
    )


def test_empty_states_help_a_new_salon_and_a_system_only_salon(server: LiveServer) -> None:
    fresh = make_tenant(server.engine, name="Brand New Salon")
    make_manager(server.engine, fresh.id, "new@salon.example")
    system_only = make_tenant(server.engine, name="System Only Salon")
    make_manager(server.engine, system_only.id, "sys@salon.example")
    customer = make_customer(server.engine, system_only.id, name="Rita Reset")
    send(
        server.engine,
        system_only.id,
        customer,
        utcnow() - dt.timedelta(hours=3),
        channel="system",
        source="system",
        tracked=False,
    )
    with _signed_in(server, "new@salon.example") as client:
        page = client.get(DASHBOARD).text
        assert 'data-empty="no-mail"' in page
        assert "No mail yet" in page
    with _signed_in(server, "sys@salon.example") as client:
        page = " ".join(client.get(DASHBOARD).text.split())
        assert 'data-empty="system-only"' in page
        assert "never tracked" in page
        assert 'data-metric="sent"' in page  # deliveries still show


def test_dashboard_cards_are_the_stats_api_figures(server: LiveServer, salon: Salon) -> None:
    key = make_api_key(server.engine, salon.tenant_id)
    with (
        _signed_in(server, salon.manager_email) as client,
        server.client(headers={"Authorization": f"Bearer {key}"}) as api,
    ):
        page = client.get(DASHBOARD).text
        stats = api.get(
            "/api/v1/stats", params={"from": _attr(page, "data-from"), "to": _attr(page, "data-to")}
        ).json()
    assert stats["cards"]["sent"] == 8  # six newsletters, a reminder, a password reset
    assert f"{stats['cards']['open_rate'] * 100:.1f}%" in page
    assert f"{stats['cards']['bounce_rate'] * 100:.1f}%" in page
    assert f"{stats['cards']['machine_open_share'] * 100:.1f}%" in page


def test_campaign_cards_say_when_mail_was_never_tracked(server: LiveServer, salon: Salon) -> None:
    with _signed_in(server, salon.manager_email) as client:
        page = client.get(DASHBOARD).text

    def card(name: str) -> str:
        start = page.index(f'data-campaign="{name}"')
        return " ".join(page[start : page.index("</a>", start)].split())

    reset, reminder = card("Password reset"), card("Appointment reminder")
    assert "1</strong> sent" in reset
    assert "not tracked" in reset
    assert "opened" not in reset, "no 0.0 % for mail that cannot show an open"
    assert "clicked" not in reset
    assert "100.0%</strong> opened" in reminder
    assert "not tracked" not in reminder


def _attr(page: str, name: str) -> str:
    start = page.index(f'{name}="') + len(name) + 2
    return page[start : page.index('"', start)]


def test_best_send_time_shows_the_models_answer(
    server: LiveServer, salon: Salon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(analytics_routes, "best_send_time", lambda conn, **_: SEND_TIME)
    with _signed_in(server, salon.manager_email) as client:
        page = " ".join(client.get(DASHBOARD).text.split())
    assert '<strong class="slot">Thursday 10:00</strong> <span aria-hidden="true">→</span> expected' in page
    assert '<strong class="expected">22%</strong>' in page
    assert "Likely between 18% – 26%" in page
    assert 'data-notice="short-history"' in page
    assert "Based on 1.5 months of data" in page
    assert page.count('class="hm-cell hm-best"') == 2  # the best slot, in the wide and the tall heatmap
    assert page.count('class="hm-cell') == 2 * 7 * 24


def test_invalid_filters_fall_back_with_the_reason(server: LiveServer, salon: Salon) -> None:
    with _signed_in(server, salon.manager_email) as client:
        page = client.get(DASHBOARD, params={"from": "2026-13-01", "channel": "fax"})
    assert page.status_code == 200
    assert "Showing the last 7 days without filters instead" in page.text


def test_the_demo_salon_dashboard_renders_every_widget(settings: Settings, engine: Engine) -> None:
    """A seeded salon's dashboard, for a week and for three months (timings: bench/dashboard_render.py)."""
    from mailtrack.demo.generator import seed_history

    tenant = make_tenant(engine, name="Demo Salon")
    make_manager(engine, tenant.id, "manager@demo.example")
    seed_history(engine, tenant_id=tenant.id, months=3, customers=400, seed=1)
    with serve_dashboard(settings, engine) as live, live.client() as client:
        assert login(client, "manager@demo.example").status_code == 303
        week = client.get(DASHBOARD)
        long_period = client.get(
            DASHBOARD, params={"from": (utcnow() - dt.timedelta(days=92)).date().isoformat()}
        )
    for page in (week, long_period):
        assert page.status_code == 200
        for widget in ("Open rate", "Most engaged customers", "Best time to send", "Top clicked links"):
            assert widget in page.text
