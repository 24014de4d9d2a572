"""The aggregate over a table's sections (Agarwal et al. 2021, rliable): per method the interquartile mean of
the per-seed test gold gains pooled over sections, and the probability that the method improves on the
reference (per section the Mann-Whitney P(X > Y), averaged over sections), each with a 95% stratified
bootstrap interval (seeds resampled within each section). Computed from the stored per-seed values that the
sections hand over, never from their means.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from harness.reporting.stats import average_improvement_probability, pooled_iqm, stratified_bootstrap
from harness.reporting.tables import fmt

REPS = 2000
"""Bootstrap resamples."""
SEED = 0
"""Seed of the bootstrap's generator: the aggregate is the same on every redraw."""


def gains(seeds: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """{method: {section: [per-seed gold gain at the selected checkpoint]}} from the sections' per-seed rows."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in seeds:
        if r["metric"] == "gain" and r["checkpoint"] == "selected" and math.isfinite(r["value"]):
            out.setdefault(r["method"], {}).setdefault(r["section"], []).append(r["value"])
    return out


def aggregate(seeds: Sequence[dict[str, Any]], gold: str, ref: str = "drpo") -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown lines and tidy records of the aggregate over the sections in ``seeds`` (one gold reward)."""
    per = gains(seeds)
    if not per:
        return [], []
    sections = sorted({s for by in per.values() for s in by})
    header = ["method", "sections", f"IQM of the test {gold} gain [95% CI]", f"P(method > {ref}) [95% CI]"]
    lines = [f"## Aggregate over {len(sections)} section(s)", "",
             f"Per-seed test {gold} gains over the base at the selected checkpoint, pooled over the sections; "
             f"intervals are 95% stratified bootstrap ({REPS} resamples of the seeds within each section, "
             f"seed {SEED}). P(method > {ref}) is the probability that a run of the method beats a run of {ref} "
             "in the same section (ties count half), averaged over the sections both ran (Agarwal et al. 2021).",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    records = []
    for method, by_section in per.items():
        iqm = stratified_bootstrap([by_section], pooled_iqm, REPS, SEED)
        shared = {s: v for s, v in by_section.items() if s in per.get(ref, {})}
        poi = (math.nan,) * 3
        if method != ref and shared:
            poi = stratified_bootstrap([shared, {s: per[ref][s] for s in shared}], average_improvement_probability,
                                       REPS, SEED)
        lines.append("| " + " | ".join([method, str(len(by_section)), f"{fmt(iqm[0], math.nan)} "
                                        f"[{iqm[1]:.3f}, {iqm[2]:.3f}]",
                                        "–" if method == ref else f"{poi[0]:.2f} [{poi[1]:.2f}, {poi[2]:.2f}]"]) + " |")
        for metric, (point, low, high) in (("iqm_gain", iqm), (f"p_improve_vs_{ref}", poi)):
            if metric != f"p_improve_vs_{ref}" or method != ref:
                records.append({"section": "aggregate", "table": "aggregate", "method": method, "metric": metric,
                                "reward": gold, "split": "test", "checkpoint": "selected", "value": point,
                                "ci_low": low, "ci_high": high, "seeds": sum(len(v) for v in by_section.values())})
    return lines + [""], records
