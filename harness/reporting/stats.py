"""The statistics a careful comparison reports, as small pure functions: paired t-tests, Holm's step-down
correction, the minimum detectable paired difference, rliable's aggregates (IQM, probability of improvement,
stratified bootstrap; Agarwal et al. 2021) and interpolation along a curve that never extrapolates.

Every function takes plain sequences and returns floats, so each is tested on hand-computed values
(``tests/test_reporting.py``); the tables only arrange their outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

ALPHA = 0.05
"""Two-sided level of every test and interval in the tables."""
POWER = 0.8
"""Power at which the minimum detectable difference is stated."""


def _finite(values: Sequence[float]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


@dataclass(frozen=True)
class Paired:
    """A paired comparison over n seeds: mean difference, 95% t half-width, two-sided t-test p-value, the
    SD of the differences and the minimum detectable difference at this n."""

    mean: float
    half: float
    p: float
    sd: float
    n: int
    mdd: float

    @property
    def spans_zero(self) -> bool:
        """True when the interval includes zero (the table's "no difference"), or when it cannot be formed."""
        return not math.isfinite(self.half) or abs(self.mean) <= self.half


def mdd(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable paired difference: (t(1 - alpha/2, n-1) + t(power, n-1)) * sd / sqrt(n); nan below
    two pairs."""
    from scipy import stats

    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def seeds_for_half_width(sd: float, target: float, alpha: float = ALPHA, most: int = 1000) -> int:
    """The fewest seeds n >= 2 whose paired 95% t half-width, t(1 - alpha/2, n-1) * sd / sqrt(n), is at most
    ``target`` at this SD of the differences; 0 when it cannot be said (no SD) or needs more than ``most``."""
    from scipy import stats

    if not (math.isfinite(sd) and target > 0):
        return 0
    for n in range(2, most + 1):
        if stats.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n) <= target:
            return n
    return 0


def paired(differences: Sequence[float], alpha: float = ALPHA) -> Paired:
    """The paired t-interval and test of per-seed differences (a - b on seed s)."""
    from scipy import stats

    d = _finite(differences)
    n = len(d)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, math.nan, 0, math.nan)
    if n < 2:
        return Paired(float(d.mean()), math.nan, math.nan, math.nan, 1, math.nan)
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n))
    if sd == 0.0:
        p = 1.0 if d.mean() == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(d.mean()) / (sd / math.sqrt(n)), n - 1))
    return Paired(float(d.mean()), half, p, sd, n, mdd(sd, n, alpha))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: sort ascending, multiply the i-th smallest
    (0-based) by m - i, carry the running maximum, cap at 1. Rejecting where the adjusted p <= alpha is
    Holm's procedure; nan entries are left out of the family and stay nan."""
    index = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(index)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(index, key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (scipy's ``trim_mean(x, 0.25)``, as rliable computes it)."""
    from scipy import stats

    x = _finite(values)
    return float(stats.trim_mean(x, 0.25)) if len(x) else math.nan


def improvement_probability(x: Sequence[float], y: Sequence[float]) -> float:
    """P(X > Y) + P(X = Y) / 2 over all pairs of runs (the Mann-Whitney statistic over len(x) * len(y))."""
    a, b = _finite(x), _finite(y)
    if not len(a) or not len(b):
        return math.nan
    greater = (a[:, None] > b[None, :]).mean()
    ties = (a[:, None] == b[None, :]).mean()
    return float(greater + 0.5 * ties)


def average_improvement_probability(x: Mapping[str, Sequence[float]], y: Mapping[str, Sequence[float]]) -> float:
    """rliable's probability of improvement: :func:`improvement_probability` per task, averaged over tasks."""
    tasks = [t for t in x if t in y]
    return float(np.mean([improvement_probability(x[t], y[t]) for t in tasks])) if tasks else math.nan


def stratified_bootstrap(runs: Sequence[Mapping[str, Sequence[float]]],
                         statistic: Callable[..., float], reps: int = 2000, seed: int = 0,
                         confidence: float = 0.95) -> tuple[float, float, float]:
    """(point, low, high): ``statistic(*runs)`` and its percentile interval when the runs of every task are
    resampled with replacement within that task (independently for each argument). ``runs``: one
    {task: values} per argument of ``statistic``."""
    rng = np.random.default_rng(seed)
    point = statistic(*runs)
    samples = []
    for _ in range(reps):
        drawn = [{t: np.asarray(v, dtype=float)[rng.integers(0, len(v), len(v))] for t, v in r.items()} for r in runs]
        samples.append(statistic(*drawn))
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return float(point), float(low), float(high)


def pooled_iqm(runs: Mapping[str, Sequence[float]]) -> float:
    """IQM over every run of every task pooled (rliable's aggregate across tasks)."""
    return iqm([v for values in runs.values() for v in values])


def interpolate_at(x: Sequence[float], y: Sequence[float], target: float) -> float:
    """y where the curve (x, y), taken in its stored order (update order), first reaches ``target`` in x:
    linear between the two measured points that bracket it, never extrapolated (nan when no segment brackets
    ``target``). A point exactly at ``target`` is returned as measured."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    for i in range(len(xs)):
        if xs[i] == target:
            return float(ys[i])
        if i and min(xs[i - 1], xs[i]) <= target <= max(xs[i - 1], xs[i]):
            w = (target - xs[i - 1]) / (xs[i] - xs[i - 1])
            return float(ys[i - 1] + w * (ys[i] - ys[i - 1]))
    return math.nan
