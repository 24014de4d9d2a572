"""The tuning report: each method's search space (its dimensions), budget and metered spend, the equal-spend
check, the seed noise of the objective, the learning rates that did not move it, and the best-so-far validation
value against spend (Lucic et al. 2018), from the stored equal-effort studies.

A trial's value is its validation objective at the run's best evaluation point; pruned, stopped and failed
trials spend updates but bring no value, so the curve stays flat through them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from harness.reporting.plots import _style, color, save
from harness.store import write_atomic
from harness.studies.spend import SPEND_TOLERANCE, flat_trials, seed_sd, study_spend, unequal_spend
from harness.studies.study import load_study
from harness.studies.tune import TuneConfig, objective, plan, study_name, tune


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


def spend_curve(the_study: Any, updates: int, seeds: int) -> list[float]:
    """The study's spend in full runs after each trial, in trial-number order (the best-so-far figure's x)."""
    total, out = 0.0, []
    for t in sorted(the_study.get_trials(deepcopy=False), key=lambda t: t.number):
        total += study_spend([t], updates, seeds).updates / updates if updates else 1.0
        out.append(total)
    return out


def spends(section: str, methods: Sequence[str], out: str) -> dict[str, int]:
    """The updates each method's study metered (estimated for studies made before per-seed records); methods
    without a study in ``out`` are left out."""
    found = {}
    for method in methods:
        try:
            the_study = load_study(study_name(section, method), out=out)
        except ValueError:
            continue
        stored = the_study.user_attrs.get("setup", {})
        updates = int(stored.get("run", {}).get("updates") or 0)
        seeds = len(stored.get("study", {}).get("seeds") or [0])
        found[method] = study_spend(the_study.get_trials(deepcopy=False), updates, seeds).updates
    return found


def tune_and_report(cfg: TuneConfig) -> tuple[Path, Path]:
    """``driftbench tune``: the equal-effort studies and the tuned file (``harness.studies.tune``), then the tuning
    report of every section, ``<out>/tuning-<profile>.md`` with its figures in ``<out>/plots``."""
    tuned = tune(cfg)
    pairs = plan(cfg)
    sections = {section: [m for s, m in pairs if s == section] for section, _ in pairs}
    intro = [f"# Equal-effort tuning, profile {cfg.profile}", "",
             f"`driftbench tune --profile {cfg.profile} --out {cfg.out}`: the studies in `{cfg.out}/studies`, the tuned "
             f"file `{os.path.relpath(tuned)}`. Per trial, the objective at the run's best validation point, averaged over training seeds "
             f"{', '.join(map(str, cfg.seeds))}; objective per section: "
             + "; ".join(f"{s} {objective(cfg, s)}" for s in sections) + "."]
    return tuned, write_report(sections, cfg.out, f"tuning-{cfg.profile}", intro)


def write_report(sections: dict[str, Sequence[str]], out: str, name: str, intro: Sequence[str]) -> Path:
    """``<out>/<name>.md``: ``intro``, then :func:`report` of each section (its methods' studies in ``out``) with
    its best-so-far figure in ``<out>/plots``."""
    lines = list(intro)
    for section, methods in sections.items():
        body, figures = report(section, methods, out, Path(out) / "plots")
        lines += ["", f"## {section}", "", *body, "",
                  *(f"![best validation value so far, {section}](plots/{p.name})" for p in figures if p.suffix == ".png")]
    path = Path(out) / f"{name}.md"
    text = "\n".join(lines) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))
    return path


def report(section: str, methods: Sequence[str], out: str, directory: Path) -> tuple[list[str], list[Path]]:
    """Markdown lines (space dimensions, budget, spend, trials, best values, seed noise and flat learning rates)
    and the best-so-far figure of one section."""
    from optuna.trial import TrialState

    lines = ["| method | dimensions: searched parameters | ranges | categorical combinations | seeds per trial | "
             "TPE start-up trials | trials (complete / pruned / stopped by budget / failed) | spend: metered updates "
             "(full runs) | best validation value |", "|---|---|---|---|---|---|---|---|---|"]
    curves, spends, notes, flat_lines, estimated, objectives = {}, {}, [], [], False, set()
    for method in methods:
        the_study = load_study(study_name(section, method), out=out)
        trials = the_study.get_trials(deepcopy=False)
        stored = the_study.user_attrs.get("setup", {})
        objectives.add(stored.get("study", {}).get("objective") or "shapes-geneval")
        seeds = len(stored.get("study", {}).get("seeds") or [0])
        updates = int(stored.get("run", {}).get("updates") or 0)
        stopped = sum(t.state == TrialState.PRUNED and "stopped" in t.user_attrs for t in trials)
        states = [sum(t.state == TrialState.COMPLETE for t in trials),
                  sum(t.state == TrialState.PRUNED for t in trials) - stopped, stopped,
                  sum(t.state == TrialState.FAIL for t in trials)]
        size = space_size(the_study)
        curves[method] = (spend_curve(the_study, updates, seeds), best_so_far(the_study))
        used = study_spend(trials, updates, seeds)
        spends[method], estimated = used.updates, estimated or used.estimated
        startup = sorted({t.user_attrs["startup_trials"] for t in trials if "startup_trials" in t.user_attrs})
        budget = stored.get("study", {}).get("spend", 0)
        lines.append(f"| {method} | {size['parameters']}: {', '.join(size['names'])} | {size['ranges']} | "
                     f"{size['combinations']} | {seeds} | {', '.join(map(str, startup)) or '10 (default)'} | "
                     f"{' / '.join(map(str, states))} | {used.updates}{'~' if used.estimated else ''} "
                     f"({used.full_runs:.1f}){f' of {budget}' if budget else ''} | {curves[method][1][-1]:.3f} |")
        notes.append(_noise(method, trials))
        flat_lines.append(_flat(method, trials, seeds))
    unequal = unequal_spend(spends)
    lines += ["", ("**UNEQUAL spend**: " + unequal + "." if unequal else
                   f"Spend is equal within {SPEND_TOLERANCE:.0%} across this section's studies.")
              + " Spend: the optimizer updates every run of every trial metered, pruned, stopped and failed ones "
                "included; full runs: that over one run's budget" + (
                  "; ~: estimated from the trials' last intermediate report (studies made before per-seed records)"
                  if estimated else "") + "."]
    lines += ["", "Seed noise of the objective (pooled SD across a trial's training seeds, against the spread between "
                  "the study's best and median complete trial; the powered-table target is SD <= spread / 3): "
                  + "; ".join(notes) + "."]
    lines += ["", "Learning rates that did not move the objective (a trial is flat when its mean gain over the base "
                  "is within two standard errors of a trial's mean, from the pooled seed SD; exactly 0 with one "
                  "seed): " + "; ".join(flat_lines) + "."]
    plt = _style()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for method, (spend, values) in curves.items():
        ax.step(spend, values, where="post", color=color(method), label=method)
    ax.set_xlabel("metered updates, in full runs (each step: a trial ends)")
    ax.set_ylabel(f"best validation {' / '.join(sorted(objectives))} so far")
    ax.set_title(f"equal-effort tuning, {section}", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside, not over the ends
    return lines, save(fig, directory, f"{section}__tuning_best_so_far")


def _noise(method: str, trials: Sequence[Any]) -> str:
    import statistics

    from optuna.trial import TrialState

    sd, dof = seed_sd(trials)
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    spread = max(values) - statistics.median(values) if values else math.nan
    if not dof:
        return f"{method} not measured (one seed per trial), spread {spread:.3f}"
    met = "met" if sd <= spread / 3 else "not met"
    return f"{method} SD {sd:.3f} ({dof} df), spread {spread:.3f}: {met}"


def _flat(method: str, trials: Sequence[Any], seeds: int) -> str:
    sd, _ = seed_sd(trials)
    flat = flat_trials(trials, sd, seeds)
    if not flat.judged:
        return f"{method}: not recorded (the study predates per-seed base values)"
    below = (f"every trial with lr <= {flat.below:.2g} ({flat.below_count})" if flat.below_count else
             "none at the lowest learning rate")
    listed = ", ".join(f"{f['lr']:.2g}" for f in flat.flat)
    drift = max((f["drift"] for f in flat.flat if math.isfinite(f["drift"])), default=math.nan)
    return (f"{method}: {len(flat.flat)} of {flat.judged} flat (|gain| <= {flat.band:.3f}), {below}; lr {listed or '-'}"
            + (f"; their pixel drift <= {drift:.4f}" if math.isfinite(drift) else ""))
