"""`mailtrack serve` and `mailtrack demo`."""

from __future__ import annotations

import typer
import uvicorn
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, func, select

from mailtrack.cli.common import fail, open_engine, stderr
from mailtrack.config import InsecureSettingsError, Settings
from mailtrack.db import make_engine, write_transaction
from mailtrack.delivery.inbound import codec_from_settings
from mailtrack.delivery.smtp_listener import start_listener
from mailtrack.messages.tables import messages
from mailtrack.tenants.queries import create_api_key, create_manager, create_tenant, find_tenant_by_name
from mailtrack.tracking.protocol import HTTP_PROTOCOL

DEMO_SALON = "Demo Salon"
DEMO_EMAIL = "manager@demo.salon"
DEMO_PASSWORD = "demo-salon-2026"  # noqa: S105  (printed on purpose: it is the demo's public login)


def _start_inbound_listener(settings: Settings) -> Controller | None:
    """The bounce listener when MAILTRACK_INBOUND_SMTP_PORT is set (one per server, not per worker)."""
    # Here, not in the app's lifespan: every uvicorn worker runs the lifespan, and only one can bind.
    if settings.inbound_smtp_port is None:
        return None
    return start_listener(
        make_engine(settings.database_url),
        codec_from_settings(settings),
        settings.inbound_smtp_host,
        settings.inbound_smtp_port,
    )


def _run(settings: Settings, host: str, port: int, workers: int) -> None:
    listener = _start_inbound_listener(settings)
    try:
        _uvicorn(settings, host, port, workers)
    finally:
        if listener is not None:
            listener.stop()


def _uvicorn(settings: Settings, host: str, port: int, workers: int) -> None:
    uvicorn.run(
        "mailtrack.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        proxy_headers=False,  # X-Forwarded-For is read by our own trusted-proxy check only
        server_header=False,
        # No request lines: each would carry a reader's address and token, kept past the 30 days after
        # which stored addresses are anonymized. /metrics counts the traffic.
        access_log=False,
        http=HTTP_PROTOCOL,
    )


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes."),
) -> None:
    """Migrate the database, then serve tracking, the API and the dashboard."""
    settings, _ = open_engine()
    try:
        settings.require_production_secret()
    except InsecureSettingsError as exc:
        raise fail(str(exc)) from None
    _run(settings, host, port, workers)


def ensure_demo_salon(engine: Engine) -> tuple[int, bool]:
    """The demo salon's id (created with its manager on first run) and whether it has no mail yet."""
    with write_transaction(engine) as conn:
        tenant = find_tenant_by_name(conn, name=DEMO_SALON)
        if tenant is None:
            tenant = create_tenant(conn, name=DEMO_SALON, timezone="Europe/Budapest")
            create_manager(conn, tenant_id=tenant.id, email=DEMO_EMAIL, password=DEMO_PASSWORD)
            create_api_key(conn, tenant_id=tenant.id)
        empty = not conn.execute(
            select(func.count()).select_from(messages).where(messages.c.tenant_id == tenant.id)
        ).scalar_one()
    return tenant.id, empty


def demo(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    months: int = typer.Option(6, "--months", min=1, max=36, help="Months of history for a new demo salon."),
    customers: int = typer.Option(2000, "--customers", min=10, help="Customers of a new demo salon."),
) -> None:
    """Serve with a demo salon and months of sample data (created on first run); prints the login."""
    from mailtrack.cli.data import seed_with_progress  # the generator is only needed here and in `seed`

    settings, engine = open_engine()
    tenant_id, empty = ensure_demo_salon(engine)
    if empty:
        stderr.print(f"creating {months} months of sample history for the demo salon…")
        seed_with_progress(engine, tenant_id=tenant_id, months=months, customers=customers, seed=1)
    base = f"http://{host}:{port}"
    print(f"Mailtrack demo: {base}/manager/connect/email/tracking", flush=True)
    print(f"  login: {DEMO_EMAIL}", flush=True)
    print(f"  password: {DEMO_PASSWORD}", flush=True)
    _run(settings, host, port, 1)
