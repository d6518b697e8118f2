"""The synthetic history: every kind of event, privacy and suppression, reproducibility, ground truth."""

from __future__ import annotations

import datetime as dt
import math
import random
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from mailtrack.analytics.tables import rollup_messages
from mailtrack.db import make_engine, write_transaction
from mailtrack.demo import generator
from mailtrack.demo.generator import SeedReport, seed_history
from mailtrack.demo.population import (
    KNOWN_AGENTS,
    SalonClock,
    build_population,
    population_open_rate,
    sample_first_open,
    true_open_probability,
)
from mailtrack.migrations import upgrade
from mailtrack.tenants.queries import create_tenant
from mailtrack.tracking.tables import EVENT_TYPES
from mailtrack.tracking.useragent import classify_user_agent

END = dt.datetime(2026, 6, 30, 12, 0, tzinfo=dt.UTC)  # four months back crosses the March DST change
SEED_ARGS: dict[str, Any] = {"months": 4, "customers": 400, "seed": 11, "end": END}


def _seeded_database(path: Path) -> tuple[Engine, int, SeedReport, list[tuple[int, int]]]:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with write_transaction(engine) as conn:
        tenant = create_tenant(conn, name="Bella Szépségszalon", timezone="Europe/Budapest")
    calls: list[tuple[int, int]] = []
    # A small history must still hold every kind of event: unsubscribes and complaints made common,
    # and chunks small, so that messages, ids and suppressions span many transactions.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generator, "CHUNK_EVENTS", 1500)
        patch.setattr(generator, "UNSUBSCRIBE_RATE", 0.01)
        patch.setattr(generator, "COMPLAINT_RATE", 0.004)
        report = seed_history(
            engine, tenant_id=tenant.id, progress=lambda done, total: calls.append((done, total)), **SEED_ARGS
        )
    return engine, tenant.id, report, calls


@pytest.fixture(scope="module")
def seeded(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Engine, int, SeedReport, list[tuple[int, int]]]]:
    """A SQLite database with a small seeded history."""
    engine, tenant_id, report, calls = _seeded_database(tmp_path_factory.mktemp("demo") / "seeded.db")
    yield engine, tenant_id, report, calls
    engine.dispose()


def _scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def test_every_event_type_is_written_with_a_progress_report(
    seeded: tuple[Engine, int, SeedReport, Any],
) -> None:
    engine, _, report, calls = seeded
    with engine.connect() as conn:
        counts: dict[str, int] = dict(
            conn.execute(text("SELECT type, count(*) FROM events GROUP BY type")).all()
        )
    assert set(counts) == set(EVENT_TYPES)
    assert all(count > 0 for count in counts.values()), counts
    assert sum(counts.values()) == report.events
    assert report.customers == 400
    assert report.messages == _scalar(engine, "SELECT count(*) FROM messages")
    assert _scalar(engine, "SELECT count(DISTINCT bounce_kind) FROM events WHERE type = 'bounced'") == 2
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert calls[-1] == (report.events, report.events)
    assert len(calls) > 5
    assert all(total >= done for done, total in calls)


def test_machine_opens_are_flagged(seeded: tuple[Engine, int, SeedReport, Any]) -> None:
    engine = seeded[0]
    with engine.connect() as conn:
        apple = conn.execute(
            text(
                "SELECT machine, machine_reason, ip FROM events "
                "WHERE type = 'opened' AND user_agent = 'Mozilla/5.0'"
            )
        ).all()
        reasons = set(conn.execute(text("SELECT machine_reason FROM events WHERE machine")).scalars())
    assert apple
    assert all(row.machine and row.machine_reason == "apple_privacy_proxy" for row in apple)
    assert all(row.ip.startswith("17.") for row in apple)  # Apple's own network
    assert {"apple_privacy_proxy", "link_scanner"} <= reasons
    # Machine opens never count as the message's human open.
    human_opened = _scalar(engine, "SELECT count(*) FROM messages WHERE opened_at IS NOT NULL")
    human_open_messages = _scalar(
        engine,
        "SELECT count(DISTINCT message_id) FROM events WHERE type IN ('opened', 'clicked') AND NOT machine",
    )
    assert human_opened == human_open_messages


def test_system_mail_is_never_tracked(seeded: tuple[Engine, int, SeedReport, Any]) -> None:
    engine = seeded[0]
    assert _scalar(engine, "SELECT count(*) FROM messages WHERE channel = 'system'") > 0
    assert _scalar(engine, "SELECT count(*) FROM messages WHERE channel = 'system' AND tracked") == 0
    tracking = """SELECT count(*) FROM events e JOIN messages m ON m.id = e.message_id
                  WHERE m.channel = 'system' AND e.type IN ('opened', 'clicked')"""
    assert _scalar(engine, tracking) == 0
    assert _scalar(engine, "SELECT count(*) FROM links l JOIN messages m ON m.id = l.message_id "
                           "WHERE m.channel = 'system'") == 0  # fmt: skip
    assert _scalar(engine, "SELECT count(*) FROM messages WHERE channel != 'system' AND tracked") > 0


def test_rollups_count_every_sent_event(seeded: tuple[Engine, int, SeedReport, Any]) -> None:
    engine, tenant_id = seeded[0], seeded[1]
    with engine.connect() as conn:
        rolled = conn.execute(
            select(func.sum(rollup_messages.c.sent)).where(rollup_messages.c.tenant_id == tenant_id)
        ).scalar()
    assert rolled == _scalar(engine, "SELECT count(*) FROM events WHERE type = 'sent'")
    assert rolled == _scalar(engine, "SELECT count(*) FROM messages")


def test_no_event_precedes_its_message_or_follows_the_end(
    seeded: tuple[Engine, int, SeedReport, Any],
) -> None:
    engine = seeded[0]
    early = """SELECT count(*) FROM events e JOIN events s ON s.message_id = e.message_id AND s.type = 'sent'
               WHERE e.occurred_at < s.occurred_at"""
    assert _scalar(engine, early) == 0
    with engine.connect() as conn:
        latest = conn.execute(text("SELECT max(occurred_at) FROM events")).scalar()
    assert dt.datetime.fromisoformat(str(latest)) < END.replace(tzinfo=None)
    clicks_on_unknown_links = """SELECT count(*) FROM events e LEFT JOIN links l
        ON l.message_id = e.message_id AND l.position = e.link_position
        WHERE e.type = 'clicked' AND l.url IS NULL"""
    assert _scalar(engine, clicks_on_unknown_links) == 0


def test_suppressed_customers_get_no_marketing_afterwards(
    seeded: tuple[Engine, int, SeedReport, Any],
) -> None:
    engine = seeded[0]
    reasons = set(
        _rows(engine, "SELECT DISTINCT suppression_reason FROM customers WHERE suppressed_at IS NOT NULL")
    )
    assert {"hard_bounce", "unsubscribed", "complained"} <= reasons
    late = """SELECT count(*) FROM messages m JOIN customers c ON c.id = m.customer_id
              WHERE m.channel = 'marketing' AND c.suppressed_at IS NOT NULL AND m.sent_at > c.suppressed_at"""
    assert _scalar(engine, late) == 0
    # Hard-bounced addresses get nothing at all afterwards: the ESP suppresses them.
    after_death = """SELECT count(*) FROM messages m JOIN customers c ON c.id = m.customer_id
                     WHERE c.hard_bounced_at IS NOT NULL AND m.sent_at > c.hard_bounced_at"""
    assert _scalar(engine, after_death) == 0


def _rows(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql)).scalars())


def test_the_same_seed_gives_the_same_history(
    seeded: tuple[Engine, int, SeedReport, Any], tmp_path: Path
) -> None:
    again, _, report, _ = _seeded_database(tmp_path / "again.db")
    try:
        assert report.events == seeded[2].events
        assert report.messages == seeded[2].messages
        for sql in (
            "SELECT type, count(*) FROM events GROUP BY type ORDER BY type",
            "SELECT name, email, suppressed_at FROM customers ORDER BY id",
            "SELECT external_id, channel, tracked, sent_at, opened_at, clicked_at FROM messages ORDER BY id",
            "SELECT type, occurred_at, user_agent, ip, link_position FROM events ORDER BY id LIMIT 500",
            "SELECT url FROM links ORDER BY message_id, position LIMIT 500",
        ):
            with seeded[0].connect() as first, again.connect() as second:
                assert first.execute(text(sql)).all() == second.execute(text(sql)).all(), sql
    finally:
        again.dispose()


def test_seeding_the_same_history_twice_is_refused(seeded: tuple[Engine, int, SeedReport, Any]) -> None:
    engine, tenant_id = seeded[0], seeded[1]
    with pytest.raises(ValueError, match="already has"):
        seed_history(engine, tenant_id=tenant_id, **SEED_ARGS)


def test_names_and_addresses_look_real() -> None:
    people = build_population(500, seed=4)
    assert any(not person.name.isascii() for person in people)  # Kovács, Zsófia, Éva…
    assert all(person.email.isascii() and person.email.count("@") == 1 for person in people)
    assert len({person.email for person in people}) == len(people)
    domains = {person.email.split("@")[1] for person in people}
    assert {"gmail.com", "freemail.hu", "icloud.com"} <= domains
    assert build_population(50, seed=4) == people[:50]
    assert any(person.mpp for person in people)
    assert any(person.scanner for person in people)


def test_the_tracker_reads_every_generated_agent_as_the_generator_says() -> None:
    build_population(300, seed=2)  # registers the agents built per customer too
    assert len(KNOWN_AGENTS) > 30
    for user_agent, agent in KNOWN_AGENTS.items():
        assert classify_user_agent(user_agent) == agent, user_agent


def test_true_open_probability_reflects_habits() -> None:
    people = [person for person in build_population(400, seed=9) if person.open_prob > 0.3]
    commuter = next(person for person in people if person.persona == "morning_commuter")
    evening = next(person for person in people if person.persona == "evening")
    tuesday_7 = dt.datetime(2026, 5, 5, 7, 0)  # noqa: DTZ001 - wall-clock time in the salon
    tuesday_19 = dt.datetime(2026, 5, 5, 19, 0)  # noqa: DTZ001
    for person in people:
        assert 0.0 <= true_open_probability(person, tuesday_7) <= 1.0
    assert true_open_probability(commuter, tuesday_7) > true_open_probability(commuter, tuesday_19)
    assert true_open_probability(evening, tuesday_19) > true_open_probability(evening, tuesday_7)
    assert true_open_probability(commuter, tuesday_7, 24) < true_open_probability(commuter, tuesday_7, 72)
    rates = [population_open_rate(people, 1, hour) for hour in (3, 7, 12, 19)]
    assert all(0.0 < rate < 1.0 for rate in rates)
    assert max(rates) - min(rates) > 0.01


def test_the_generator_samples_the_ground_truth() -> None:
    zone = zoneinfo.ZoneInfo("Europe/Budapest")
    start = int(dt.datetime(2026, 3, 20, tzinfo=dt.UTC).timestamp())
    clock, rng = SalonClock(zone, start, start + 30 * 86_400), random.Random(1)
    people = [person for person in build_population(100, seed=5) if 0.2 < person.open_prob < 0.8][:2]
    sent_at = dt.datetime(2026, 3, 27, 20, 40, tzinfo=zone)  # the DST change falls within the horizon
    delivered, horizon_end = int(sent_at.timestamp()), int(sent_at.replace(minute=0).timestamp()) + 72 * 3600
    for person in people:
        expected, draws = true_open_probability(person, sent_at, 72), 4000
        opened = sum(
            1
            for _ in range(draws)
            if (at := sample_first_open(person, delivered, clock, rng)) and at < horizon_end
        )
        assert abs(opened / draws - expected) < 4.5 * math.sqrt(expected * (1 - expected) / draws)


def test_a_small_history_on_each_backend(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    with write_transaction(engine) as conn:
        tenant = create_tenant(conn, name="Szalon", timezone="Europe/Budapest")
    monkeypatch.setattr(generator, "CHUNK_EVENTS", 300)  # several chunks: ids reserved, statistics refreshed
    report = seed_history(engine, tenant_id=tenant.id, months=2, customers=80, seed=3, end=END)
    assert report.events == _scalar(engine, "SELECT count(*) FROM events") > 0
    assert _scalar(engine, "SELECT sum(sent) FROM rollup_messages") == report.messages
    assert _scalar(engine, "SELECT count(*) FROM links") > 0
