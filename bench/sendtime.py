"""Best send time against ground truth: synthetic salons whose customers' habits are known.

    .venv/bin/python -m bench.sendtime [--months 6] [--salons 3] [--end 2026-06-01T12:00] [--small]

Each salon is written by the demo generator (mail of every kind, through the real ingest) into a scratch
SQLite database; the generator sends its campaigns at one or two habitual slots, so most slots were
never tried. The model reads the rollups as in production; the truth comes from the population's
habits (`population.true_open_probability`).

The truth, apples to apples with what the model estimates: the chance that a campaign message (the
newsletter's interest, 1.0) delivered at local weekday × hour s is opened by a person within 72 hours,
averaged over the customers the salon can mail today (no bad address, not unsubscribed, not
hard-bounced, not do-not-track). Machine opens are not in it, as they are not in the rollups' human
opens. Two baselines read the same rollups (campaign mail only, human opens within 72 hours):
"best used slot" (the used slot with the best observed rate; predicts the observed rate where a slot
was used, the overall average elsewhere) and "overall average" (the same rate everywhere; recommends
the most used slot). A slot is "used" when at least 100 campaign messages went out in it.
`--small` adds three salons with little history (400 customers over 2 months, 800 over 4, 1500 over 3),
reported apart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
import time
import zoneinfo
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, select

from bench.common import scratch_database
from mailtrack.analytics import sendtime
from mailtrack.analytics import sendtime_data as data
from mailtrack.analytics import sendtime_fit as model
from mailtrack.analytics.tables import customer_open_hours
from mailtrack.db import make_engine, write_transaction
from mailtrack.demo.generator import seed_history
from mailtrack.demo.population import Customer, build_population, population_open_rate, true_open_probability
from mailtrack.messages.tables import customers
from mailtrack.migrations import upgrade
from mailtrack.tenants.queries import create_tenant

SALONS = (  # (seed, customers, timezone): 6 months each
    (1, 2000, "Europe/Budapest"),
    (2, 3000, "Europe/London"),
    (3, 4000, "America/New_York"),
    (4, 2500, "Europe/Berlin"),
    (5, 3500, "Australia/Sydney"),
)
SMALL_SALONS = ((7, 400, "Europe/Budapest", 2), (8, 800, "Europe/Budapest", 4), (9, 1500, "Europe/Berlin", 3))
USED_MIN_MESSAGES = 100
WEEK = data.HOURS_PER_WEEK
MONDAY = dt.datetime(2024, 1, 1)  # noqa: DTZ001 - wall-clock hours, as the grid means them


@dataclass(frozen=True)
class Scores:
    """How one method did on one salon."""

    recommended: int
    regret: float
    mae: float
    error_at_recommended: float
    mae_used: float
    mae_unused: float


def score(
    prediction: Sequence[float], truth: Sequence[float], recommended: int, used: Sequence[int]
) -> Scores:
    """Regret of the recommendation and calibration of the predictions against the truth."""
    errors = [abs(p - t) for p, t in zip(prediction, truth, strict=True)]
    unused = [s for s in range(WEEK) if s not in used]
    return Scores(
        recommended=recommended,
        regret=max(truth) - truth[recommended],
        mae=math.fsum(errors) / WEEK,
        error_at_recommended=errors[recommended],
        mae_used=statistics.fmean(errors[s] for s in used),
        mae_unused=statistics.fmean(errors[s] for s in unused),
    )


def audience(engine: Engine, population: list[Customer]) -> list[Customer]:
    """The customers a campaign would reach today."""
    person = customers.c
    with engine.connect() as conn:
        gone = set(
            conn.execute(
                select(person.external_id).where(
                    (person.suppressed_at.is_not(None))
                    | (person.hard_bounced_at.is_not(None))
                    | (person.do_not_track)
                )
            ).scalars()
        )
    return [c for c in population if not c.bad_address and c.external_id not in gone]


def truth_grid(people: list[Customer]) -> list[float]:
    """The true 72-hour human open rate of a newsletter sent at each local slot, over `people`."""
    grid = []
    for slot in range(WEEK):
        send_at = MONDAY + dt.timedelta(hours=slot)
        grid.append(math.fsum(true_open_probability(c, send_at) for c in people) / len(people))
    return grid


def baselines(
    cohorts: list[data.CohortCounts], timezone: str, now: dt.datetime
) -> tuple[dict[int, float], dict[int, float], float]:
    """Campaign mail by local send slot: messages, human opens within 72 h, and the overall rate."""
    zone = zoneinfo.ZoneInfo(timezone)
    sent: dict[int, float] = defaultdict(float)
    opened: dict[int, float] = defaultdict(float)
    for cohort in cohorts:
        delivered = cohort.delivered.get(data.TARGET_KIND, 0)
        if delivered == 0 or data.observed_ages(cohort.hour, now) < data.HORIZON_HOURS:
            continue  # a baseline needs the whole 72 hours observed
        first_opens = sum(n for delay, n in cohort.delays.items() if delay < data.HORIZON_HOURS)
        all_opens = sum(cohort.opened.values())
        # Delays are per cohort hour: the campaign's opens within 72 h, by the hour's share of early opens.
        within = first_opens / all_opens if all_opens else 0.0
        slot = data.local_slot(cohort.hour, zone)
        sent[slot] += delivered
        opened[slot] += cohort.opened.get(data.TARGET_KIND, 0) * within
    overall = sum(opened.values()) / sum(sent.values())
    return sent, {s: opened[s] / sent[s] for s in sent}, overall


def customer_regrets(
    engine: Engine, tenant_id: int, population: list[Customer], now: dt.datetime, salon_slot: int
) -> tuple[int, float, float, float]:
    """Per-customer best hours: mean true regret of the model, the salon's slot and the modal open slot."""
    by_id = {c.external_id: c for c in population}
    with engine.connect() as conn:
        found = sendtime.customer_best_hours(conn, tenant_id=tenant_id, limit=300, now=now)
        hours = customer_open_hours.c
        person = customers.c
        rows = conn.execute(
            select(person.external_id, hours.weekday_hour, hours.opens).join(
                customers, person.id == hours.customer_id
            )
        ).all()
    modal: dict[str, Counter[int]] = defaultdict(Counter)
    for external_id, slot, opens in rows:
        modal[external_id][int(slot)] += int(opens)
    regrets: list[tuple[float, float, float]] = []
    for external_id, best in found.items():
        customer = by_id[external_id]
        own = [true_open_probability(customer, MONDAY + dt.timedelta(hours=s)) for s in range(WEEK)]
        chosen = sendtime.WEEKDAYS.index(best["weekday"]) * 24 + best["hour"]
        mode = modal[external_id].most_common(1)[0][0]
        top = max(own)
        regrets.append((top - own[chosen], top - own[salon_slot], top - own[mode]))
    if not regrets:
        return 0, 0.0, 0.0, 0.0
    model_regret, salon_regret, mode_regret = (statistics.fmean(r[i] for r in regrets) for i in range(3))
    return len(regrets), model_regret, salon_regret, mode_regret


@dataclass(frozen=True)
class SalonResult:
    """One salon's figures."""

    seed: int
    customers: int
    timezone: str
    seeded: float
    seconds: float
    point_seconds: float
    used: list[int]
    truth_best: int
    truth_vs_population: float
    scores: dict[str, Scores]
    predicted: float
    interval: tuple[float, float]
    truth_at_recommended: float
    frailty: float
    per_customer: tuple[int, float, float, float]


def run_salon(seed: int, size: int, timezone: str, months: int, end: dt.datetime) -> SalonResult:
    """Build one salon, fit, and score the model and the baselines against the truth."""
    with scratch_database("sqlite", f"sendtime-{seed}") as url:
        engine = make_engine(url)
        upgrade(engine)
        with write_transaction(engine) as conn:
            tenant = create_tenant(conn, name=f"Bench salon {seed}", timezone=timezone)
        began = time.perf_counter()
        seed_history(engine, tenant_id=tenant.id, months=months, customers=size, seed=seed, end=end)
        seeded = time.perf_counter() - began
        population = build_population(size, seed=seed)
        truth = truth_grid(audience(engine, population))
        reference = [population_open_rate(population, s // 24, s % 24) for s in range(WEEK)]
        sendtime.clear_cache()
        with engine.connect() as conn:
            began = time.perf_counter()
            answer = sendtime.best_send_time(conn, tenant_id=tenant.id, timezone=timezone, now=end)
            seconds = time.perf_counter() - began
            analysis = sendtime.cached_analysis(conn, tenant_id=tenant.id, timezone=timezone, now=end)
            cohorts = sendtime.load_cohorts(conn, tenant_id=tenant.id, since=end - sendtime.WINDOW, until=end)
        assert answer is not None
        assert analysis is not None
        target, _ = sendtime.target_kinds(cohorts)
        prepared = data.prepare(cohorts, timezone=timezone, now=end, target=target)
        began = time.perf_counter()
        model.fit(data.build_rows(prepared), len(prepared.strata), frailty=analysis.fit.frailty)
        point_seconds = time.perf_counter() - began
        per_customer = customer_regrets(engine, tenant.id, population, end, analysis_slot(answer))
        engine.dispose()
    grid = [rate for row in answer["grid"] for rate in row]
    recommended = analysis_slot(answer)
    sent, observed, overall = baselines(cohorts, timezone, end)
    used = sorted(s for s in sent if sent[s] >= USED_MIN_MESSAGES)
    best_used = max(used, key=lambda s: observed[s])
    most_used = max(used, key=lambda s: sent[s])
    low, high = answer["interval"]
    return SalonResult(
        seed=seed,
        customers=size,
        timezone=timezone,
        seeded=seeded,
        seconds=seconds,
        point_seconds=point_seconds,
        used=used,
        truth_best=max(range(WEEK), key=lambda s: truth[s]),
        truth_vs_population=max(abs(a - b) for a, b in zip(truth, reference, strict=True)),
        scores={
            "model": score(grid, truth, recommended, used),
            "best_used": score(
                [observed[s] if s in used else overall for s in range(WEEK)], truth, best_used, used
            ),
            "average": score([overall] * WEEK, truth, most_used, used),
        },
        predicted=answer["expected_open_rate"],
        interval=(low, high),
        truth_at_recommended=truth[recommended],
        frailty=analysis.fit.frailty,
        per_customer=per_customer,
    )


def analysis_slot(answer: dict[str, object]) -> int:
    """The recommended slot of an answer as an hour of the week."""
    return sendtime.WEEKDAYS.index(str(answer["weekday"])) * 24 + int(str(answer["hour"]))


def _slot(slot: int) -> str:
    return f"{sendtime.WEEKDAYS[slot // 24][:3]} {slot % 24:02d}h"


def _ratio(model_value: float, baseline: float) -> str:
    return f"{model_value / baseline:6.2f}" if baseline > 0 else "   n/a"


METHODS = (("model", "model"), ("best_used", "best used slot"), ("average", "overall average"))


def report(r: SalonResult, months: int) -> None:
    """Print one salon's lines."""
    used = ", ".join(map(_slot, r.used))
    print(
        f"\nsalon seed {r.seed}: {r.customers} customers, {r.timezone}, {months} months "
        f"(seeded in {r.seeded:.0f} s); campaign slots used: {used}"
    )
    print(
        f"  true best slot {_slot(r.truth_best)}  |  truth vs population_open_rate: max "
        f"{r.truth_vs_population:.4f}  |  engagement frailty θ = {r.frailty:.2f}"
    )
    print(
        f"  {'method':<18}{'recommends':>11}{'regret':>9}{'MAE (168)':>11}{'|err| at rec':>14}"
        f"{'MAE used':>10}{'MAE unused':>12}"
    )
    for key, label in METHODS:
        s = r.scores[key]
        print(
            f"  {label:<18}{_slot(s.recommended):>11}{s.regret:>9.4f}{s.mae:>11.4f}"
            f"{s.error_at_recommended:>14.4f}{s.mae_used:>10.4f}{s.mae_unused:>12.4f}"
        )
    low, high = r.interval
    inside = "inside" if low <= r.truth_at_recommended <= high else "OUTSIDE"
    print(
        f"  model: predicted {r.predicted:.3f}, interval [{low:.3f}, {high:.3f}], true "
        f"{r.truth_at_recommended:.3f} ({inside}); answer in {r.seconds:.2f} s "
        f"(point fit {r.point_seconds:.2f} s; the rest is loading and 50 bootstrap refits)"
    )
    n, own, salon, mode = r.per_customer
    print(
        f"  per-customer best hour ({n} customers with ≥ 5 first opens), mean true regret: model {own:.4f}, "
        f"the salon's slot for all {salon:.4f}, their most frequent first-open slot {mode:.4f}"
    )


def main() -> int:
    """Run every salon and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", type=int, default=6)
    parser.add_argument("--salons", type=int, default=len(SALONS))
    parser.add_argument("--end", default="2026-06-01T12:00", help="UTC end of the histories (reproducible)")
    parser.add_argument("--small", action="store_true", help="also two small salons with little history")
    args = parser.parse_args()
    end = dt.datetime.fromisoformat(args.end).replace(tzinfo=dt.UTC)
    results = []
    for seed, size, zone in SALONS[: args.salons]:
        results.append(run_salon(seed, size, zone, args.months, end))
        report(results[-1], args.months)
    print("\nmean over salons; ratio = model ÷ baseline (below 1: the model is better)")
    print(f"  {'metric':<16}{'model':>9}{'best used':>11}{'ratio':>8}{'average':>10}{'ratio':>8}")
    for field, label in (
        ("regret", "regret"),
        ("mae", "MAE (168)"),
        ("error_at_recommended", "|err| at rec"),
        ("mae_used", "MAE used"),
        ("mae_unused", "MAE unused"),
    ):
        values = {key: statistics.fmean(getattr(r.scores[key], field) for r in results) for key, _ in METHODS}
        print(
            f"  {label:<16}{values['model']:>9.4f}{values['best_used']:>11.4f}"
            f"{_ratio(values['model'], values['best_used']):>8}{values['average']:>10.4f}"
            f"{_ratio(values['model'], values['average']):>8}"
        )
    covered = sum(r.interval[0] <= r.truth_at_recommended <= r.interval[1] for r in results)
    print(f"  truth inside the model's 10–90 % interval at its recommended slot: {covered} of {len(results)}")
    seconds = statistics.fmean(r.seconds for r in results)
    point = statistics.fmean(r.point_seconds for r in results)
    print(f"  time: point fit {point:.2f} s, whole answer (load, fit, 50 bootstrap refits) {seconds:.2f} s")
    if args.small:
        print("\nsmall salons (not in the means above)")
        for seed, size, zone, months in SMALL_SALONS:
            report(run_salon(seed, size, zone, months, end), months)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
