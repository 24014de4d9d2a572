"""``driftbench tune``: every method of a table section tuned with the same effort, and the tuned file.

A comparison is only as good as its weakest-tuned baseline (Lucic et al. 2018, "Are GANs Created Equal?").
For each method of a section this runs one Optuna study over the method's own ``space(trial)`` with
everything else held equal: the same TPE sampler, sampler seed and start-up trials, the same spend budget in
metered optimizer updates (a study ends when its trials, pruned and stopped ones included, have metered it:
studies are equal in compute, not in trial count) and pruner, the same per-trial budget and training seeds
(each trial's value is the mean over two seeds by default: one seed's validation value has an SD of about
0.04, as large as the spread between a study's best and median trials), the same objective (validation
shapes-GenEval, ``overall_disjoint``, at the run's best evaluation point) and the same learning-rate range for
every method, 1e-5 to 1e-2 on a log scale. Tuning runs evaluate the validation split only; the test split is
never read (``test_split`` stays empty, and ``tests/test_tune.py`` poisons it to prove so).

``write_tuned`` then turns the stored studies into the committed tuned file (``harness/tuned/<profile>.json``):
for each section and method, the study, the best complete trial's number, its objective value, its method
config and the commit the study ran at. Presets read it through :func:`tuned_configs`, which validates every
entry against the method's ``Config``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from harness import presets
from harness.registry import unknown
from harness.sections import SECTIONS
from harness.shapes.editions import PROFILE_EDITIONS, reward_name
from harness.store import Store, write_json
from harness.studies import study as studies
from harness.studies.config import resolve
from harness.studies.spend import study_spend
from harness.studies.study import StudyConfig, counted, load_study
from harness.studies.tuned import tuned_path
from harness.validate import Bound, at_least, nonnegative

LR_SPACE = "lr=1e-5:1e-2:log"
"""The learning-rate range every method gets (an override on top of each ``space``)."""
DEFAULT_STARTUP = 10
"""TPE's start-up trials in studies that did not record theirs (Optuna's default, which they ran with)."""


@dataclass(frozen=True)
class TuneConfig:
    """``driftbench tune``: one equal-effort Optuna study per method of each table section."""

    profile: str = "shapes2"
    """Table profile whose sections are tuned (see ``driftbench table2 --help``; "shapes2", the embedded default,
    or "shapes", edition 1)."""
    sections: tuple[str, ...] = ()
    """Section presets to tune (e.g. shapes-pref); empty: every section of the profile."""
    methods: tuple[str, ...] = ()
    """Restrict to these methods (empty: every method of each section)."""
    spend: int = 1536
    """Spend budget per study in metered optimizer updates over all its trials' runs (0: none, ``trials`` alone
    ends a study); the same for every method. 1536 = 8 full trials of 2 seeds x 96 updates, estimated at 79
    minutes for the Shapes table on 2 cores from the stored tuning's seconds per metered update."""
    trials: int = 48
    """Most trials per study (with a spend budget the budget normally ends a study first); the same for every
    method."""
    seeds: tuple[int, ...] = (100, 101)
    """Training seeds of every trial, whose values it averages (the reported table uses others)."""
    startup_trials: int = 0
    """TPE's random start-up trials (0: max(2, planned // 4), planned = the full trials the budget buys)."""
    sampler_seed: int = 0
    """TPE seed, the same for every study."""
    pruner: str = "median"
    """Pruner, the same for every study."""
    objective: str = ""
    """Validation reward whose headline (GenEval's overall_disjoint, else the mean) at the best evaluation point
    is maximised; empty: shapes-geneval on the Shapes profile, else each section's training reward."""
    n_workers: int = 2
    """Worker processes per study (one torch thread each)."""
    out: str = "results"
    """Results root: runs in ``<out>/runs``, studies in ``<out>/studies``."""
    tuned_file: str = ""
    """Where to write the tuned file; empty: ``harness/tuned/<profile>.json``."""
    write_only: bool = False
    """Do not run studies; only rewrite the tuned file from the stored ones."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"trials": at_least(1), "seeds": nonnegative(), "sampler_seed": nonnegative(),
                                          "n_workers": at_least(1), "spend": nonnegative(),
                                          "startup_trials": nonnegative()}
    """Valid range of every numeric field (``harness.validate``)."""


def study_name(section: str, method: str) -> str:
    return f"tune-{section}-{method}"


def plan(cfg: TuneConfig) -> list[tuple[str, str]]:
    """(section preset, method) pairs to tune, in table order; unknown names fail with the nearest match."""

    if cfg.profile not in SECTIONS:
        raise unknown("table profile", cfg.profile, list(SECTIONS))
    sections = {s.preset: s for s in SECTIONS[cfg.profile]}
    for name in cfg.sections:
        if name not in sections:
            raise unknown("section", name, list(sections))
    chosen = [sections[n] for n in (cfg.sections or sections)]
    every = sorted({m for s in chosen for m in s.methods})
    for m in cfg.methods:
        if m not in every:
            raise unknown("method", m, every)
    return [(s.preset, m) for s in chosen for m in s.methods if not cfg.methods or m in cfg.methods]


def objective(cfg: TuneConfig, section: str) -> str:
    """The validation objective: ``cfg.objective``, else the GenEval verifier of the section's Shapes edition
    (shapes-geneval, shapes2-geneval), else the section's training reward."""
    run = presets.get(section).run
    if cfg.objective:
        return cfg.objective
    return reward_name("shapes-geneval", PROFILE_EDITIONS[run.profile]) if run.profile in PROFILE_EDITIONS else run.reward


def study_config(cfg: TuneConfig, section: str, method: str):
    return StudyConfig(name=study_name(section, method), method=method, preset=section, trials=cfg.trials,
                       spend=cfg.spend, startup_trials=cfg.startup_trials, seeds=cfg.seeds,
                       objective=objective(cfg, section), at_best=True, pruner=cfg.pruner, n_workers=cfg.n_workers,
                       space=(LR_SPACE,), sampler_seed=cfg.sampler_seed, out=cfg.out)


def tune(cfg: TuneConfig, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) every study, then write the tuned file; returns its path."""

    pairs = plan(cfg)
    for section, method in pairs:  # every study's setup (budget, seeds, space) is checked before any runs
        resolve(study_config(cfg, section, method))
    if not cfg.write_only:
        for i, (section, method) in enumerate(pairs):
            log(f"[{i + 1}/{len(pairs)}] {study_name(section, method)}")
            studies.study(study_config(cfg, section, method), log=log)
    return write_tuned(cfg, pairs, log)


# ---------------------------------------------------------------------------------------------------
# The tuned file
# ---------------------------------------------------------------------------------------------------

def best_trial(the_study: Any) -> Any:
    """The complete trial with the highest value (the lowest number among ties); None if none completed."""
    from optuna.trial import TrialState

    done = [t for t in the_study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def effort(cfg: TuneConfig, section: str, the_study: Any) -> dict[str, Any]:
    """The tuning effort a study had: what ``EFFORT_KEYS`` compares across a section."""

    run = presets.get(section).run
    attrs = the_study.user_attrs
    trials = the_study.get_trials(deepcopy=False)
    stored = attrs.get("setup", {}).get("study", {})
    used = study_spend(trials, run.updates, len(stored.get("seeds") or cfg.seeds))
    startup = sorted({t.user_attrs["startup_trials"] for t in trials if "startup_trials" in t.user_attrs})
    return {"trials": stored.get("trials", cfg.trials), "trials_run": len(counted(trials)),
            "spend_budget": stored.get("spend", 0), "spend": used.updates, "spend_estimated": used.estimated,
            "startup_trials": startup[0] if len(startup) == 1 else (startup or DEFAULT_STARTUP),
            "updates": run.updates, "seeds": list(stored.get("seeds") or cfg.seeds), "sampler_seed": cfg.sampler_seed,
            "pruner": cfg.pruner, "space_lr": LR_SPACE,
            "objective": objective(cfg, section), "k": run.k, "prompts_per_step": run.prompts_per_step,
            "eval_at": list(run.eval_at), "eval_seeds": run.eval_seeds, "eval_split": run.eval_split,
            "fingerprint": attrs.get("fingerprint")}


def write_tuned(cfg: TuneConfig, pairs: list[tuple[str, str]], log: Callable[[str], None] = print) -> Path:
    """Write the tuned file from the stored studies (existing entries of other sections are kept)."""

    path = tuned_path(cfg.profile, cfg.tuned_file)
    data = json.loads(path.read_text()) if path.is_file() else {"profile": cfg.profile, "sections": {}}
    for section, method in pairs:
        the_study = load_study(study_name(section, method), out=cfg.out)
        trial = best_trial(the_study)
        if trial is None:
            raise ValueError(f"study '{study_name(section, method)}' has no complete trial to take a config from")
        manifest = Store(cfg.out).manifest(trial.user_attrs["run_ids"][0])
        data["sections"].setdefault(section, {})[method] = {
            "study": study_name(section, method), "trial": trial.number, "value": trial.value,
            "config": trial.user_attrs["method_config"], "params": trial.params,
            "commit": manifest["environment"]["git"], "code": manifest["versions"].get("code"),
            "effort": effort(cfg, section, the_study), "studies_root": str(cfg.out)}
        log(f"{section} / {method}: trial {trial.number}, validation {objective(cfg, section)} {trial.value:.4f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    return path


