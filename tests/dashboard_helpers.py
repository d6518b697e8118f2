"""Helpers for the dashboard tests: a live server with the dashboard wired in, logins, a salon's history."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine, select

from mailtrack.app import create_app
from mailtrack.config import Settings
from mailtrack.dashboard import routes as dashboard_routes
from mailtrack.db import utcnow, write_transaction
from mailtrack.messages.queries import MessageIn, create_messages, ensure_campaign, store_links
from mailtrack.messages.tables import customers
from mailtrack.tenants.queries import create_manager
from mailtrack.tracking.ingest import EventIn
from mailtrack.tracking.useragent import UserAgentInfo
from tests.factories import ingest, make_customer, make_tenant
from tests.functional.conftest import LiveServer
from tests.live import free_port, serving

DASHBOARD = "/manager/connect/email/tracking"
PASSWORD = "correct horse battery"
HOSTILE = "<img src=x onerror=alert(1)>"
FORMULA = '=HYPERLINK("http://evil.example/steal","click me")'
IPHONE = UserAgentInfo("mobile", "apple_mail", "iOS", False, "")
DESKTOP = UserAgentInfo("desktop", "outlook", "Windows", False, "")
GMAIL = UserAgentInfo("unknown", "gmail", "", False, "")
PROXY = UserAgentInfo("unknown", "apple_mail", "", True, "apple_privacy_proxy")


def _expected_rate(day: int, hour: int) -> float:
    # A plausible salon: mornings and evenings on weekdays, Thursday 10:00 best, nights poor.
    weekday = (0.8, 0.9, 0.95, 1.0, 0.85, 0.55, 0.5)[day]
    shape = max(math.exp(-(((hour - 10) / 3.0) ** 2)), 0.7 * math.exp(-(((hour - 19) / 2.5) ** 2)))
    return round(0.04 + 0.18 * weekday * shape, 4)


# A send-time model's answer (the model itself is built separately) for the widget's tests.
SEND_TIME = {
    "weekday": "Thursday",
    "hour": 10,
    "expected_open_rate": _expected_rate(3, 10),
    "interval": [0.18, 0.26],
    "months_of_data": 1.5,
    "reliable": False,
    "grid": [[_expected_rate(day, hour) for hour in range(24)] for day in range(7)],
}


def wire_dashboard(app: FastAPI) -> FastAPI:
    """Add the dashboard's router and static files to an app (unless app.py already does)."""
    if not any(getattr(route, "path", None) == "/manager/login" for route in app.routes):
        app.include_router(dashboard_routes.router)
        app.mount(
            dashboard_routes.STATIC_URL,
            StaticFiles(directory=dashboard_routes.STATIC_DIR),
            name="dashboard-static",
        )
    return app


@contextmanager
def serve_dashboard(
    settings: Settings, engine: Engine, *, base_url: str | None = None
) -> Iterator[LiveServer]:
    """Serve the app with the dashboard on 127.0.0.1 (base_url overrides the public URL, e.g. https)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = settings.model_copy(update={"base_url": base_url or url})
    app = wire_dashboard(create_app(settings, engine=engine))
    with serving(app, port=port):
        yield LiveServer(url, engine, settings, app)


def make_manager(engine: Engine, tenant_id: int, email: str, password: str = PASSWORD) -> int:
    """A manager login for the salon; returns the manager's id."""
    with write_transaction(engine) as conn:
        return create_manager(conn, tenant_id=tenant_id, email=email, password=password).id


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def login(client: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    """Log in through the form, as a browser would (GET the form, POST it with its token)."""
    form = client.get("/manager/login")
    return client.post(
        "/manager/login",
        data={"email": email, "password": password, "csrf": csrf_of(form.text), "next": ""},
    )


@dataclass
class Salon:
    """A salon built for a test: ids of its customers and messages by a readable key."""

    tenant_id: int
    name: str
    manager_email: str
    customers: dict[str, int] = field(default_factory=dict)
    external: dict[str, str] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)


_message_counter = iter(range(1, 10**9))


def send(
    engine: Engine,
    tenant_id: int,
    customer_id: int,
    at: dt.datetime,
    *,
    campaign: str | None = None,
    channel: str = "marketing",
    source: str = "campaign",
    tracked: bool = True,
    links: tuple[str, ...] = (),
    delivered: bool = True,
) -> int:
    """Register a message (in a campaign if named) and record sent (and delivered)."""
    external_id = f"dm{next(_message_counter)}"
    with write_transaction(engine) as conn:
        campaign_id = (
            ensure_campaign(conn, tenant_id=tenant_id, name=campaign, source=source) if campaign else None
        )
        ids = create_messages(
            conn,
            tenant_id=tenant_id,
            batch=[MessageIn(external_id, customer_id, channel, source, campaign_id, tracked, at)],
        )
        store_links(conn, tenant_id=tenant_id, message_id=ids[external_id], urls=list(links))
    message_id = ids[external_id]
    events = [EventIn(tenant_id, message_id, "sent", at)]
    if delivered:
        events.append(EventIn(tenant_id, message_id, "delivered", at + dt.timedelta(minutes=1)))
    ingest(engine, *events)
    return message_id


def external_id_of(engine: Engine, customer_id: int) -> str:
    """The platform's id of a customer."""
    with engine.connect() as conn:
        found: str = conn.execute(
            select(customers.c.external_id).where(customers.c.id == customer_id)
        ).scalar_one()
    return found


def build_salon(
    engine: Engine, *, name: str = "Salon Aurora", manager_email: str = "boss@aurora.example"
) -> Salon:
    """A salon with a week of varied mail: opens on several devices, clicks, a 5.1.1 bounce, a machine
    open, a customer who never opened, hostile and formula-like names, system mail."""
    tenant = make_tenant(engine, name=name)
    salon = Salon(tenant.id, name, manager_email)
    make_manager(engine, tenant.id, manager_email)
    now = utcnow()
    people = {
        "anna": ("Anna Kovács", "anna@example.com"),
        "bela": ("Béla Nagy", "bela@example.com"),
        "hostile": (HOSTILE, "hostile@example.com"),
        "formula": (FORMULA, "+formula@example.com"),
        "gone": ("Gábor Gone", "nobody@nowhere.example"),
        "quiet": ("Quiet Kata", "kata@example.com"),
    }
    for key, (person, email) in people.items():
        salon.customers[key] = make_customer(engine, tenant.id, name=person, email=email)
        salon.external[key] = external_id_of(engine, salon.customers[key])
    c = salon.customers
    campaign = f"{name} autumn newsletter"
    offer = "https://www.aurora.example/offer?utm_source=mail"
    booking = "https://www.aurora.example/book"
    t0 = now - dt.timedelta(days=4)
    for index, key in enumerate(("anna", "bela", "hostile", "formula", "quiet")):
        salon.messages[f"news-{key}"] = send(
            engine,
            tenant.id,
            c[key],
            t0 + dt.timedelta(minutes=index),
            campaign=campaign,
            links=(offer, booking),
        )
    gone = send(engine, tenant.id, c["gone"], t0, campaign=campaign, links=(offer,), delivered=False)
    salon.messages["news-gone"] = gone
    m = salon.messages
    hour = dt.timedelta(hours=1)
    ingest(
        engine,
        EventIn(
            tenant.id,
            gone,
            "bounced",
            t0 + dt.timedelta(minutes=2),
            bounce_kind="hard",
            status="5.1.1",
            diagnostic="550 5.1.1 <nobody@nowhere.example>: user unknown <script>alert(2)</script>",
        ),
        EventIn(
            tenant.id, m["news-anna"], "opened", t0 + hour, agent=IPHONE, user_agent="Mozilla/5.0 (iPhone)"
        ),
        EventIn(tenant.id, m["news-anna"], "clicked", t0 + 2 * hour, link_position=0, agent=IPHONE),
        EventIn(
            tenant.id,
            m["news-bela"],
            "opened",
            t0 + 3 * hour,
            agent=DESKTOP,
            user_agent="Microsoft Outlook <b>16</b>",
            referer="https://ref.example/<i>x</i>",
        ),
        EventIn(tenant.id, m["news-bela"], "clicked", t0 + 4 * hour, link_position=1, agent=DESKTOP),
        EventIn(tenant.id, m["news-hostile"], "opened", t0 + 5 * hour, agent=GMAIL),
        EventIn(tenant.id, m["news-hostile"], "clicked", t0 + 6 * hour, link_position=0, agent=GMAIL),
        EventIn(tenant.id, m["news-formula"], "opened", t0 + 7 * hour, agent=PROXY, user_agent="Mozilla/5.0"),
    )
    # Automation and system mail: a reminder Anna opened, and a password reset (never tracked).
    reminder = send(
        engine,
        tenant.id,
        c["anna"],
        now - dt.timedelta(days=2),
        campaign="Appointment reminder",
        channel="transactional",
        source="automation",
    )
    ingest(engine, EventIn(tenant.id, reminder, "opened", now - dt.timedelta(days=2) + hour, agent=IPHONE))
    salon.messages["reminder-anna"] = reminder
    salon.messages["reset-bela"] = send(
        engine,
        tenant.id,
        c["bela"],
        now - dt.timedelta(days=1),
        campaign="Password reset",
        channel="system",
        source="system",
        tracked=False,
    )
    return salon
