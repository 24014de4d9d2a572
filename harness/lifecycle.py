"""A run's life outside its loop: its manifest, opening it under its lock (new, or resumed from its
checkpoint, or restarted when it has none), recording how it ended, and turning SIGINT/SIGTERM into a stop
at a safe point.

Kept apart from ``harness.run`` (the loop itself) so the loop reads top to bottom; ``run()`` ties the two.
"""

from __future__ import annotations

import signal
import threading
import traceback
from typing import Any, Callable

from harness import checkpoint, distributed
from harness.config import RunConfig, config_dict, plain_name, run_key
from harness.parts import Parts
from harness.precision import describe
from harness.store import Store, describe_environment, source_hash, utc_stamp


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run at a safe point, after a checkpoint."""


def open_run(store: Store, parts: "Parts", resume: str):
    """Create the run (or claim the stored one to resume) under its lock; returns (run id, checkpoint.Resume,
    manifest). In a data-parallel run process 0 does the store's part and every process learns the result."""

    if not resume:
        cfg = parts.cfg
        run_id = distributed.broadcast(cfg.run_id or f"{cfg.method}__{parts.reward.name}__s{cfg.seed}__{utc_stamp()}")
        plain_name("run id", run_id)
        manifest = manifest_for(parts)
        distributed.on_main(lambda: store.start(run_id, manifest))
        return run_id, checkpoint.Resume(), manifest
    distributed.on_main(lambda: _claim(store, resume))
    try:
        start = checkpoint.load(store, resume, parts)  # None: killed before its first checkpoint, so restart
        manifest = distributed.on_main(lambda: _mark_resumed(store, resume, start))
    except BaseException:
        store.release(resume)
        raise
    return resume, start or checkpoint.Resume(), manifest


def _claim(store: Store, run_id: str) -> None:
    store.claim(run_id)
    if store.manifest(run_id).get("status") == "complete":
        store.release(run_id)
        raise ValueError(f"run '{run_id}' is already complete; nothing to resume")


def _mark_resumed(store: Store, run_id: str, start: Any) -> dict[str, Any]:
    manifest = store.manifest(run_id)
    history = manifest.get("history", []) + [{k: manifest.get(k) for k in ("status", "error", "updated")}]
    store.set_status(run_id, "running", resumed_from=start.spend.updates if start else 0, error=None,
                     traceback=None, history=history)
    return store.manifest(run_id)


def record_end(store: Any, run_id: str, exc: BaseException) -> None:
    """Mark how the run ended on ``store`` (the store, or the writer standing for it)."""
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else (
        "pruned" if type(exc).__name__ == "TrialPruned" else "failed")
    try:
        store.set_status(run_id, status, error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc(limit=8) if status == "failed" else None)
    except OSError:  # e.g. the disk is full: once the lock is released the run reads as interrupted
        pass


class StopSignals:
    """While a run is open, SIGINT and SIGTERM ask it to stop at its next safe point (a second SIGINT stops
    at once). A signal that arrives after the last safe point is delivered again once the run has
    finished, so a caller looping over runs (table2) stops too."""

    def __init__(self, enabled: bool = True):
        self.signal: int | None = None
        self.enabled = enabled
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:  # Ctrl-C twice: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def check(self, save: Callable[[], None], run_id: str, updates: int) -> None:
        if self.signal is not None:
            save()
            name, self.signal = signal.Signals(self.signal).name, None
            raise Interrupted(f"{name} at update {updates}; continue with --resume {run_id}")

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if self.signal is not None and exc[0] is None:
            signal.raise_signal(self.signal)


def manifest_for(parts: "Parts") -> dict[str, Any]:
    """What a new run's manifest records: its resolved configs and key, versions and code hash, the
    per-update spend, process layout, precision, budget and environment."""
    cfg, per_update = parts.cfg, parts.cfg.prompts_per_step * parts.cfg.k * parts.cfg.grad_accum
    rounds = {"max_rounds": parts.needs.rounds} if parts.needs.rounds > 1 else {}
    # With sampling rounds (Needs.rounds) these are the first round's counts; the train rows meter every round.
    return {
        "key": run_key(cfg, parts.method_cfg),
        "run": config_dict(cfg),
        "method_config": config_dict(parts.method_cfg),
        "versions": {"method": parts.method.VERSION, "reward": parts.reward.version,
                     "evals": {n: r.version for n, r in parts.eval_rewards.items()}, "profile": parts.world.name,
                     "code": source_hash()},
        "reward": parts.reward.name,
        "per_update": {"images": per_update, "reward_calls": per_update,
                       "reference_images": per_update if parts.needs.reference else 0,
                       "prompts": cfg.prompts_per_step * cfg.grad_accum, "k": cfg.k, "noise_seeds": per_update,
                       **rounds},
        "layout": layout_record(cfg),
        "precision": _precision_record(parts),
        "budget": parts.budget.limits(),
        "environment": describe_environment(),
        **({"init_from": parts.init} if parts.init else {}),
    }


def layout_record(cfg: RunConfig) -> dict[str, Any]:
    """The process layout: the global effective batch, and how the processes share its micro-batches."""
    world = distributed.current().world
    record = {"processes": world, "micro_batches": cfg.grad_accum, "micro_batches_per_process": cfg.grad_accum // world,
              "effective_batch": {"prompts": cfg.prompts_per_step * cfg.grad_accum, "k": cfg.k,
                                  "images": cfg.prompts_per_step * cfg.k * cfg.grad_accum}}
    if cfg.paper_processes:
        record["paper_processes"] = cfg.paper_processes
        if world < cfg.paper_processes:
            record["note"] = (f"the setting ran on {cfg.paper_processes} processes x {cfg.grad_accum // cfg.paper_processes} "
                              f"micro-batches; here {world} x {cfg.grad_accum // world}: the same effective batch, "
                              "prompts and noise, accumulated on fewer devices")
    return record


def _precision_record(parts: "Parts") -> dict[str, Any]:
    gen = parts.world.generator
    out = describe(parts.cfg.mixed_precision, gen.device)
    vae_dtype = getattr(gen, "vae_dtype", None)
    if vae_dtype is not None and vae_dtype != getattr(gen, "dtype", vae_dtype):
        out["vae"] = f"{str(vae_dtype).removeprefix('torch.')} (its config sets force_upcast)"
    return out
