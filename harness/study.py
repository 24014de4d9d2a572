"""Hyperparameter studies: Optuna in-process over ``run()`` (house style 3.9).

The search space is the method's own ``space(trial)``; ``StudyConfig.space`` overrides single parameters
through :class:`SpaceTrial`, a proxy whose ``suggest_*`` consult the overrides, so method files stay as
they are. A trial builds the method Config, runs every seed of the study with :func:`harness.run.run`
and returns the mean held-out objective over seeds, read back from the stored run summaries (the value
Optuna sees is the number in the store). Intermediate values are reported at fixed fractions of the
trial's total spend, so the pruner compares trials at equal spend (optuna #2441).

Storage is a journal file under ``<out>/studies/`` by default (SQLite locks under parallel workers,
optuna #820); ``--n-workers N`` starts N spawned processes on it that split the remaining trials, so a
study completes exactly ``trials`` trials. Re-running the same command resumes: complete, pruned and
failed trials are kept, and a trial left RUNNING by a stopped worker is marked FAIL and enqueued again
with its parameters. Database URLs (``postgresql+psycopg://``, ``mysql+pymysql://``) serve workers spread
over several machines, with heartbeats instead (``harness/study_storage.py``). There every worker seeds its
TPE sampler from OS entropy mixed with ``--sampler-seed`` (the seed is recorded per trial as ``sampler_seed``),
so separate commands never replay each other's suggestions, and a trial that finds the study already full when it
starts is marked surplus and not run, so a study holds exactly ``trials`` trials however many commands
share it.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from harness.config import RunConfig, run_key
from harness.registry import unknown
from harness.study_objective import DRIFT_KEY, StudyFull, make_objective, objective_value  # noqa: F401
from harness.study_space import Override, SpaceTrial, method_space, parse_space  # noqa: F401 - re-exported
from harness.study_storage import (  # noqa: F401 - the storage API, re-exported for callers of harness.study
    HEARTBEAT_SECONDS,
    check_heartbeat,
    counted,
    create_or_load,
    fail_stale,
    hide_password,
    is_rdb,
    journal_path,
    open_storage,
    requeue_stopped,
    storage_label,
)
from harness.validate import Bound, at_least, nonnegative

if TYPE_CHECKING:
    import optuna

PRUNERS = ("median", "hyperband", "none")


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
    """Total trials the study should hold when the command ends (complete, pruned or failed)."""
    seeds: tuple[int, ...] = (0, 1)
    """Training seeds every trial runs; the objective is their mean (Optuna does not repeat seeds, #433)."""
    objective: str = ""
    """Reward whose held-out headline (``overall``, else ``mean``) is maximised; empty: the training reward."""
    multi_objective: bool = False
    """Maximise the held-out objective and minimise ``eval/drift/pixel_rms`` (a Pareto front shows reward
    hacking: reward bought by moving far from the base generator). No pruning in this mode."""
    at_best: bool = False
    """Score each run at its best evaluation point (its validation-selected checkpoint: the run's
    ``select_metric`` is the objective) instead of at the end; intermediate reports are the best so far."""
    pruner: str = "median"
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


def resolve(cfg: StudyConfig) -> Setup:
    """Check ``cfg`` and build the base configs; raises a one-line ``ValueError`` on bad input."""
    from harness import presets
    from harness.validate import check
    from methods import METHODS

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.name or "") or ".." in cfg.name:
        raise ValueError(f"study name '{cfg.name}' must be letters, digits, '.', '_' or '-' (it names files)")
    check(cfg)
    if cfg.storage and not is_rdb(cfg.storage) and not Path(cfg.storage).parent.is_dir():
        raise FileNotFoundError(f"--storage '{cfg.storage}': directory {Path(cfg.storage).parent} does not exist")
    for label, value, least in (("trials", cfg.trials, 1), ("n_workers", cfg.n_workers, 1), ("k", cfg.k, 0),
                                ("updates", cfg.updates, 0)):
        if value < least:
            raise ValueError(f"{label} must be >= {least}, got {value}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {tuple(cfg.seeds)}")
    if cfg.pruner not in PRUNERS:
        raise unknown("pruner", cfg.pruner, list(PRUNERS))
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
    base_method = preset.method_config(cfg.method)
    fingerprint = {"method": cfg.method, "preset": cfg.preset, "space": sorted(o.text() for o in overrides),
                   "objective": cfg.objective, "multi_objective": cfg.multi_objective, "k": cfg.k,
                   "updates": cfg.updates, "seeds": list(cfg.seeds), "base": run_key(base_run, base_method),
                   **({"at_best": True} if cfg.at_best else {})}
    return Setup(base_run=base_run, base_method=base_method, overrides=overrides, fingerprint=fingerprint)


def _check_objective(objective: str, run_cfg: RunConfig) -> None:
    import rewards

    if not objective:
        return
    rewards.REWARDS.check(objective)
    if run_cfg.evals:  # with the profile's default evaluations the check waits for the first run
        evaluated = list(dict.fromkeys(([run_cfg.reward] if run_cfg.reward else []) + list(run_cfg.evals)))
        if objective not in evaluated:
            raise ValueError(f"objective '{objective}' is not evaluated by these runs; evaluated rewards: "
                             f"{', '.join(evaluated)}")


# ---------------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------------

def _sampler_seed(cfg: StudyConfig, index: int, existing: int) -> int:
    """A TPE seed per worker from the sampler seed, the worker index and the trial count, so parallel or
    resumed workers of one command do not replay each other's random start-up suggestions (and a journal
    study is reproducible from its command). Database storages mix in OS entropy: identical commands on
    other machines would otherwise derive the very same seeds."""
    import numpy as np

    entropy = [cfg.sampler_seed % 2 ** 32, index, existing] + ([secrets.randbits(64)] if is_rdb(cfg.storage) else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _pruner(cfg: StudyConfig, setup: Setup) -> Any:
    import optuna

    if cfg.multi_objective or cfg.pruner == "none":  # Optuna cannot prune multi-objective trials
        return optuna.pruners.NopPruner()
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    first = min([f for f in setup.base_run.eval_at if f > 0] + [1.0])
    return optuna.pruners.HyperbandPruner(min_resource=max(1, round(100 * first / len(cfg.seeds))),
                                          max_resource=100, reduction_factor=3)


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _line(trial: Any, prefix: str) -> str:
    value = ("-" if trial.values is None else
             ", ".join(f"{v:.5g}" for v in trial.values))
    seconds = trial.duration.total_seconds() if trial.duration else float("nan")
    params = _params_text(trial.params)
    error = f" ({trial.user_attrs['error']})" if "error" in trial.user_attrs else ""
    state = trial.state.name.lower()
    return f"{prefix}trial {trial.number} {state} value {value} [{params}] {seconds:.1f} s{error}"


def optimize(cfg: StudyConfig, setup: Setup, n_trials: int, index: int = 0,
             log: Callable[[str], None] = print) -> int:
    """Run up to ``n_trials`` trials in this process (stopping early once the study holds ``cfg.trials``);
    returns how many it ran."""
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(cfg.storage, cfg.out, cfg.name, heartbeat=cfg.heartbeat, grace=cfg.grace)
    existing = len(storage.get_all_trials(storage.get_study_id_from_name(cfg.name), deepcopy=False))
    seed = _sampler_seed(cfg, index, existing)
    study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=optuna.samplers.TPESampler(seed=seed),
                              pruner=_pruner(cfg, setup))
    objective = make_objective(cfg, setup, sampler_seed=seed)
    prefix = f"[worker {index}] " if cfg.n_workers > 1 else ""

    def progress(_study: Any, trial: Any) -> None:
        log(_line(trial, prefix))
    done = 0
    for _ in range(n_trials):
        fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if len(counted(trials)) + running >= cfg.trials:  # another command on the same study got there
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[progress], gc_after_trial=False)
        done += 1
    return done


def _worker(cfg: StudyConfig, setup: Setup, n_trials: int, index: int) -> None:
    """Entry point of a spawned worker process."""
    import optuna
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // cfg.n_workers))  # N workers share the machine's cores
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    optimize(cfg, setup, n_trials, index, log=lambda s: print(s, flush=True))


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def study(cfg: StudyConfig, log: Callable[[str], None] = print) -> optuna.Study:
    """Create or resume the study and run it until it holds ``cfg.trials`` trials; returns the study."""
    import multiprocessing

    import optuna

    setup = resolve(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(cfg.storage, cfg.out, cfg.name, heartbeat=cfg.heartbeat, grace=cfg.grace)
    the_study = create_or_load(cfg, setup, storage)
    fail_stale(the_study)
    with _requeue_lock(cfg):  # two commands resuming one study must not both re-enqueue a stopped trial
        requeued = requeue_stopped(the_study, rdb=is_rdb(cfg.storage), out=cfg.out, storage=storage)
    remaining = cfg.trials - len(counted(the_study.get_trials(deepcopy=False)))
    log(f"study '{cfg.name}' in {storage_label(cfg)}: {cfg.trials - max(remaining, 0)} of {cfg.trials} trials done"
        + (f", re-enqueued trial(s) {requeued} left by a stopped worker" if requeued else "")
        + (f"; running {remaining} on {min(cfg.n_workers, remaining)} worker(s)" if remaining > 0 else ""))
    if remaining <= 0:
        _check_some_trial_ran(the_study, cfg)
        return the_study
    started = time.perf_counter()
    shares = [s for s in _split(remaining, cfg.n_workers) if s > 0]
    if len(shares) == 1:
        optimize(cfg, setup, shares[0], log=log)
    else:
        context = multiprocessing.get_context("spawn")
        procs = [context.Process(target=_worker, args=(cfg, setup, n, i), name=f"study-{cfg.name}-{i}")
                 for i, n in enumerate(shares)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            for p in procs:  # the workers got the same SIGINT; give them time to record their trials
                p.join(timeout=30)
            raise
        failed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"study workers failed: {', '.join(failed)}; completed trials are kept, "
                               "rerun the same command to resume")
    _log_best(the_study, cfg, time.perf_counter() - started, log)
    _check_some_trial_ran(the_study, cfg)
    return the_study


def _check_some_trial_ran(the_study: Any, cfg: StudyConfig) -> None:
    """A study whose every trial failed is an error (exit status 1), not a result."""
    from optuna.trial import TrialState

    trials = the_study.get_trials(deepcopy=False)
    if trials and not any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
        first = next((t for t in trials if "error" in t.user_attrs), None)
        why = f" (trial {first.number}: {first.user_attrs['error']})" if first else ""
        raise RuntimeError(f"every trial of study '{cfg.name}' failed{why}; fix the setup and rerun")


def _requeue_lock(cfg: StudyConfig):
    """An exclusive lock beside the study's journal, waited for (the other command holds it for milliseconds);
    a no-op for RDB storages, which retry by heartbeat."""
    import contextlib

    from harness.store import RunLock

    if is_rdb(cfg.storage):
        return contextlib.nullcontext()
    path = Path(cfg.storage) if cfg.storage else journal_path(cfg.out, cfg.name)
    return RunLock(path.with_name(f".{path.name}.requeue.lock"), f"study '{cfg.name}'").acquire(wait=True)


def _log_best(the_study: Any, cfg: StudyConfig, seconds: float, log: Callable[[str], None]) -> None:
    n = len(counted(the_study.get_trials(deepcopy=False)))
    try:
        if cfg.multi_objective:
            best = f"{len(the_study.best_trials)} Pareto-optimal trial(s)"
        else:
            t = the_study.best_trial
            best = f"best trial {t.number} value {t.value:.5g} [{_params_text(t.params)}]"
    except ValueError:
        best = "no complete trial"
    log(f"study '{cfg.name}': {n} of {cfg.trials} trials in {seconds:.0f} s; {best}")


def load_study(name: str, out: str = "results", storage: str = "") -> optuna.Study:
    """Open an existing study (for reports); a clear error when there is none of that name."""
    import optuna

    if not storage and not journal_path(out, name).is_file():  # do not leave an empty journal behind
        raise ValueError(f"no study '{name}' in {journal_path(out, name)}")
    backend = open_storage(storage, out, name)
    names = [s.study_name for s in optuna.get_all_study_summaries(backend, include_best_trial=False)]
    if name not in names:
        where = hide_password(storage) if storage else str(journal_path(out, name))
        others = f"; studies there: {', '.join(names)}" if names else ""
        raise ValueError(f"no study '{name}' in {where}{others}")
    return optuna.load_study(study_name=name, storage=backend)


def json_safe(value: Any) -> Any:
    """Floats that JSON can hold (nan and inf become None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(json_safe(value), indent=2, sort_keys=True, default=str)
