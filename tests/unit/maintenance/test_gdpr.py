"""GDPR export and erasure: everything is exported; after erasure nothing personal is left anywhere."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from mailtrack.analytics.tables import customer_open_hours, rollup_links, rollup_messages
from mailtrack.db import write_transaction
from mailtrack.delivery.tables import quarantine
from mailtrack.maintenance.gdpr import CustomerExport, erase_customer, export_customer
from mailtrack.maintenance.partitions import deployed_metadata
from mailtrack.messages.queries import link_url
from mailtrack.messages.tables import customers, messages
from mailtrack.tracking.ingest import EventIn
from tests.factories import ingest, make_customer, make_message, make_tenant

SENT = dt.datetime(2026, 5, 4, 16, 0, tzinfo=dt.UTC)
NOW = SENT + dt.timedelta(days=3)
AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0"
IP = "203.0.113.57"
NAME, EMAIL = "Anna Kovács", "anna.kovacs@example.com"
PERSONAL = (NAME, "Kovács", EMAIL.split("@")[0], IP, AGENT)
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)"


def external_id(engine: Engine, customer_id: int) -> str:
    """The platform's id of a customer."""
    with engine.connect() as conn:
        return str(
            conn.execute(select(customers.c.external_id).where(customers.c.id == customer_id)).scalar_one()
        )


def anna(engine: Engine) -> tuple[int, int, int, str]:
    """A salon, Anna (opened and clicked a message; a quarantined bounce), her message and external id."""
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id, name=NAME, email=EMAIL)
    message = make_message(
        engine,
        tenant.id,
        customer,
        sent_at=SENT,
        links=("https://salon.example/book?who=anna", "https://x.example/"),
    )
    ingest(
        engine,
        EventIn(tenant.id, message, "sent", SENT),
        EventIn(tenant.id, message, "opened", SENT + dt.timedelta(hours=5), user_agent=AGENT, ip=IP),
        EventIn(
            tenant.id,
            message,
            "clicked",
            SENT + dt.timedelta(hours=5, minutes=1),
            user_agent=AGENT,
            ip=IP,
            referer="https://mail.example/inbox",
            link_position=0,
        ),
    )
    with write_transaction(engine) as conn:
        conn.execute(
            insert(quarantine).values(
                tenant_id=tenant.id,
                received_at=SENT + dt.timedelta(days=1),
                source="api",
                reason="unattributed",
                kind="bounce",
                bounce_kind="soft",
                status="4.2.2",
                recipient=EMAIL.upper(),
                subject="Undelivered Mail Returned to Sender",
                headers=f"To: {NAME} <{EMAIL}>",
                classification="{}",
                fingerprint="f" * 64,
            )
        )
    return tenant.id, customer, message, external_id(engine, customer)


def everything(engine: Engine) -> str:
    """Every row of every table this backend has, as text."""
    tables = deployed_metadata(engine.dialect.name).sorted_tables  # event_external_ids: PostgreSQL only
    with engine.connect() as conn:
        return "\n".join(repr(row) for table in tables for row in conn.execute(select(table)).all())


def test_export_holds_identity_messages_events_clicks_and_habits(engine: Engine) -> None:
    tenant_id, _, _, customer = anna(engine)
    with engine.connect() as conn:
        export = export_customer(conn, tenant_id=tenant_id, external_id=customer, now=NOW)
    assert isinstance(export, CustomerExport)
    data: dict[str, Any] = export.model_dump(mode="json")
    assert data["customer"]["id"] == customer
    assert (data["customer"]["name"], data["customer"]["email"]) == (NAME, EMAIL)
    assert data["customer"]["do_not_track"] is False
    assert data["storage"] == {"raw_event_days": 90, "full_ip_days": 30}
    [message] = data["messages"]
    assert message["channel"] == "marketing"
    assert message["opened_at"] == "2026-05-04T21:00:00Z"
    assert [event["type"] for event in data["events"]] == ["sent", "opened", "clicked"]
    click = data["events"][2]
    assert (click["ip"], click["user_agent"], click["client"]) == (IP, AGENT, "thunderbird")
    assert click["url"] == "https://salon.example/book?who=anna"
    assert click["referer"] == "https://mail.example/inbox"
    assert click["message_id"] == message["id"]
    assert data["link_clicks"] == [
        {
            "message_id": message["id"],
            "position": 0,
            "url": "https://salon.example/book?who=anna",
            "human_clicks": 1,
        }
    ]
    assert [hour["opens"] for hour in data["open_hours"]] == [1]
    assert [mail["status"] for mail in data["quarantined_mail"]] == ["4.2.2"]


def test_unknown_and_other_salons_customers_are_not_found(engine: Engine) -> None:
    tenant_id, _, _, customer = anna(engine)
    other = make_tenant(engine)
    with write_transaction(engine) as conn:
        assert export_customer(conn, tenant_id=other.id, external_id=customer, now=NOW) is None
        assert erase_customer(conn, tenant_id=other.id, external_id=customer) is None
        assert export_customer(conn, tenant_id=tenant_id, external_id="nobody", now=NOW) is None
    assert NAME in everything(engine), "another salon's erase request changed nothing"


def test_erasure_leaves_no_trace_but_the_rollups_add_up(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    tenant_id, customer_key, message, customer = anna(engine)
    bystander = make_customer(engine, tenant_id, name="Béla Nagy", email="bela@example.com")
    bystander_message = make_message(engine, tenant_id, bystander, sent_at=SENT)
    ingest(
        engine, EventIn(tenant_id, bystander_message, "opened", SENT, user_agent=OUTLOOK, ip="198.51.100.1")
    )
    with engine.connect() as conn:
        rollups_before = conn.execute(select(rollup_messages)).all(), conn.execute(select(rollup_links)).all()

    with caplog.at_level("DEBUG"):
        with write_transaction(engine) as conn:
            erasure = erase_customer(conn, tenant_id=tenant_id, external_id=customer)
        with engine.connect() as conn:
            assert export_customer(conn, tenant_id=tenant_id, external_id=customer, now=NOW) is None
    assert erasure is not None
    assert (erasure.events_deleted, erasure.messages_unlinked, erasure.quarantine_deleted) == (3, 1, 1)

    dump = everything(engine)
    for trace in (*PERSONAL, f"'{customer}'"):
        assert trace not in dump, trace
    assert "Béla Nagy" in dump, "other customers are untouched"
    assert "198.51.100.1" in dump
    for trace in (*PERSONAL, customer):
        assert trace not in caplog.text, trace

    with engine.connect() as conn:
        row = conn.execute(select(customers).where(customers.c.id == customer_key)).one()
        assert row.external_id.startswith("erased-")
        assert (row.name, row.email, row.search_text, row.do_not_track) == ("", "", "", True)
        assert (row.tracked_sent, row.messages_opened, row.w_sent, row.last_open_at) == (0, 0, 0.0, None)
        assert (
            conn.execute(
                select(func.count())
                .select_from(customer_open_hours)
                .where(customer_open_hours.c.customer_id == customer_key)
            ).scalar_one()
            == 0
        )
        assert conn.execute(select(rollup_messages)).all() == rollups_before[0], "rollups are anonymous: kept"
        assert conn.execute(select(rollup_links)).all() == rollups_before[1]
        state = conn.execute(select(messages).where(messages.c.id == message)).one()
        assert state.external_id.startswith("erased-")
        assert state.smtp_message_id is None
        assert link_url(conn, tenant_id=tenant_id, message_id=message, position=0) is not None, (
            "links redirect"
        )


def test_hits_on_an_erased_customers_old_mail_record_nothing(engine: Engine) -> None:
    tenant_id, _, message, customer = anna(engine)
    with write_transaction(engine) as conn:
        erase_customer(conn, tenant_id=tenant_id, external_id=customer)
    result = ingest(
        engine,
        EventIn(tenant_id, message, "opened", NOW, user_agent=AGENT, ip=IP),
        EventIn(tenant_id, message, "clicked", NOW, user_agent=AGENT, ip=IP, link_position=0),
    )
    assert (result.stored, result.not_tracked) == (0, 2)
    assert IP not in everything(engine)


def test_erasing_twice_finds_nobody_the_second_time(engine: Engine) -> None:
    tenant_id, _, _, customer = anna(engine)
    with write_transaction(engine) as conn:
        assert erase_customer(conn, tenant_id=tenant_id, external_id=customer) is not None
        assert erase_customer(conn, tenant_id=tenant_id, external_id=customer) is None
        assert erase_customer(conn, tenant_id=tenant_id, external_id="erased-anything") is None
