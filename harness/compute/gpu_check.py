"""``nox -s gpu_check``: what one GPU (H100 80 GB or H200) measures in one short call, from a clean copy of the tree.

1. The paper's HPSv3 timing configuration (``paper-hpsv3-timing``, the official
   ``scripts/profiling/train_hpsv3_wallclock_ddp.py``@61329a4) at full size with random weights in bf16: SD-Turbo
   (``sd-turbo-random``, 512 px) and HPSv3 as Qwen2-VL-7B + rm_head (``hpsv3.random=true``, 448 px, the real sequence
   length). ``profile-step`` of DrPO and DRaFT: per-phase seconds and peak memory per update of 192 images.
   DrPO runs as the official one: 8 micro-batches of one prompt x K=24. DRaFT's official micro-step
   backpropagates each image on its own (``train_draft_microstep``: one image per forward and backward, the
   reward model under gradient checkpointing); the harness samples at least K=2 per prompt, so DRaFT runs 96
   micro-batches of 2 images, the same 192 images. Its reference UNet pass (the official computes it although
   the timing run's L2 weight is 0) is not run here.
2. The DRaFT/DrPO time ratio beside the paper's 3.51x.
3. The ranking economies' cut (``harness.economy``): the exact reward (float32) against ``bf16`` (autocast +
   inference mode) on the same candidates: decode+reward seconds and rank agreement (Spearman, top-M overlap).
4. A short Shapes run (DrPO, the ``shapes-pref`` preset's settings) on CUDA and on CPU, in float32 with TF32 off,
   whose evaluation metrics must agree within ``tolerance``.

Writes ``<out>/compute/gpu_check.json`` and ``.md``. ``--dry-run`` runs the same code at toy size on CPU (the
``tiny`` profile, the tiny HPSv3 stand-in, one Shapes update, both twins on CPU); tests/test_gpu_check.py runs it.

On the lent machine (no registry; no diffusers, optuna or tyro installed), the wheels of ``.ci/gpu-wheels.txt``
travel with the tree (``.ci/gpu-wheels.sh`` downloads them into ``.whl/``) and the command is
``.ci/gpu-check-device.sh`` (install line included).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.cli import parse_config
from harness.compute.profile_step import ProfileConfig, profile_method
from harness.compute.rank_agreement import AgreementConfig, rank_agreement
from harness.presets import get as get_preset
from harness.run import run
from harness.store import Store
from harness.validate import Bound, at_least, check, positive

PAPER_RATIO = 3.51
"""DRaFT's update time over DrPO's with HPSv3 in the paper (the wall-clock comparison, 4 GPUs)."""


@dataclass(frozen=True)
class GpuCheckConfig:
    """``python -m harness.compute.gpu_check`` (``nox -s gpu_check``)."""

    dry_run: bool = False
    """Toy size on CPU (tiny profile and reward stand-ins, one update each, one Shapes update per twin, both twins
    on CPU): checks the code path in seconds."""
    warmup: int = 1
    """Untimed updates per method before the timed ones (allocator, kernels, the FLOP-count passes)."""
    steps: int = 1
    """Timed updates per method."""
    shapes_updates: int = 12
    """Updates of the Shapes twin runs."""
    tolerance: float = 0.05
    """Largest accepted |CUDA - CPU| of each Shapes evaluation metric (GenEval accuracies are fractions: 0.05 is
    about 4 of the 72 evaluation images)."""
    out: str = "results"
    """Results root: writes <out>/compute/gpu_check.json and .md."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"warmup": at_least(0), "steps": at_least(1), "shapes_updates": at_least(1),
                                          "tolerance": positive()}
    """Valid range of every numeric field (``harness.validate``)."""


def timing_configs(cfg: GpuCheckConfig, out: str) -> dict[str, ProfileConfig]:
    """The profile-step settings of DrPO and DRaFT (see the module docstring), or their toy twins."""
    if cfg.dry_run:
        common = dict(profile="tiny", reward="hpsv3", reward_options=("hpsv3.tiny=true",), device="cpu",
                      mixed_precision="no")
        drpo = dict(k=24, grad_accum=1)  # the preset M=12 needs K >= 24
        draft = dict(k=2, grad_accum=2)
    else:
        common = dict(profile="sd-turbo-random", reward="hpsv3", reward_options=("hpsv3.random=true",),
                      device="cuda", mixed_precision="bf16")
        drpo = dict(k=24, grad_accum=8)
        draft = dict(k=2, grad_accum=96)
    shared = dict(preset="paper-hpsv3-timing", prompts_per_step=1, warmup=0 if cfg.dry_run else cfg.warmup,
                  steps=1 if cfg.dry_run else cfg.steps, out=out)
    return {"drpo": ProfileConfig(methods=("drpo",), **common, **drpo, **shared),
            "draft": ProfileConfig(methods=("draft",), **common, **draft, **shared)}


def timing(cfg: GpuCheckConfig, out: str) -> dict[str, Any]:
    rows = {}
    for method, pcfg in timing_configs(cfg, out).items():
        tick = time.perf_counter()
        row = profile_method(pcfg, method)
        row["wall_seconds"] = time.perf_counter() - tick
        row["images_per_update"] = pcfg.k * pcfg.prompts_per_step * pcfg.grad_accum
        row["layout"] = f"{pcfg.grad_accum} micro-batches x {pcfg.prompts_per_step} prompt x K={pcfg.k}"
        rows[method] = row
        _free()
    ratio = rows["draft"]["total/seconds"] / rows["drpo"]["total/seconds"]
    return {"rows": rows, "ratio": ratio, "paper_ratio": PAPER_RATIO}


def economy(cfg: GpuCheckConfig, out: str) -> dict[str, Any]:
    """Exact against bf16 reward scoring on the same candidates (``driftbench rank-agreement``)."""
    if cfg.dry_run:
        acfg = AgreementConfig(profile="tiny", reward="hpsv3", reward_options=("hpsv3.tiny=true",), prompts=2, k=4,
                               m=2, device="cpu", out=out)
    else:
        acfg = AgreementConfig(profile="sd-turbo-random", reward="hpsv3", reward_options=("hpsv3.random=true",),
                               prompts=2, k=8, m=4, device="cuda", out=out)
    tick = time.perf_counter()
    path = rank_agreement(acfg)
    import pandas as pd

    table = pd.read_csv(path.with_suffix(".csv")).to_dict(orient="records")
    _free()
    return {"config": dataclasses.asdict(acfg), "rows": table, "wall_seconds": time.perf_counter() - tick}


def shapes_twins(cfg: GpuCheckConfig, out: str) -> dict[str, Any]:
    """The same short Shapes run on CUDA and on CPU (float32, TF32 off): evaluation metrics side by side."""
    preset = get_preset("shapes-pref")
    base = preset.run.replace(method="drpo", updates=1 if cfg.dry_run else cfg.shapes_updates, eval_at=(1.0,),
                              eval_seeds=1 if cfg.dry_run else 4, eval_prompt_limit=2 if cfg.dry_run else 0,
                              checkpoint_every=0, mixed_precision="no", tag="gpu-check")
    method_cfg = preset.method_config("drpo")
    devices = ("cpu", "cpu") if cfg.dry_run else ("cuda", "cpu")
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    summaries, seconds = {}, {}
    try:
        with tempfile.TemporaryDirectory(dir=out) as tmp:  # the twins' records are not kept; their metrics are
            for i, device in enumerate(devices):
                tick = time.perf_counter()
                summaries[i] = run(base.replace(device=device, run_id=f"shapes-twin-{i}-{device}"), method_cfg,
                                   store=Store(tmp), progress=False)
                seconds[i] = time.perf_counter() - tick
                _free()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    metrics = sorted(k for k, v in summaries[0].items() if k.startswith("eval/") and isinstance(v, (int, float)))
    rows = [{"metric": k, "values": [summaries[0][k], summaries[1][k]],
             "abs_diff": abs(summaries[0][k] - summaries[1][k])} for k in metrics]
    worst = max((r["abs_diff"] for r in rows), default=float("nan"))
    return {"devices": list(devices), "updates": base.updates, "seconds": [seconds[0], seconds[1]], "rows": rows,
            "max_abs_diff": worst, "tolerance": cfg.tolerance, "ok": bool(rows) and worst <= cfg.tolerance}


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "diffusers", "peft", "accelerate", "tyro"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    memory = torch.cuda.get_device_properties(0).total_memory if gpu else None
    return {"python": sys.version.split()[0], "versions": versions, "gpu": gpu, "gpu_memory_bytes": memory,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def gpu_check(cfg: GpuCheckConfig) -> dict[str, Any]:
    check(cfg, "gpu_check")
    if not cfg.dry_run and not torch.cuda.is_available():
        raise ValueError("gpu_check needs a CUDA GPU (torch.cuda.is_available() is False); use --dry-run on CPU")
    started = time.perf_counter()
    out = str(Path(cfg.out) / "gpu_check_runs")  # the rank-agreement tables and a scratch folder for the Shapes runs
    Path(out).mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"config": dataclasses.asdict(cfg), "environment": environment()}
    for name, part in (("timing", timing), ("economy", economy), ("shapes", shapes_twins)):
        tick = time.perf_counter()
        try:
            report[name] = part(cfg, out)
        except Exception as exc:  # noqa: BLE001 - a part that fails is reported; the others still run
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report[name]["section_seconds"] = time.perf_counter() - tick
        _write(report, cfg)  # after each part: a call cut short still leaves what it measured
    report["seconds"] = time.perf_counter() - started
    report["ok"] = all("error" not in report[n] for n in ("timing", "economy", "shapes")) and report["shapes"]["ok"]
    _write(report, cfg)
    return report


def _write(report: dict[str, Any], cfg: GpuCheckConfig) -> Path:
    out = Path(cfg.out) / "compute"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    path = out / "gpu_check.md"
    path.write_text(render(report))
    return path


def render(report: dict[str, Any]) -> str:
    env, gib = report["environment"], 2 ** 30
    mode = "dry run (toy size, CPU)" if report["config"]["dry_run"] else "full size, random weights"
    lines = [f"# GPU check: {mode}", "",
             f"Device: {env['gpu'] or 'CPU'}; Python {env['python']}; " + ", ".join(
                 f"{k} {v}" for k, v in env["versions"].items()) + f"; {env['date']}. Generated by `nox -s gpu_check`"
             + (" -- --dry-run" if report["config"]["dry_run"] else "") + "."]
    if "seconds" in report:
        lines += ["", f"Total {report['seconds']:.0f} s. All parts passed: {'yes' if report['ok'] else 'NO'}."]
    t = report.get("timing")
    if t:
        precision = "float32, CPU" if report["config"]["dry_run"] else "bf16"
        lines += ["", f"## HPSv3 timing configuration (seconds per update; {precision})", ""]
        if "error" in t:
            lines.append(f"Failed: {t['error']}")
        else:
            phases = [k[: -len("/seconds")] for k in t["rows"]["drpo"] if k.endswith("/seconds") and k != "total/seconds"
                      and any(r[k] > 0 for r in t["rows"].values())]
            lines += ["| method | images | layout | " + " | ".join(phases) + " | total s | peak memory |",
                      "|---|---|---|" + "---|" * len(phases) + "---|---|"]
            for m, r in t["rows"].items():
                lines.append(f"| {m} | {r['images_per_update']} | {r['layout']} | "
                             + " | ".join(f"{r[p + '/seconds']:.2f}" for p in phases)
                             + f" | {r['total/seconds']:.2f} | {r['peak_bytes'] / gib:.1f} GiB |")
            lines += ["", f"DRaFT / DrPO update time: **{t['ratio']:.2f}x** (paper: {t['paper_ratio']}x, 4 GPUs)"
                      + (" - dry run: toy models and unequal batches, not comparable." if report["config"]["dry_run"]
                         else ".")]
    e = report.get("economy")
    if e:
        lines += ["", "## Ranking economies (exact float32 reward against bf16 autocast + inference mode)", ""]
        if "error" in e:
            lines.append(f"Failed: {e['error']}")
        else:
            lines += ["| economy | Spearman | top-M overlap | decode+reward s | speed-up |", "|---|---|---|---|---|"]
            lines += [f"| {r['economy']} | {r['spearman']:.3f} | {r['top_m_overlap']:.3f} | {r['seconds']:.2f} | "
                      f"{r['speedup']:.2f}x |" for r in e["rows"]]
    s = report.get("shapes")
    if s:
        lines += ["", "## Shapes twins (DrPO, float32, TF32 off)", ""]
        if "error" in s:
            lines.append(f"Failed: {s['error']}")
        else:
            a, b = s["devices"]
            lines += [f"{s['updates']} updates; {a} {s['seconds'][0]:.0f} s, {b} {s['seconds'][1]:.0f} s. Largest "
                      f"|difference| {s['max_abs_diff']:.4g} (tolerance {s['tolerance']}): "
                      f"{'within' if s['ok'] else 'OUTSIDE'}.", "",
                      f"| metric | {a} | {b} | abs diff |", "|---|---|---|---|"]
            lines += [f"| {r['metric']} | {r['values'][0]:.4f} | {r['values'][1]:.4f} | {r['abs_diff']:.2g} |"
                      for r in s["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    try:
        # the CLI's parser: a repeated flag or a bad choice is one line, as for every driftbench command
        cfg = parse_config(GpuCheckConfig, sys.argv[1:] if argv is None else argv, "python -m harness.compute.gpu_check")
        report = gpu_check(cfg)
    except ValueError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    print(render(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
