"""``driftbench compute``: FLOPs per update and per phase of every method at full scale, without weights.

How it works, so that no method's cost is written down by hand:

1. **Trace.** Each method runs one real update on the tiny profile (SD-Turbo's classes at toy size) with
   the run's K, one prompt, and a stand-in reward of the same differentiability as the target reward.
   The harness's meter records every component call: which component, on how many items, with or without
   autograd, and whether the backward pass reached it (:class:`harness.budget.TraceEntry`).
2. **Replay.** Each trace entry is priced with the full-size component's per-image FLOPs, counted on the
   meta device from the configs in ``harness/configs`` (:mod:`harness.compute.archs`), and scaled to the effective
   batch: a generator call with grad costs the LoRA forward plus, if its backward ran, the LoRA backward;
   a frozen decoder, reward or feature encoder whose backward ran adds its input-gradient backward.

The drift loss and the optimizer step are elementwise or tiny matmuls and are left out: at full scale the
timing preset's drift field is 0.08 TFLOP per update against DrPO's 3293 (``methods.drift.drift_flops`` on the
MAE-256 feature shapes, K=24, M=12, 8 prompts); a run's meter does count it, in the loss phase. FLOPs count
multiply-adds as two, as ``torch.utils.flop_counter`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from harness.budget import PHASES, Spend, TraceEntry
from harness.compute import archs
from harness.config import RunConfig
from harness.presets import get as get_preset
from harness.registry import unknown
from harness.run import prepare, update
from harness.validate import Bound, at_least
from methods import METHODS

GENERATORS = {
    "sd-turbo": {"text": "openclip-h-text", "unet": "sd-turbo-unet", "decoder": "sd-vae", "tiny": "tiny"},
    "sdxl-turbo": {"text": "sdxl-text-encoders", "unet": "sdxl-turbo-unet", "decoder": "sdxl-vae", "tiny": "tiny-xl"},
}
"""Full-size components per generator, and the tiny profile with the same classes used for tracing."""

REWARDS = {"hpsv3": "hpsv3", "pickscore": "pickscore"}
"""Reward models countable at full size (all differentiable, so every method can use them)."""

FEATURES: dict[str, tuple[str, dict] | None] = {
    "encoder": ("mae-latent-256", {}), "vit-mae": ("vit-mae-base", {}),
    "vit-mae-full": ("vit-mae-base", {"mask_ratio": 0.0}), "pixel": None, "latent": None, "latent-tokens": None}
"""DrPO's feature spaces at full size, as (architecture, input overrides): the latent MAE-256 (SD-Turbo),
ViT-MAE-base on decoded pixels (SDXL-Turbo's MAE variant; at the released mask ratio 0.75 as the official
script runs it, or every patch for ``vit-mae-full``); pooled pixels and raw latents have no encoder (their
decode is priced as a decode)."""


@dataclass(frozen=True)
class ComputeConfig:
    """``driftbench compute``; the defaults are the paper's HPSv3 wall-clock setting (drpo-method.md 2.3)."""

    generator: str = "sd-turbo"
    """Full-size generator: sd-turbo or sdxl-turbo."""
    reward: str = "hpsv3"
    """Full-size reward: hpsv3 (Qwen2-VL-7B + rm_head) or pickscore (CLIP ViT-H/14)."""
    preset: str = "paper-hpsv3-timing"
    """Preset whose method configs are traced (DrPO with M=12 and no reference term in the timing run)."""
    effective_batch: int = 192
    """Images per optimizer update (the paper: 192 = K 24 x 4 GPUs x 1 prompt x grad-accum 2)."""
    k: int = 24
    """Candidates per prompt."""
    devices: int = 4
    """Data-parallel devices."""
    grad_accum: int = 2
    """Micro-steps per update on each device."""
    methods: tuple[str, ...] = ()
    """Methods to price (default: every registered method)."""
    recompute: bool = False
    """Gradient checkpointing: count a second forward pass of every component whose backward runs (the
    recompute that lets a 7B reward's backward fit in memory)."""
    out: str = "results"
    """Writes <out>/compute/<generator>__<reward>__b<batch>.csv and .md."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"effective_batch": at_least(1), "k": at_least(2), "devices": at_least(1),
                                          "grad_accum": at_least(1)}
    """Valid range of every numeric field (``harness.validate``)."""

    def prompts_per_update(self) -> int:
        """E / K, checked to split evenly over devices x grad-accum micro-steps."""
        if self.effective_batch % self.k:
            raise ValueError(f"effective batch {self.effective_batch} is not divisible by K={self.k}")
        prompts = self.effective_batch // self.k
        if prompts % (self.devices * self.grad_accum):
            raise ValueError(f"{prompts} prompts per update (E/K) do not split over {self.devices} devices x "
                             f"grad-accum {self.grad_accum}")
        return prompts


def trace_method(method: str, method_cfg: Any, *, k: int, generator: str, differentiable: bool) -> list[TraceEntry]:
    """One real update of ``method`` on the tiny profile with one prompt and K candidates; its meter trace."""
    import tempfile

    reward = "colorfulness" if differentiable else "jpeg"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(method=method, profile=GENERATORS[generator]["tiny"], reward=reward, evals=(reward,), k=k,
                        prompts_per_step=1, updates=1, out=tmp, count_flops=False)
        parts = prepare(cfg, method_cfg)
        update(parts, 0, Spend())
    return list(parts.meter.trace)


def price(trace: Sequence[TraceEntry], cfg: ComputeConfig) -> dict[str, float]:
    """FLOPs per phase for one update at ``cfg``'s effective batch, from a one-prompt trace."""

    names = GENERATORS[cfg.generator]
    scale = cfg.prompts_per_update()  # the trace covers one prompt
    flops = {p: 0.0 for p in PHASES}

    def add(phase: str, name: str | tuple[str, dict] | None, mode: str, items: int) -> None:
        if name is not None:
            name, inputs = name if isinstance(name, tuple) else (name, {})
            flops[phase] += archs.component_flops(name, mode=mode, inputs=inputs or None) * items * scale

    for e in trace:
        if e.component == "text":
            add("text", names["text"], "forward", e.items)
        elif e.phase in ("generate", "reference"):
            add(e.phase, names["unet"], "forward_lora" if e.grad else "forward", e.items)
            if e.backward_ran:
                add("generator_backward", names["unet"], "backward_lora", e.items)
                if cfg.recompute:
                    add("generator_backward", names["unet"], "forward_lora", e.items)
        else:
            space = e.component.partition(":")[2] or "encoder"  # "features:<space>"
            if e.phase == "features" and space not in FEATURES:
                raise ValueError(f"feature space '{space}' has no full-size price; known: {', '.join(FEATURES)}")
            name = {"decode": names["decoder"], "reward": REWARDS[cfg.reward]}.get(e.phase, FEATURES.get(space))
            add(e.phase, name, "forward", e.items)
            if e.backward_ran and e.backward:
                add(e.backward, name, "backward_input", e.items)
                if cfg.recompute:
                    add(e.backward, name, "forward", e.items)
    return flops


def compute(cfg: ComputeConfig) -> tuple[list[dict[str, Any]], Path]:
    """Price every method; write the CSV and markdown tables; return the rows and the markdown path."""

    if cfg.generator not in GENERATORS:
        raise unknown("generator", cfg.generator, list(GENERATORS))
    if cfg.reward not in REWARDS:
        raise unknown("full-size reward", cfg.reward, list(REWARDS))
    cfg.prompts_per_update()
    preset = get_preset(cfg.preset)
    rows = []
    for method in cfg.methods or list(METHODS):
        METHODS.check(method)
        method_cfg = preset.method_config(method)
        trace = trace_method(method, method_cfg, k=cfg.k, generator=cfg.generator, differentiable=True)
        flops = price(trace, cfg)
        rows.append({"method": method, "reward_gradient": METHODS.get(method).REWARD_GRADIENT,
                     **{p: v for p, v in flops.items()}, "total": sum(flops.values())})
    reference = next((r["total"] for r in rows if r["method"] == "drpo"), None)
    for r in rows:
        r["ratio_to_drpo"] = r["total"] / reference if reference else float("nan")
    return rows, write(rows, cfg)


def write(rows: list[dict[str, Any]], cfg: ComputeConfig) -> Path:
    import pandas as pd

    out = Path(cfg.out) / "compute"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{cfg.generator}__{cfg.reward}__b{cfg.effective_batch}" + ("__recompute" if cfg.recompute else "")
    pd.DataFrame(rows).to_csv(out / f"{stem}.csv", index=False)
    phases = [p for p in PHASES if any(r[p] for r in rows)]
    lines = [f"# FLOPs per update: {cfg.generator} + {cfg.reward}, effective batch {cfg.effective_batch} "
             f"(K={cfg.k}, {cfg.prompts_per_update()} prompts)", "",
             "TFLOPs per optimizer update, counted on the meta device (multiply-add = 2 FLOPs)"
             + (", with gradient-checkpointing recompute" if cfg.recompute else "")
             + f". Generated by `driftbench compute --generator {cfg.generator} --reward {cfg.reward} "
             f"--effective-batch {cfg.effective_batch} --k {cfg.k}{' --recompute' if cfg.recompute else ''}`.", "",
             "| method | reward grad. | " + " | ".join(phases) + " | total | ratio to DrPO |",
             "|---|---|" + "---|" * len(phases) + "---|---|"]
    for r in rows:
        cells = [f"{r[p] / 1e12:.1f}" for p in phases]
        lines.append(f"| {r['method']} | {'Yes' if r['reward_gradient'] else 'No'} | " + " | ".join(cells)
                     + f" | {r['total'] / 1e12:.1f} | {r['ratio_to_drpo']:.2f}x |")
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
