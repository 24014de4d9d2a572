"""``nox -s paper_smoke``: the paper-scale path end to end on CPU, with random weights.

Every registered method runs real updates through ``harness.run`` on a full-size random-weight generator
(``sd-turbo-random``: the SD 2.1 UNet, OpenCLIP-H text encoder and SD VAE at their released sizes), with DrPO's
latent MAE-256 features, a full-size random CLIP ViT-H/14 as PickScore and a reduced-depth Qwen2-VL-7B (full
width, the first ``hpsv3_layers`` language and ``hpsv3_vision_layers`` vision blocks) as HPSv3. Then DrPO runs
through ``harness.run.run``: interrupted after its first checkpoint (the fault suite's SIGINT), resumed, and
compared with the same updates uninterrupted; the adapter that run saves is loaded with ``load_lora_weights`` into
a stock diffusers pipeline built from the same random parts, whose UNet must reproduce the trained UNet.

Nothing here says anything about quality: the weights are random. It shows the code path runs at full size
and what it costs: seconds and peak resident memory (RSS) per method, written to
``<out>/compute/paper_smoke.json`` and ``.md``. ``--profile tiny`` runs the same code at toy size (tests).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness import faults
from harness.budget import Spend
from harness.cli import parse_config
from harness.config import RunConfig
from harness.generator import SD_TURBO_SCHEDULER
from harness.lifecycle import Interrupted
from harness.presets import get as get_preset
from harness.profiles import PROFILES
from harness.run import prepare, run, update
from harness.store import Store
from harness.validate import Bound, at_least, check, nonnegative
from methods import METHODS

TINY_PROFILES = ("tiny", "tiny-xl")
"""Profiles whose rewards are the tiny stand-ins (``REWARD.tiny=true``) rather than the full-size ones."""


@dataclass(frozen=True)
class PaperSmokeConfig:
    """``python -m harness.compute.paper_smoke`` (``nox -s paper_smoke``)."""

    profile: str = "sd-turbo-random"
    """Generator profile: sd-turbo-random (512 px), sd-turbo-random-256 (the same networks, 256 px), sdxl-turbo-random,
    or tiny (the dry run the tests use)."""
    methods: tuple[str, ...] = ()
    """Methods to run (default: every registered method)."""
    hpsv3_methods: tuple[str, ...] = ("drpo", "draft")
    """Methods run a second time with the HPSv3 stand-in as the training reward (ranking and reward gradient)."""
    k: int = 2
    """Candidates per prompt (one prompt per update; ranking methods use M = K/2)."""
    updates: int = 1
    """Updates per method."""
    hpsv3_layers: int = 1
    """Language blocks of the HPSv3 stand-in (Qwen2-VL-7B has 28); 0 keeps all."""
    hpsv3_vision_layers: int = 1
    """Vision blocks of the HPSv3 stand-in (32 in Qwen2-VL-7B); 0 keeps all."""
    resume: bool = True
    """Run the checkpoint / resume / stock-pipeline check (DrPO, 2 updates, three runs)."""
    out: str = "results"
    """Results root: writes <out>/compute/paper_smoke.json and .md."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"k": at_least(2), "updates": at_least(1), "hpsv3_layers": nonnegative(),
                                          "hpsv3_vision_layers": nonnegative()}
    """Valid range of every numeric field (``harness.validate``)."""


class PeakRss:
    """The largest resident set size seen while the block runs (sampled every 20 ms, plus the start and end)."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> "PeakRss":
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident set size (``VmHWM``: its peak so far) from /proc; 0 where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reward_options(cfg: PaperSmokeConfig, reward: str) -> tuple[str, ...]:
    """The stand-in options of ``reward`` for ``cfg.profile``: tiny models on tiny profiles, else full size."""
    if cfg.profile in TINY_PROFILES:
        return (f"{reward}.tiny=true",)
    options = (f"{reward}.random=true",)
    if reward == "hpsv3":
        options += (f"hpsv3.layers={cfg.hpsv3_layers}", f"hpsv3.vision_layers={cfg.hpsv3_vision_layers}")
    return options


def method_config(method: str, reward: str, k: int):
    """The paper preset's config for ``method`` (the HPSv3 timing preset with HPSv3), fitted to ``k``."""
    base = get_preset("paper-hpsv3-timing" if reward == "hpsv3" else "paper-sd-turbo").method_config(method)
    names = {f.name for f in dataclasses.fields(base)}
    changes: dict[str, Any] = {}
    if "m" in names and 2 * base.m > k:
        changes["m"] = k // 2
    if "anchors" in names and isinstance(base.anchors, int) and base.anchors > k:
        changes["anchors"] = k
    return dataclasses.replace(base, **changes)


def run_config(cfg: PaperSmokeConfig, method: str, reward: str, out: str, **changes: Any) -> RunConfig:
    return RunConfig(method=method, profile=cfg.profile, reward=reward, evals=(reward,),
                     reward_options=reward_options(cfg, reward), k=cfg.k, prompts_per_step=1, grad_accum=1,
                     updates=cfg.updates, eval_at=(1.0,), eval_seeds=1, eval_prompt_limit=1, device="cpu",
                     mixed_precision="no", count_flops=False, out=out, **changes)


def smoke_method(cfg: PaperSmokeConfig, method: str, reward: str) -> dict[str, Any]:
    """``cfg.updates`` updates of ``method`` with ``reward``: seconds, phases, peak RSS, loss, adapter change."""
    row: dict[str, Any] = {"method": method, "reward": reward}
    with tempfile.TemporaryDirectory() as tmp, PeakRss() as rss:
        tick = time.perf_counter()
        parts = prepare(run_config(cfg, method, reward, tmp), method_config(method, reward, cfg.k))
        row["build_seconds"] = time.perf_counter() - tick
        before = {k: v.clone() for k, v in parts.world.generator.trainable_state().items()}
        spend, logs = Spend(), []
        tick = time.perf_counter()
        for step in range(cfg.updates):
            logs.append(update(parts, step, spend))
        row["update_seconds"] = (time.perf_counter() - tick) / cfg.updates
        after = parts.world.generator.trainable_state()
        row["adapter_change"] = max(float((after[k] - before[k]).abs().max()) for k in before)
        row["phases"] = {p: round(s["seconds"] / cfg.updates, 3) for p, s in parts.meter.snapshot().items()
                         if s["seconds"] > 0}
        row["loss"] = logs[-1]["loss"]
        row["grad_norm"] = logs[-1]["grad_norm"]
        row["params"] = {"generator": sum(p.numel() for p in parts.world.generator.unet.parameters()),
                         "reward": sum(p.numel() for p in _reward_modules(parts.reward))}
        del parts, before, after
        gc.collect()
    row["peak_rss_bytes"] = rss.peak
    row["ok"] = bool(torch.isfinite(torch.tensor(row["loss"])) and row["adapter_change"] > 0)
    return row


def _reward_modules(reward: Any) -> list[torch.nn.Parameter]:
    if hasattr(reward, "parameters"):
        return list(reward.parameters())
    return list(reward.path.model.parameters())  # HPSv3's stand-ins


def resume_check(cfg: PaperSmokeConfig) -> dict[str, Any]:
    """DrPO with PickScore for 2 updates through ``run()``, stopped by SIGINT at its first checkpoint and resumed;
    its final adapter against the same 2 updates uninterrupted (``update()`` twice on a fresh build, which is what
    ``run()`` does between its evaluations and checkpoints); then the saved adapter in a stock diffusers pipeline."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, PeakRss() as rss:
        store = Store(tmp)
        cut_cfg = dataclasses.replace(run_config(cfg, "drpo", "pickscore", tmp, run_id="cut", checkpoint_every=1),
                                      updates=2)
        method_cfg = method_config("drpo", "pickscore", cfg.k)
        tick = time.perf_counter()
        os.environ[faults.ENV] = "checkpoint:1:int"  # the fault suite's SIGINT, at the first checkpoint written
        try:
            run(cut_cfg, method_cfg, store=store, progress=False)
            raise AssertionError("the interrupted run completed: the SIGINT at its first checkpoint was not delivered")
        except Interrupted:
            pass
        finally:
            del os.environ[faults.ENV]
        result["interrupted_status"] = store.manifest("cut")["status"]
        _log(f"resume check: run stopped ({result['interrupted_status']}), resuming")
        resumed = run(cut_cfg, method_cfg, store=store, resume="cut", progress=False)
        result["resumed_from"] = store.manifest("cut").get("resumed_from")
        result["updates"] = resumed["budget/updates"]
        _log("resume check: resumed run complete; the uninterrupted reference")
        reference = prepare(dataclasses.replace(cut_cfg, run_id="reference"), method_cfg)
        spend = Spend()
        for step in range(2):
            update(reference, step, spend)
        trained = reference.world.generator.trainable_state()
        run_dir = store.run_dir("cut")
        saved = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["trainable"]
        result["resumed_vs_uninterrupted_max_abs"] = max(float((saved[k] - trained[k]).abs().max()) for k in trained)
        result["adapter_tensors"] = len(trained)
        result["seconds"] = time.perf_counter() - tick
        _log("resume check: the adapter in a stock pipeline")
        result["pipeline"] = pipeline_check(reference.world, run_dir / "adapter")
        del reference
        gc.collect()
    result["peak_rss_bytes"] = rss.peak
    result["ok"] = bool(result["interrupted_status"] == "interrupted" and result["resumed_from"] == 1
                        and result["resumed_vs_uninterrupted_max_abs"] == 0.0 and result["pipeline"]["ok"])
    return result


def pipeline_check(world: Any, adapter: Path) -> dict[str, Any]:
    """Load ``adapter`` into a stock diffusers pipeline built from ``world``'s random parts (a plain UNet with the
    same base weights) and compare its UNet with ``world``'s trained UNet on one input."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    gen = world.generator
    plain = stock_unet(gen.unet)
    scheduler = EulerDiscreteScheduler.from_config(SD_TURBO_SCHEDULER)
    if gen.family == "sd":
        pipe = StableDiffusionPipeline(vae=gen.vae, text_encoder=gen.text_encoders[0], tokenizer=gen.tokenizers[0],
                                       unet=plain, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(vae=gen.vae, text_encoder=gen.text_encoders[0],
                                         text_encoder_2=gen.text_encoders[1], tokenizer=gen.tokenizers[0],
                                         tokenizer_2=gen.tokenizers[1], unet=plain, scheduler=scheduler)
    cond = gen.encode([world.prompts("val")[0]])
    noise = gen.noise([1234])
    t = torch.full((1,), gen.timestep, dtype=torch.long)
    extra = {}
    if gen.family == "sdxl":
        extra["added_cond_kwargs"] = {"text_embeds": cond.tensors["pooled"], "time_ids": cond.tensors["time_ids"]}
    with torch.no_grad():
        base = pipe.unet(noise, t, encoder_hidden_states=cond.tensors["hidden"], **extra).sample
        pipe.load_lora_weights(str(adapter))
        loaded = pipe.unet(noise, t, encoder_hidden_states=cond.tensors["hidden"], **extra).sample
        trained = gen.unet(noise, t, encoder_hidden_states=cond.tensors["hidden"], **extra).sample
    diff, change = float((loaded - trained).abs().max()), float((trained - base).abs().max())
    scale = float(trained.abs().max())
    return {"pipeline": type(pipe).__name__, "max_abs_pipeline_vs_trained": diff, "max_abs_trained_vs_base": change,
            "output_max_abs": scale, "ok": diff <= 1e-5 * max(scale, 1.0) and change > diff}


def _log(message: str) -> None:
    print(f"[paper_smoke {time.strftime('%H:%M:%S')}] {message}", flush=True)


def stock_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """A plain diffusers UNet (no peft layers) with ``unet``'s frozen base weights."""
    plain = type(unet).from_config(unet.config)
    base = {k.replace(".base_layer.", "."): v for k, v in unet.state_dict().items() if "lora_" not in k}
    plain.load_state_dict(base, strict=True)
    return plain.to(unet.device, unet.dtype).eval().requires_grad_(False)


def paper_smoke(cfg: PaperSmokeConfig) -> dict[str, Any]:
    check(cfg, "paper_smoke")
    PROFILES.check(cfg.profile)
    methods = cfg.methods or tuple(METHODS)
    for m in (*methods, *cfg.hpsv3_methods):
        METHODS.check(m)
    started = time.perf_counter()
    report: dict[str, Any] = {"config": dataclasses.asdict(cfg), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "machine": platform.machine(),
                              "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "methods": [], "resume": None, "complete": False}
    # PickScore rows, the resume check, then the HPSv3 rows; the report is rewritten after each, so a run cut short
    # still records what it measured ("complete": false).
    plan = [(m, "pickscore") for m in methods] + [None] * cfg.resume + [(m, "hpsv3") for m in cfg.hpsv3_methods]
    for item in plan:
        if item is None:
            _log("resume check (DrPO + PickScore, 2 updates)")
            report["resume"] = resume_check(cfg)
        else:
            _log(f"{item[0]} + {item[1]}")
            report["methods"].append(smoke_method(cfg, *item))
            gc.collect()
        _finish(report, started, cfg)
    report["complete"] = True
    _finish(report, started, cfg)
    _log(f"done in {report['seconds'] / 60:.1f} min, peak RSS {report['peak_rss_bytes'] / 2 ** 30:.1f} GiB")
    return report


def _finish(report: dict[str, Any], started: float, cfg: PaperSmokeConfig) -> None:
    report["seconds"] = time.perf_counter() - started
    report["peak_rss_bytes"] = rss_bytes("VmHWM")
    report["ok"] = (report["complete"] and all(r["ok"] for r in report["methods"])
                    and (report["resume"] is None or report["resume"]["ok"]))
    write(report, cfg)


def write(report: dict[str, Any], cfg: PaperSmokeConfig) -> Path:
    out = Path(cfg.out) / "compute"
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_smoke.json").write_text(json.dumps(report, indent=2) + "\n")
    gib = 2 ** 30
    lines = [f"# Paper-scale smoke run: {cfg.profile}, random weights, CPU", "",
             f"Generated by `nox -s paper_smoke` ({report['date']}; torch {report['torch']}, {report['threads']} "
             f"threads, {report['cpus']} CPUs). K={cfg.k}, 1 prompt, {cfg.updates} update(s) per method. PickScore: "
             f"CLIP ViT-H/14 at full size; HPSv3: Qwen2-VL-7B at full width, {cfg.hpsv3_layers} language and "
             f"{cfg.hpsv3_vision_layers} vision block(s). Weights are random: the numbers are time and memory only.",
             "", f"Total {report['seconds'] / 60:.1f} min, peak RSS {report['peak_rss_bytes'] / gib:.1f} GiB. "
             + (f"All checks passed: {'yes' if report['ok'] else 'NO'}." if report["complete"] else
                "**Incomplete: the run was stopped before every row below was measured.**"), "",
             "| method | reward | build s | s / update | peak RSS | loss | adapter moved | phases (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["methods"]:
        phases = ", ".join(f"{p} {s:.1f}" for p, s in r["phases"].items())
        lines.append(f"| {r['method']} | {r['reward']} | {r['build_seconds']:.0f} | {r['update_seconds']:.1f} | "
                     f"{r['peak_rss_bytes'] / gib:.1f} GiB | {r['loss']:.4g} | {r['adapter_change']:.2g} | {phases} |")
    res = report["resume"]
    if res is not None:
        p = res["pipeline"]
        lines += ["", "## Checkpoint, resume and the stock pipeline (DrPO + PickScore, 2 updates)", "",
                  f"- run stopped by SIGINT at its first checkpoint: status `{res['interrupted_status']}`, resumed "
                  f"from update {res['resumed_from']}; its final adapter against the same 2 updates uninterrupted: "
                  f"max |diff| {res['resumed_vs_uninterrupted_max_abs']:.3g} over {res['adapter_tensors']} tensors",
                  f"- `{p['pipeline']}.load_lora_weights(adapter/)` on a stock UNet with the same random base weights: "
                  f"max |UNet output - trained UNet output| {p['max_abs_pipeline_vs_trained']:.3g} (the adapter moves "
                  f"the output by {p['max_abs_trained_vs_base']:.3g}; outputs up to {p['output_max_abs']:.3g})",
                  f"- {res['seconds']:.0f} s, peak RSS {res['peak_rss_bytes'] / gib:.1f} GiB"]
    path = out / "paper_smoke.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    try:
        # the CLI's parser: a repeated flag or a bad choice is one line, as for every driftbench command
        cfg = parse_config(PaperSmokeConfig, sys.argv[1:] if argv is None else argv, "python -m harness.compute.paper_smoke")
        report = paper_smoke(cfg)
    except ValueError as exc:
        print(f"paper_smoke: {exc}", file=sys.stderr)
        return 2
    print(Path(cfg.out, "compute", "paper_smoke.md").read_text())
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
