"""Score counts: whatever writes customers, the counts (folded or not) equal a count of the customers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, delete, func, select, update

from mailtrack.analytics import score_counts
from mailtrack.analytics.tables import score_count_changes
from mailtrack.db import write_transaction
from mailtrack.maintenance.gdpr import erase_customer
from mailtrack.messages.tables import customers
from mailtrack.tenants.tables import tenants
from tests.factories import make_customer, make_tenant

BASE = dt.datetime(2026, 3, 6, 0, 0, tzinfo=dt.UTC)
# (customer, what happens) — every kind of write the score depends on, in any order.
STEP = st.tuples(
    st.integers(0, 3),
    st.one_of(
        st.tuples(st.just("mailed"), st.integers(0, 24 * 6), st.floats(0, 4), st.floats(0, 4)),
        st.tuples(st.just("engaged"), st.floats(0, 3), st.floats(0, 3)),
        st.tuples(st.sampled_from(["do_not_track", "unsubscribed", "erased", "deleted", "folded"])),
    ),
)


def _apply(conn: Connection, tenant_id: int, customer_id: int, step: Any) -> None:
    person = customers.c
    row = (person.id == customer_id,)
    match step:
        case ("mailed", hours, sent, bounced):
            conn.execute(
                update(customers)
                .where(*row)
                .values(
                    last_sent_at=BASE + dt.timedelta(hours=hours),
                    tracked_sent=person.tracked_sent + 1,
                    w_sent=person.w_sent + sent,
                    w_bounced=person.w_bounced + min(sent, bounced),
                )
            )
        case ("engaged", opened, clicked):
            conn.execute(
                update(customers)
                .where(*row)
                .values(w_opened=person.w_opened + opened, w_clicked=person.w_clicked + clicked)
            )
        case ("do_not_track",):
            conn.execute(update(customers).where(*row).values(do_not_track=True))
        case ("unsubscribed",):
            conn.execute(update(customers).where(*row).values(unsubscribed_at=BASE))
        case ("erased",):
            external_id = conn.execute(select(person.external_id).where(*row)).scalar_one_or_none()
            if external_id is not None:
                erase_customer(conn, tenant_id=tenant_id, external_id=external_id)
        case ("deleted",):
            conn.execute(delete(customers).where(*row))
        case ("folded",):
            score_counts.fold_score_changes(conn)


def _counted(conn: Connection, tenant_id: int, since: dt.datetime) -> dict[int, int]:
    person = customers.c
    rows = conn.execute(
        select(person.score, func.count())
        .where(person.tenant_id == tenant_id, person.score.is_not(None), person.last_sent_at >= since)
        .group_by(person.score)
    )
    return {int(score): int(count) for score, count in rows}


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(STEP, min_size=1, max_size=25), since_hours=st.lists(st.integers(-5, 24 * 7), max_size=4)
)
def test_counts_equal_a_count_of_customers_after_any_writes(
    engine: Engine, steps: list[Any], since_hours: list[int]
) -> None:
    tenant = make_tenant(engine)  # a salon per example: examples share the test's database
    people = [make_customer(engine, tenant.id) for _ in range(4)]
    for who, step in steps:
        with write_transaction(engine) as conn:
            _apply(conn, tenant.id, people[who], step)
    with engine.connect() as conn:
        for hours in [0, 13, *since_hours]:  # whole days, a partial first day, and any hour
            since = BASE + dt.timedelta(hours=hours)
            found = score_counts.customers_by_score(conn, tenant_id=tenant.id, since=since)
            assert found == _counted(conn, tenant.id, since), f"since {since:%d %H:%M}"
    with write_transaction(engine) as conn:
        score_counts.fold_score_changes(conn)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(score_count_changes)).scalar_one() == 0
        assert score_counts.customers_by_score(conn, tenant_id=tenant.id, since=BASE) == _counted(
            conn, tenant.id, BASE
        )


def test_a_deleted_salon_leaves_no_counts_and_its_changes_fold_away(engine: Engine) -> None:
    tenant = make_tenant(engine)
    person = make_customer(engine, tenant.id)
    with write_transaction(engine) as conn:
        _apply(conn, tenant.id, person, ("mailed", 5, 2.0, 0.0))
        _apply(conn, tenant.id, person, ("engaged", 1.0, 0.0))
        score_counts.fold_score_changes(conn)
        _apply(conn, tenant.id, person, ("engaged", 1.0, 1.0))
    with engine.connect() as conn:
        counted = _counted(conn, tenant.id, BASE)
        assert len(counted) == 1, "one scored customer"
        assert score_counts.customers_by_score(conn, tenant_id=tenant.id, since=BASE) == counted
    with write_transaction(engine) as conn:
        conn.execute(delete(tenants).where(tenants.c.id == tenant.id))  # its customers go with it
        assert score_counts.fold_score_changes(conn)
    with engine.connect() as conn:
        assert score_counts.customers_by_score(conn, tenant_id=tenant.id, since=BASE) == {}
        assert conn.execute(select(func.count()).select_from(score_count_changes)).scalar_one() == 0
