"""Named settings: the paper's configurations and the embedded benchmarks, in one place.

A preset is a ``RunConfig`` plus per-method ``Config`` overrides. Every method in a comparison shares the
preset's ``RunConfig`` (same prompts, noise seeds, K, micro-batches and budget), so budgets match by
construction; only the method's own hyperparameters differ. Where a method's official script cannot use
the shared budget as it is, the override says why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from harness.config import RunConfig
from harness.registry import unknown
from methods import METHODS


@dataclass(frozen=True)
class Preset:
    description: str
    run: RunConfig
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-method Config overrides (method name -> {field: value})."""
    notes: dict[str, str] = field(default_factory=dict)
    """Per-method adaptation notes, recorded in tables."""

    def method_config(self, name: str):

        module = METHODS.get(name)
        return dataclasses.replace(module.Config(), **self.methods.get(name, {}))


# The paper's SD-Turbo setting (drpo.sh@61329a4): 4 GPUs x 1 prompt x K=24, grad-accum 8 -> 32 prompts
# and 768 images per update, 1000 updates, LoRA r=16, PickScore. grad_accum counts the micro-batches of the
# whole update: `accelerate launch --num_processes 4` runs 8 per process, as the paper did; on fewer devices
# each process accumulates more (the manifest's layout says so).
PAPER_SD_TURBO = Preset(
    description="DrPO paper, SD-Turbo: K=24, M=8, 32 prompts/update, 1000 updates, LoRA 16, PickScore",
    run=RunConfig(profile="sd-turbo", reward="pickscore", k=24, prompts_per_step=1, grad_accum=32, updates=1000,
                  lora_rank=16, eval_at=(0.0, 0.5, 1.0), paper_processes=4),
    methods={"drpo": {"m": 8, "eta": 3000.0, "lam": 0.2, "lr": 1e-4}},
)

PAPER_SDXL_TURBO = Preset(
    description="DrPO paper, SDXL-Turbo (MAE variant): 8 GPUs, K=16, M=8, GA 8, lr 1e-5, 5000 updates, key mean",
    run=RunConfig(profile="sdxl-turbo", reward="pickscore", k=16, prompts_per_step=1, grad_accum=64, updates=5000,
                  lora_rank=16, paper_processes=8),
    methods={"drpo": {"m": 8, "lr": 1e-5, "aggregation": "mean", "features": "pixel"}},
)

# The HPSv3 timing run (train_hpsv3_wallclock_ddp.py@61329a4): K=24, M=12, 4 GPUs x GA 2 = 8 prompts,
# an effective batch of 192 images; the DrPO timing run used ref-loss weight 0.
PAPER_HPSV3_TIMING = Preset(
    description="DrPO paper, HPSv3 wall-clock setting: K=24, M=12, 8 prompts (192 images) per update",
    run=RunConfig(profile="sd-turbo", reward="hpsv3", k=24, prompts_per_step=1, grad_accum=8, updates=20,
                  paper_processes=4),
    methods={"drpo": {"m": 12, "lam": 0.0}},
)

TINY_JPEG = Preset(
    description="Tiny profile, JPEG compressibility: DrPO against the base generator (foundation check)",
    run=RunConfig(profile="tiny", reward="jpeg", evals=("jpeg", "colorfulness"), k=16, prompts_per_step=2,
                  updates=40, eval_at=(0.0, 0.5, 1.0), eval_seeds=4, eval_prompt_limit=12, select_metric="jpeg",
                  tag="tiny-jpeg"),
    methods={"drpo": {"m": 4, "lr": 5e-2}},
    notes={"drpo": "tiny random-weight profile: M=4 of K=16 and a larger learning rate for a 40-update budget"},
)

# The embedded default: 2 prompts x K=16 per update instead of the paper's 32 x 24, for 96 updates, past the
# validation peak of the tuned methods (measured: README, "The horizon"). These are the paper-default ("untuned")
# configurations: every method's paper learning rate times the same factor, 10 (relative rates stay the paper's),
# M = 4 of K = 16 for the ranking methods (the paper: 8 of 24). The tuned comparison takes each method's config
# from the committed tuned file instead (harness/tuned/shapes.json, `driftbench tune`).
SHAPES_LR_SCALE = 10.0
_SHAPES_METHODS = {
    # Raw latents as DrPO's feature space: with the world's MAE encoder a 40-update budget gained +0.008 held-out
    # GenEval against +0.054 with raw latents (3 seeds). That choice was made on the then held-out split, which
    # now holds the test prompts: the tuned comparison re-chooses the feature space on validation only.
    "drpo": {"m": 4, "lr": 1e-4 * SHAPES_LR_SCALE, "features": "latent"},
    "dpo1": {"m": 4, "lr": 1e-4 * SHAPES_LR_SCALE},
    "pso": {"lr": 1e-5 * SHAPES_LR_SCALE},
    "ngrpo": {"lr": 1e-5 * SHAPES_LR_SCALE},
    "draft": {"lr": 1e-5 * SHAPES_LR_SCALE},
    # s = 1000 was set for PickScore; on shapes-pref it turns VGG-Flow into clipped reward ascent
    # (methods/vggflow.py, SCALE_DEFAULTS).
    "vggflow": {"lr": 1e-4 * SHAPES_LR_SCALE, "scale": 1.0},
}
_SHAPES_NOTES = {
    "vggflow": "uses the shared K=16 as its batch (the official script generates 8 where the others generate 24)",
    "ngrpo": "the K shared noises become one base noise and K neighbours (propose); 96 updates, not 5,000 on 8 GPUs",
}
SHAPES_HORIZON = 96
"""Updates per Shapes run; evaluated on validation every 12 (9 points, the base's included)."""
_SHAPES_RUN = RunConfig(profile="shapes", evals=("shapes-geneval", "shapes-pref"), k=16, prompts_per_step=2,
                        updates=SHAPES_HORIZON, eval_at=tuple(i / 8 for i in range(9)), eval_seeds=8,
                        eval_split="val", select_metric="shapes-geneval", checkpoint_every=24)
"""Validation split (18 prompts x 8 seeds) at every evaluation point; checkpoints are selected on its
shapes-GenEval overall_disjoint. No test split here: only a final table adds it (``driftbench table2``)."""

SHAPES_PREF = Preset(
    description="Shapes world, trained with the learned shapes-pref reward: every method, matched budget",
    run=_SHAPES_RUN.replace(reward="shapes-pref", tag="shapes-pref"),
    methods=_SHAPES_METHODS, notes=_SHAPES_NOTES,
)

SHAPES_GENEVAL = Preset(
    description="Shapes world, trained with the binary shapes-geneval verifier: reward-gradient-free methods",
    run=_SHAPES_RUN.replace(reward="shapes-geneval", tag="shapes-geneval"),
    # A binary reward ties: DrPO and DPO-1step keep only anchors that separate strictly (no correct sample among
    # the negatives).
    methods={**_SHAPES_METHODS, "drpo": {**_SHAPES_METHODS["drpo"], "strict_ties": True},
             "dpo1": {**_SHAPES_METHODS["dpo1"], "strict_ties": True}}, notes=_SHAPES_NOTES,
)

PRESETS: dict[str, Preset] = {
    "shapes-pref": SHAPES_PREF,
    "shapes-geneval": SHAPES_GENEVAL,
    "paper-sd-turbo": PAPER_SD_TURBO,
    "paper-sdxl-turbo": PAPER_SDXL_TURBO,
    "paper-hpsv3-timing": PAPER_HPSV3_TIMING,
    "tiny-jpeg": TINY_JPEG,
}


def get(name: str) -> Preset:

    if name not in PRESETS:
        raise unknown("preset", name, list(PRESETS))
    return PRESETS[name]
