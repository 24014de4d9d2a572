"""A study trial's objective: the method's configuration from the trial, every seed run (a retried trial
picks up the stopped trial's runs), intermediate reports at equal spend, and the mean held-out value
read back from the stored summaries. Split from ``harness/studies/study.py``, which drives the workers."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections.abc import Callable
from typing import Any

import rewards
from harness.config import config_dict, run_key
from harness.redact import redact
from harness.reporting.tables import headline
from harness.run import run
from harness.store import Store, read_json, utc_stamp
from harness.studies.config import Setup, StudyConfig
from harness.studies.space import SpaceTrial, extra_params
from harness.studies.spend import spent
from harness.studies.storage import counted
from methods import METHODS

DRIFT_KEY = "eval/drift/pixel_rms"
"""The summary key of a run's pixel distance from the base (the second objective of a multi-objective study)."""



def objective_value(summary: dict[str, Any], reward: str) -> float:
    """The held-out headline of ``reward`` in a run summary (``overall`` when present, else ``mean``)."""

    value = headline(summary, reward)
    if value is None:
        evaluated = sorted({k.split("/")[1] for k in summary if k.startswith("eval/") and k != DRIFT_KEY})
        raise ValueError(f"objective '{reward}' is not evaluated by the run; "
                         f"evaluated rewards: {', '.join(evaluated)}")
    return float(value)


def _run_id(store: Any, name: str, number: int, seed: int) -> str:
    run_id = f"study-{name}__t{number:04d}__s{seed}"
    return run_id if not store.run_dir(run_id).exists() else f"{run_id}__{utc_stamp()}"


class _Record:
    """A trial's per-seed records (its ``seed_runs`` user attribute, read by :mod:`harness.studies.spend`),
    written through to the storage on every change so a study's spend is readable while trials run."""

    def __init__(self, trial: Any):
        self.trial, self.runs = trial, []

    def set(self, index: int, **fields: Any) -> None:
        while len(self.runs) <= index:
            self.runs.append({})
        self.runs[index].update(fields)
        self.trial.set_user_attr("seed_runs", self.runs)


class _Reporter:
    """``on_eval`` for seed i of S. Records the run's metered updates, value, base value and drift; reports the
    objective's running estimate (the mean of the finished seeds' values and this seed's value so far, so the
    last report is the trial's value) at step round(100 (i + f) / S) and prunes there, except at the trial's
    last evaluation (a trial that ran its whole budget is complete, not pruned); stops the trial once the
    study's spend budget is spent (``over_budget``)."""

    def __init__(self, trial: Any, index: int, n_seeds: int, store: Any, run_id: str, objective: str,
                 reported: set[int], running_max: bool = False, *, done: list[float] | None = None,
                 record: _Record | None = None, prune: bool = True,
                 over_budget: Callable[[], bool] | None = None):
        self.trial, self.index, self.n_seeds = trial, index, n_seeds
        self.store, self.run_id, self.objective, self.reported = store, run_id, objective, reported
        self.running_max, self.best = running_max, -math.inf
        self.done, self.record, self.prune = done if done is not None else [], record, prune
        self.over_budget = over_budget

    def __call__(self, fraction: float, metrics: dict[str, float]) -> None:
        import optuna

        reward = self.objective or self.store.manifest(self.run_id)["reward"]
        value = objective_value(metrics, reward)
        # at_best: the value a checkpoint selected now would have. Update 0 (the base) is a candidate, as it is
        # for the run's selection, so the reports and the objective read the same quantity.
        self.best = max(self.best, value)
        current = self.best if self.running_max else value
        if self.record is not None:
            rows = self.store.rows(self.run_id, kind="eval")
            self.record.set(self.index, updates=int(rows[-1]["step"]) if rows else 0, value=current,
                            base=headline(metrics, reward, base=True), drift=metrics.get(DRIFT_KEY))
        if fraction <= 0:  # nothing trained yet; for i > 0 it would land on the previous seed's last step
            return
        last = self.index == self.n_seeds - 1 and fraction >= 1.0 - 1e-12
        step = round(100 * (self.index + min(fraction, 1.0)) / self.n_seeds)
        if self.prune and step not in self.reported:
            self.reported.add(step)
            self.trial.report((sum(self.done) + current) / (len(self.done) + 1), step)
            if not last and self.trial.should_prune():
                self._stop("pruned")
                raise optuna.TrialPruned(f"pruned at {step}% of the trial's spend")
        if not last and self.over_budget is not None and self.over_budget():
            self._stop("stopped")
            self.trial.set_user_attr("stopped", "spend budget")
            raise optuna.TrialPruned(f"stopped at {step}% of the trial's spend: the study's spend budget is spent")

    def _stop(self, status: str) -> None:
        if self.record is not None:
            self.record.set(self.index, status=status)


class StudyFull(Exception):
    """A trial that started when the study already held ``trials`` trials (another command got there)."""


def make_objective(cfg: StudyConfig, setup: Setup, *, sampler_seed: int | None = None) -> Callable[[Any], Any]:
    """The Optuna objective: mean held-out objective over ``cfg.seeds`` (and mean pixel drift when
    multi-objective); failures are recorded in the trial's ``error`` user attribute. ``sampler_seed``, the
    worker's TPE seed, and the sampler's start-up trials are recorded on each trial."""
    import optuna

    def objective(trial: optuna.Trial) -> Any:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("startup_trials", setup.startup_trials)
        if sampler_seed is not None:
            trial.set_user_attr("sampler_seed", sampler_seed)
        try:
            _check_room(trial, cfg.trials)
            return _evaluate(trial, cfg, setup)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("error", "KeyboardInterrupt")
            raise
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            trial.set_user_attr("error", redact(f"{type(exc).__name__}: {text}"))
            raise
    return objective


def _check_room(trial: Any, total: int) -> None:
    """Raise :class:`StudyFull` (marking the trial surplus, so it does not count) when ``total`` trials
    that count or still run were created before this one: commands sharing a database can ask for a trial
    at the same moment, and trial numbers order them."""
    from optuna.trial import TrialState

    trials = trial.study.get_trials(deepcopy=False)
    ahead = {t.number for t in counted(trials)} | {t.number for t in trials if t.state == TrialState.RUNNING}
    held = sum(n < trial.number for n in ahead)
    if held >= total:
        trial.set_user_attr("surplus", True)
        raise StudyFull(f"the study already held {held} of {total} trials when trial {trial.number} started; "
                        "not run")


def _evaluate(trial: Any, cfg: StudyConfig, setup: Setup) -> Any:
    import numpy as np

    store = Store(cfg.out)
    reward = setup.base_run.reward  # a verifier section's space may add options that need a binary reward
    binary = bool(reward) and rewards.is_binary(rewards.REWARDS.get(reward))
    proxy = SpaceTrial(trial, setup.overrides, binary_reward=binary)
    params = {**METHODS.get(cfg.method).space(proxy), **extra_params(trial, setup.overrides)}
    k = proxy.suggest_int("k", 2, 64) if any(o.name == "k" for o in setup.overrides) else setup.base_run.k
    method_cfg = dataclasses.replace(setup.base_method, **params)
    trial.set_user_attr("method_config", config_dict(method_cfg))
    trial.set_user_attr("k", k)
    values, drifts, run_ids, reported, record = [], [], [], set(), _Record(trial)
    trial.set_user_attr("seeds", list(cfg.seeds))
    earlier = _earlier_runs(trial, store)
    over_budget = None
    if cfg.spend and not cfg.multi_objective:  # Optuna cannot prune (so cannot stop) a multi-objective trial
        over_budget = lambda: spent(trial.study.get_trials(deepcopy=False)) >= cfg.spend  # noqa: E731
    for i, seed in enumerate(cfg.seeds):
        # A retried trial picks up the stopped trial's runs: complete ones are reused, others resume from
        # their checkpoints (or restart when they have none).
        run_cfg = setup.base_run.replace(seed=seed, k=k)
        resume = earlier[i] if i < len(earlier) else ""
        if resume and store.manifest(resume).get("key") != run_key(run_cfg, method_cfg):
            resume = ""  # not this configuration's run
        run_id = resume or _run_id(store, cfg.name, trial.number, seed)
        run_cfg = run_cfg.replace(run_id="" if resume else run_id)
        report = _Reporter(trial, i, len(cfg.seeds), store, run_id, cfg.objective, reported, running_max=cfg.at_best,
                           done=values, record=record, prune=not cfg.multi_objective, over_budget=over_budget)
        run_ids.append(run_id)
        trial.set_user_attr("run_ids", run_ids)
        record.set(i, seed=seed, run=run_id, status="started", updates=0)
        reused = bool(resume) and store.status(resume) == "complete"
        if not reused:
            run(run_cfg, method_cfg, store=store, on_eval=report, progress=False, resume=resume)
        summary = read_json(store.run_dir(run_id) / "summary.json")  # the number in the store
        reward = cfg.objective or store.manifest(run_id)["reward"]
        values.append(float(summary["select/value"]) if cfg.at_best else objective_value(summary, reward))
        drifts.append(float(summary[DRIFT_KEY]))
        record.set(i, status="complete", reused=reused, updates=int(summary["budget/updates"]), value=values[-1],
                   base=headline(summary, reward, base=True), select_step=summary.get("select/step"),
                   drift=drifts[-1])
        trial.set_user_attr("objective", reward)
        trial.set_user_attr("seed_values", values)
        trial.set_user_attr("seed_drift", drifts)
    mean = float(np.mean(values))
    return (mean, float(np.mean(drifts))) if cfg.multi_objective else mean


def _earlier_runs(trial: Any, store: Any) -> list[str]:
    """The run ids of the stopped trial this one retries (``retry_of``), those still in the store."""
    number = trial.user_attrs.get("retry_of") if hasattr(trial, "user_attrs") else None
    if number is None:
        return []
    for t in trial.study.get_trials(deepcopy=False):
        if t.number == number:
            return [r if store.run_dir(r).is_dir() else "" for r in t.user_attrs.get("run_ids", [])]
    return []
