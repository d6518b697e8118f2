"""Best send time: the expected human open rate of campaign mail for every local weekday × hour.

Reads only rollups (`rollup_messages`, `rollup_open_delays`, `customer_open_hours`) and the per-customer
aggregates kept at ingest; the model is `sendtime_data` (rows) and `sendtime_fit` (the fit), described
in docs/sendtime.md. The answer is cached per salon for a few minutes, keyed by what it was computed
from, because the stats endpoint asks for it on every dashboard view.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Float, case, cast, func, select

from mailtrack.analytics import sendtime_data as data
from mailtrack.analytics import sendtime_fit as model
from mailtrack.analytics.tables import customer_open_hours, rollup_messages, rollup_open_delays
from mailtrack.db import utcnow
from mailtrack.messages.tables import customers
from mailtrack.tenants.queries import get_tenant
from mailtrack.tenants.tables import tenants

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WINDOW = dt.timedelta(days=365)  # older habits are not this year's
DAYS_PER_MONTH = 365.25 / 12
RELIABLE_MONTHS = 3.0
MIN_FIRST_OPENS = 20  # below this there is nothing to learn from: no answer rather than the prior's
MIN_TARGET_OPENS = 30  # a kind of mail needs this many first opens to be what the rates are for
DEFAULT_FRAILTY = 1.0  # engagement spread when too few customers say otherwise (exponential frailty)
BOOTSTRAP_REPLICATES = 50
INTERVAL_QUANTILES = (0.1, 0.9)
CACHE_SECONDS = 300.0
CACHE_SALONS = 256


@dataclass(frozen=True, slots=True)
class Analysis:
    """A salon's fitted model and the answer built from it."""

    fit: model.Fit
    answer: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Cached:
    """A salon's cached analysis, what it was computed from, and until when it is served as is."""

    timezone: str
    moment: dt.datetime
    fingerprint: tuple[Any, ...]
    expires: float  # on _clock (time.monotonic)
    analysis: Analysis | None


_cache: dict[int, _Cached] = {}
_clock = time.monotonic
_cache_lock = threading.Lock()


def _kind(channel: str, source: str, campaign_id: int) -> str:
    # Campaigns are one kind; each automation (a campaign id of its own) keeps its own audience and timing.
    return data.TARGET_KIND if source == "campaign" else f"{channel}/{source}/{campaign_id}"


def load_cohorts(
    conn: Connection, *, tenant_id: int, since: dt.datetime, until: dt.datetime
) -> list[data.CohortCounts]:
    """Each cohort hour's tracked delivered and opened messages by kind, and first opens by delay."""
    row = rollup_messages.c
    delivered: dict[dt.datetime, dict[str, int]] = defaultdict(dict)
    opened: dict[dt.datetime, dict[str, int]] = defaultdict(dict)
    rows = conn.execute(
        select(
            row.hour,
            row.channel,
            row.source,
            row.campaign_id,
            row.tracked,
            row.tracked_bounced,
            row.tracked_delivered,
            row.opened,
        ).where(row.tenant_id == tenant_id, row.hour >= since, row.hour < until, row.tracked > 0)
    )
    for r in rows:
        kind = _kind(r.channel, r.source, int(r.campaign_id))
        # Reported deliveries can miss a few; tracked − bounced cannot (metrics.md, "tracked delivered").
        count = max(int(r.tracked) - int(r.tracked_bounced), int(r.tracked_delivered), 0)
        delivered[r.hour][kind] = delivered[r.hour].get(kind, 0) + count
        opened[r.hour][kind] = opened[r.hour].get(kind, 0) + int(r.opened)
    delays: dict[dt.datetime, dict[int, int]] = defaultdict(dict)
    table = rollup_open_delays.c
    for d in conn.execute(
        select(table.hour, table.delay_hours, table.opened).where(
            table.tenant_id == tenant_id,
            table.hour >= since,
            table.hour < until,
            table.delay_hours < data.TARGET_FIT_HOURS,
        )
    ):
        delays[d.hour][int(d.delay_hours)] = int(d.opened)
    return [
        data.CohortCounts(hour, delivered[hour], opened[hour], delays.get(hour, {}))
        for hour in sorted(delivered)
    ]


def engagement_frailty(conn: Connection, *, tenant_id: int) -> float:
    """θ of the customers' engagement spread, from their delivered and opened message counts."""
    person = customers.c
    delivered = person.tracked_sent - person.tracked_bounced
    opened = case((person.messages_opened > delivered, delivered), else_=person.messages_opened)
    share = cast(opened, Float) / cast(delivered, Float)
    pairs = cast(opened * (opened - 1), Float) / cast(delivered * (delivered - 1), Float)
    row = conn.execute(
        select(func.count(), func.avg(share), func.avg(pairs)).where(
            person.tenant_id == tenant_id, delivered >= 2
        )
    ).one()
    found = model.frailty_from_customers(int(row[0]), float(row[1] or 0.0), float(row[2] or 0.0))
    return DEFAULT_FRAILTY if found is None else found


def target_kinds(cohorts: Sequence[data.CohortCounts]) -> tuple[set[str], str]:
    """Which kinds the rates are for: campaigns, else all marketing mail, else everything tracked."""
    opens: dict[str, int] = defaultdict(int)
    for cohort in cohorts:
        for kind, count in cohort.opened.items():
            opens[kind] += count
    if opens[data.TARGET_KIND] >= MIN_TARGET_OPENS:
        return {data.TARGET_KIND}, "campaign"
    marketing = {k for k in opens if k == data.TARGET_KIND or k.startswith("marketing/")}
    if sum(opens[k] for k in marketing) >= MIN_TARGET_OPENS:
        return marketing, "marketing"
    return set(opens), "all"


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _notice(months: float, basis: str) -> str | None:
    parts = []
    if months < RELIABLE_MONTHS:
        parts.append(
            f"Based on {months:.1f} months of data: under 3 months, "
            "treat this as a first hint rather than a rule."
        )
    if basis != "campaign":
        parts.append(
            "No campaign has enough opens yet, so these rates are for your "
            + ("other marketing mail." if basis == "marketing" else "tracked mail of every kind.")
        )
    return " ".join(parts) or None


def analyse(conn: Connection, *, tenant_id: int, timezone: str, now: dt.datetime) -> Analysis | None:
    """Fit the salon's model and build the answer (None: too little data to say anything)."""
    since = now - WINDOW
    cohorts = load_cohorts(conn, tenant_id=tenant_id, since=since, until=now)
    target, basis = target_kinds(cohorts)
    prepared = data.prepare(cohorts, timezone=timezone, now=now, target=target)
    if prepared.first_opens < MIN_FIRST_OPENS or not prepared.cohorts:
        return None
    frailty = engagement_frailty(conn, tenant_id=tenant_id)
    fit = model.fit(data.build_rows(prepared), len(prepared.strata), frailty=frailty)
    best = max(range(data.HOURS_PER_WEEK), key=lambda s: (fit.grid[s], -s))
    # Same data, same resamples: the interval does not flicker from one dashboard view to the next.
    seed = f"{tenant_id}:{cohorts[-1].hour.isoformat()}:{prepared.messages}:{prepared.first_opens}"
    grids = model.bootstrap(prepared, fit, replicates=BOOTSTRAP_REPLICATES, seed=seed)
    rate = fit.grid[best]
    low = min(_quantile([g[best] for g in grids], INTERVAL_QUANTILES[0]), rate)
    high = max(_quantile([g[best] for g in grids], INTERVAL_QUANTILES[1]), rate)
    # From the first tracked mail to the last (every cohort loaded has tracked mail).
    span = cohorts[-1].hour + dt.timedelta(hours=1) - cohorts[0].hour
    # Rounded down, so that "3.0 months" is never shown next to "under 3 months".
    months = math.floor(span / dt.timedelta(days=DAYS_PER_MONTH) * 10) / 10
    answer: dict[str, Any] = {
        "weekday": WEEKDAYS[best // 24],
        "hour": best % 24,
        "expected_open_rate": round(rate, 4),
        "interval": [round(low, 4), round(high, 4)],
        "months_of_data": months,
        "reliable": months >= RELIABLE_MONTHS,
        "grid": [[round(fit.grid[day * 24 + hour], 4) for hour in range(24)] for day in range(7)],
        "horizon_hours": data.HORIZON_HOURS,
        "notice": _notice(months, basis),
        "basis": {
            "mail": basis,
            "messages": prepared.messages,
            "first_opens": prepared.first_opens,
            "timezone": timezone,
        },
    }
    return Analysis(fit, answer)


def _fingerprint(conn: Connection, *, tenant_id: int, since: dt.datetime) -> tuple[Any, ...]:
    """What the answer depends on: the latest cohort hour and the totals counted so far."""
    row = rollup_messages.c
    found = conn.execute(
        select(func.max(row.hour), func.sum(row.tracked), func.sum(row.opened), func.count()).where(
            row.tenant_id == tenant_id, row.hour >= since
        )
    ).one()
    return tuple(found)


def cached_analysis(
    conn: Connection, *, tenant_id: int, timezone: str, now: dt.datetime | None = None
) -> Analysis | None:
    """The salon's analysis, reused for a few minutes, then for as long as its rollups stay the same.

    Opens arrive all the time in a busy salon, so the data fingerprint alone would refit on nearly every
    dashboard view; a recommendation learned from months does not move in five minutes.
    """
    moment = (now or utcnow()).replace(minute=0, second=0, microsecond=0)  # censoring moves hourly
    since = moment - WINDOW
    clock = _clock()
    with _cache_lock:
        hit = _cache.get(tenant_id)
    fingerprint = None
    if hit is not None and hit.timezone == timezone and hit.moment == moment:
        if hit.expires > clock:
            return hit.analysis
        fingerprint = _fingerprint(conn, tenant_id=tenant_id, since=since)
        if fingerprint == hit.fingerprint:
            with _cache_lock:
                _cache[tenant_id] = _Cached(
                    timezone, moment, fingerprint, clock + CACHE_SECONDS, hit.analysis
                )
            return hit.analysis
    fingerprint = fingerprint or _fingerprint(conn, tenant_id=tenant_id, since=since)
    analysis = analyse(conn, tenant_id=tenant_id, timezone=timezone, now=moment)
    with _cache_lock:
        if len(_cache) >= CACHE_SALONS and tenant_id not in _cache:
            del _cache[min(_cache, key=lambda t: _cache[t].expires)]  # the entry closest to expiring
        _cache[tenant_id] = _Cached(timezone, moment, fingerprint, clock + CACHE_SECONDS, analysis)
    return analysis


def clear_cache() -> None:
    """Forget every cached answer."""
    with _cache_lock:
        _cache.clear()


def best_send_time(
    conn: Connection, *, tenant_id: int, timezone: str, now: dt.datetime | None = None
) -> dict[str, Any] | None:
    """The best local weekday and hour to send campaign mail, its expected open rate and the 7 × 24 grid."""
    analysis = cached_analysis(conn, tenant_id=tenant_id, timezone=timezone, now=now)
    return None if analysis is None else copy.deepcopy(analysis.answer)  # callers may not edit the cache


def customer_best_hours(
    conn: Connection,
    *,
    tenant_id: int,
    customer_ids: Sequence[str] | None = None,
    limit: int = 100,
    min_opens: int = 5,
    now: dt.datetime | None = None,
) -> dict[str, dict[str, Any]]:
    """Customer external id → {weekday, hour, opens}: when to send them mail, for those with enough opens.

    `customer_ids` picks customers by the platform's ids; without it, the `limit` customers with the
    most first opens. Customers with fewer than `min_opens` first opens are left out: a guess from
    two opens would be the salon's answer dressed up as theirs.
    """
    tenant = get_tenant(conn, tenant_id=tenant_id)
    if tenant is None:
        return {}
    analysis = cached_analysis(conn, tenant_id=tenant_id, timezone=tenant.timezone, now=now)
    if analysis is None:
        return {}
    hours, person = customer_open_hours.c, customers.c
    total = func.sum(hours.opens)
    chosen = (
        select(hours.customer_id)
        .join(customers, person.id == hours.customer_id)
        .where(hours.tenant_id == tenant_id)
        .group_by(hours.customer_id)
        .having(total >= min_opens)
    )
    if customer_ids is not None:
        chosen = chosen.where(person.external_id.in_(list(customer_ids)))
    else:
        chosen = chosen.order_by(total.desc(), hours.customer_id).limit(limit)
    rows = conn.execute(
        select(person.external_id, hours.weekday_hour, hours.opens)
        .join(customers, person.id == hours.customer_id)
        .where(hours.tenant_id == tenant_id, hours.customer_id.in_(chosen.scalar_subquery()))
    )
    by_customer: dict[str, dict[int, int]] = defaultdict(dict)
    for r in rows:
        by_customer[r.external_id][int(r.weekday_hour)] = int(r.opens)
    out = {}
    for external_id, slots in by_customer.items():
        best = model.personal_best_slot(slots, analysis.fit)
        out[external_id] = {"weekday": WEEKDAYS[best // 24], "hour": best % 24, "opens": sum(slots.values())}
    return out


def warm_cache(engine: Engine, *, salons: int = 50) -> int:
    """Fit the salons with the most recent mail ahead of their first dashboard view; returns how many."""
    with engine.connect() as conn:
        busiest = conn.execute(
            select(rollup_messages.c.tenant_id, tenants.c.timezone)
            .join(tenants, tenants.c.id == rollup_messages.c.tenant_id)
            .group_by(rollup_messages.c.tenant_id, tenants.c.timezone)
            .order_by(func.max(rollup_messages.c.hour).desc())
            .limit(salons)
        ).all()
        for tenant_id, timezone in busiest:
            best_send_time(conn, tenant_id=tenant_id, timezone=timezone)
    return len(busiest)
