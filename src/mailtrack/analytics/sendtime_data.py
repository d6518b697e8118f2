"""The send-time model's data: rollup counts turned into rows of messages at risk, hour by hour.

A cohort hour's messages of one kind share everything the model needs: the local hour of the week of
each hour of their life (their "path" of look slots, DST-exact through zoneinfo), how many of those
hours have been observed so far (censoring at `now`), how many were delivered and when their first
human opens came. Messages sharing a kind, a path and an observed age are summed into one row, so the
fit's cost grows with the number of distinct rows (a few hundred), not with the number of messages.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, repeat
from operator import mul, sub

HOURS_PER_WEEK = 168
HORIZON_HOURS = 72  # the open rate is the chance of a human open within this many hours
# Campaign mail is followed for a week in the fit: whatever the weekday it was sent, it is then waiting
# in the mailbox during every local hour of the week, so each slot's attention is measured (old mail is
# opened less, which the decay accounts for). Other kinds cover the week by their own spread of sends.
TARGET_FIT_HOURS = HOURS_PER_WEEK
TARGET_KIND = "campaign"
_HOUR = dt.timedelta(hours=1)
Path = int | tuple[int, ...]  # an int s: slots s, s+1, … (no DST change); else each age's slot


@dataclass(frozen=True, slots=True)
class CohortCounts:
    """One cohort hour (UTC): tracked delivered and first-opened messages per kind, first opens by delay."""

    hour: dt.datetime
    delivered: Mapping[str, int]
    opened: Mapping[str, int]
    delays: Mapping[int, int]


@dataclass(frozen=True, slots=True)
class Prepared:
    """The data in the model's terms: strata, row keys, and each cohort hour's pieces (for resampling)."""

    strata: tuple[str, ...]  # stratum 0 is the target
    keys: tuple[tuple[int, Path, int], ...]  # row → (stratum, path of look slots, hours observed)
    segments: tuple[tuple[tuple[int, int, int], ...], ...]  # row → its path as runs of slots
    # Per cohort hour: (row, delivered messages, ((delay, apportioned first opens), …)) per kind of mail.
    cohorts: tuple[tuple[tuple[int, float, tuple[tuple[int, float], ...]], ...], ...]
    messages: int
    first_opens: int


@dataclass(slots=True)
class Row:
    """Counts of every message sharing a kind, a path of look slots and an observed age."""

    stratum: int
    # Runs of consecutive look slots: (first age, its slot, length); a DST change starts a second run.
    segments: tuple[tuple[int, int, int], ...]
    ages: int
    opens: list[float]
    at_risk: list[float]  # messages not yet opened at the start of each age
    exposed: list[float]  # message-hours at risk in each age: an opener is exposed half its hour


def local_slot(moment: dt.datetime, zone: dt.tzinfo) -> int:
    """The local hour of the week of a UTC instant: 0 = Monday 00:00–00:59 … 167 = Sunday 23h."""
    local = moment.astimezone(zone)
    return local.weekday() * 24 + local.hour


def look_path(hour: dt.datetime, ages: int, zone: dt.tzinfo) -> Path:
    """The local slot of each of the first `ages` hours after `hour`; an int when no DST change interrupts."""
    first = local_slot(hour, zone)
    if (first + ages - 1) % HOURS_PER_WEEK == local_slot(hour + (ages - 1) * _HOUR, zone):
        return first
    return tuple(local_slot(hour + age * _HOUR, zone) for age in range(ages))


def observed_ages(hour: dt.datetime, now: dt.datetime, horizon: int = HORIZON_HOURS) -> int:
    """How many whole hours of a cohort's life have been observed (censoring), up to the horizon."""
    return max(0, min(horizon, int((now - hour) // _HOUR)))


def prepare(
    cohorts: Iterable[CohortCounts],
    *,
    timezone: str,
    now: dt.datetime,
    target: Collection[str] = (TARGET_KIND,),
    min_stratum_opens: int = 200,
) -> Prepared:
    """Turn cohort counts into row pieces; kinds with few opens share one stratum per channel."""
    zone = zoneinfo.ZoneInfo(timezone)
    listed = [c for c in cohorts if observed_ages(c.hour, now) > 0 and sum(c.delivered.values()) > 0]
    horizon = {True: TARGET_FIT_HOURS, False: HORIZON_HOURS}
    opens_by_kind: dict[str, int] = {}
    for cohort in listed:
        for kind, opened in cohort.opened.items():
            opens_by_kind[kind] = opens_by_kind.get(kind, 0) + opened

    def stratum_name(kind: str) -> str:
        if kind in target:
            return "target"
        if opens_by_kind.get(kind, 0) >= min_stratum_opens:
            return kind
        return kind.split("/", 1)[0] + "/other"  # kinds are "channel/source/campaign"

    used = {stratum_name(k) for c in listed for k, n in c.delivered.items() if n > 0}
    names = ["target", *sorted(used - {"target"})]
    index = {name: i for i, name in enumerate(names)}
    keys: dict[tuple[int, Path, int], int] = {}
    prepared = []
    messages = first_opens = 0
    for cohort in listed:
        longest = observed_ages(cohort.hour, now, TARGET_FIT_HOURS)
        full_path = look_path(cohort.hour, longest, zone)
        total_opened = sum(cohort.opened.values())
        delays = sorted((d, n) for d, n in cohort.delays.items() if 0 <= d < longest and n > 0)
        pieces = []
        for kind, delivered in cohort.delivered.items():
            opened = cohort.opened.get(kind, 0)
            count = max(delivered, opened)  # an opened message was delivered, reported or not
            if count <= 0:
                continue
            # Delays are kept per cohort hour, not per kind: each kind takes its share of the hour's opens.
            share = opened / total_opened if total_opened else 0.0
            stratum = index[stratum_name(kind)]
            ages = min(longest, horizon[stratum == 0])
            opens = tuple((d, n * share) for d, n in delays if d < ages) if share > 0.0 else ()
            row = keys.setdefault((stratum, _truncate(full_path, ages), ages), len(keys))
            pieces.append((row, float(count), opens))
            messages += count
        first_opens += sum(n for d, n in delays if d < HORIZON_HOURS)
        prepared.append(tuple(pieces))
    segments = tuple(_segments(path, ages) for _, path, ages in keys)
    return Prepared(tuple(names), tuple(keys), segments, tuple(prepared), messages, first_opens)


def _truncate(path: Path, ages: int) -> Path:
    """The first `ages` slots of a path (an int again when no DST change falls within them)."""
    if isinstance(path, int):
        return path
    part = path[:ages]
    if all((part[0] + age) % HOURS_PER_WEEK == slot for age, slot in enumerate(part)):
        return part[0]
    return part


def _segments(path: Path, ages: int) -> tuple[tuple[int, int, int], ...]:
    """A path as runs of consecutive slots, so that every run is one slice of the wrapped week."""
    if isinstance(path, int):
        return ((0, path, ages),)
    runs: list[tuple[int, int, int]] = []
    for age, slot in enumerate(path):
        if runs and (runs[-1][1] + runs[-1][2]) % HOURS_PER_WEEK == slot:
            first, start, length = runs[-1]
            runs[-1] = (first, start, length + 1)
        else:
            runs.append((age, slot, 1))
    return tuple(runs)


def build_rows(prepared: Prepared, weights: Sequence[int] | None = None) -> list[Row]:
    """Sum the pieces (each cohort hour counted `weights[i]` times: a bootstrap resample) into rows."""
    delivered = [0.0] * len(prepared.keys)
    opens = [[0.0] * ages for _, _, ages in prepared.keys]
    for position, pieces in enumerate(prepared.cohorts):
        weight = 1 if weights is None else weights[position]
        if weight == 0:
            continue
        for row, count, delays in pieces:
            delivered[row] += weight * count
            found = opens[row]
            for delay, opened in delays:
                found[delay] += weight * opened
    rows = []
    for (stratum, _, ages), segments, total, counts in zip(
        prepared.keys, prepared.segments, delivered, opens, strict=True
    ):
        if total <= 0.0:
            continue
        at_risk = list(accumulate(counts, sub, initial=total))[:ages]
        exposed = list(map(sub, at_risk, map(mul, counts, repeat(0.5))))
        rows.append(Row(stratum, segments, ages, counts, at_risk, exposed))
    return rows
