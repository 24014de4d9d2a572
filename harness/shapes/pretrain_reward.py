"""Pretraining job ``reward``: shapes-pref, trained on rendered positives and one-clause-broken or damaged
negatives, plus verifier-labelled samples of the pretrained generator. Run through
``python -m harness.shapes.pretrain reward``."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.shapes.editions import FIRST, Edition, edition
from harness.shapes.generator import load_generator
from harness.shapes.pretrain_common import record_time, save_asset, seed_all, tag_balanced, train_loop
from harness.shapes.prompts import split
from harness.shapes.render import DAMAGE_KINDS, damage, render_batch
from rewards.shapes_geneval import VERIFIERS
from rewards.shapes_pref import GRID, PrefConfig, PrefModel

POOL_PROMPTS = 96
"""Edition 2: training prompts (tag-balanced, with repeats) whose generator samples form the labelled pool;
edition 1 uses its 95 training prompts."""


@dataclass(frozen=True)
class RewardConfig:
    steps: int = 400
    """Optimizer steps."""
    batch: int = 16
    """Prompts per step; each gives a correct render, a one-clause-broken render and (half) a damaged render."""
    gen_batch: int = 16
    """Verifier-labelled generator samples per step, half correct and half incorrect when the pool allows;
    0 trains on renders only (and needs no generator)."""
    pool_per_prompt: int = 32
    """Generator samples drawn per train prompt for the labelled pool."""
    aux_weight: float = 1.0
    """Weight of the auxiliary per-cell object loss (objectness, shape, colour) on renders."""
    lr: float = 1e-3
    """AdamW learning rate after warm-up."""
    warmup: int = 100
    """Linear warm-up steps."""
    clip: float = 1.0
    """Gradient-norm clip."""
    seed: int = 0
    """Seeds torch (init) and numpy (prompt draws, renders, damage)."""
    split_seed: int = 0
    """Seed of the prompt split; only train prompts are seen."""
    edition: int = 1
    """The Shapes world's edition (``harness.shapes.editions``): its prompts, renders, verifier and asset folder."""
    threads: int = 2
    """torch CPU threads."""
    model: PrefConfig = PrefConfig()
    """Architecture."""




def cell_targets(scenes: Sequence, ed: Edition = FIRST) -> tuple[Tensor, Tensor, Tensor]:
    """Per-cell targets of rendered scenes of edition ``ed``: objectness (B, 8, 8) float, shape and colour class
    (B, 8, 8) long (-100, ignored, where no object's centre falls in the cell)."""

    b = len(scenes)
    obj = torch.zeros(b, GRID, GRID)
    shape = torch.full((b, GRID, GRID), -100, dtype=torch.long)
    color = torch.full((b, GRID, GRID), -100, dtype=torch.long)
    shapes, colors = list(ed.shapes), list(ed.colors)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            gx, gy = min(int(o.cx // 8), GRID - 1), min(int(o.cy // 8), GRID - 1)
            obj[i, gy, gx] = 1.0
            shape[i, gy, gx], color[i, gy, gx] = shapes.index(o.shape), colors.index(o.color)
    return obj, shape, color


@torch.no_grad()
def labelled_generator_pool(gen_dir: str | Path, prompts: Sequence[str], per_prompt: int, seed: int,
                            chunk: int = 256, ed: Edition = FIRST) -> tuple[Tensor, list[str], Tensor]:
    """Samples of the pretrained generator on ``prompts`` with the verifier's 0/1 labels (edition ``ed``'s
    verifier: ``shapes-geneval`` or ``shapes2-geneval``): images (N, 3, 64, 64), their prompts, labels (N,)."""

    verifier = VERIFIERS[ed.number]()
    gen = load_generator(lora_rank=0, directory=gen_dir)
    rows = [p for p in prompts for _ in range(per_prompt)]
    seeds = [seed * 1_000_003 + i for i in range(len(rows))]
    images, labels = [], []
    for i in range(0, len(rows), chunk):
        x = gen.decode(gen.latents(gen.noise(seeds[i:i + chunk]), gen.encode(rows[i:i + chunk])))
        images.append(x)
        labels.append(verifier.score(x, rows[i:i + chunk]))
    return torch.cat(images), rows, torch.cat(labels)


def _balanced_indices(labels: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` pool indices, half with label 1 and half with label 0 (all from one side if the other is empty)."""
    groups = [g for g in ((labels > 0.5).nonzero().flatten(), (labels <= 0.5).nonzero().flatten()) if len(g)]
    if n == 0 or not groups:
        return torch.zeros(0, dtype=torch.long)
    sizes = [n // len(groups) + (i < n % len(groups)) for i in range(len(groups))]
    return torch.cat([g[torch.randint(len(g), (k,), generator=gen)] for g, k in zip(groups, sizes)])


class RewardBatches:
    """Training batches for shapes-pref: renders (correct, broken, damaged) plus labelled generator samples."""

    def __init__(self, cfg: RewardConfig, pool: tuple[Tensor, list[str], Tensor], rng: np.random.Generator):
        self.cfg, self.rng, self.pool = cfg, rng, pool
        self.ed = edition(cfg.edition)
        self.train = split("train", cfg.split_seed, self.ed)
        self.torch_rng = torch.Generator().manual_seed(cfg.seed)

    def next(self) -> dict:
        """{"images" (N, 3, 64, 64), "prompts" N, "labels" (B + B + G,) for the pointwise rows, "scenes" 2B,
        "sizes" (B, B, D, G)}: rows are [correct renders | broken renders | damaged | generator samples]."""

        b, rng = self.cfg.batch, self.rng
        metas = tag_balanced(self.train, b, rng)
        pos, pos_scenes = render_batch(metas, rng, correct=True, ed=self.ed)
        neg, neg_scenes = render_batch(metas, rng, correct=False, ed=self.ed)
        d = b // 2
        kind = DAMAGE_KINDS[rng.integers(len(DAMAGE_KINDS))]
        damaged = damage(pos[:d], rng, kind, scenes=pos_scenes[:d])
        images, prompts, labels = self.pool
        idx = _balanced_indices(labels, self.cfg.gen_batch, self.torch_rng)
        texts = [m["prompt"] for m in metas]
        return {"images": torch.cat([pos, neg, damaged, images[idx]]),
                "prompts": texts + texts + texts[:d] + [prompts[i] for i in idx.tolist()],
                "labels": torch.cat([torch.ones(b), torch.zeros(b), labels[idx]]),
                "scenes": pos_scenes + neg_scenes, "sizes": (b, b, d, len(idx))}


def log_bce(log_p: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy for log-probabilities ``log_p`` (N,) <= 0 and 0/1 ``labels`` (N,)."""
    log_p = log_p.clamp(max=-1e-4)
    return -(labels * log_p + (1 - labels) * torch.log(-torch.expm1(log_p))).mean()


def reward_loss(model: PrefModel, batch: dict, aux_weight: float) -> tuple[Tensor, dict[str, float]]:
    """Logistic loss on verifier-style labels (the score is a log-probability) + Bradley-Terry on (correct,
    broken) and (clean, damaged) pairs of the same prompt + the per-cell object loss on renders."""
    b, _, d, g = batch["sizes"]
    feats = model.image_features(batch["images"])
    scores = model.score_features(feats, batch["prompts"])
    pos, neg, dmg, gen = scores.split([b, b, d, g])
    pointwise = log_bce(torch.cat([pos, neg, dmg, gen]),
                        torch.cat([batch["labels"][:2 * b], torch.zeros(d), batch["labels"][2 * b:]]))
    pairwise = F.softplus(neg - pos).mean() + F.softplus(dmg - pos[:d]).mean()
    logits = model.aux_logits(feats[:2 * b])  # (2B, 8, 8, 1 + S + K)
    s, k = model.cfg.aux_channels
    obj, shape, color = cell_targets(batch["scenes"], model.cfg.world)
    aux = (F.binary_cross_entropy_with_logits(logits[..., 0], obj)
           + F.cross_entropy(logits[..., 1:1 + s].reshape(-1, s), shape.flatten())
           + F.cross_entropy(logits[..., 1 + s:].reshape(-1, k), color.flatten()))
    loss = pointwise + pairwise + aux_weight * aux
    return loss, {"loss": loss.item(), "bce": pointwise.item(), "bt": pairwise.item(), "aux": aux.item()}


def pretrain_reward(cfg: RewardConfig, out: str | Path | None = None) -> Path:
    """Train shapes-pref on renders and the generator's verifier-labelled samples (out/generator.safetensors;
    ``out`` None: the edition's asset folder)."""
    ed = edition(cfg.edition)
    out = out or ed.asset_dir
    rng = seed_all(cfg.seed, cfg.threads)
    start = time.perf_counter()
    model_cfg = replace(cfg.model, edition=ed.number) if ed.number != 1 else cfg.model
    train = split("train", cfg.split_seed, ed)
    if ed.number != 1:  # 5,976 training prompts: a tag-balanced draw keeps the labelled pool at edition 1's size
        train = tag_balanced(train, POOL_PROMPTS, np.random.default_rng([cfg.seed, 3]))
    train_prompts = [m["prompt"] for m in train]
    pool = (labelled_generator_pool(out, train_prompts, cfg.pool_per_prompt, cfg.seed, ed=ed) if cfg.gen_batch
            else (torch.zeros(0, 3, 64, 64), [], torch.zeros(0)))
    batches = RewardBatches(cfg, pool, rng)
    model = PrefModel(model_cfg)
    train_loop("reward", cfg.steps, list(model.parameters()),
               lambda step: reward_loss(model, batches.next(), cfg.aux_weight),
               lr=cfg.lr, warmup=cfg.warmup, clip=cfg.clip, weight_decay=0.01)
    path = save_asset(out, "reward", model.state_dict(), model_cfg.to_dict(), dtype=torch.float16)
    record_time(out, "reward", time.perf_counter() - start, cfg.steps)
    return path
