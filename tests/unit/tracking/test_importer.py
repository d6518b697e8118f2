"""JSON Lines import: validation line by line, idempotency, the same privacy rules as live hits."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, func, select

from mailtrack.analytics.tables import rollup_messages
from mailtrack.db import write_transaction
from mailtrack.messages.tables import customers, messages
from mailtrack.tracking.importer import import_lines, parse_line
from mailtrack.tracking.tables import events
from tests.factories import make_tenant

IPHONE_MAIL = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) "
    "AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
)


def _lines(*objects: object) -> list[str]:
    return [obj if isinstance(obj, str) else json.dumps(obj) for obj in objects]


SENT = {
    "type": "sent",
    "message_id": "nl-1",
    "event_id": "e1",
    "customer": {"id": "c1", "name": "Anna Kovács", "email": "anna@example.com"},
    "occurred_at": "2026-08-03T16:00:00Z",
    "channel": "marketing",
    "source": "campaign",
    "campaign": "August newsletter",
}
OPENED = {
    "type": "opened",
    "message_id": "nl-1",
    "event_id": "e2",
    "occurred_at": "2026-08-06T08:12:09Z",
    "user_agent": IPHONE_MAIL,
    "ip": "81.2.3.4",
}
CLICKED = {
    "type": "clicked",
    "message_id": "nl-1",
    "event_id": "e3",
    "occurred_at": "2026-08-06T08:13:40Z",
    "url": "https://salon.example/book?x=1",
    "user_agent": IPHONE_MAIL,
}


def test_a_good_file_imports_and_reimport_changes_nothing(engine: Engine) -> None:
    tenant = make_tenant(engine)
    lines = _lines(SENT, OPENED, CLICKED)
    first = import_lines(engine, tenant_id=tenant.id, lines=lines)
    again = import_lines(engine, tenant_id=tenant.id, lines=lines)
    assert first.as_dict() == {"imported": 3, "duplicates": 0, "rejected": []}
    assert again.as_dict() == {"imported": 0, "duplicates": 3, "rejected": []}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 3
        totals = conn.execute(
            select(
                func.sum(rollup_messages.c.sent),
                func.sum(rollup_messages.c.opened),
                func.sum(rollup_messages.c.clicked),
            )
        ).one()
        person = conn.execute(select(customers.c.name, customers.c.search_text)).one()
    assert tuple(totals) == (1, 1, 1)
    assert person.name == "Anna Kovács"
    assert "kovacs" in person.search_text


def test_bad_lines_are_reported_with_their_number_and_never_stop_the_rest(engine: Engine) -> None:
    tenant = make_tenant(engine)
    lines = _lines(
        SENT,
        "{not json",
        {**OPENED, "type": "glanced"},
        {**OPENED, "occurred_at": "2026-08-06T08:12:09"},
        {"type": "opened", "message_id": "never-sent", "occurred_at": "2026-08-06T08:12:09Z"},
        {**CLICKED, "url": "javascript:alert(1)"},
        "[1, 2]",
        "",
        OPENED,
    )
    report = import_lines(engine, tenant_id=tenant.id, lines=lines).as_dict()
    assert report["imported"] == 2
    rejected = {item["line"]: item["error"] for item in report["rejected"]}
    assert sorted(rejected) == [2, 3, 4, 5, 6, 7]
    assert "not valid JSON" in rejected[2]
    assert "type" in rejected[3]
    assert "timezone" in rejected[4]
    assert "never-sent" in rejected[5]
    assert "url" in rejected[6]
    assert "JSON object" in rejected[7]


def test_system_mail_and_do_not_track_customers_record_no_opens(engine: Engine) -> None:
    tenant = make_tenant(engine)
    system = {
        **SENT,
        "message_id": "reset-1",
        "event_id": "s1",
        "channel": "system",
        "source": "system",
        "campaign": None,
    }
    report = import_lines(
        engine,
        tenant_id=tenant.id,
        lines=_lines(system, {**OPENED, "message_id": "reset-1", "event_id": "s2"}),
    ).as_dict()
    assert report["imported"] == 1
    assert "not tracked" in report["rejected"][0]["error"]

    with write_transaction(engine) as conn:
        conn.execute(customers.update().values(do_not_track=True))
    later = {**SENT, "message_id": "nl-2", "event_id": "n1"}
    report = import_lines(
        engine, tenant_id=tenant.id, lines=_lines(later, {**OPENED, "message_id": "nl-2", "event_id": "n2"})
    ).as_dict()
    assert report["imported"] == 1
    assert len(report["rejected"]) == 1
    with engine.connect() as conn:
        assert (
            conn.execute(select(messages.c.tracked).where(messages.c.external_id == "nl-2")).scalar_one()
            is False
        )


def test_status_code_decides_the_bounce_kind_when_not_given(engine: Engine) -> None:
    tenant = make_tenant(engine)
    lines = _lines(
        SENT,
        {"type": "bounced", "message_id": "nl-1", "occurred_at": "2026-08-03T16:01:00Z", "status": "5.1.1"},
    )
    import_lines(engine, tenant_id=tenant.id, lines=lines)
    with engine.connect() as conn:
        assert (
            conn.execute(select(events.c.bounce_kind).where(events.c.type == "bounced")).scalar_one()
            == "hard"
        )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (json.dumps({**OPENED, "surprise": 1}), "surprise"),
        ("x" * 70_000, "longer than"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_parse_line_rejects_unknown_fields_and_huge_lines(raw: str | bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_line(raw)
