"""Generator profiles: a generator plus the prompts, rewards and feature spaces that go with it.

``PROFILES`` maps each name to a builder ``(RunConfig) -> World``. Real profiles load weights from local
paths only; ``tiny`` and ``tiny-xl`` build SD-Turbo's and SDXL-Turbo's classes at toy size, offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness.api import Generator
from harness.config import RunConfig
from harness.features import LatentFeatures, ResNetEncoder
from harness.generator import from_pretrained, tiny_sd, tiny_sdxl
from harness.mae import SD_TURBO_KEYS, load_mae_encoder
from harness.registry import Registry
from harness.vitmae import SDXL_KEYS, load_vit_mae, random_vit_mae
from harness.world import (
    FeatureMap,
    World,
    device_for,
    dtype_for,
    latent_token_features,
    pixel_features,
    raw_latent_features,
)

PROFILES = Registry("profile", {
    "shapes": "harness.shapes.profile:build",
    "shapes2": "harness.shapes.profile:build_second",
    "tiny": "harness.profiles:tiny",
    "tiny-xl": "harness.profiles:tiny_xl",
    "sd-turbo": "harness.profiles:sd_turbo",
    "sdxl-turbo": "harness.profiles:sdxl_turbo",
    "sd-turbo-random": "harness.compute.random_profiles:sd_turbo_random",
    "sdxl-turbo-random": "harness.compute.random_profiles:sdxl_turbo_random",
    "sd-turbo-random-256": "harness.compute.random_profiles:sd_turbo_random_256",
})
"""Generator profiles by name: a builder ``(RunConfig) -> World`` each, imported on first use."""

DEFAULT_REWARDS = {"shapes": "shapes-pref", "shapes2": "shapes2-pref", "tiny": "jpeg", "tiny-xl": "jpeg", "sd-turbo": "pickscore",
                   "sdxl-turbo": "pickscore", "sd-turbo-random": "pickscore", "sdxl-turbo-random": "pickscore",
                   "sd-turbo-random-256": "pickscore"}
"""Each profile's training reward when a run names none; known before the profile is built, so a run's
capability checks (``harness.checks``) need not build it. Every builder's ``World.default_reward`` is this."""


def _random_encoder(seed: int, in_channels: int, keys: tuple[str, ...]) -> Callable[[], FeatureMap]:
    def build() -> FeatureMap:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return LatentFeatures(ResNetEncoder(in_channels, 16, (1, 1, 1)), keys)
    return build


# -- profiles --------------------------------------------------------------------------------

TINY_COLORS = ("red", "green", "blue", "yellow", "white", "black")
TINY_OBJECTS = ("cat", "dog", "car", "tree", "house", "flower", "bird", "boat", "cup", "chair")


def tiny_prompts(split_seed: int = 0) -> dict[str, list[str]]:
    """60 "a photo of a <colour> <object>" prompts; a seeded fifth of the compositions is held out, split
    into val (tuning and selection) and test (the final table); "heldout" is both."""
    prompts = [f"a photo of a {c} {o}" for c in TINY_COLORS for o in TINY_OBJECTS]
    order = np.random.default_rng(split_seed).permutation(len(prompts))[: len(prompts) // 5].tolist()
    held, val = set(order), set(order[: len(order) // 2])
    return {"train": [p for i, p in enumerate(prompts) if i not in held],
            "val": [p for i, p in enumerate(prompts) if i in val],
            "test": [p for i, p in enumerate(prompts) if i in held - val],
            "heldout": [p for i, p in enumerate(prompts) if i in held]}


def _tiny_world(name: str, generator: Generator, seed: int, split_seed: int) -> World:
    keys = ("layer3_mean", "layer3_std", "layer3_mean_2", "layer3_std_2")
    return World(name=name, generator=generator, splits=tiny_prompts(split_seed), default_reward=DEFAULT_REWARDS["tiny"],
                 default_evals=("jpeg", "colorfulness"),
                 feature_factories={"encoder": _random_encoder(seed, generator.latent_shape[0], keys),
                                    "latent": raw_latent_features, "latent-tokens": latent_token_features,
                                    "pixel": pixel_features,
                                    # a toy random ViT-MAE: lets `driftbench compute` trace the SDXL MAE variant
                                    "vit-mae": lambda: random_vit_mae(seed=seed),
                                    "vit-mae-full": lambda: random_vit_mae(mask_ratio=0.0, seed=seed)},
                 lora_rank=4)


def tiny(cfg: RunConfig) -> World:
    """SD-Turbo's classes at toy size with random weights, for tests and the JPEG smoke table.

    Its "encoder" features are a frozen random ResNet (a fixed random feature map, not a pretrained MAE).
    """
    gen = tiny_sd(seed=0, lora_rank=cfg.lora_rank or 4, device=device_for(cfg), dtype=dtype_for(cfg))
    return _tiny_world("tiny", gen, seed=0, split_seed=cfg.split_seed)


def tiny_xl(cfg: RunConfig) -> World:
    """SDXL-Turbo's classes (two encoders, pooled embeddings, time ids) at toy size."""
    gen = tiny_sdxl(seed=0, lora_rank=cfg.lora_rank or 4, device=device_for(cfg), dtype=dtype_for(cfg))
    return _tiny_world("tiny-xl", gen, seed=0, split_seed=cfg.split_seed)


def _real(cfg: RunConfig, family: str, name: str, resolution: int) -> World:
    if not cfg.model:
        raise ValueError(f"profile '{name}' needs --model PATH_OR_ID (a local diffusers directory or a cached Hub id)")
    device, dtype = device_for(cfg), dtype_for(cfg)
    gen = from_pretrained(cfg.model, family=family, name=name, resolution=resolution,
                          lora_rank=cfg.lora_rank or 16, device=device, dtype=dtype)
    return World(name=name, generator=gen, splits={}, default_reward=DEFAULT_REWARDS[name],
                 default_evals=("pickscore",),
                 feature_factories={"encoder": lambda: _mae256(cfg.features_path, device),
                                    "latent": raw_latent_features, "latent-tokens": latent_token_features,
                                    "pixel": pixel_features,
                                    "vit-mae": lambda: _vit_mae(cfg.features_path, device, cfg.seed),
                                    "vit-mae-full": lambda: _vit_mae(cfg.features_path, device, cfg.seed, 0.0)})


def _mae256(path: str, device: torch.device) -> FeatureMap:
    """The drifting release's latent MAE-256 in the official torch-port format (``mae_latent_256_torch.pth``),
    with the six ``layer4_*`` keys of DrPO's SD-Turbo script. It runs in the checkpoint's dtype, as official
    (harness/mae.py)."""
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"latent MAE-256 weights not found at '{path}'; pass --features-path "
                                "(the drifting release's mae_latent_256, official torch-port format), or use "
                                "--drpo.features latent/pixel")
    return load_mae_encoder(path, SD_TURBO_KEYS).to(device)


def _vit_mae(path: str, device: torch.device, seed: int, mask_ratio: float | None = None) -> FeatureMap:
    """SDXL-Turbo DrPO's MAE variant: ViT-MAE-base layer-12 patch mean/std and CLS on decoded images, from a
    local facebook/vit-mae-base directory, in float32 as official; ``vit-mae`` keeps the released 0.75 random
    masking the official script runs with, ``vit-mae-full`` every patch (harness/vitmae.py)."""
    return load_vit_mae(path, SDXL_KEYS, mask_ratio=mask_ratio, seed=seed).to(device)


def sd_turbo(cfg: RunConfig) -> World:
    """SD-Turbo (SD 2.1 UNet at t=999, OpenCLIP-H text) from local weights, LoRA r=16, 512 px."""
    return _real(cfg, "sd", "sd-turbo", 512)


def sdxl_turbo(cfg: RunConfig) -> World:
    """SDXL-Turbo (two text encoders, pooled embeddings, time ids) from local weights, LoRA r=16, 512 px."""
    return _real(cfg, "sdxl", "sdxl-turbo", 512)
