"""What a study spent and what its trials show: metered updates per run, the equal-spend check, the seed noise
of the objective and the learning rates that did not move it.

A trial records one entry per training seed in its ``seed_runs`` user attribute (seed, run id, metered updates,
status, value, base value, selected update, pixel drift), rewritten at every evaluation while it runs, so a
study's spend can be read at any moment, pruned, stopped and failed trials included. A study's spend is the sum,
over its distinct runs, of the optimizer updates each metered: a retried trial that resumes a run from its
checkpoint counts that run once (the updates redone after the checkpoint are not counted twice). Studies made
before these records are estimated from their intermediate reports (a trial reported at step s ran s% of its
seeds' updates) and say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SPEND_TOLERANCE = 0.10
"""A section whose studies' spends differ by more than this fraction (largest / smallest - 1) is UNEQUAL."""


def seed_runs(trial: Any) -> list[dict[str, Any]]:
    """A trial's per-seed records (empty for trials made before they were kept)."""
    return [dict(r) for r in trial.user_attrs.get("seed_runs") or []]


def run_updates(trials: Sequence[Any]) -> dict[str, int]:
    """Metered updates of each distinct run of ``trials`` (the most any trial recorded for it)."""
    out: dict[str, int] = {}
    for t in trials:
        for r in seed_runs(t):
            if r.get("run"):
                out[r["run"]] = max(out.get(r["run"], 0), int(r.get("updates") or 0))
    return out


def spent(trials: Sequence[Any]) -> int:
    """Updates metered so far by every run of ``trials``, running ones included."""
    return sum(run_updates(trials).values())


@dataclass(frozen=True)
class Spend:
    """A study's spend: metered optimizer updates over every run of every trial."""

    updates: int
    full_runs: float
    """``updates`` over one run's budget (nan when the budget is not in updates)."""
    estimated: bool
    """Some trials kept no per-seed records: their spend is read from their last intermediate report."""


def study_spend(trials: Sequence[Any], updates_per_run: int, n_seeds: int) -> Spend:
    """The spend of a study's trials; trials without per-seed records are estimated from their reports."""
    measured = [t for t in trials if seed_runs(t)]
    estimate, estimated = 0, False
    for t in trials:
        if seed_runs(t) or t.state.name == "RUNNING":
            continue
        if t.intermediate_values:
            estimate += round(max(t.intermediate_values) / 100 * n_seeds * updates_per_run)
        elif t.state.name == "COMPLETE":  # a multi-objective trial reports nothing: it ran every seed
            estimate += n_seeds * updates_per_run
        estimated = True
    updates = spent(measured) + estimate
    return Spend(updates, updates / updates_per_run if updates_per_run else math.nan, estimated)


def unequal_spend(spends: dict[str, float], tolerance: float = SPEND_TOLERANCE) -> str:
    """"" when the studies' spends are within ``tolerance`` of each other, else what differs, in words."""
    if len(spends) < 2:
        return ""
    low, high = min(spends.values()), max(spends.values())
    if low > 0 and high - low <= tolerance * low + 1e-9:  # exactly 10% apart is not more than 10%
        return ""
    ratio = f"+{high / low - 1:.0%}" if low > 0 else "one spent nothing"
    return (f"spend {low:.0f} to {high:.0f} metered updates ({ratio}, more than {tolerance:.0%}: "
            f"{min(spends, key=spends.get)} to {max(spends, key=spends.get)})")


def seed_sd(trials: Sequence[Any]) -> tuple[float, int]:
    """The objective's SD across training seeds for one configuration, pooled over the complete trials with
    two or more seeds, and its degrees of freedom; (nan, 0) when no trial ran two seeds."""
    squares, dof = 0.0, 0
    for t in trials:
        values = [r["value"] for r in seed_runs(t) if r.get("status") == "complete" and r.get("value") is not None]
        if t.state.name != "COMPLETE" or len(values) < 2:
            continue
        mean = sum(values) / len(values)
        squares += sum((v - mean) ** 2 for v in values)
        dof += len(values) - 1
    return (math.sqrt(squares / dof), dof) if dof else (math.nan, 0)


@dataclass(frozen=True)
class Flat:
    """Which trials' objective stayed within noise of the base, and the learning rates below which all did."""

    judged: int
    """Trials with a learning rate and a recorded base value."""
    flat: list[dict[str, float]]
    """{lr, gain (value - base), drift (last pixel drift, nan if none)} per flat trial, by learning rate."""
    band: float
    """A trial is flat when its gain is within this of 0 (0: equal to the base)."""
    below: float
    """The largest learning rate under which every judged trial is flat (nan: the lowest is not flat)."""
    below_count: int


def flat_trials(trials: Sequence[Any], sd: float, n_seeds: int) -> Flat:
    """Complete and pruned trials whose objective stayed within noise of the base generator's: a gain (mean
    over seeds of value - base) within two standard errors of a trial's mean, 2 sd / sqrt(seeds), with
    ``sd`` the study's pooled seed SD; with one seed per trial (no measured SD) only a gain of exactly 0
    counts (the validation-selected checkpoint stayed at update 0)."""
    band = 2 * sd / math.sqrt(n_seeds) if math.isfinite(sd) else 0.0
    judged = []
    for t in trials:
        runs = [r for r in seed_runs(t) if r.get("base") is not None and r.get("value") is not None]
        if t.state.name not in ("COMPLETE", "PRUNED") or "lr" not in t.params or not runs:
            continue
        gain = sum(r["value"] - r["base"] for r in runs) / len(runs)
        drifts = [r["drift"] for r in runs if r.get("drift") is not None]
        judged.append({"lr": float(t.params["lr"]), "gain": gain,
                       "drift": max(drifts) if drifts else math.nan})
    judged.sort(key=lambda j: j["lr"])
    flat = [j for j in judged if abs(j["gain"]) <= band + 1e-12]
    below, count = math.nan, 0
    for j in judged:
        if abs(j["gain"]) > band + 1e-12:
            break
        below, count = j["lr"], count + 1
    return Flat(len(judged), flat, band, below, count)
