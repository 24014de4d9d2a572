"""``reproduce_table2``: the comparison behind the paper's main table, on the embedded default.

Each section of the table is one preset (a shared ``RunConfig``) and a list of methods, run for every
seed. Runs already complete in the store with the same configuration are reused and interrupted ones
resume from their checkpoints, so the command can be stopped and restarted. The table is then written
from the stored results only.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness.config import config_dict, run_key
from harness.presets import Preset, get as get_preset
from harness.store import Store, git_state
from harness.tables import fmt, method_rows


@dataclass(frozen=True)
class Section:
    title: str
    preset: str
    methods: tuple[str, ...]


SECTIONS: dict[str, tuple[Section, ...]] = {
    "tiny": (Section("Tiny profile, trained with JPEG compressibility", "tiny-jpeg", ("drpo",)),),
}
"""Table sections per profile."""


@dataclass(frozen=True)
class Table2Config:
    """``driftbench table2`` / ``nox -s reproduce_table2``."""

    profile: str = "tiny"
    """Which table: "shapes" (the embedded default) or "tiny"."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds; the interval is over these."""
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


def _find(store: Store, key: str) -> tuple[str | None, str | None]:
    """(run id, status) of the newest stored run with this key, preferring complete runs."""
    found = {}
    for run_id in store.run_ids(status=None):
        manifest = store.manifest(run_id)
        if manifest.get("key") == key:
            found.setdefault(manifest.get("status"), run_id)
    for status in ("complete", "interrupted", "failed", "running"):
        if status in found:
            return found[status], status
    return None, None


@dataclass(frozen=True)
class Job:
    section: int
    run_cfg: Any
    method_cfg: Any
    resume: str
    done: str
    """The run id when a complete run with this configuration is already stored."""


def plan(sections: Sequence[Section], cfg: Table2Config, store: Store) -> list[Job]:
    """Every method x seed of every section, reusing complete runs and resuming interrupted ones."""
    jobs = []
    for i, section in enumerate(sections):
        preset: Preset = get_preset(section.preset)
        for method in [m for m in section.methods if not cfg.methods or m in cfg.methods]:
            for seed in cfg.seeds:
                run_cfg = preset.run.replace(method=method, seed=seed, out=cfg.out)
                method_cfg = preset.method_config(method)
                key = run_key(run_cfg, method_cfg)
                run_id, status = _find(store, key)
                if status == "complete":
                    jobs.append(Job(i, run_cfg, method_cfg, "", run_id))
                    continue
                resume = run_id if status == "interrupted" and (store.run_dir(run_id) / "checkpoint.pt").is_file() else ""
                name = f"{section.preset}__{method}__s{seed}__{key}"
                if not resume and store.run_dir(name).exists():  # a failed attempt keeps its record
                    name = f"{name}__{int(time.time())}"
                jobs.append(Job(i, run_cfg.replace(run_id="" if resume else name), method_cfg, resume, ""))
    return jobs


def _execute(job: Job, threads: int) -> str:
    """Run one job (in a worker process when jobs > 1) and return its run id."""
    import torch

    from harness.run import run

    if threads:
        torch.set_num_threads(threads)
    return run(job.run_cfg, job.method_cfg, resume=job.resume, progress=False)["run_id"]


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
        with ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_execute, jobs[i], 1): i for i in pending}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    ids[i] = future.result()
                except Exception as exc:  # keep the other runs going; report every failure at the end
                    failures.append(f"{jobs[i].run_cfg.method} seed {jobs[i].run_cfg.seed}: {exc}")
                bar.update(1)
    bar.close()
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed: " + "; ".join(failures))
    return ids


def reproduce(cfg: Table2Config) -> Path:
    """Run every section of the table for ``cfg.profile`` and write ``table2.md`` and ``table2.csv``."""
    if cfg.profile not in SECTIONS:
        from harness.registry import unknown

        raise unknown("table profile", cfg.profile, list(SECTIONS))
    store = Store(cfg.out)
    started = time.time()
    jobs = plan(SECTIONS[cfg.profile], cfg, store)
    ids = execute(jobs, cfg)
    sections = [(s, [run_id for job, run_id in zip(jobs, ids) if job.section == i])
                for i, s in enumerate(SECTIONS[cfg.profile])]
    path = write_table(sections, store, Path(cfg.out), elapsed=time.time() - started)
    if cfg.plots:
        from harness.plots import PlotsConfig, plots

        plots(PlotsConfig(out=cfg.out, tags=tuple(get_preset(s.preset).run.tag for s in SECTIONS[cfg.profile])))
    return path


def write_table(sections: Sequence[tuple[Section, list[str]]], store: Store, out: Path, elapsed: float) -> Path:
    """Markdown and long-format CSV of every section, from the stored summaries."""
    import pandas as pd

    lines = ["# Table 2 (driftbench reproduction)", "",
             f"Generated by `driftbench table2` at git {git_state()['commit'] or 'unknown'} in {elapsed / 60:.1f} min. "
             "Values are mean ± 95% t-interval half-width over seeds.", ""]
    records = []
    for section, run_ids in sections:
        table, rows = section_table(section, store, run_ids)
        lines += [f"## {section.title}", "", *table, ""]
        records += rows
    md = out / "table2.md"
    out.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines))
    pd.DataFrame.from_records(records).to_csv(out / "table2.csv", index=False)
    return md


def section_table(section: Section, store: Store, run_ids: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown lines and CSV records for one section."""
    from methods import METHODS

    summaries = []
    for run_id in run_ids:
        summary = json.loads((store.run_dir(run_id) / "summary.json").read_text())
        summaries.append({**summary, "method": store.manifest(run_id)["run"]["method"]})
    manifest = store.manifest(run_ids[0])
    # The training reward first: its gain over the base is the column the claim rests on.
    rewards = [manifest["reward"]] + sorted(r for r in manifest["versions"]["evals"] if r != manifest["reward"])
    per_method = method_rows(summaries, rewards)
    header = ["method", "steps", "reward grad.", *rewards, f"gain ({rewards[0]})", "updates", "images",
              "reward calls", "GFLOP/update", "s/update", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    first = next(iter(per_method.values()))
    base = [fmt(*first[f"{r}/base"]) for r in rewards]
    lines.append("| " + " | ".join([f"base ({manifest['versions']['profile']})", "1", "–", *base,
                                    "–", "0", "0", "0", "–", "–", "–"]) + " |")
    records = [{"section": section.title, "method": "base", **{r: first[f"{r}/base"][0] for r in rewards}}]
    for method, row in per_method.items():
        grad = "Yes" if METHODS.get(method).REWARD_GRADIENT else "No"
        cells = [method, "1", grad, *[fmt(*row[r]) for r in rewards], fmt(*row[f"{rewards[0]}/gain"], digits=4),
                 f"{row['updates']:.0f}", f"{row['images']:.0f}", f"{row['reward_calls']:.0f}",
                 f"{row['flops'] / row['updates'] / 1e9:.1f}", f"{row['seconds'] / row['updates']:.2f}", str(row["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
        rec = {"section": section.title, "method": method, "seeds": row["seeds"]}
        for r in rewards:
            rec.update({r: row[r][0], f"{r}_ci": row[r][1], f"{r}_gain": row[f"{r}/gain"][0],
                        f"{r}_gain_ci": row[f"{r}/gain"][1]})
        rec.update({k: row[k] for k in ("updates", "images", "reward_calls", "seconds", "flops")})
        records.append(rec)
    lines += cost_ratios(per_method)
    return lines, records


def cost_ratios(per_method: dict[str, dict[str, Any]], numerator: str = "draft", denominator: str = "drpo") -> list[str]:
    """The reward-backprop cost claim, measured: DRaFT's FLOPs and metered seconds per update over DrPO's."""
    if numerator not in per_method or denominator not in per_method:
        return []
    a, b = per_method[numerator], per_method[denominator]
    flops = (a["flops"] / a["updates"]) / (b["flops"] / b["updates"])
    seconds = (a["seconds"] / a["updates"]) / (b["seconds"] / b["updates"])
    return ["", f"{numerator} / {denominator} per update: FLOP ratio {flops:.2f}x, wall-clock ratio {seconds:.2f}x "
                f"(metered training seconds, mean over seeds; evaluation excluded)."]


def gain_excludes_zero(mean: float, half: float) -> bool:
    return math.isfinite(half) and mean - half > 0
