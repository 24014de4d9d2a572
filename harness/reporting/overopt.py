"""Over-optimisation curves (Gao, Schulman and Hilton 2022): proxy and gold reward against the distance
from the base generator, from the evaluation rows every run stores.

The proxy is the training reward, the gold is shapes-GenEval's ``overall_disjoint``, both at every evaluation
point on the runs' curve split (``RunConfig.curve_split``: the table names "test", a split selection never reads)
or, for runs without one, on the validation split selection reads; the distance is ``harness.evaluation.
distances``' ``latent_rms`` on the same noise. Curves are seed means at each evaluation point (every run of a section evaluates at the same
updates); bands are one standard deviation over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from harness.reporting.plots import _style, color, save
from harness.reporting.stats import interpolate_at
from harness.store import Store

DISTANCE = "drift/latent_rms"
SPLIT_NAMES = {"curve": "the curve split (test prompts and noise; selection never reads it)",
               "eval": "validation, the split selection reads"}


@dataclass
class Curve:
    """One method's seed-aggregated curve: arrays (points,) of mean and std over seeds, per evaluation."""

    method: str
    updates: np.ndarray
    distance: np.ndarray
    gold: np.ndarray
    gold_std: np.ndarray
    proxy: np.ndarray
    proxy_std: np.ndarray
    proxy_scale: float
    """The base's per-image std of the proxy on the validation set (the unit of the proxy-gold gap)."""
    gold_scale: float
    seeds: int
    prefix: str = "eval"
    """Which rows' split the curve reads: "curve" or "eval" (``SPLIT_NAMES``)."""


def _metric(row: dict, reward: str, prefix: str = "eval") -> float:
    for name in ("overall_disjoint", "overall", "mean"):
        if f"{prefix}/{reward}/{name}" in row:
            return float(row[f"{prefix}/{reward}/{name}"])
    return math.nan


def curve(store: Store, method: str, run_ids: Sequence[str], proxy: str, gold: str) -> Curve:
    """Aggregate the eval rows of ``run_ids`` (one per seed) at the evaluation points they share."""
    per_run = []
    for run_id in run_ids:
        rows = {r["step"]: r for r in store.rows(run_id, "eval")}
        per_run.append(rows)
    steps = sorted(set.intersection(*(set(r) for r in per_run))) if per_run else []

    def stack(fn) -> np.ndarray:
        return np.array([[fn(rows[s]) for s in steps] for rows in per_run], dtype=float)  # (seeds, points)

    # Every run of a section has the curve split or none has: one prefix for all of them.
    prefix = "curve" if steps and all(f"curve/{DISTANCE}" in rows[s] for rows in per_run for s in steps) else "eval"
    dist = stack(lambda r: r[f"{prefix}/{DISTANCE}"])
    g, p = stack(lambda r: _metric(r, gold, prefix)), stack(lambda r: _metric(r, proxy, prefix))
    first = per_run[0][steps[0]] if steps else {}
    return Curve(method=method, updates=np.array(steps), distance=dist.mean(0), gold=g.mean(0), gold_std=g.std(0),
                 proxy=p.mean(0), proxy_std=p.std(0),
                 proxy_scale=float(first.get(f"{prefix}/{proxy}/base_std", math.nan)),
                 gold_scale=float(first.get(f"{prefix}/{gold}/base_std", math.nan)), seeds=len(per_run), prefix=prefix)


def at_distance(c: Curve, budget: float) -> float:
    """Gold where the curve, in update order, first reaches distance ``budget``: linear between the two
    measured points around it, never extrapolated (nan when no measured segment brackets it)."""
    return interpolate_at(c.distance, c.gold, budget)


def summary(curves: Sequence[Curve]) -> list[dict]:
    """Per method: peak gold with its distance and update, gold at the common distance budget (the largest
    distance every method reaches), and the proxy-gold gap at the end (each reward's gain over the base in
    units of the base's per-image std on the validation set: proxy gain minus gold gain)."""
    budget = min(float(c.distance.max()) for c in curves) if curves else math.nan
    out = []
    for c in curves:
        i = int(np.argmax(c.gold))
        gap = ((c.proxy[-1] - c.proxy[0]) / c.proxy_scale) - ((c.gold[-1] - c.gold[0]) / c.gold_scale)
        out.append({"method": c.method, "peak_gold": float(c.gold[i]), "peak_update": int(c.updates[i]),
                    "peak_distance": float(c.distance[i]), "end_gold": float(c.gold[-1]),
                    "end_distance": float(c.distance[-1]), "budget_distance": budget,
                    "gold_at_budget": at_distance(c, budget), "gap_end": float(gap),
                    "past_peak": bool(c.gold[-1] < c.gold[i]), "seeds": c.seeds})
    return out


def table(rows: Sequence[dict]) -> list[str]:
    header = ["method", "peak gold", "at update", "at distance", "gold at the common distance "
              f"{rows[0]['budget_distance']:.3f}" if rows else "gold at budget", "gold at end", "distance at end",
              "proxy-gold gap at end (base std)", "end below peak"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([r["method"], f"{r['peak_gold']:.3f}", str(r["peak_update"]),
                                        f"{r['peak_distance']:.3f}", f"{r['gold_at_budget']:.3f}", f"{r['end_gold']:.3f}",
                                        f"{r['end_distance']:.3f}", f"{r['gap_end']:+.2f}",
                                        "yes" if r["past_peak"] else "no"]) + " |")
    return lines


def figure(curves: Sequence[Curve], proxy: str, gold: str, directory: Path, stem: str, title: str) -> list[Path]:
    """One column per method, rows gold, proxy and distance from the base, all against the update (so a
    curve reads left to right in update order and never folds back); seed mean with a one-SD band, the other
    methods' means in grey behind for comparison. Rows share their y axis."""
    plt = _style()
    n = max(len(curves), 1)
    fig, axes = plt.subplots(3, n, figsize=(1.9 * n + 1.2, 5.6), sharex=True, sharey="row", squeeze=False)
    split = "test (curve split)" if curves and curves[0].prefix == "curve" else "validation"
    rows = ((f"gold: {split}\n{gold}", lambda c: (c.gold, c.gold_std)),
            (f"proxy: {split}\n{proxy}", lambda c: (c.proxy, c.proxy_std)),
            ("distance from the base\n(latent RMS / base std)", lambda c: (c.distance, None)))
    for j, c in enumerate(curves):
        for i, (label, get) in enumerate(rows):
            ax = axes[i][j]
            for other in curves:
                if other is not c:
                    ax.plot(other.updates, get(other)[0], color="0.8", lw=0.8, zorder=1)
            mean, std = get(c)
            ax.plot(c.updates, mean, marker="o", ms=2.5, color=color(c.method), lw=1.5, zorder=3)
            if std is not None:
                ax.fill_between(c.updates, mean - std, mean + std, color=color(c.method), alpha=0.2, lw=0, zorder=2)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
            ax.ticklabel_format(axis="y", useOffset=False)
        axes[0][j].set_title(f"{c.method} ({c.seeds} seeds)", fontsize=9, color=color(c.method))
        axes[-1][j].set_xlabel("update")
    fig.suptitle(f"{title}\nseed mean ± 1 SD against updates; grey: the other methods", fontsize=9)
    fig.tight_layout()
    return save(fig, directory, stem)
