"""The tuning report: each method's search space and its best-so-far validation value against trials
(Lucic et al. 2018), from the stored equal-effort studies.

A trial's value is its validation objective at the run's best evaluation point; pruned and failed trials
count as trials spent but bring no value, so the curve stays flat through them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from harness.reporting.plots import _style, color, save
from harness.studies.study import load_study
from harness.studies.tune import study_name


def space_size(the_study: Any) -> dict[str, Any]:
    """The parameters a stored study actually searched (the union of its trials' distributions, the shared
    learning-rate override included; a method's ``space`` may have grown since): how many are continuous or
    integer ranges, and how many combinations the categorical ones make."""
    from optuna.distributions import CategoricalDistribution

    params: dict[str, Any] = {}
    for trial in the_study.get_trials(deepcopy=False):
        params.update({k: v for k, v in trial.distributions.items() if k != "k"})
    categorical = [v for v in params.values() if isinstance(v, CategoricalDistribution)]
    combos = math.prod(len(v.choices) for v in categorical) if categorical else 1
    return {"parameters": len(params), "ranges": len(params) - len(categorical), "categorical": len(categorical),
            "combinations": combos, "names": sorted(params)}


def best_so_far(the_study: Any) -> list[float]:
    """The best complete value after each trial, in trial-number order (nan before the first complete one)."""
    from optuna.trial import TrialState

    best, out = -math.inf, []
    for t in sorted(the_study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = max(best, t.value)
        out.append(best if math.isfinite(best) else math.nan)
    return out


def report(section: str, methods: Sequence[str], out: str, directory: Path) -> tuple[list[str], list[Path]]:
    """Markdown lines (space sizes, trials, best values) and the best-so-far figure of one section."""
    from optuna.trial import TrialState

    lines = ["| method | searched parameters | ranges | categorical combinations | trials (complete / pruned / "
             "failed) | best validation value |", "|---|---|---|---|---|---|"]
    curves = {}
    for method in methods:
        the_study = load_study(study_name(section, method), out=out)
        trials = the_study.get_trials(deepcopy=False)
        states = [sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
        size = space_size(the_study)
        curves[method] = best_so_far(the_study)
        lines.append(f"| {method} | {', '.join(size['names'])} | {size['ranges']} | {size['combinations']} | "
                     f"{' / '.join(map(str, states))} | {curves[method][-1]:.3f} |")
    plt = _style()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for method, values in curves.items():
        ax.step(range(1, len(values) + 1), values, where="post", color=color(method), label=method)
    ax.set_xlabel("trials")
    ax.set_ylabel("best validation shapes-GenEval so far")
    ax.set_title(f"equal-effort tuning, {section}", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside, not over the ends
    return lines, save(fig, directory, f"{section}__tuning_best_so_far")
