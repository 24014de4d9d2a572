"""Tables from stored results only: means with 95% confidence intervals over seeds.

A table groups the complete runs of one tag by method. For every evaluation reward it reports the
headline metric (``overall`` for GenEval-style rewards, else the mean) as mean ± the half-width of a
Student-t 95% interval over seeds, the base generator's value, and the per-seed gain over the base.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of a Student-t interval; the half-width is nan for fewer than 2 values."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) < 2:
        return float(x.mean()), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def headline(summary: dict[str, Any], reward: str, base: bool = False, prefix: str = "eval") -> float | None:
    """The metric a table shows for ``reward``: GenEval's ``overall_disjoint`` (the tags whose splits are
    disjoint) when present, else ``overall``, else the mean. ``prefix``: "eval", "test" or "test_selected"."""
    prefix = f"{prefix}/{reward}/" + ("base_" if base else "")
    for metric in ("overall_disjoint", "overall", "mean"):
        if prefix + metric in summary:
            return summary[prefix + metric]
    return None


def fmt(mean: float, half: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" if not math.isfinite(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def method_rows(summaries: list[dict[str, Any]], rewards: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Aggregate per method: {method: {"<reward>": (mean, ci), "<reward>/gain": (mean, ci), counts...}}."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        by_method.setdefault(s["method"], []).append(s)
    out = {}
    for method, runs in by_method.items():
        row: dict[str, Any] = {"seeds": len(runs), "runs": [r["run_id"] for r in runs]}
        for reward in rewards:
            trained = [headline(r, reward) for r in runs]
            base = [headline(r, reward, base=True) for r in runs]
            row[reward] = t_interval([v for v in trained if v is not None])
            row[f"{reward}/gain"] = t_interval([t - b for t, b in zip(trained, base) if t is not None and b is not None])
            row[f"{reward}/base"] = t_interval([b for b in base if b is not None])
        for key in ("updates", "images", "reward_calls", "seconds", "flops"):
            row[key] = float(np.mean([r.get(f"budget/{key}", float("nan")) for r in runs]))
        out[method] = row
    return out

