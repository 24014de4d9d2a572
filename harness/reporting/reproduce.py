"""``reproduce_table2``: the comparison behind the paper's main table, on the embedded default or on a GPU.

Each section of the table is one preset (a shared ``RunConfig``) and a list of methods, run for every
seed. Runs already complete in the store with the same configuration are reused and every unfinished one
(interrupted, failed, or killed however it was killed) resumes from its last checkpoint, so the command can
be stopped and restarted; a run another live process is writing is never started twice. One table2 at a
time writes a results root (``<out>/.table2.lock``; a second one refuses, or waits with ``--wait``). The
table is then written from the stored results only.

On a GPU, ``--profile sd-turbo`` / ``sdxl-turbo`` run the paper's setting (presets ``paper-sd-turbo`` /
``paper-sdxl-turbo``: PickScore training reward, the paper's K, M, LoRA rank and update counts) for all six
methods, then evaluate every run and the base generator with the ``pickapic-parti`` benchmark (PickScore x100,
aesthetic, ImageReward x10, HPSv2 x100 on Pick-a-Pic v2 test and Parti-Prompts) and print the paper's numbers
(``PAPER_TABLES`` in ``harness/reporting/table2.py``, DrPO website = arXiv table) beside ours::

    nox -s reproduce_table2 -- --profile sd-turbo --model /data/sd-turbo --features-path /data/mae_latent_256.pth \
        --prompts /data/pickscore/train.txt --pickapic /data/pickapic_v2_test_unique.txt --parti /data/PartiPrompts.tsv \
        --reward-options pickscore.model=/data/PickScore_v1 aesthetic.head=/data/sac+logos+ava1-l14-linearMSE.pth \
        --columns IR=remote:http://127.0.0.1:8003 HPSv2=remote:http://127.0.0.1:8004
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

from evals.bench import load_run
from evals.pickapic import COLUMNS, Config, PickapicPartiBenchmark
from harness import distributed, workers
from harness.compute import controlled
from harness.config import config_dict, parse_kv, run_key
from harness.presets import Preset
from harness.presets import get as get_preset
from harness.redact import redact_streams
from harness.registry import unknown
from harness.reporting.preflight import check_table2
from harness.reporting.table2 import PAPER_TABLES, paper_table, write_table
from harness.run import run
from harness.sections import DESIGNS, SECTIONS, Design, Section
from harness.store import RunLock, Store, read_json, source_hash
from harness.studies.tuned import tuned_configs, tuned_path
from harness.validate import Bound, at_least, nonnegative
from methods import METHODS

BENCHMARK = "pickapic-parti"
"""The benchmark the real-profile tables are evaluated with after training."""



@dataclass(frozen=True)
class Table2Config:
    """``driftbench table2`` / ``nox -s reproduce_table2``."""

    profile: str = "shapes2"
    """Which table: "shapes2" (the embedded default: the Shapes world's edition 2, split by canonical task),
    "shapes" (edition 1), "tiny", or on a GPU "sd-turbo" / "sdxl-turbo"."""
    seeds: tuple[int, ...] = ()
    """Training seeds, never used by the tuning (``driftbench tune`` trains with seeds 100 and 101); intervals are over
    these, paired by seed. Empty: the profile's (``harness.sections.DESIGNS``: 0-4; 0-7 on shapes2)."""
    test_split: str = "test"
    """Split every run is finally evaluated on, once at its validation-selected checkpoint and once at the end
    (profiles without splits, such as sd-turbo, skip it)."""
    test_seeds: int = 0
    """Noise seeds per test prompt (the test noise base is disjoint from the validation noise); 0: the profile's
    (16; 4 on shapes2)."""
    curve_split: str = "test"
    """Split every run also evaluates at each evaluation point for the over-optimisation curves (selection never
    reads it); empty: none, and the curves sit on validation."""
    curve_seeds: int = 0
    """Noise seeds per prompt of the curve split (the first of the test split's); 0: the profile's (4; 2 on
    shapes2)."""
    tuned_file: str = ""
    """Tuned configurations for tuned sections; empty: ``harness/tuned/<profile>.json``."""
    methods: tuple[str, ...] = ()
    """Restrict to these methods (default: every method of each section)."""
    out: str = "results"
    """Results root: runs in <out>/runs, the table in <out>/table2.md and .csv."""
    progress: bool = True
    """Show progress bars."""
    plots: bool = True
    """Redraw the figures from the stored results at the end."""
    jobs: int = 2
    """Runs in parallel, one torch thread each (2 cores: 2 jobs beat 1 job with 2 threads)."""
    model: str = ""
    """sd-turbo / sdxl-turbo: the local diffusers directory of the generator (passed to every run)."""
    features_path: str = ""
    """DrPO's feature weights: sd-turbo, the latent MAE-256 file (the drifting release's official torch port);
    sdxl-turbo, the local facebook/vit-mae-base directory."""
    prompts: str = ""
    """sd-turbo / sdxl-turbo: the training prompt file (e.g. DrPO's data/pickscore/train.txt)."""
    eval_split: str = ""
    """sd-turbo / sdxl-turbo: prompts of the in-training evaluation (default: --pickapic)."""
    reward_options: tuple[str, ...] = ()
    """Reward options REWARD.KEY=VALUE for training and the benchmark, e.g. pickscore.model=/data/PickScore_v1."""
    pickapic: str = ""
    """sd-turbo / sdxl-turbo: Pick-a-Pic v2 test prompt file for the pickapic-parti benchmark."""
    parti: str = ""
    """sd-turbo / sdxl-turbo: Parti-Prompts file (PartiPrompts.tsv) for the pickapic-parti benchmark."""
    columns: tuple[str, ...] = ()
    """Benchmark column rewards COLUMN=REWARD (PS, AES, IR, HPSv2), e.g. IR=remote:http://127.0.0.1:8003; an
    empty REWARD drops the column. Defaults: pickscore, aesthetic, imagereward, hpsv2."""
    bench_images: int = 1
    """Benchmark images per prompt."""
    bench_limit: int = 0
    """Benchmark: only the first N prompts of each set (0: all)."""
    wait: bool = False
    """When another table2 (or a run this table needs) is being written, wait for it instead of refusing."""
    timing_repeats: int = 7
    """Rounds of the controlled timing behind the seconds columns (``harness/compute/controlled.py``: each section's
    methods timed in one process, interleaved, one update each per round); 0 skips it and leaves them empty."""
    timing_warmup: int = 1
    """Untimed updates of every method before the controlled timing's rounds."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"seeds": Bound(low=0, distinct=True), "jobs": at_least(1), "bench_images": at_least(1),
                                          "bench_limit": nonnegative(), "test_seeds": nonnegative(),
                                          "timing_repeats": nonnegative(), "timing_warmup": nonnegative(),
                                          "curve_seeds": nonnegative()}
    """Valid range of every numeric field (``harness.validate``)."""


def with_design(cfg: Table2Config) -> Table2Config:
    """``cfg`` with its empty seeds, test seeds and curve seeds filled in from the profile's design."""
    design = DESIGNS.get(_tuned_profile(cfg.profile), Design())  # shapes2-defaults: shapes2's
    return replace(cfg, **{k: v for k, v in asdict(design).items() if not getattr(cfg, k)})


def _tuned_profile(profile: str) -> str:
    return profile.split("-")[0]


def tuned_file(cfg: Table2Config) -> Path:
    """The tuned file a table reads: ``--tuned-file``, else its profile's (``shapes2-defaults``: shapes2's)."""
    return tuned_path(_tuned_profile(cfg.profile), cfg.tuned_file)


def _test_overrides(cfg: Table2Config, preset: Preset) -> dict[str, Any]:
    """The final evaluation on the test split, for profiles that have one."""
    if not cfg.test_split or preset.run.profile not in ("shapes", "shapes2", "tiny", "tiny-xl"):
        return {}
    curve = {"curve_split": cfg.curve_split, "curve_seeds": cfg.curve_seeds} if cfg.curve_split else {}
    return {"test_split": cfg.test_split, "test_seeds": cfg.test_seeds, **curve}


def same_code(manifest: dict[str, Any], method: str) -> bool:
    """A stored run may be reused only if it ran this method version and this code (``source_hash``)."""

    versions = manifest.get("versions", {})
    return versions.get("method") == METHODS.get(method).VERSION and versions.get("code") == source_hash()


def _find(store: Store, key: str, method: str) -> tuple[str | None, str | None]:
    """(run id, status) of the stored run with this key that ran the current code: a complete one if any, else
    one a live process is writing ("running"), else the unfinished one furthest along (its checkpoint written
    last). The key covers the configs; the reward's version is in the code hash's reach."""
    found: dict[str, list[str]] = {}
    for run_id in store.run_ids(status=None):
        manifest = store.manifest(run_id)
        if manifest.get("key") == key and same_code(manifest, method):
            found.setdefault(store.status(run_id, manifest), []).append(run_id)
    for status in ("complete", "running"):
        if status in found:
            return found[status][0], status
    unfinished = [r for runs in found.values() for r in runs]
    if not unfinished:
        return None, None

    def progress(run_id: str) -> float:
        path = store.run_dir(run_id) / "checkpoint.pt"
        return path.stat().st_mtime if path.is_file() else 0.0
    best = max(unfinished, key=progress)
    return best, store.status(best)


def _table_lock(cfg: Table2Config):
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    return RunLock(Path(cfg.out) / ".table2.lock", f"table2 in {cfg.out}", hint="pass --wait to wait for it, or "
                   "--out DIR for another results root").acquire(wait=cfg.wait)


def _settled(store: Store, key: str, method: str, wait: bool) -> tuple[str | None, str | None]:
    """:func:`_find`, waiting (``wait``) or refusing while another live process writes the run."""
    while True:
        run_id, status = _find(store, key, method)
        if status != "running":
            return run_id, status
        if not wait:
            raise RuntimeError(f"run '{run_id}' is being written by {store.holder(run_id) or 'another process'}; "
                               "pass --wait to wait for it")
        time.sleep(2.0)


@dataclass(frozen=True)
class Job:
    section: int
    run_cfg: Any
    method_cfg: Any
    resume: str
    done: str
    """The run id when a complete run with this configuration is already stored."""


def run_overrides(cfg: Table2Config) -> dict[str, Any]:
    """The RunConfig fields a real-profile table passes to every run (only those given, so the embedded tables'
    run keys, and their stored runs, stay as they are)."""
    values = {"model": cfg.model, "features_path": cfg.features_path, "prompts": cfg.prompts,
              "eval_split": cfg.eval_split or ((cfg.pickapic or cfg.parti) if cfg.profile in PAPER_TABLES else ""),
              "reward_options": tuple(cfg.reward_options)}
    return {k: v for k, v in values.items() if v}


def benchmark_config(cfg: Table2Config):
    """The ``pickapic-parti`` Config of a real-profile table."""

    chosen = parse_kv(cfg.columns)
    fields = {c.key: c.field for c in COLUMNS}
    unknown_columns = sorted(set(chosen) - set(fields))
    if unknown_columns:
        raise ValueError(f"unknown benchmark column(s) {unknown_columns}; columns: {', '.join(fields)}")
    return Config(pickapic=cfg.pickapic, parti=cfg.parti, reward_options=tuple(cfg.reward_options),
                  images_per_prompt=cfg.bench_images, limit=cfg.bench_limit,
                  **{fields[k]: v for k, v in chosen.items()})


def check_real(cfg: Table2Config):
    """Fail before any training when a real-profile table lacks its inputs; returns the built benchmark."""

    missing = [flag for flag, value in (("--model", cfg.model), ("--prompts", cfg.prompts)) if not value]
    if missing:
        raise ValueError(f"table2 --profile {cfg.profile} needs {' and '.join(missing)} (a local diffusers directory "
                         "and a training prompt file)")
    if not (cfg.pickapic or cfg.parti):
        raise ValueError(f"table2 --profile {cfg.profile} needs --pickapic FILE and/or --parti FILE for the benchmark")
    for flag, value in (("--prompts", cfg.prompts), ("--eval-split", cfg.eval_split)):
        if value and not Path(value).is_file():
            raise FileNotFoundError(f"table2 {flag} '{value}' does not exist")
    if cfg.features_path and not Path(cfg.features_path).exists():
        raise FileNotFoundError(f"table2 --features-path '{cfg.features_path}' does not exist")
    needs = {"encoder": "the latent MAE-256 features; pass --features-path /path/to/mae_latent_256_torch.pth",
             "vit-mae": "ViT-MAE-base features; pass --features-path /path/to/facebook-vit-mae-base (a directory)"}
    needs["vit-mae-full"] = needs["vit-mae"]
    for section in SECTIONS[cfg.profile]:
        preset = get_preset(section.preset)
        runs_drpo = "drpo" in section.methods and (not cfg.methods or "drpo" in cfg.methods)
        space = METHODS.get("drpo").needs(preset.method_config("drpo")).features
        if runs_drpo and space in needs and not cfg.features_path:
            raise ValueError(f"table2 --profile {cfg.profile}: DrPO's preset uses {needs[space]}")
    return PickapicPartiBenchmark(benchmark_config(cfg))


def plan(sections: Sequence[Section], cfg: Table2Config, store: Store) -> list[Job]:
    """Every method x seed of every section, reusing complete runs and resuming unfinished ones."""
    cfg = with_design(cfg)
    jobs = []
    for i, section in enumerate(sections):
        preset: Preset = get_preset(section.preset)
        tuned = tuned_configs(section.preset, cfg.tuned_file or None, _tuned_profile(cfg.profile)) if section.tuned else {}
        for method in [m for m in section.methods if not cfg.methods or m in cfg.methods]:
            if section.tuned and method not in tuned:
                raise ValueError(f"the tuned file has no {section.preset} config for '{method}'; run "
                                 f"`driftbench tune --sections {section.preset} --methods {method}`")
            for seed in cfg.seeds:
                run_cfg = preset.run_for(method).replace(method=method, seed=seed, out=cfg.out, **run_overrides(cfg),
                                             **_test_overrides(cfg, preset))
                method_cfg = tuned[method] if section.tuned else preset.method_config(method)
                key = run_key(run_cfg, method_cfg)
                run_id, status = _settled(store, key, method, cfg.wait)
                if status == "complete":
                    jobs.append(Job(i, run_cfg, method_cfg, "", run_id))
                    continue
                resume = run_id or ""  # any unfinished run resumes (from its checkpoint, or from the start)
                name = f"{section.preset}__{method}__s{seed}__{key}"
                if not resume and store.run_dir(name).exists():  # a failed attempt keeps its record
                    name = f"{name}__{int(time.time())}"
                jobs.append(Job(i, run_cfg.replace(run_id="" if resume else name), method_cfg, resume, ""))
    return jobs


def _execute(job: Job, threads: int) -> str:
    """Run one job (in a worker process when jobs > 1) and return its run id."""
    import torch

    if threads:  # a worker process: one thread, and streams as masked as its parent's
        torch.set_num_threads(threads)
        redact_streams()
    try:
        return run(job.run_cfg, job.method_cfg, resume=job.resume, progress=False)["run_id"]
    finally:
        workers.task_done()


def execute(jobs: list[Job], cfg: Table2Config) -> list[str]:
    """Run the pending jobs, ``cfg.jobs`` at a time (one torch thread each), with an overall progress bar."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    ids = [job.done for job in jobs]
    pending = [i for i, job in enumerate(jobs) if not job.done]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc="table2 runs", disable=not cfg.progress)
    failures = []
    if cfg.jobs <= 1:
        for i in pending:
            ids[i] = _execute(jobs[i], 0)
            bar.update(1)
    else:
        with ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=workers.bind_to_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_execute, jobs[i], 1): i for i in pending}
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        ids[i] = future.result()
                    except Exception as exc:  # keep the other runs going; report every failure at the end
                        failures.append(f"{jobs[i].run_cfg.method} seed {jobs[i].run_cfg.seed}: {exc}")
                    bar.update(1)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: each worker checkpoints its run and stops
                _stop_workers(pool)
                raise
    bar.close()
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed: " + "; ".join(failures))
    return ids


def time_sections(sections: Sequence[Section], jobs: list[Job], cfg: Table2Config) -> None:
    """The controlled timing of every section at its runs' configurations (the first seed's), stored for the
    table's seconds columns; a section already measured for these configurations and this code is reused."""
    if not cfg.timing_repeats:
        return
    from tqdm.auto import tqdm

    for i, section in enumerate(tqdm(sections, desc="controlled timing", disable=not cfg.progress)):
        first: dict[str, Job] = {}
        for job in jobs:
            if job.section == i and job.run_cfg.method not in first:
                first[job.run_cfg.method] = job
        entries = [(m, j.run_cfg, j.method_cfg) for m, j in first.items()]
        if entries:
            controlled.ensure(cfg.out, section, entries, cfg.timing_repeats, cfg.timing_warmup)


def _stop_workers(pool: Any) -> None:
    """Cancel the queued runs and send every worker SIGTERM (a run stops at its next update boundary, after a
    checkpoint, marked interrupted); then wait for them."""
    for process in list(getattr(pool, "_processes", {}).values()):
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def reproduce(cfg: Table2Config) -> Path:
    """Run every section of the table for ``cfg.profile`` and write ``table2.md`` and ``table2.csv``."""
    if cfg.profile not in SECTIONS:
        raise unknown("table profile", cfg.profile, list(SECTIONS))

    cfg = with_design(cfg)
    store = Store(cfg.out)
    started = time.time()
    table_sections = check_table2(cfg, SECTIONS[cfg.profile], _tuned_profile(cfg.profile))
    bench = check_real(cfg) if cfg.profile in PAPER_TABLES else None
    # Under accelerate launch every run spreads over all processes: process 0 plans, all run, 0 writes the table.
    world = distributed.layout().world
    if world > 1 and cfg.jobs > 1:
        raise ValueError(f"table2 under accelerate launch runs each run on all {world} processes, one run at a "
                         f"time; pass --jobs 1 (got --jobs {cfg.jobs})")
    locks: list[RunLock] = []  # one table2 per results root; process 0 holds the lock
    distributed.on_main(lambda: locks.append(_table_lock(cfg)))
    try:
        jobs = distributed.on_main(lambda: plan(table_sections, cfg, store))
        ids = execute(jobs, cfg)
        time_sections(table_sections, jobs, cfg)  # after the runs, so nothing of this table runs beside it
    finally:
        for lock in locks:
            lock.release()
    if not distributed.current().main:
        return Path(cfg.out) / "table2.md"
    sections = [(s, [run_id for job, run_id in zip(jobs, ids) if job.section == i])
                for i, s in enumerate(table_sections)]
    extra: tuple[list[str], list[dict[str, Any]]] = ([], [])
    if bench is not None:
        results = {}
        for section, run_ids in sections:
            base = evaluate_benchmark(bench, store, run_ids[0], base=True,
                                      dest=Path(cfg.out) / "base" / section.preset / BENCHMARK)
            runs = {run_id: evaluate_benchmark(bench, store, run_id) for run_id in run_ids}
            results[section.title] = (base, [(store.manifest(r)["run"]["method"], s) for r, s in runs.items()])
        extra = paper_table(cfg.profile, results)
    name = "table2" if cfg.profile == "shapes" else f"table2-{cfg.profile}"
    path = write_table(sections, store, Path(cfg.out), elapsed=time.time() - started, extra=extra, name=name,
                       tuned_path=tuned_file(cfg))
    if cfg.plots:
        from harness.reporting.plots import PlotsConfig, plots

        plots(PlotsConfig(out=cfg.out, tags=tuple(get_preset(s.preset).run.tag for s in table_sections)))
    return path


def evaluate_benchmark(bench: Any, store: Store, run_id: str, *, base: bool = False, dest: Path | None = None) -> dict:
    """The benchmark summary of a run (or, with ``base``, of its base generator), reused when already stored with
    the same benchmark configuration."""

    dest = dest or store.run_dir(run_id) / (BENCHMARK + ("-base" if base else ""))
    if (dest / "summary.json").is_file():
        stored = read_json(dest / "summary.json")
        if stored.get("config") == config_dict(bench.cfg) and stored.get("version") == bench.version:
            return stored
    world, _, _, weights = load_run(str(store.root), run_id, base=base)
    try:
        return bench.run(world.generator, dest, reference=base,
                         info={"run_id": run_id, "weights": weights, "profile": world.name})
    finally:
        del world
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
