"""A study's configuration (``driftbench study``) and its resolution into base configs, checked before any
storage or compute is touched."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import rewards
from harness import presets
from harness.config import RunConfig, run_key
from harness.studies.space import Override, parse_space
from harness.validate import Bound, at_least, check, nonnegative
from methods import METHODS

HEARTBEAT_SECONDS = 60
"""Database storages: a worker's default heartbeat interval; the default grace is three intervals."""


def journal_path(out: str, name: str) -> Path:
    return Path(out) / "studies" / f"{name}.journal"


def is_rdb(spec: str) -> bool:
    return "://" in spec


def check_heartbeat(heartbeat: int, grace: int) -> int:
    """The grace period to use (``grace``, or three intervals when 0); one-line ValueError on bad values."""
    if heartbeat <= 0:
        raise ValueError(f"heartbeat must be > 0 seconds, got {heartbeat}")
    if grace < 0 or (grace and grace < heartbeat):
        raise ValueError(f"grace must be >= the heartbeat interval ({heartbeat} s) or 0 (three intervals), "
                         f"got {grace}")
    return grace or 3 * heartbeat


@dataclass(frozen=True)
class StudyConfig:
    """``driftbench study``: an Optuna study of one method's hyperparameters over ``run()``."""

    name: str
    """Study name; the journal file is ``<out>/studies/<name>.journal`` and runs are tagged ``study:<name>``."""
    method: str = "drpo"
    """Method whose ``space(trial)`` is searched."""
    preset: str = "tiny-jpeg"
    """Preset giving the base RunConfig and the method's base Config (see ``driftbench list``)."""
    trials: int = 20
    """Total trials the study should hold when the command ends (complete, pruned or failed); with a spend
    budget, the most it may hold."""
    spend: int = 0
    """Spend budget of the study in metered optimizer updates, summed over every run of every trial (pruned,
    stopped and failed ones count what they ran); 0: none, the trial count alone ends the study. No trial starts
    once it is spent, and a running trial stops (pruned, ``stopped`` = "spend budget") at its first evaluation
    after it is, so studies given the same budget spend it to within an evaluation interval per worker."""
    seeds: tuple[int, ...] = (0, 1)
    """Training seeds every trial runs; the objective is their mean (Optuna does not repeat seeds, #433). Each
    seed's run, updates and value are recorded on the trial (``seed_runs``); a retried trial reuses the finished
    ones."""
    startup_trials: int = 0
    """TPE's random start-up trials (0: max(2, planned // 4), planned being the trial count, or with a spend
    budget the full trials it buys, at most the trial count); Optuna's default of 10 would leave a 16-trial
    study nearly random."""
    objective: str = ""
    """Reward whose held-out headline (``overall``, else ``mean``) is maximised; empty: the training reward."""
    multi_objective: bool = False
    """Maximise the held-out objective and minimise ``eval/drift/pixel_rms`` (a Pareto front shows reward
    hacking: reward bought by moving far from the base generator). No pruning in this mode."""
    at_best: bool = False
    """Score each run at its best evaluation point (its validation-selected checkpoint: the run's
    ``select_metric`` is the objective) instead of at the end; intermediate reports are the best so far."""
    pruner: Literal["median", "hyperband", "none"] = "median"
    """Pruner: "median", "hyperband" or "none"."""
    storage: str = ""
    """Empty: a journal file under ``<out>/studies/``; a path: that journal file; a database URL
    (postgresql+psycopg://USER:PASSWORD@HOST/DB with driftbench[postgres], mysql+pymysql://... with
    driftbench[mysql]): heartbeats and automatic retries, for workers on several machines."""
    heartbeat: int = HEARTBEAT_SECONDS
    """Database storages: seconds between a running trial's heartbeats."""
    grace: int = 0
    """Database storages: seconds without a heartbeat after which a trial is failed and re-run with its
    parameters (0: three heartbeat intervals); at least the heartbeat interval."""
    n_workers: int = 1
    """Worker processes on this machine sharing the storage; they split the remaining trials."""
    space: tuple[str, ...] = ()
    """Overrides of the method's search space, NAME=LOW:HIGH[:log], NAME=A,B,... or NAME=VALUE (fixed),
    e.g. "lr=1e-5:1e-3:log" "kernel=laplacian,rbf" "m=2:6"; "k=8:24" searches the run's K as well."""
    k: int = 0
    """Fixed candidates per prompt K for every trial (0: the preset's); search it with a "k=..." space entry."""
    updates: int = 0
    """Per-run budget in optimizer updates (0: the preset's)."""
    sampler_seed: int = 0
    """Each worker's TPE seed is derived from it (mixed with OS entropy on database storages); the seed used
    is recorded on every trial."""
    out: str = "results"
    """Results root: runs in ``<out>/runs``, the study in ``<out>/studies``."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"trials": at_least(1), "seeds": nonnegative(), "n_workers": at_least(1),
                                          "spend": nonnegative(), "startup_trials": nonnegative(),
                                          "k": at_least(2, zero=True), "updates": nonnegative(),
                                          "sampler_seed": nonnegative(), "heartbeat": at_least(1),
                                          "grace": nonnegative()}
    """Valid range of every numeric field (``harness.validate``)."""


# ---------------------------------------------------------------------------------------------------
# Resolution: everything a worker needs, validated before any storage or compute is touched
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    """A resolved study: base configs, overrides and the fingerprint stored with the study."""

    base_run: RunConfig
    base_method: Any
    overrides: tuple[Override, ...]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    startup_trials: int = 10
    """TPE's random start-up trials, resolved from the budget (``StudyConfig.startup_trials``)."""


def resolve(cfg: StudyConfig) -> Setup:
    """Check ``cfg`` and build the base configs; raises a one-line ``ValueError`` on bad input."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.name or "") or ".." in cfg.name:
        raise ValueError(f"study name '{cfg.name}' must be letters, digits, '.', '_' or '-' (it names files)")
    check(cfg)
    if cfg.storage and not is_rdb(cfg.storage) and not Path(cfg.storage).parent.is_dir():
        raise FileNotFoundError(f"--storage '{cfg.storage}': directory {Path(cfg.storage).parent} does not exist")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {tuple(cfg.seeds)}")
    check_heartbeat(cfg.heartbeat, cfg.grace)
    method = METHODS.get(cfg.method)
    if not hasattr(method, "space"):
        raise ValueError(f"method '{cfg.method}' defines no search space (space(trial))")
    preset = presets.get(cfg.preset)
    changes = {"k": cfg.k} if cfg.k else {}
    changes |= {"updates": cfg.updates} if cfg.updates else {}
    if cfg.at_best:
        if not cfg.objective:
            raise ValueError("at_best needs an objective reward (--objective) to select checkpoints on")
        changes["select_metric"] = cfg.objective
    base_run = preset.run_for(cfg.method).replace(method=cfg.method, out=cfg.out, run_id="", tag=f"study:{cfg.name}",
                                              **changes)
    base_run.validate()
    overrides = parse_space(cfg.space, method)
    if cfg.k and any(o.name == "k" for o in overrides):
        raise ValueError(f"k is given both fixed (--k {cfg.k}) and searched (space 'k=...'); give one")
    _check_objective(cfg.objective, base_run)
    startup = resolve_startup(cfg, base_run)  # not in the fingerprint: a study may grow, as with --trials
    base_method = preset.method_config(cfg.method)
    fingerprint = {"method": cfg.method, "preset": cfg.preset, "space": sorted(o.text() for o in overrides),
                   "objective": cfg.objective, "multi_objective": cfg.multi_objective, "k": cfg.k,
                   "updates": cfg.updates, "seeds": list(cfg.seeds), "base": run_key(base_run, base_method),
                   **({"at_best": True} if cfg.at_best else {})}
    return Setup(base_run=base_run, base_method=base_method, overrides=overrides, fingerprint=fingerprint,
                 startup_trials=startup)


def resolve_startup(cfg: StudyConfig, base_run: RunConfig) -> int:
    """TPE's start-up trials for this budget; a one-line ``ValueError`` for a spend budget that cannot pay for
    one full trial (every trial would be stopped before it ended)."""
    planned = cfg.trials
    if cfg.spend:
        if not base_run.updates:
            raise ValueError("--spend counts optimizer updates, but these runs have no update budget (--updates 0); "
                             "give --updates or --spend 0")
        full = base_run.updates * len(cfg.seeds)
        if cfg.spend < full:
            raise ValueError(f"--spend {cfg.spend} is less than one full trial ({len(cfg.seeds)} seed(s) x "
                             f"{base_run.updates} updates = {full}); give at least {full}, or 0 for no spend budget")
        planned = min(planned, cfg.spend // full)
    return cfg.startup_trials or max(2, planned // 4)


def _check_objective(objective: str, run_cfg: RunConfig) -> None:
    if not objective:
        return
    rewards.REWARDS.check(objective)
    if run_cfg.eval_split_rewards and objective not in run_cfg.eval_split_rewards:
        # the validation split scores only these rewards: a trial would train, then find no objective to read
        raise ValueError(f"objective '{objective}' is not scored on these runs' validation split; valid objectives: "
                         f"{', '.join(run_cfg.eval_split_rewards)}")
    if run_cfg.evals:  # with the profile's default evaluations the check waits for the first run
        evaluated = list(dict.fromkeys(([run_cfg.reward] if run_cfg.reward else []) + list(run_cfg.evals)))
        if objective not in evaluated:
            raise ValueError(f"objective '{objective}' is not evaluated by these runs; evaluated rewards: "
                             f"{', '.join(evaluated)}")
