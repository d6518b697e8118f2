"""The send-time model's mathematics: a discrete-time hazard model fitted on rollup counts, pure Python.

Each tracked delivered message is at risk of its first human open in every hour of its age d = 0 … 71,
until it is opened or the horizon (or `now`) ends its observation. A message sent in cohort hour h is
"looked at" in hour d during the salon's local hour of the week `slot(h + d)` (zoneinfo, DST-exact).
For mail of kind k (campaigns, each automation, transactional mail) and a customer of frailty Z:

    hazard = Z × attention[slot] × decay_k[d]

- `attention` (168 values, mean 1) is shared by every kind: when the salon's customers look at their
  mail. It is shrunk towards its neighbouring hours and, where data is thin, towards a built-in human
  daily profile, so that slots never used for sending still get an estimate.
- `decay_k` is free for each kind except the target (campaign mail), whose decay is smooth and never
  rising (log-linear in d and log(1 + d)): an age effect that may not imitate a time-of-week effect.
  A kind of its own keeps an automation's audience and timing (a confirmation sent the minute a
  customer books is read at once) from distorting when everybody reads.
- Z ~ Gamma(mean 1, variance θ) for the target kind: customers differ in engagement, and without it the
  model would promise the peaks more than they give (early openers leave the at-risk pool first).

The expected open rate of sending target mail at local slot s is 1 − (1 + θ L)^(−1/θ), with
L = Σ_{d<72} attention[s + d] × decay[d] (θ → 0: 1 − exp(−L) ≈ 1 − Π(1 − hazard)). The fit is an EM
(frailty) with conditional maximization steps on counts aggregated by (kind, path of look slots, age
observed), so its cost does not grow with the number of messages.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from operator import add, mul, sub

from mailtrack.analytics.sendtime_data import (
    HORIZON_HOURS,
    HOURS_PER_WEEK,
    TARGET_FIT_HOURS,
    Prepared,
    Row,
    build_rows,
)

# A slot's log attention ~ Normal(log of its neighbourhood's, σ): many opens outweigh it whatever the
# neighbours say (a habit as sharp as "Thursday 20:00 only" must show), a few do not.
_SLOT_PRIOR_SD = 0.3
# A neighbourhood's attention ~ Gamma around the global profile at the salon's level, as pseudo-opens.
_NEIGHBOURHOOD_PRIOR_OPENS = 10.0
_DECAY_PRIOR_SHAPE = (-math.log(2.0), 0.0)  # per day, per log(1 + hours)
_DECAY_PRIOR_WEIGHT = 5.0  # log-likelihood units: a few opens' worth
_AGE_DAYS = tuple(d / 24.0 for d in range(TARGET_FIT_HOURS))  # the smooth decay's features
_LOG_AGE = tuple(math.log1p(d) for d in range(TARGET_FIT_HOURS))
_AGE_DAYS_2 = tuple(a * a for a in _AGE_DAYS)
_AGE_CROSS = tuple(a * b for a, b in zip(_AGE_DAYS, _LOG_AGE, strict=True))
_LOG_AGE_2 = tuple(b * b for b in _LOG_AGE)

# A human daily curve for when data is thin: quiet nights, a morning rise, lunch and evening peaks;
# weekends start later. Relative values (normalized to mean 1 below); a shape, not a measurement.
_WEEKDAY = (0.10, 0.06, 0.04, 0.04, 0.06, 0.20, 0.55, 0.95, 1.10, 1.05, 1.00, 1.00,
            1.15, 1.10, 0.95, 0.90, 0.90, 1.00, 1.10, 1.20, 1.25, 1.15, 0.80, 0.35)  # fmt: skip
_WEEKEND = (0.15, 0.10, 0.06, 0.04, 0.04, 0.08, 0.20, 0.45, 0.80, 1.05, 1.15, 1.15,
            1.10, 1.00, 0.95, 0.95, 1.00, 1.05, 1.10, 1.20, 1.20, 1.05, 0.75, 0.35)  # fmt: skip
_RAW_PROFILE = _WEEKDAY * 5 + _WEEKEND * 2
GLOBAL_PROFILE = tuple(v * HOURS_PER_WEEK / sum(_RAW_PROFILE) for v in _RAW_PROFILE)


@dataclass(frozen=True, slots=True)
class Fit:
    """A fitted model: attention by local slot, the target's decay and frailty, and the rate grid."""

    attention: tuple[float, ...]
    decay: tuple[float, ...]
    frailty: float
    grid: tuple[float, ...]  # expected open rate of target mail sent at each local slot (Monday 00h first)
    iterations: int
    other_decays: tuple[tuple[float, ...], ...]
    decay_shape: tuple[float, float, float]  # log decay = a + b·d/24 + c·log(1 + d)
    exposure: tuple[float, ...]  # expected first opens per slot at attention 1: how much mail was waiting


def _solve3(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Solve a 3 × 3 linear system (Gaussian elimination with partial pivoting)."""
    m = [[*row, value] for row, value in zip(matrix, vector, strict=True)]
    for col in range(3):
        pivot = max(range(col, 3), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        if abs(m[col][col]) < 1e-300:
            return [0.0, 0.0, 0.0]
        for r in range(3):
            if r != col:
                factor = m[r][col] / m[col][col]
                m[r] = [a - factor * b for a, b in zip(m[r], m[col], strict=True)]
    return [m[i][3] / m[i][i] for i in range(3)]


def _dot(a: Iterable[float], b: Iterable[float]) -> float:
    return math.fsum(map(mul, a, b))


def _smooth_decay(opens: Sequence[float], exposure: Sequence[float], theta: list[float]) -> list[float]:
    """Newton steps of a Poisson fit of log decay = a + b·d/24 + c·log(1 + d); b, c ≤ 0: never rising."""
    x1, x2 = _AGE_DAYS, _LOG_AGE
    for _ in range(2):
        means = [
            e * math.exp(theta[0] + theta[1] * a + theta[2] * b)
            for e, a, b in zip(exposure, x1, x2, strict=True)
        ]
        residuals = list(map(sub, opens, means))
        # A weak prior on the shape (half the pull lost per day) decides only when the data cannot.
        prior = _DECAY_PRIOR_WEIGHT
        gradient = [
            math.fsum(residuals),
            _dot(residuals, x1) - prior * (theta[1] - _DECAY_PRIOR_SHAPE[0]),
            _dot(residuals, x2) - prior * (theta[2] - _DECAY_PRIOR_SHAPE[1]),
        ]
        m0, m1, m2 = math.fsum(means), _dot(means, x1), _dot(means, x2)
        m11, m12, m22 = _dot(means, _AGE_DAYS_2), _dot(means, _AGE_CROSS), _dot(means, _LOG_AGE_2)
        hessian = [[m0 + 1e-9, m1, m2], [m1, m11 + prior, m12], [m2, m12, m22 + prior]]
        step = _solve3(hessian, gradient)
        theta[:] = [t + s for t, s in zip(theta, step, strict=True)]
        theta[1], theta[2] = min(theta[1], 0.0), min(theta[2], 0.0)
        # The intercept in closed form once the shape is clipped: fitted opens then equal observed ones.
        shape = _dot(exposure, [math.exp(theta[1] * a + theta[2] * b) for a, b in zip(x1, x2, strict=True)])
        if shape > 0.0 and math.fsum(opens) > 0.0:
            theta[0] = math.log(math.fsum(opens) / shape)
    return [math.exp(theta[0] + theta[1] * a + theta[2] * b) for a, b in zip(x1, x2, strict=True)]


def _rotate(values: list[float], by: int) -> list[float]:
    """values[(s + by) % len] for every s."""
    return values[by:] + values[:by]


def _prior(num: list[float], den: list[float]) -> list[float]:
    """Each slot's prior mean: its four neighbours' rate, itself shrunk towards the global profile."""
    total = sum(den)
    level = sum(num) / total if total > 0.0 else 1.0
    weight = _NEIGHBOURHOOD_PRIOR_OPENS

    def near(values: list[float]) -> list[float]:
        # The hours just before and after, and the same hour the day before and after.
        return list(map(sum, zip(*(_rotate(values, k) for k in (1, -1, 24, -24)), strict=True)))

    return [
        (n + weight) / (d + weight / (level * g))
        for n, d, g in zip(near(num), near(den), GLOBAL_PROFILE, strict=True)
    ]


def _attention_mode(opens: float, exposure: float, prior: float, start: float) -> float:
    """The posterior mode of a slot's attention: Poisson(opens | exposure × a), log a ~ N(log prior, σ)."""
    centre, precision = math.log(prior), 1.0 / (_SLOT_PRIOR_SD * _SLOT_PRIOR_SD)
    u = math.log(start) if start > 0.0 else centre
    for _ in range(4):  # Newton on a concave function of u = log a
        expected = exposure * math.exp(u)
        step = (opens - expected - (u - centre) * precision) / (expected + precision)
        u += max(-3.0, min(3.0, step))
    return math.exp(u)


def predict_grid(attention: Sequence[float], decay: Sequence[float], frailty: float) -> tuple[float, ...]:
    """Expected open rate within the horizon of target mail sent at each local slot (wall-clock hours)."""
    wrapped = list(attention) + list(attention[:HORIZON_HOURS])
    within = decay[:HORIZON_HOURS]
    rates = []
    for start in range(HOURS_PER_WEEK):
        cumulative = sum(map(mul, wrapped[start : start + HORIZON_HOURS], within))
        survive = (1.0 + frailty * cumulative) ** (-1.0 / frailty) if frailty > 0 else math.exp(-cumulative)
        rates.append(1.0 - survive)
    return tuple(rates)


class _Model:
    """The EM state over a set of rows."""

    def __init__(self, rows: list[Row], strata: int, frailty: float, start: Fit | None) -> None:
        week = HOURS_PER_WEEK
        self.target = [row for row in rows if row.stratum == 0]
        self.others = [row for row in rows if row.stratum != 0]
        self.strata, self.frailty = strata, frailty
        num_b = [0.0] * (2 * week)
        self.num_g = [[0.0] * _fit_hours(stratum) for stratum in range(strata)]
        for row in rows:
            _scatter(num_b, row, row.opens)
            opened = self.num_g[row.stratum]
            opened[: row.ages] = list(map(add, opened[: row.ages], row.opens))
        self.num_b = _fold(num_b)
        self.attention = [1.0] * week
        self.decays = [[0.01 * 0.5 ** (d / 12) for d in range(_fit_hours(i))] for i in range(strata)]
        self.theta = [math.log(0.01), -0.5, -0.1]
        if start is not None:
            self.attention = list(start.attention)
            self.decays = [list(start.decay), *(list(d) for d in start.other_decays)]
            self.theta = list(start.decay_shape)
        self.exposure = [0.0] * week
        self.others_exposure: list[float] | None = None  # set when other kinds' decays are held fixed

    def _looks(self, row: Row, wrapped: list[float]) -> list[float]:
        if len(row.segments) == 1:
            start = row.segments[0][1]
            return wrapped[start : start + row.ages]
        return [a for _, start, length in row.segments for a in wrapped[start : start + length]]

    def _target_weights(self, wrapped: list[float]) -> list[list[float]]:
        """E-step: each target row's expected frailty-weighted number of messages at risk, age by age."""
        if self.frailty <= 0.0:
            return [row.exposed for row in self.target]
        k = 1.0 / self.frailty
        out = []
        for row in self.target:
            hazards = list(map(mul, self._looks(row, wrapped), self.decays[0]))
            cumulative = list(accumulate(hazards))  # Λ at the end of each age
            # Gamma frailty: E[Z] is k/(k+Λ) for a message never opened, (k+1)/(k+Λ) for one opened
            # (Λ taken mid-hour); an opener counts half its hour, as in `exposed`.
            tail = (row.at_risk[-1] - row.opens[-1]) * k / (k + cumulative[-1])
            opened = [
                n * (k + 1.0) / (k + c - 0.5 * h)
                for n, c, h in zip(row.opens, cumulative, hazards, strict=True)
            ]
            at_risk = list(accumulate(reversed(opened), initial=tail))[:0:-1]
            out.append([r - 0.5 * o for r, o in zip(at_risk, opened, strict=True)])
        return out

    def hold_other_decays(self) -> None:
        """Keep the other kinds' decays as they are: their share of the exposure is then fixed."""
        total = [0.0] * (2 * HOURS_PER_WEEK)
        for row in self.others:
            _scatter(total, row, list(map(mul, row.exposed, self.decays[row.stratum])))
        self.others_exposure = _fold(total)

    def step(self) -> None:
        """One EM iteration: decays given attention, then attention given decays (same E-step weights)."""
        week = HOURS_PER_WEEK
        wrapped = self.attention + self.attention
        weights = self._target_weights(wrapped)
        den_g = [0.0] * TARGET_FIT_HOURS
        for row, weight in zip(self.target, weights, strict=True):
            den_g[: row.ages] = list(map(add, den_g[: row.ages], map(mul, weight, self._looks(row, wrapped))))
        self.decays[0] = _smooth_decay(self.num_g[0], den_g, self.theta)
        den_b = [0.0] * (2 * week)
        for row, weight in zip(self.target, weights, strict=True):
            _scatter(den_b, row, list(map(mul, weight, self.decays[0])))
        if self.others_exposure is None:
            exposed = [[0.0] * _fit_hours(stratum) for stratum in range(self.strata)]
            for row in self.others:
                found = exposed[row.stratum]
                found[: row.ages] = list(
                    map(add, found[: row.ages], map(mul, row.exposed, self._looks(row, wrapped)))
                )
            for stratum in range(1, self.strata):
                self.decays[stratum] = [
                    n / d if d > 0.0 else 0.0
                    for n, d in zip(self.num_g[stratum], exposed[stratum], strict=True)
                ]
            for row in self.others:
                _scatter(den_b, row, list(map(mul, row.exposed, self.decays[row.stratum])))
            den = _fold(den_b)
        else:
            den = list(map(add, _fold(den_b), self.others_exposure))
        prior = _prior(self.num_b, den)
        attention = [
            _attention_mode(n, d, p, a)
            for n, d, p, a in zip(self.num_b, den, prior, self.attention, strict=True)
        ]
        # Attention × decay is what the data sees; keep attention at mean 1 and move the level to decay.
        mean = sum(attention) / week
        self.attention = [a / mean for a in attention]
        self.decays = [[g * mean for g in decay] for decay in self.decays]
        self.theta[0] += math.log(mean)
        self.exposure = [d * mean for d in den]
        if self.others_exposure is not None:
            self.others_exposure = [e * mean for e in self.others_exposure]

    def grid(self) -> tuple[float, ...]:
        """The target's expected open rate by local send slot."""
        return predict_grid(self.attention, self.decays[0], self.frailty)

    def result(self, grid: tuple[float, ...], iterations: int) -> Fit:
        """The fitted parameters."""
        return Fit(
            attention=tuple(self.attention),
            decay=tuple(self.decays[0]),
            frailty=self.frailty,
            grid=grid,
            iterations=iterations,
            other_decays=tuple(tuple(d) for d in self.decays[1:]),
            decay_shape=(self.theta[0], self.theta[1], self.theta[2]),
            exposure=tuple(self.exposure),
        )


def _fit_hours(stratum: int) -> int:
    """How many hours of a message's life the fit follows for a stratum (the target's: a week)."""
    return TARGET_FIT_HOURS if stratum == 0 else HORIZON_HOURS


def _scatter(total: list[float], row: Row, values: Sequence[float]) -> None:
    """Add a row's per-age values to the totals of the slots it was looked at in (wrapped layout)."""
    for first, start, length in row.segments:
        end = start + length
        part = values if len(row.segments) == 1 else values[first : first + length]
        total[start:end] = list(map(add, total[start:end], part))


def _fold(wrapped: list[float]) -> list[float]:
    """Fold a wrapped (two weeks) array back onto the week."""
    week = wrapped[:HOURS_PER_WEEK]
    for i, value in enumerate(wrapped[HOURS_PER_WEEK:]):
        week[i] += value
    return week


def fit(
    rows: list[Row],
    strata: int,
    *,
    frailty: float,
    max_iterations: int = 300,
    tolerance: float = 1e-5,
) -> Fit:
    """Fit the model by EM until no rate of the grid moves more than `tolerance` in an iteration."""
    model = _Model(rows, strata, frailty, None)
    previous = model.grid()
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        model.step()
        current = model.grid()
        moved = max(abs(a - b) for a, b in zip(current, previous, strict=True))
        previous = current
        if moved < tolerance:
            break
    return model.result(previous, iterations)


def bootstrap(
    prepared: Prepared,
    point: Fit,
    *,
    replicates: int,
    seed: str,
    iterations: int = 8,
) -> list[tuple[float, ...]]:
    """Rate grids refitted on cohort hours resampled with replacement.

    Each refit starts at the point fit and runs a fixed number of EM iterations; the other kinds'
    decays (nuisance parameters) stay at their point estimates, which keeps a refit to milliseconds.
    """
    rng = random.Random(seed)
    count = len(prepared.cohorts)
    grids = []
    for _ in range(replicates):
        weights = [0] * count
        for i in rng.choices(range(count), k=count):
            weights[i] += 1
        model = _Model(build_rows(prepared, weights), len(prepared.strata), point.frailty, point)
        model.hold_other_decays()
        for _ in range(iterations):
            model.step()
        grids.append(model.grid())
    return grids


def frailty_from_customers(customers: int, mean_share: float, mean_pairs: float) -> float | None:
    """θ of Gamma(mean 1, variance θ) engagement from per-customer open shares (method of moments).

    `mean_share` is the customers' mean of opened ÷ delivered, `mean_pairs` their mean of
    opened·(opened − 1) ÷ (delivered·(delivered − 1)): an unbiased estimate of E[p²], so that
    Var(p) = mean_pairs − mean_share² is free of the binomial noise of few messages. For a customer of
    frailty Z, p = 1 − exp(−Z·Λ); θ is the one for which the Gamma mixture has that mean and variance.
    """
    variance = mean_pairs - mean_share * mean_share
    if customers < 30 or not 0.0 < mean_share < 1.0 or variance <= 0.0:
        return None

    def moments(theta: float, cumulative: float) -> tuple[float, float]:
        once = (1.0 + theta * cumulative) ** (-1.0 / theta)
        twice = (1.0 + 2.0 * theta * cumulative) ** (-1.0 / theta)
        return 1.0 - once, twice - once * once

    def spread(theta: float) -> float:
        low, high = 0.0, 1e6
        for _ in range(100):  # the Λ giving the observed mean; the mean rises with Λ
            middle = (low + high) / 2
            low, high = (middle, high) if moments(theta, middle)[0] < mean_share else (low, middle)
        return moments(theta, low)[1]

    low, high = 0.01, 10.0
    if spread(high) < variance:
        return high
    if spread(low) > variance:
        return low
    for _ in range(40):  # the variance rises with θ
        middle = math.sqrt(low * high)
        low, high = (middle, high) if spread(middle) < variance else (low, middle)
    return math.sqrt(low * high)


def personal_best_slot(opens_by_slot: Mapping[int, int], fit: Fit, *, prior_opens: float = 5.0) -> int:
    """The local slot to send a customer mail at, from when they first opened mail before.

    Their first opens by local slot are smoothed over neighbouring hours and days, then compared with
    the share of the salon's opens each slot gets (so that opens piling up after the salon's usual send
    times say nothing about the customer); the ratio, shrunk towards 1 with `prior_opens`, scales the
    salon's attention into theirs, and the best slot maximizes their cumulative hazard over the horizon.
    """
    week = HOURS_PER_WEEK
    counts = [0.0] * week
    for slot, opens in opens_by_slot.items():
        counts[slot % week] += opens
    total = sum(counts)
    smoothed = [
        a + 0.5 * (b + c) + 0.25 * (d + e)
        for a, b, c, d, e in zip(
            counts,
            _rotate(counts, -1),
            _rotate(counts, 1),
            _rotate(counts, -24),
            _rotate(counts, 24),
            strict=True,
        )
    ]
    scale = total / sum(smoothed) if total > 0 else 0.0
    expected = list(map(mul, fit.attention, fit.exposure))
    salon_total = sum(expected)
    floor = 0.1 / week  # a slot the salon's customers hardly use must not turn one open into a rule
    shares = [max(e / salon_total, floor) if salon_total > 0 else 1.0 / week for e in expected]
    attention = [
        a * (c * scale / share + prior_opens) / (total + prior_opens)
        for a, c, share in zip(fit.attention, smoothed, shares, strict=True)
    ]
    wrapped = attention + attention[:HORIZON_HOURS]
    within = fit.decay[:HORIZON_HOURS]
    reach = [sum(map(mul, wrapped[s : s + HORIZON_HOURS], within)) for s in range(week)]
    return max(range(week), key=lambda s: (reach[s], -s))
