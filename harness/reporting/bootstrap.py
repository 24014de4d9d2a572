"""Two intervals for one paired headline difference, so a reader sees which uncertainty dominates.

A headline difference between configurations A and B (a method against DrPO, a method against its base, a
trained generator against best-of-K) is the difference of their weighted golds on the same prompts and noise,
G = sum_p w_p ybar[s, p] (``harness.reporting.power``: shapes-GenEval's ``overall_disjoint`` weights each
disjoint tag equally and the prompts within a tag equally; any other reward is the plain mean). It has two
sources of uncertainty, and each interval here holds one fixed and varies the other:

* **Seed interval** (what the tables print): the per-seed differences d_s = G_A(s) - G_B(s) over the training
  seeds both have, a Student-t 95% interval (``harness.reporting.stats.paired``). The prompts are fixed: it
  says how much a re-run with new training seeds could move the difference, on these prompts.
* **Prompt-bootstrap interval**: the seeds are fixed and the prompts are resampled. Each prompt's difference
  D_p = mean_s ybar_A[s, p] - mean_s ybar_B[s, p] (averaged over the same seeds as the seed interval) is
  resampled with replacement within its tag (stratified: each tag keeps its prompt count and its weight), the
  weighted difference sum_t W_t mean(D over the drawn prompts of t) is recomputed, and the 2.5th and 97.5th
  percentiles of ``reps`` replicates form the interval. It says how much another draw of prompts from the
  same tags could move the difference.

Both intervals are centred on the same point (the mean of d_s, which equals sum_p w_p D_p). A side with a
single run (the base generator, or best-of-K: no training seed) is a fixed reference: d_s = G_A(s) - G_B.

What the bootstrap cannot see: a tag with one prompt has no within-tag spread to resample, so it adds nothing
to the prompt interval (its prompt noise is all in the seed interval's fixed choice); with two or three
prompts per tag the percentile interval is narrower than the truth (the bootstrap's own small-sample bias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import numpy as np

from harness.reporting.power import gold_weights, match_runs
from harness.reporting.stats import ALPHA, Paired, paired
from harness.shapes.editions import geneval_edition
from harness.shapes.prompts import parse_prompt
from harness.store import Store, write_atomic
from harness.validate import Bound, at_least, check, nonnegative

REPS = 4000
"""Bootstrap replicates by default: the 2.5th percentile's Monte-Carlo error is then about 1% of the sd."""


# -- the statistics (pure functions) -------------------------------------------------------------------------


def stratified_prompt_bootstrap(d: Sequence[float], strata: Sequence[str], weights: Sequence[float],
                                reps: int = REPS, seed: int = 0,
                                alpha: float = ALPHA) -> tuple[float, float, float, float]:
    """(point, low, high, sd) of sum_p w_p d_p when the prompts are resampled within their stratum.

    ``d``: one difference per prompt; ``strata``: each prompt's stratum (tag); ``weights``: each prompt's weight
    in the gold, equal within a stratum (a stratum of weight 0, a shared tag, is left out). A replicate draws
    m_t prompts with replacement from each stratum's m_t and sums W_t times their mean (W_t: the stratum's total
    weight); the interval is the replicates' (alpha/2, 1 - alpha/2) percentiles and ``sd`` their standard
    deviation (analytically sqrt(sum_t W_t^2 var_t / m_t), var_t the stratum's population variance).
    """
    d, w = np.asarray(d, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if not (len(d) == len(w) == len(strata)) or not len(d):
        raise ValueError(f"need one difference, stratum and weight per prompt; got {len(d)}, {len(strata)}, {len(w)}")
    if reps < 2:
        raise ValueError(f"the bootstrap needs at least 2 replicates, got {reps}")
    rng = np.random.default_rng(seed)
    point, total = 0.0, np.zeros(reps)
    for label in dict.fromkeys(strata):  # first-seen order: the draws do not depend on how labels sort
        index = np.array([i for i, s in enumerate(strata) if s == label])
        if not np.allclose(w[index], w[index[0]]):
            raise ValueError(f"stratum '{label}' has unequal prompt weights; the bootstrap resamples prompts "
                             "within a stratum, so their weights must be equal")
        weight = float(w[index].sum())
        if weight == 0.0:
            continue
        values = d[index]
        point += weight * float(values.mean())
        total += weight * values[rng.integers(0, len(values), (reps, len(values)))].mean(axis=1)
    low, high = np.percentile(total, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(low), float(high), float(total.std(ddof=1))


@dataclass(frozen=True)
class Intervals:
    """One headline difference A - B with its seed interval and its prompt-bootstrap interval."""

    point: float
    seed: Paired
    """Student-t interval over the seed-paired differences (prompts fixed)."""
    prompt_low: float
    prompt_high: float
    prompt_sd: float
    """Percentile interval and sd of the stratified prompt bootstrap (seeds fixed)."""
    seeds: tuple[int, ...]
    prompts: int
    strata: int
    """Strata (tags) with weight in the gold."""

    @property
    def prompt_half(self) -> float:
        return (self.prompt_high - self.prompt_low) / 2

    @property
    def dominant(self) -> str:
        """"seed" or "prompt": the wider half-width; "" when the seed interval cannot be formed (one seed)."""
        if not math.isfinite(self.seed.half):
            return ""
        return "seed" if self.seed.half >= self.prompt_half else "prompt"


def headline_intervals(ya: np.ndarray, seeds_a: Sequence[int], yb: np.ndarray, seeds_b: Sequence[int],
                       strata: Sequence[str], weights: Sequence[float], reps: int = REPS, seed: int = 0,
                       alpha: float = ALPHA) -> Intervals:
    """Both intervals of the weighted-gold difference A - B from per-image scores ``ya`` (n_a seeds, m prompts,
    K images) and ``yb`` (n_b, m, K) on the same prompts and noise.

    With several runs on both sides they are paired over the seeds both have (as the tables pair them); a side
    with one run is a fixed reference, paired with every seed of the other side.
    """
    ya, yb = np.asarray(ya, dtype=np.float64), np.asarray(yb, dtype=np.float64)
    if ya.ndim != 3 or yb.ndim != 3 or ya.shape[1:] != yb.shape[1:]:
        raise ValueError(f"A and B must be scored on the same prompts and images: shapes {ya.shape} and {yb.shape}")
    if len(seeds_a) != ya.shape[0] or len(seeds_b) != yb.shape[0]:
        raise ValueError("need one seed per run on each side")
    if len(ya) > 1 and len(yb) > 1:
        common = [s for s in seeds_a if s in set(seeds_b)]
        if not common:
            raise ValueError(f"A (seeds {list(seeds_a)}) and B (seeds {list(seeds_b)}) share no training seed")
        ia, ib = [list(seeds_a).index(s) for s in common], [list(seeds_b).index(s) for s in common]
    elif len(ya) > 1:
        common, ia, ib = list(seeds_a), list(range(len(ya))), [0] * len(ya)
    else:
        common, ia, ib = list(seeds_b), [0] * len(yb), list(range(len(yb)))
    pa, pb = ya.mean(axis=2)[ia], yb.mean(axis=2)[ib]  # (n, m) prompt means, row i = seed common[i]
    w = np.asarray(weights, dtype=np.float64)
    seed_test = paired(list((pa - pb) @ w), alpha)
    point, low, high, sd = stratified_prompt_bootstrap((pa - pb).mean(axis=0), strata, w, reps, seed, alpha)
    used = sum(1 for label in dict.fromkeys(strata) if w[[i for i, s in enumerate(strata) if s == label]].sum() > 0)
    return Intervals(point, seed_test, low, high, sd, tuple(common), ya.shape[1], used)


def strata_of(prompts: Sequence[str], reward: str) -> tuple[list[str], np.ndarray]:
    """Each prompt's stratum and gold weight: shapes-GenEval's tags and ``overall_disjoint`` weights; any other
    reward one stratum with equal weights (``power.gold_weights``)."""
    weights, _ = gold_weights(list(prompts), reward)
    ed = geneval_edition(reward)
    if ed is None:
        return ["all"] * len(prompts), weights
    return [parse_prompt(p, ed)["tag"] for p in prompts], weights


# -- reading stored results ----------------------------------------------------------------------------------


def stored_scores(store: Store, run_ids: Sequence[str], split: str,
                  reward: str) -> tuple[np.ndarray, list[int], tuple[list[str], int, int]]:
    """(y, seeds, design): the per-image scores of ``split`` for runs ``run_ids`` (n, m, K), their training
    seeds (``run.seed``; 0 for a record without one, such as best-of-K) and (prompts, K, noise seed base),
    checked to be the same for every run. ``split``: "test", "test_selected" (falls back to "test" where the two are one
    evaluation) or "eval" (the last validation)."""
    ys, seeds, first = [], [], None
    for run_id in run_ids:
        records = store.scores(run_id)
        which = [r for r in records if r["which"] == split] or \
            ([r for r in records if r["which"] == "test"] if split == "test_selected" else [])
        if not which:
            stored = sorted({r["which"] for r in records}) or ["none"]
            raise ValueError(f"run '{run_id}' has no '{split}' per-image scores; stored: {', '.join(stored)}")
        rec = max(which, key=lambda r: r["step"])
        if reward not in rec["scores"]:
            raise ValueError(f"run '{run_id}' stores no scores of reward '{reward}'; stored: "
                             f"{', '.join(sorted(rec['scores']))}")
        key = (rec["prompts"], rec["seeds"], rec["seed_base"])
        if first is not None and key != first[1]:
            raise ValueError(f"runs '{first[0]}' and '{run_id}' were evaluated on different prompts or noise")
        first = first or (run_id, key)
        ys.append(np.asarray(rec["scores"][reward], dtype=np.float64).reshape(len(rec["prompts"]), rec["seeds"]))
        seeds.append(int(store.manifest(run_id).get("run", {}).get("seed", 0)))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"runs {', '.join(run_ids)} repeat a training seed ({seeds}); give one run per seed")
    return np.stack(ys), seeds, first[1]


def compare_runs(a: tuple[Store, Sequence[str]], b: tuple[Store, Sequence[str]], split: str = "test",
                 reward: str = "shapes-geneval", reps: int = REPS, seed: int = 0) -> Intervals:
    """Both intervals of A - B for stored runs: each side a (store, run ids) pair, so a side may be read from
    another root (best-of-K references live under ``<out>/references``)."""
    ya, seeds_a, design = stored_scores(*a, split, reward)
    yb, seeds_b, design_b = stored_scores(*b, split, reward)
    if design != design_b:
        raise ValueError(f"runs '{a[1][0]}' and '{b[1][0]}' were evaluated on different prompts or noise")
    strata, weights = strata_of(design[0], reward)
    return headline_intervals(ya, seeds_a, yb, seeds_b, strata, weights, reps, seed)


# -- driftbench intervals --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntervalsConfig:
    """``driftbench intervals``."""

    runs: tuple[str, ...] = ()
    """Side A: run ids (shell-style patterns allowed), one per training seed, of one configuration."""
    versus: tuple[str, ...] = ()
    """Side B on the same prompts and noise: run ids (patterns allowed), or one run as a fixed reference."""
    versus_root: Literal["runs", "references"] = "runs"
    """Where side B is stored: trained runs (<out>/runs) or best-of-K references (<out>/references/runs)."""
    split: Literal["test", "test_selected", "eval"] = "test"
    """Which stored evaluation: the test split at the end, at the selected checkpoint, or the last validation."""
    reward: str = "shapes-geneval"
    """The gold whose weighted headline is compared."""
    reps: int = REPS
    """Bootstrap replicates."""
    seed: int = 0
    """Seed of the bootstrap's draws."""
    out: str = "results"
    """Results root; the report goes to <out>/intervals.md."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"reps": at_least(2), "seed": nonnegative()}
    """Valid range of every numeric field (``harness.validate``)."""


def _matching(store: Store, patterns: Sequence[str], flag: str) -> list[str]:
    if not patterns:
        raise ValueError(f"intervals needs {flag}: run ids or patterns")
    return match_runs(store, patterns, status="complete")


def intervals(cfg: IntervalsConfig) -> Path:
    """Write ``<out>/intervals.md``: A - B's point, seed interval and prompt-bootstrap interval."""
    check(cfg)
    runs = Store(cfg.out)
    other = runs if cfg.versus_root == "runs" else Store(Path(cfg.out) / "references")
    a, b = _matching(runs, cfg.runs, "--runs"), _matching(other, cfg.versus, "--versus")
    res = compare_runs((runs, a), (other, b), cfg.split, cfg.reward, cfg.reps, cfg.seed)
    seed_cell = (f"{res.seed.mean:+.4f} ± {res.seed.half:.4f} (n = {res.seed.n}, p = {res.seed.p:.3g})"
                 if math.isfinite(res.seed.half) else f"{res.point:+.4f} (one seed: no interval)")
    lines = [f"# Seed and prompt-bootstrap intervals of a paired difference ({cfg.reward}, split '{cfg.split}')", "",
             f"A: {', '.join(a)}. B: {', '.join(b)}{' (best-of-K references)' if cfg.versus_root != 'runs' else ''}.",
             f"{res.prompts} prompts in {res.strata} weighted strata; seeds paired: {', '.join(map(str, res.seeds))}.",
             "", "| interval | A − B | 95% interval | half-width |", "|---|---|---|---|",
             f"| seeds (t over seed-paired differences, prompts fixed) | {seed_cell} | "
             f"[{res.point - res.seed.half:+.4f}, {res.point + res.seed.half:+.4f}] | {res.seed.half:.4f} |",
             f"| prompts (bootstrap within tag, {cfg.reps} replicates, seeds fixed) | {res.point:+.4f} | "
             f"[{res.prompt_low:+.4f}, {res.prompt_high:+.4f}] | {res.prompt_half:.4f} |", "",
             f"Dominant uncertainty: {res.dominant or 'undetermined (one seed)'}. Method: "
             "`harness/reporting/bootstrap.py` (module docstring)."]
    path = Path(cfg.out) / "intervals.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))
    return path
