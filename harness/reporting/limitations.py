"""``driftbench limitations`` / ``nox -s limitations``: the paper's three limitations, answered from stored runs.

The plan (``limitations_plan.py``) is a list of configurations, each run at every seed: DrPO's base point and
its one-factor sweeps, the section's baselines, DrPO trained offline and the same runs continued online
(``RunConfig.init_from``), plus best-of-K references at inference (``harness.best_of_k``). As ``driftbench
table2`` does, a run already complete in the store with the same key and code is reused, an unfinished one
resumes, and a run another process writes is waited for (``--wait``) or refused; best-of-K references are reused
when their configuration and code match. One ``limitations`` writes a results root at a time.

Then the record (``limitations_record.py``: what the report reads, about 1 MB, committed for the full scale) and
the report (``limitations_report.py``) are written from the stored results only: ``<out>/limitations.md``
(``--scale smoke``: ``limitations-smoke.md``) with its figures and ``record.tar.xz`` in ``<out>/limitations[-smoke]/``.
``--source record`` writes the report from that record alone, after checking that it holds a run of every point
and seed with the run key this code's plan gives it: a fresh clone's ``nox -s limitations``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.best_of_k import BestOfKConfig, best_of_k, references
from harness.config import config_dict, plain_name, run_key
from harness.reporting.limitations_data import hours
from harness.reporting.limitations_plan import (
    LimitationsConfig,
    Plan,
    Point,
    Resolved,
    Scale,
    best_of_k_values,
    plan_points,
    point_run,
    resolve,
    scale_of,
)
from harness.reporting.limitations_record import RECORD, read_record, write_record
from harness.reporting.limitations_report import report_name, write_report
from harness.reporting.reproduce import Job, _settled, execute
from harness.store import RunLock, Store, source_hash
from harness.validate import check

CONFIG_NOT_COMPARED = ("run_id", "out")
"""Best-of-K config fields that say where a reference is stored, not what it computes."""


@dataclass
class Runs:
    """Run ids per point and seed, and how many runs this call trained."""

    ids: dict[int, dict[int, str]] = field(default_factory=dict)
    trained: int = 0


def _jobs(points: list[Point], indices: list[int], seeds: tuple[int, ...], cfg: LimitationsConfig, store: Store,
          sources: dict[int, str] | None = None) -> tuple[list[Job], dict[tuple[int, int], int]]:
    """One job per distinct run key among ``indices`` x ``seeds`` (a sweep's base value is the base point's run),
    reusing complete runs and resuming unfinished ones; ``sources``: per seed, the run an "online" point starts
    from."""
    jobs: list[Job] = []
    where: dict[tuple[int, int], int] = {}
    by_key: dict[str, int] = {}
    for i in indices:
        point = points[i]
        for seed in seeds:
            run_cfg = point_run(point, seed, cfg.out, sources)
            key = run_key(run_cfg, point.method_cfg)
            if key not in by_key:
                run_id, status = _settled(store, key, point.method, cfg.wait)
                if status == "complete":
                    jobs.append(Job(i, run_cfg, point.method_cfg, "", run_id))
                else:
                    name = plain_name("run id", f"lim-{point.label}__{point.method}__s{seed}__{key}")
                    if not run_id and store.run_dir(name).exists():  # a failed attempt keeps its record
                        name = f"{name}__{int(time.time())}"
                    jobs.append(Job(i, run_cfg.replace(run_id="" if run_id else name), point.method_cfg, run_id or "",
                                    ""))
                by_key[key] = len(jobs) - 1
            where[(i, seed)] = by_key[key]
    return jobs, where


def _train(points: list[Point], indices: list[int], cfg: LimitationsConfig, scale: Scale, store: Store, runs: Runs,
           sources: dict[int, str] | None = None) -> None:
    jobs, where = _jobs(points, indices, scale.seeds, cfg, store, sources)
    runs.trained += sum(1 for job in jobs if not job.done)
    ids = execute(jobs, cfg)  # type: ignore[arg-type]  # it reads .jobs and .progress only
    for (i, seed), j in where.items():
        runs.ids.setdefault(i, {})[seed] = ids[j]


def train_all(points: list[Point], cfg: LimitationsConfig, scale: Scale, store: Store) -> Runs:
    """Every point at every seed; the "online" point after the "offline" one (it starts from that run)."""
    runs = Runs()
    runnable = [i for i, p in enumerate(points) if not p.note]
    first = [i for i in runnable if points[i].part != "online"]
    _train(points, first, cfg, scale, store, runs)
    online = [i for i in runnable if points[i].part == "online"]
    if online:
        offline = next(i for i, p in enumerate(points) if p.part == "offline")
        _train(points, online, cfg, scale, store, runs, sources=runs.ids[offline])
    return runs


def _reference_config(cfg: LimitationsConfig, scale: Scale, res: Resolved, k: int) -> BestOfKConfig:
    """Best-of-K on the test split with the runs' test noise, target reward, evaluators and precision."""
    run = res.runs["drpo"]
    return BestOfKConfig(k=k, profile=scale.profile, reward=run.reward, evals=run.evals, split="test",
                         seeds=scale.test_seeds, seed_base=run.test_seed_base, split_seed=run.split_seed,
                         mixed_precision=run.mixed_precision, lora_rank=run.lora_rank, out=cfg.out)


def _same_config(manifest: dict, bok: BestOfKConfig) -> bool:
    mine = {k: v for k, v in config_dict(bok).items() if k not in CONFIG_NOT_COMPARED}
    stored = {k: v for k, v in manifest.get("config", {}).items() if k not in CONFIG_NOT_COMPARED}
    return stored == mine


def _same(manifest: dict, bok: BestOfKConfig) -> bool:
    return _same_config(manifest, bok) and manifest.get("versions", {}).get("code") == source_hash()


def reference_runs(cfg: LimitationsConfig, scale: Scale, res: Resolved, ks: tuple[int, ...]) -> tuple[dict[int, str], int]:
    """{K: reference id} for every best-of-K reference (reused when stored with this configuration and code),
    and how many this call computed."""
    store = references(cfg.out)
    found: dict[int, str] = {}
    computed = 0
    for k in ks:
        bok = _reference_config(cfg, scale, res, k)
        match = [r for r in store.run_ids() if _same(store.manifest(r), bok)]
        if match:
            found[k] = match[0]
            continue
        run_id = f"lim-bok__{res.runs['drpo'].reward}__k{k}__{scale.test_seeds}img__{int(time.time())}"
        best_of_k(replace(bok, run_id=plain_name("run id", run_id)))
        found[k] = run_id
        computed += 1
    return found, computed


def _check(cfg: LimitationsConfig) -> tuple[Scale, Resolved, list[Point]]:
    """Everything that needs no model, before anything is written: bounds, choices, the section's configs."""
    check(cfg)
    if not cfg.parts:
        raise ValueError("limitations --parts is empty; give one or more of sweeps, prompts, best-of-k, offline")
    scale = scale_of(cfg)
    if "offline" in cfg.parts or "prompts" in cfg.parts:
        if len(scale.seeds) < 2:
            raise ValueError(f"limitations needs at least 2 seeds for its intervals, got --seeds {' '.join(map(str, scale.seeds))}")
    res = resolve(cfg, scale)
    for method, run in res.runs.items():
        run.validate()
    return scale, res, plan_points(cfg, scale, res)


def _record_runs(index: dict, points: list[Point], scale: Scale, cfg: LimitationsConfig, store: Store,
                 path: Path) -> dict[int, dict[int, str]]:
    """The record's run of every point and seed, each checked to have the run key this code's plan gives it."""
    rerun = f"; `driftbench limitations --scale {cfg.scale}` re-runs the plan and writes a new record"
    offline = next((i for i, p in enumerate(points) if p.part == "offline"), None)
    runs: dict[int, dict[int, str]] = {}
    for i, point in enumerate(points):
        if point.note:
            continue
        ids = index["runs"].get(point.label, {})
        for seed in scale.seeds:
            run_id = ids.get(str(seed))
            if run_id is None or not store.run_dir(run_id).is_dir():
                raise ValueError(f"{path} has no run of point '{point.label}' at seed {seed} (it holds seeds "
                                 f"{', '.join(ids) or 'none'}){rerun}")
            key = run_key(point_run(point, seed, cfg.out, runs.get(offline)), point.method_cfg)
            stored = store.manifest(run_id).get("key")
            if stored != key:
                raise ValueError(f"{path}: run '{run_id}' of point '{point.label}' has key {stored}, but this code's "
                                 f"plan gives that point key {key} (its configuration changed){rerun}")
            runs.setdefault(i, {})[seed] = run_id
    return runs


def _record_refs(index: dict, cfg: LimitationsConfig, scale: Scale, res: Resolved, store: Store,
                 path: Path) -> dict[int, str]:
    """The record's best-of-K reference of every K the plan needs, each checked against this code's configuration."""
    refs = {}
    for k in best_of_k_values(cfg, scale, res):
        ref_id = index["refs"].get(str(k))
        if ref_id is None or not store.run_dir(ref_id).is_dir() or \
                not _same_config(store.manifest(ref_id), _reference_config(cfg, scale, res, k)):
            raise ValueError(f"{path} has no best-of-{k} reference with this code's configuration; `driftbench "
                             f"limitations --scale {cfg.scale}` re-runs the plan and writes a new record")
        refs[k] = ref_id
    return refs


def _lock(cfg: LimitationsConfig) -> RunLock:
    """One ``limitations`` writes a results root at a time."""
    return RunLock(Path(cfg.out) / ".limitations.lock", f"limitations in {cfg.out}",
                   hint="pass --wait to wait for it, or --out DIR for another results root").acquire(wait=cfg.wait)


def record_path(cfg: LimitationsConfig) -> Path:
    return Path(cfg.out) / report_name(cfg.scale) / RECORD


def _from_record(cfg: LimitationsConfig, scale: Scale, res: Resolved, points: list[Point]) -> Path:
    """The report written from the committed record alone (nothing trained)."""
    path = record_path(cfg)
    with tempfile.TemporaryDirectory(prefix="driftbench-record-") as tmp:
        index = read_record(path, Path(tmp))
        runs = _record_runs(index, points, scale, cfg, Store(tmp), path)
        refs = _record_refs(index, cfg, scale, res, references(tmp), path)
        lock = _lock(cfg)  # the report and figures are the same files a run of the plan writes
        try:
            report = write_report(Plan(cfg=cfg, scale=scale, resolved=res, points=points, runs=runs, refs=refs,
                                       root=tmp))
        finally:
            lock.release()
    print(f"limitations: wrote {report} from the record {path} ({len({r for v in runs.values() for r in v.values()})} "
          f"runs, {len(refs)} references; nothing trained)")
    return report


def limitations(cfg: LimitationsConfig) -> Path:
    """Run (or reuse) the plan, then write its record and the report from the stored results; with ``--source
    record`` only the report, from the record."""
    started = time.time()
    scale, res, points = _check(cfg)
    if cfg.source == "record":
        return _from_record(cfg, scale, res, points)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    lock = _lock(cfg)
    try:
        store = Store(cfg.out)
        runs = train_all(points, cfg, scale, store)
        refs, computed = reference_runs(cfg, scale, res, best_of_k_values(cfg, scale, res))
    finally:
        lock.release()
    elapsed = time.time() - started
    plan = Plan(cfg=cfg, scale=scale, resolved=res, points=points, runs=runs.ids, refs=refs)
    record = record_path(cfg)
    size = write_record(record, Path(cfg.out), {points[i].label: ids for i, ids in runs.ids.items()}, refs)
    report = write_report(plan)
    print(f"limitations: this call trained {runs.trained} run(s) and computed {computed} best-of-K reference(s) in "
          f"{hours(elapsed)} and reused the rest from the store; wrote {report} and its record {record} "
          f"({size / 1e6:.2f} MB)")
    return report
