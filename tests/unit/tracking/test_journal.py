"""The hit journal: durable before answered, applied exactly once, adopted after a crash."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from mailtrack.db import write_transaction
from mailtrack.messages.tables import customers
from mailtrack.tracking.ingest import EventIn
from mailtrack.tracking.journal import DO_NOT_TRACK, HitJournal, JournalFullError
from mailtrack.tracking.journal_records import decode, decode_many, encode, save_position
from mailtrack.tracking.tables import events, journal_progress
from tests.conftest import _pg_admin
from tests.factories import make_customer, make_message, make_tenant

SENT = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0"


def hit(tenant_id: int, message_id: int, second: int, kind: str = "opened") -> EventIn:
    """An open (or other record) a minute and some seconds after the message was sent."""
    return EventIn(
        tenant_id=tenant_id,
        message_id=message_id,
        type=kind,
        occurred_at=SENT + dt.timedelta(minutes=1, seconds=second),
        user_agent=AGENT,
        ip="203.0.113.7",
        referer=f"https://ref.example/{second}",
    )


def salon_message(engine: Engine) -> tuple[int, int, int]:
    """A salon, a customer and a tracked message sent to her."""
    tenant = make_tenant(engine)
    customer = make_customer(engine, tenant.id)
    return tenant.id, customer, make_message(engine, tenant.id, customer, sent_at=SENT)


def run_journal(journal: HitJournal, body: Callable[[HitJournal], Awaitable[None]]) -> None:
    """Start the journal on an event loop, run the body, stop it."""

    async def main() -> None:
        await journal.start()
        try:
            await body(journal)
        finally:
            await journal.stop()

    asyncio.run(main())


def stored_referers(engine: Engine) -> list[str | None]:
    """The referers of stored events, in insertion order."""
    with engine.connect() as conn:
        return list(conn.execute(select(events.c.referer).order_by(events.c.id)).scalars())


def orphan(root: Path, name: str, lines: list[bytes]) -> Path:
    """A journal directory as a killed process leaves it (its lock free)."""
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "writer.lock").touch()
    (directory / "00000001.log").write_bytes(b"".join(lines))
    return directory


@given(
    agent=st.none() | st.text(max_size=60),
    referer=st.none() | st.text(max_size=60),
    position=st.none() | st.integers(0, 300),
)
def test_a_record_decodes_to_the_event_it_encodes(
    agent: str | None, referer: str | None, position: int | None
) -> None:
    event = EventIn(
        tenant_id=1,
        message_id=2,
        type="clicked",
        occurred_at=SENT,
        user_agent=agent,
        ip="2001:db8::1",
        referer=referer,
        link_position=position,
        machine_reason="head_request",
        external_event_id="x:1",
    )
    line = encode(event)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1, "one record, one line, whatever the header held"
    assert decode(line) == event


def test_a_batch_with_a_line_only_the_standard_library_could_encode_decodes_whole() -> None:
    # A lone surrogate cannot be UTF-8: orjson refuses to write or read it, the fallback escapes it.
    plain, odd = (
        EventIn(1, 2, "opened", SENT, user_agent=agent, ip="192.0.2.1")
        for agent in ("Thunderbird", "x\udc80y")
    )
    lines = [encode(plain), encode(odd), encode(plain)]
    assert b"\\udc80" in lines[1]
    assert decode_many(lines) == [plain, odd, plain]


def test_a_line_that_is_not_a_record_is_a_value_error() -> None:
    for line in (b"garbage", b"[1,2]", b'{"a":1}', b"[1,2,3,4,5,6,7,8,9,10]"):
        with pytest.raises(ValueError, match="not a journal record"):
            decode(line)


def test_appended_hits_reach_the_database_and_the_journal_is_removed(engine: Engine, tmp_path: Path) -> None:
    tenant_id, _, message_id = salon_message(engine)
    journal = HitJournal(engine, tmp_path, segment_bytes=600)  # a new segment every few hits

    async def body(journal: HitJournal) -> None:
        await asyncio.gather(*(journal.append(hit(tenant_id, message_id, n)) for n in range(40)))
        assert journal.stats.appended == 40, "every append returned only once written"
        await asyncio.to_thread(journal.wait_until_applied)
        assert journal.pending_bytes == 0

    run_journal(journal, body)
    assert sorted(map(str, stored_referers(engine))) == sorted(f"https://ref.example/{n}" for n in range(40))
    assert not journal.directory.exists(), "a clean stop removes the applied journal"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(journal_progress)).scalar_one() == 0


def test_a_do_not_track_record_marks_the_customer_and_stores_nothing(engine: Engine, tmp_path: Path) -> None:
    tenant_id, customer_id, message_id = salon_message(engine)

    async def body(journal: HitJournal) -> None:
        await journal.append(hit(tenant_id, message_id, 1))
        await journal.append(hit(tenant_id, message_id, 2, kind=DO_NOT_TRACK))
        await journal.append(hit(tenant_id, message_id, 3))
        await asyncio.to_thread(journal.wait_until_applied)

    run_journal(HitJournal(engine, tmp_path), body)
    assert stored_referers(engine) == ["https://ref.example/1"], "the open after the DNT hit is refused"
    with engine.connect() as conn:
        marked = conn.execute(select(customers.c.do_not_track).where(customers.c.id == customer_id))
        assert marked.scalar_one() is True


def test_a_crashed_processs_journal_is_applied_from_where_it_stopped(engine: Engine, tmp_path: Path) -> None:
    tenant_id, _, message_id = salon_message(engine)
    lines = [encode(hit(tenant_id, message_id, n)) for n in range(3)]
    directory = orphan(tmp_path, "host-1-dead", [*lines, lines[0][:20]])  # a torn last line
    with write_transaction(engine) as conn:
        save_position(conn, directory.name, (1, len(lines[0])))  # the first was applied before the crash

    async def body(journal: HitJournal) -> None:
        await asyncio.to_thread(_wait_for, lambda: not directory.exists())

    journal = HitJournal(engine, tmp_path)
    run_journal(journal, body)
    assert stored_referers(engine) == ["https://ref.example/1", "https://ref.example/2"]
    assert journal.stats.adopted == 2
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(journal_progress)).scalar_one() == 0


def test_a_journal_this_database_never_registered_is_left_alone(engine: Engine, tmp_path: Path) -> None:
    tenant_id, _, message_id = salon_message(engine)
    foreign = orphan(tmp_path, "host-2-other-database", [encode(hit(tenant_id, message_id, 1))])
    empty = orphan(tmp_path, "host-3-died-before-its-first-hit", [])

    async def body(journal: HitJournal) -> None:
        await asyncio.to_thread(_wait_for, lambda: not empty.exists())

    run_journal(HitJournal(engine, tmp_path), body)
    assert foreign.exists(), "another database's hits are not applied here"
    assert stored_referers(engine) == []


def test_a_record_the_database_refuses_is_skipped_and_the_rest_stored(engine: Engine, tmp_path: Path) -> None:
    tenant_id, _, message_id = salon_message(engine)
    good = [encode(hit(tenant_id, message_id, n)) for n in range(4)]
    directory = orphan(
        tmp_path, "host-4-dead", [good[0], good[1], b'["not", "a record"]\n', good[2], good[3]]
    )
    with write_transaction(engine) as conn:
        save_position(conn, directory.name, (1, 0))

    journal = HitJournal(engine, tmp_path)

    async def body(journal: HitJournal) -> None:
        await asyncio.to_thread(_wait_for, lambda: not directory.exists())

    run_journal(journal, body)
    assert len(stored_referers(engine)) == 4
    assert journal.stats.adopted == 5, "the refused line counts as done: it will not block the journal"


def test_a_full_journal_refuses_hits_and_counts_them(engine: Engine, tmp_path: Path) -> None:
    tenant_id, _, message_id = salon_message(engine)

    async def body(journal: HitJournal) -> None:
        with pytest.raises(JournalFullError):
            await journal.append(hit(tenant_id, message_id, 1))

    journal = HitJournal(engine, tmp_path, max_bytes=-1)
    run_journal(journal, body)
    assert journal.stats.dropped == 1
    assert stored_referers(engine) == []


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60  # a hang watchdog, not a timing assertion
    while not condition():
        assert time.monotonic() < deadline, "the journal never got there"
        time.sleep(0.01)


def test_hits_answered_during_a_database_outage_are_stored_once_it_returns(
    engine: Engine, tmp_path: Path
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("an outage is simulated by refusing connections to the PostgreSQL database")
    tenant_id, _, message_id = salon_message(engine)
    database = engine.url.database
    pending: list[bool] = []

    async def body(journal: HitJournal) -> None:
        _pg_admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
        try:
            await asyncio.gather(*(journal.append(hit(tenant_id, message_id, n)) for n in range(20)))
            pending.append(journal.pending_bytes > 0)
        finally:
            _pg_admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await asyncio.to_thread(journal.wait_until_applied)

    run_journal(HitJournal(engine, tmp_path), body)
    assert pending == [True], "answered while the database was down, not yet stored"
    assert len(stored_referers(engine)) == 20


def test_an_applier_process_applies_the_journal_and_is_replaced_when_killed(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    tenant_id, _, message_id = salon_message(engine)
    journal = HitJournal(engine, tmp_path, applier="process", database_url=database_url)
    replaced: list[bool] = []

    async def body(journal: HitJournal) -> None:
        await asyncio.gather(*(journal.append(hit(tenant_id, message_id, n)) for n in range(10)))
        await asyncio.to_thread(journal.wait_until_applied)
        first = journal._applier
        os.kill(first.pid, signal.SIGKILL)
        await asyncio.gather(*(journal.append(hit(tenant_id, message_id, n)) for n in range(10, 20)))
        await asyncio.to_thread(journal.wait_until_applied)
        replaced.append(journal._applier is not first)

    run_journal(journal, body)
    assert replaced == [True], "a killed applier process is replaced"
    assert sorted(map(str, stored_referers(engine))) == sorted(f"https://ref.example/{n}" for n in range(20))
    assert not journal.directory.exists(), "the applier removes the journal once its writer stopped"
