"""What ``driftbench limitations`` reads from the store, and how every claim line is worded.

A claim states its interval, and where the interval spans zero (a null result) the minimum detectable
difference: over seeds the paired one (``stats.mdd``: (t(0.975, n-1) + t(0.8, n-1)) sd / sqrt(n)); over prompts
the bootstrap's normal-theory one, (z(0.975) + z(0.8)) x the bootstrap sd = 2.80 sd.

The time estimate of a plan that has not run is a model fitted on measured runs: a run costs its start-up,
plus its training images times its method's measured seconds per training image, plus its evaluated images
(every validation and test image it scores) times the measured seconds per evaluated image; a best-of-K
reference costs its candidates times the measured seconds per candidate plus its gold evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats as scipy_stats

from harness.config import run_key
from harness.reporting.bootstrap import Intervals, headline_intervals, stored_scores, strata_of
from harness.reporting.stats import Paired, paired
from harness.reporting.tables import fmt, t_interval
from harness.shapes.editions import for_profile
from harness.shapes.prompts import split
from harness.store import Store, read_json

Z_MDD = float(scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8))
"""(z(1 - alpha/2) + z(power)) at alpha 0.05 and power 0.8: the bootstrap's MDD in bootstrap sds (2.80)."""


# -- claims ---------------------------------------------------------------------------------------------------


def seed_claim(p: Paired, digits: int = 3) -> str:
    """``+0.012 ± 0.020 (95% t, 5 seeds, p = 0.2); null, MDD 0.031``."""
    if p.n < 2 or not math.isfinite(p.half):
        return f"{p.mean:+.{digits}f} ({p.n} seed: no interval)"
    text = f"{p.mean:+.{digits}f} ± {p.half:.{digits}f} (95% t, {p.n} seeds, p = {p.p:.2g})"
    return text + (f"; null, MDD {p.mdd:.{digits}f}" if p.spans_zero else "")


def prompt_claim(iv: Intervals, digits: int = 3) -> str:
    """``[-0.010, +0.034] (prompt bootstrap); null, MDD 0.030``."""
    text = f"[{iv.prompt_low:+.{digits}f}, {iv.prompt_high:+.{digits}f}] (prompt bootstrap)"
    null = iv.prompt_low <= 0 <= iv.prompt_high
    return text + (f"; null, MDD {Z_MDD * iv.prompt_sd:.{digits}f}" if null else "")


def spread(values: Sequence[float], digits: int = 3) -> str:
    return fmt(*t_interval(values), digits=digits)


# -- per-image scores -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One configuration's per-image scores of a split: ``y`` (n seeds, m prompts, K images)."""

    y: np.ndarray
    seeds: list[int]
    prompts: list[str]
    design: tuple
    strata: list[str]
    weights: np.ndarray

    def gold(self) -> dict[int, float]:
        """Per seed, the weighted gold sum_p w_p ybar[s, p] (the stored headline)."""
        return dict(zip(self.seeds, (self.y.mean(axis=2) @ self.weights).tolist()))


def side(store: Store, run_ids: Sequence[str], which: str, reward: str) -> Side:
    """The scores of ``which`` ("test_selected", "test" or "eval") for runs (or references) ``run_ids``."""
    y, seeds, design = stored_scores(store, list(run_ids), which, reward)
    strata, weights = strata_of(design[0], reward)
    return Side(y, seeds, list(design[0]), design, strata, weights)


def seed_ids(runs: dict[int, str]) -> list[str]:
    return [runs[s] for s in sorted(runs)]


def compare(a: Side, b: Side, reps: int, prompts: Sequence[int] | None = None) -> Intervals:
    """Both intervals of A - B (``headline_intervals``); ``prompts``: only these prompt indices, equally weighted
    (one tag), as one stratum."""
    if a.design != b.design:
        raise ValueError("the two sides of a comparison were evaluated on different prompts or noise")
    if prompts is None:
        return headline_intervals(a.y, a.seeds, b.y, b.seeds, a.strata, a.weights, reps)
    idx = list(prompts)
    return headline_intervals(a.y[:, idx], a.seeds, b.y[:, idx], b.seeds, ["tag"] * len(idx),
                              [1.0 / len(idx)] * len(idx), reps)


def paired_gold(a: dict[int, float], b: dict[int, float]) -> Paired:
    """The paired seed comparison of two per-seed golds (a one-run side is a fixed reference)."""
    if len(b) == 1 and len(a) > 1:
        ref = next(iter(b.values()))
        return paired([v - ref for v in a.values()])
    return paired([a[s] - b[s] for s in a if s in b])


# -- summaries and time ---------------------------------------------------------------------------------------


def summary(store: Store, run_id: str) -> dict[str, Any]:
    return read_json(store.run_dir(run_id) / "summary.json")


def evaluated_images(store: Store, run_id: str) -> int:
    """Every image the run's evaluations scored (validation and test), from its per-image records."""
    return sum(len(r["prompts"]) * r["seeds"] for r in store.scores(run_id))


def run_seconds(s: dict[str, Any]) -> float:
    """A run's measured seconds: start-up, metered training, evaluation, test and checkpoints."""
    return float(sum(s.get("clock", {}).values()) + s.get("budget/seconds", 0.0))


@dataclass(frozen=True)
class Rates:
    startup: float
    train: dict[str, float]
    """Seconds per training image, per method."""
    evaluate: float
    """Seconds per evaluated image."""
    candidate: float
    """Best-of-K: seconds per candidate (sample, decode, target reward)."""
    source: str

    def train_rate(self, method: str) -> float:
        return self.train.get(method, self.train.get("drpo", float(np.mean(list(self.train.values())))))


def measure_rates(store: Store, run_ids: Sequence[str], refs: Store, ref_ids: Sequence[str], source: str) -> Rates:
    """Seconds per training image (per method), per evaluated image and per best-of-K candidate, and start-up
    seconds, averaged over the given stored runs and references."""
    startup, evaluate, train = [], [], {}
    for run_id in run_ids:
        s = summary(store, run_id)
        clock = s.get("clock", {})
        startup.append(clock.get("startup_seconds", 0.0))
        n = evaluated_images(store, run_id)
        if n:
            evaluate.append((clock.get("eval_seconds", 0.0) + clock.get("test_seconds", 0.0)) / n)
        if s.get("budget/images"):
            method = store.manifest(run_id)["run"]["method"]
            train.setdefault(method, []).append(s["budget/seconds"] / s["budget/images"])
    candidate = []
    for ref in ref_ids:
        s = summary(refs, ref)
        candidate.append(s["clock"]["sampling_seconds"] / max(1, s["compute"]["reward_calls"]))
    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else 0.0
    return Rates(mean(startup), {m: mean(v) for m, v in train.items()}, mean(evaluate), mean(candidate), source)


def split_size(profile: str, name: str, split_seed: int) -> int:
    return len(split(name, split_seed, for_profile(profile)))


def plan_seconds(points: Sequence[Any], seeds: Sequence[int], test_seeds: int, ks: Sequence[int], profile: str,
                 rates: Rates) -> tuple[float, int, int]:
    """(estimated seconds, runs, references) of a plan: every distinct run key of points x seeds, and the
    best-of-K references ``ks``."""
    keys: dict[str, float] = {}
    for point in points:
        if point.note:
            continue
        run = point.run
        val = split_size(profile, run.eval_split, run.split_seed)
        val = min(val, run.eval_prompt_limit or val)
        test = split_size(profile, run.test_split, run.split_seed) if run.test_split else 0
        curve = split_size(profile, run.curve_split, run.split_seed) * run.curve_seeds if run.curve_split else 0
        images = len(run.eval_at) * (val * run.eval_seeds + curve) + 2 * test * run.test_seeds
        cost = rates.startup + rates.train_rate(point.method) * point.images * run.updates + rates.evaluate * images
        for seed in seeds:
            keys[run_key(run.replace(seed=seed, init_from=point.part if point.part == "online" else ""),
                         point.method_cfg)] = cost
    test = split_size(profile, "test", 0) * test_seeds
    refs = sum(k * test * rates.candidate + 2 * test * rates.evaluate for k in ks)
    return sum(keys.values()) + refs, len(keys), len(ks)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
