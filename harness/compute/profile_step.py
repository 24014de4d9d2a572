"""``driftbench profile-step``: time real updates per phase (warm-up, then N timed updates).

Each method runs through the same ``harness.run`` update as in training, so the meter attributes its
seconds, FLOPs and peak memory to the same phases. On a GPU use the full-size random-weight profiles
(``sd-turbo-random``, ``sdxl-turbo-random``: timing does not depend on weight values); on CPU the tiny
profile. Results go to ``<out>/compute/profile__<profile>__<reward>.csv`` and ``.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from harness.budget import PHASES, Spend
from harness.config import RunConfig
from harness.presets import get as get_preset
from harness.run import prepare, update
from harness.validate import Bound, at_least, nonnegative
from methods import METHODS


@dataclass(frozen=True)
class ProfileConfig:
    """``driftbench profile-step``."""

    profile: str = "tiny"
    """Generator profile; on a GPU: sd-turbo-random or sdxl-turbo-random (full size, random weights)."""
    reward: str = "colorfulness"
    """Reward; must be differentiable for DRaFT and VGG-Flow to be timed."""
    reward_options: tuple[str, ...] = ()
    """REWARD.KEY=VALUE options for the reward constructor."""
    preset: str = "paper-hpsv3-timing"
    """Preset whose method configs are timed."""
    methods: tuple[str, ...] = ()
    """Methods to time (default: every registered method)."""
    k: int = 0
    """Candidates per prompt (0: the preset's K). A K below twice the preset's M is refused, as for any run."""
    prompts_per_step: int = 1
    """Prompts per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per update."""
    warmup: int = 1
    """Untimed updates first (allocator, kernels, FLOP-count passes)."""
    steps: int = 3
    """Timed updates, averaged."""
    device: str = "auto"
    """auto, cpu or cuda."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    """no, fp16 or bf16: the frozen weights' dtype on a GPU (the paper's HPSv3 timing run used bf16)."""
    out: str = "results"
    """Results root."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"k": at_least(2, zero=True), "prompts_per_step": at_least(1), "grad_accum": at_least(1),
                                          "warmup": nonnegative(), "steps": at_least(1)}
    """Valid range of every numeric field (``harness.validate``)."""


def profile_method(cfg: ProfileConfig, method: str) -> dict[str, Any]:
    """Per-phase seconds, FLOPs and peak memory per update for one method."""
    import tempfile

    preset = get_preset(cfg.preset)
    method_cfg = preset.method_config(method)  # K >= 2M is checked by prepare, as for any run
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = RunConfig(method=method, profile=cfg.profile, reward=cfg.reward, evals=(cfg.reward,),
                            reward_options=cfg.reward_options, k=cfg.k or preset.run.k, prompts_per_step=cfg.prompts_per_step,
                            grad_accum=cfg.grad_accum, updates=cfg.warmup + cfg.steps, device=cfg.device,
                            mixed_precision=cfg.mixed_precision, out=tmp)
        parts = prepare(run_cfg, method_cfg)
        spend = Spend()
        for step in range(cfg.warmup):
            update(parts, step, spend)
        parts.meter.reset()
        for step in range(cfg.warmup, cfg.warmup + cfg.steps):
            update(parts, step, spend)
    snapshot = parts.meter.snapshot()
    row: dict[str, Any] = {"method": method, "device": str(parts.world.generator.device)}
    for phase in PHASES:
        row[f"{phase}/seconds"] = snapshot[phase]["seconds"] / cfg.steps
        row[f"{phase}/flops"] = snapshot[phase]["flops"] / cfg.steps
        row[f"{phase}/peak_bytes"] = snapshot[phase]["peak_bytes"]
    row["total/seconds"] = sum(row[f"{p}/seconds"] for p in PHASES)
    row["total/flops"] = sum(row[f"{p}/flops"] for p in PHASES)
    row["peak_bytes"] = max(row[f"{p}/peak_bytes"] for p in PHASES)
    return row


def profile_step(cfg: ProfileConfig) -> tuple[list[dict[str, Any]], Path]:
    if cfg.warmup < 0 or cfg.steps < 1:
        raise ValueError(f"need warmup >= 0 and steps >= 1, got warmup={cfg.warmup}, steps={cfg.steps}")
    methods = cfg.methods or tuple(METHODS)
    for m in methods:
        METHODS.check(m)
    rows = [profile_method(cfg, m) for m in methods]
    return rows, write(rows, cfg)


def write(rows: list[dict[str, Any]], cfg: ProfileConfig) -> Path:
    import pandas as pd

    out = Path(cfg.out) / "compute"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"profile__{cfg.profile}__{cfg.reward.replace(':', '_').replace('/', '_')}"
    pd.DataFrame(rows).to_csv(out / f"{stem}.csv", index=False)
    phases = [p for p in PHASES if any(r[f"{p}/seconds"] > 0 for r in rows)]
    base = next((r for r in rows if r["method"] == "drpo"), None)
    lines = [f"# Measured seconds per update: {cfg.profile} + {cfg.reward} (K={cfg.k or get_preset(cfg.preset).run.k}, "
             f"{cfg.prompts_per_step * cfg.grad_accum} prompts/update, mean of {cfg.steps} after {cfg.warmup} warm-up)",
             "", f"Device: {rows[0]['device']}. Generated by `driftbench profile-step`.", "",
             "| method | " + " | ".join(phases) + " | total s | peak memory | ratio to DrPO |",
             "|---|" + "---|" * len(phases) + "---|---|---|"]
    for r in rows:
        ratio = r["total/seconds"] / base["total/seconds"] if base else float("nan")
        lines.append(f"| {r['method']} | " + " | ".join(f"{r[f'{p}/seconds']:.3f}" for p in phases)
                     + f" | {r['total/seconds']:.3f} | {r['peak_bytes'] / 2 ** 30:.2f} GiB | {ratio:.2f}x |")
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
