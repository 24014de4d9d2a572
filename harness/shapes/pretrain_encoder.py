"""Pretraining job ``encoder``: a masked autoencoder on the pretrained generator's latents (half the 2x2
latent patches masked). The ResNetEncoder is kept for DrPO's feature space; the light decoder is dropped.
Run through ``python -m harness.shapes.pretrain encoder``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from harness.features import ResNetEncoder
from harness.shapes.editions import edition
from harness.shapes.generator import load_generator
from harness.shapes.model import (
    LATENT_SHAPE,
    ImageEncoder,
)
from harness.shapes.pretrain_common import (
    reconstruction_loss,
    record_time,
    save_asset,
    seed_all,
    tag_balanced,
    train_loop,
)
from harness.shapes.prompts import split
from harness.shapes.render import render_batch

POOL_PROMPTS = 96
"""Edition 2: training prompts (tag-balanced, with repeats) whose generator latents form the MAE's pool; edition 1
uses its 95 training prompts."""


@dataclass(frozen=True)
class EncoderConfig:
    steps: int = 1000
    """Optimizer steps."""
    batch: int = 128
    """Latents per step, drawn from the pool."""
    pool_per_prompt: int = 64
    """Generator latents sampled per train prompt (the MAE's data set)."""
    base_width: int = 32
    """ResNetEncoder base channels (stages: 32, 64, 128, 256)."""
    layers: tuple[int, ...] = (2, 2, 2, 2)
    """Basic blocks per stage; 16x16 latents give stages at 16, 8, 4 and 2 pixels."""
    patch: int = 2
    """Side of the square latent patches that are masked."""
    mask_ratio: float = 0.5
    """Fraction of patches masked (the latent MAE-256's 0.5)."""
    keys: tuple[str, ...] = ("layer3_mean", "layer3_std", "layer3_mean_2", "layer3_std_2", "layer4_mean", "layer4_std")
    """Suggested DrPO feature keys for Shapes latents (the SD-Turbo keys' scales: 1/4 and 1/8 of the latent)."""
    lr: float = 1e-3
    """AdamW learning rate after warm-up."""
    warmup: int = 50
    """Linear warm-up steps."""
    seed: int = 0
    """Seeds torch (init, masks, pool noise) and numpy."""
    split_seed: int = 0
    """Seed of the prompt split; the pool uses train prompts."""
    edition: int = 1
    """The Shapes world's edition (``harness.shapes.editions``): its prompts, renders and asset folder."""
    threads: int = 2
    """torch CPU threads."""
    image_steps: int = 400
    """Steps of the image -> latent encoder against the frozen decoder (offline DrPO's rendered anchors)."""
    image_batch: int = 32
    """Renders per image-encoder step."""


class MaeDecoder(nn.Module):
    """Light decoder: the encoder's last stage (B, C, s, s) -> latent (B, 4, 16, 16) by upsample + conv steps."""

    def __init__(self, c_in: int, size: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = c_in
        while size < LATENT_SHAPE[1]:
            layers += [nn.Upsample(scale_factor=2.0), nn.Conv2d(c, c // 2, 3, padding=1), nn.GroupNorm(8, c // 2),
                       nn.SiLU()]
            c, size = c // 2, size * 2
        self.body = nn.Sequential(*layers, nn.Conv2d(c, LATENT_SHAPE[0], 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@torch.no_grad()
def generator_latents(gen, prompts: Sequence[str], per_prompt: int, seed: int, chunk: int = 256) -> Tensor:
    """(len(prompts) * per_prompt, 4, 16, 16) scaled base-generator latents, prompt-major."""
    rows = [p for p in prompts for _ in range(per_prompt)]
    seeds = [seed * 1_000_003 + i for i in range(len(rows))]
    out = []
    for i in range(0, len(rows), chunk):
        with gen.reference():
            out.append(gen.latents(gen.noise(seeds[i:i + chunk]), gen.encode(rows[i:i + chunk])))
    return torch.cat(out)


def random_patch_mask(n: int, patch: int, ratio: float, gen: torch.Generator) -> Tensor:
    """(n, 1, 16, 16) float mask, 1 on masked latent pixels: exactly round(ratio * patches) patches per row."""
    side = LATENT_SHAPE[1] // patch
    k = round(ratio * side * side)
    order = torch.rand(n, side * side, generator=gen).argsort(dim=1)
    mask = torch.zeros(n, side * side).scatter_(1, order[:, :k], 1.0).reshape(n, 1, side, side)
    return mask.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def pretrain_encoder(cfg: EncoderConfig, out: str | Path | None = None) -> Path:
    """MAE on the pretrained generator's latents (out/generator.safetensors; ``out`` None: the edition's asset
    folder); saves the encoder only."""

    out = out or edition(cfg.edition).asset_dir
    seed_all(cfg.seed, cfg.threads)
    start = time.perf_counter()
    gen = load_generator(lora_rank=0, directory=out)
    train = split("train", cfg.split_seed, edition(cfg.edition))
    if cfg.edition != 1:  # 5,976 training prompts: a tag-balanced draw keeps the pool at edition 1's size
        train = tag_balanced(train, POOL_PROMPTS, np.random.default_rng([cfg.seed, 3]))
    pool = generator_latents(gen, [m["prompt"] for m in train], cfg.pool_per_prompt,
                             cfg.seed)
    encoder = ResNetEncoder(LATENT_SHAPE[0], cfg.base_width, cfg.layers)
    decoder = MaeDecoder(encoder.stage_channels(encoder.stage_names[-1]), LATENT_SHAPE[1] // 2 ** (len(cfg.layers) - 1))
    gen_rng = torch.Generator().manual_seed(cfg.seed)
    last: dict[str, float] = {}

    def loss_fn(step: int) -> tuple[Tensor, dict[str, float]]:
        x = pool[torch.randint(len(pool), (cfg.batch,), generator=gen_rng)]
        mask = random_patch_mask(cfg.batch, cfg.patch, cfg.mask_ratio, gen_rng)
        recon = decoder(encoder(x * (1 - mask)))
        # MAE: the loss is on the masked patches only (the visible ones are trivially copied).
        loss = ((recon - x) ** 2 * mask).sum() / (mask.sum() * LATENT_SHAPE[0])
        last["masked_mse"] = loss.item()
        return loss, dict(last)

    train_loop("encoder", cfg.steps, [*encoder.parameters(), *decoder.parameters()], loss_fn, lr=cfg.lr,
               warmup=cfg.warmup, weight_decay=0.01)
    config = {"in_channels": LATENT_SHAPE[0], "base_width": cfg.base_width, "layers": list(cfg.layers),
              "keys": list(cfg.keys), "mask_ratio": cfg.mask_ratio, "patch": cfg.patch,
              "final_masked_mse": round(last["masked_mse"], 5)}
    path = save_asset(out, "encoder", encoder.state_dict(), config, dtype=torch.float16)
    image_encoder, mse = train_image_encoder(cfg, gen)
    save_asset(out, "image_encoder", image_encoder.state_dict(),
               {"width": image_encoder.width, "scaling_factor": gen.cfg.scaling_factor,
                "final_pixel_mse": round(mse, 6)},
               dtype=torch.float32)
    record_time(out, "encoder", time.perf_counter() - start, cfg.steps + cfg.image_steps)
    return path


def train_image_encoder(cfg: EncoderConfig, gen) -> tuple[ImageEncoder, float]:
    """Image -> raw latent encoder trained to reconstruct renders through the generator's frozen decoder (the
    first phase's :func:`reconstruction_loss`, decoder fixed). Returns it and its last MSE."""

    rng = np.random.default_rng(cfg.seed)
    ed = edition(cfg.edition)
    train = split("train", cfg.split_seed, ed)
    encoder, decoder = ImageEncoder(), gen.decoder
    last: dict[str, float] = {}

    def loss_fn(step: int) -> tuple[Tensor, dict[str, float]]:
        loss, mse = reconstruction_loss(encoder, decoder,
                                        render_batch(tag_balanced(train, cfg.image_batch, rng), rng, ed=ed)[0])
        last["mse"] = mse.item()
        return loss, dict(last)

    train_loop("image encoder", cfg.image_steps, list(encoder.parameters()), loss_fn, lr=1e-3, warmup=cfg.warmup)
    return encoder.eval().requires_grad_(False), last["mse"]
