"""Hyperparameter studies: Optuna in-process over ``run()`` (house style 3.9).

The search space is the method's own ``space(trial)``; ``StudyConfig.space`` overrides single parameters
through :class:`SpaceTrial`, a proxy whose ``suggest_*`` consult the overrides, so method files stay as
they are. A trial builds the method Config, runs every seed of the study with :func:`harness.run.run`
and returns the mean held-out objective over seeds, read back from the stored run summaries (the value
Optuna sees is the number in the store). Intermediate values are reported at fixed fractions of the
trial's total spend, so the pruner compares trials at equal spend (optuna #2441), and they are the quantity
the objective reports: the mean of the finished seeds' values and the current seed's so far (at the run's best
evaluation point with ``at_best``, update 0 included), so the last report is the trial's value; a trial is
never pruned at its last evaluation. With ``spend`` the study ends when its runs have metered that many
optimizer updates (``harness/studies/spend.py``), not after a trial count, and TPE's start-up trials are
sized from that budget.

Storage is a journal file under ``<out>/studies/`` by default (SQLite locks under parallel workers,
optuna #820); ``--n-workers N`` starts N spawned processes on it that split the remaining trials, so a
study completes exactly ``trials`` trials. Re-running the same command resumes: complete, pruned and
failed trials are kept, and a trial left RUNNING by a stopped worker is marked FAIL and enqueued again
with its parameters. Database URLs (``postgresql+psycopg://``, ``mysql+pymysql://``) serve workers spread
over several machines, with heartbeats instead (``harness/studies/storage.py``). There every worker seeds its
TPE sampler from OS entropy mixed with ``--sampler-seed`` (the seed is recorded per trial as ``sampler_seed``),
so separate commands never replay each other's suggestions, and a trial that finds the study already full when it
starts is marked surplus and not run, so a study holds exactly ``trials`` trials however many commands
share it.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import workers
from harness.redact import redact_streams
from harness.store import RunLock
from harness.studies.config import Setup, StudyConfig, is_rdb, journal_path, resolve
from harness.studies.objective import make_objective
from harness.studies.spend import spent
from harness.studies.storage import (
    counted,
    create_or_load,
    fail_stale,
    hide_password,
    open_storage,
    requeue_stopped,
    storage_label,
)

if TYPE_CHECKING:
    import optuna

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
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=setup.startup_trials)
    study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler, pruner=_pruner(cfg, setup))
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
        if cfg.spend and spent(trials) >= cfg.spend:  # running trials' spend so far counts
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[progress], gc_after_trial=False)
        done += 1
    return done


def _worker(cfg: StudyConfig, setup: Setup, n_trials: int, index: int, parent: int = 0) -> None:
    """Entry point of a spawned worker process; it ends when its parent dies (``harness.workers``)."""
    import optuna
    import torch

    if parent:
        workers.bind_to_parent(parent)
    redact_streams()  # a spawned process starts with bare streams

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
    trials = the_study.get_trials(deepcopy=False)
    held = len(counted(trials))
    remaining = cfg.trials - held
    budget = f"; spent {spent(trials)} of {cfg.spend} updates" if cfg.spend else ""
    if cfg.spend and spent(trials) >= cfg.spend:
        remaining, budget = 0, budget + " (the budget is spent)"
    log(f"study '{cfg.name}' in {storage_label(cfg)}: {min(held, cfg.trials)} of {'at most ' if cfg.spend else ''}"
        f"{cfg.trials} trials done"
        + budget + (f", re-enqueued trial(s) {requeued} left by a stopped worker" if requeued else "")
        + (f"; running {'up to ' if cfg.spend else ''}{remaining} on {min(cfg.n_workers, remaining)} worker(s)"
           if remaining > 0 else ""))
    if remaining <= 0:
        _check_some_trial_ran(the_study, cfg)
        return the_study
    started = time.perf_counter()
    # With a spend budget the workers do not know how many trials it buys: each may run all that remain, and
    # stops when the budget or the trial count is reached.
    shares = ([remaining] * min(cfg.n_workers, remaining) if cfg.spend else
              [s for s in _split(remaining, cfg.n_workers) if s > 0])
    if len(shares) == 1:
        optimize(cfg, setup, shares[0], log=log)
    else:
        context = multiprocessing.get_context("spawn")
        procs = [context.Process(target=_worker, args=(cfg, setup, n, i, os.getpid()), name=f"study-{cfg.name}-{i}")
                 for i, n in enumerate(shares)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:  # SIGINT or SIGTERM to this process: pass SIGTERM on to every worker
            workers.terminate(procs)
            for p in procs:  # each stops at its next safe point and records its trial
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

    if is_rdb(cfg.storage):
        return contextlib.nullcontext()
    path = Path(cfg.storage) if cfg.storage else journal_path(cfg.out, cfg.name)
    return RunLock(path.with_name(f".{path.name}.requeue.lock"), f"study '{cfg.name}'").acquire(wait=True)


def _log_best(the_study: Any, cfg: StudyConfig, seconds: float, log: Callable[[str], None]) -> None:
    trials = the_study.get_trials(deepcopy=False)
    n = len(counted(trials))
    try:
        if cfg.multi_objective:
            best = f"{len(the_study.best_trials)} Pareto-optimal trial(s)"
        else:
            t = the_study.best_trial
            best = f"best trial {t.number} value {t.value:.5g} [{_params_text(t.params)}]"
    except ValueError:
        best = "no complete trial"
    log(f"study '{cfg.name}': {n} of {cfg.trials} trials in {seconds:.0f} s, {spent(trials)} updates metered"
        f"{f' of a {cfg.spend}-update budget' if cfg.spend else ''}; {best}")


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
