"""Full-size SD-Turbo and SDXL-Turbo generators with random weights, built from ``harness/configs`` (no
download): ``driftbench profile-step`` times real updates on them, since timing does not depend on weight values."""

from __future__ import annotations

import torch

from harness.compute import archs
from harness.config import RunConfig
from harness.generator import OneStepGenerator, word_tokenizer
from harness.mae import SD_TURBO_KEYS, MAELatentFeatures
from harness.profiles import DEFAULT_REWARDS, tiny_prompts
from harness.vitmae import SDXL_KEYS, random_vit_mae
from harness.world import (
    FeatureMap,
    World,
    device_for,
    dtype_for,
    latent_token_features,
    pixel_features,
    raw_latent_features,
)


def _random_full_size(cfg: RunConfig, family: str, resolution: int = 512) -> World:
    """A full-size generator with random weights built from ``harness/configs`` (no download), for
    ``driftbench profile-step`` timing on a GPU: timing does not depend on weight values."""
    device, dtype = device_for(cfg), dtype_for(cfg)
    prefix = "sd" if family == "sd" else "sdxl"
    unet = archs.build_random(f"{prefix}-turbo-unet", device=device)
    vae = archs.build_random(f"{prefix}-vae", device=device)
    if family == "sd":
        encoders = [archs.build_random("openclip-h-text", device=device)]
    else:
        both = archs.build_random("sdxl-text-encoders", device=device)
        encoders = [both["text_encoder"], both["text_encoder_2"]]
    tokenizers = [word_tokenizer(max_length=77) for _ in encoders]
    name = f"{prefix}-turbo-random" + ("" if resolution == 512 else f"-{resolution}")
    gen = OneStepGenerator(name=name, family=family, unet=unet, vae=vae, text_encoders=encoders,
                           tokenizers=tokenizers, resolution=resolution, lora_rank=cfg.lora_rank or 16, device=device,
                           dtype=dtype)
    features = {"encoder": lambda: _random_mae(device), "latent": raw_latent_features,
                "latent-tokens": latent_token_features, "pixel": pixel_features,
                "vit-mae": lambda: _random_vit_mae(device, cfg.seed),
                "vit-mae-full": lambda: _random_vit_mae(device, cfg.seed, 0.0)}
    return World(name=gen.name, generator=gen, splits=tiny_prompts(cfg.split_seed), default_reward=DEFAULT_REWARDS[gen.name],
                 default_evals=("pickscore",), feature_factories=features)


def _random_mae(device: torch.device) -> FeatureMap:
    """The official MAE-256 architecture with random weights (harness/configs/mae-latent-256.json), in float32
    whatever the run's precision: the official HPSv3 timing script moves its MAE to float32
    (train_hpsv3_wallclock_ddp.py@61329a4:476) and the trainer keeps the checkpoint's dtype."""
    return MAELatentFeatures(archs.build_random("mae-latent-256", device=device), SD_TURBO_KEYS).to(device)


def _random_vit_mae(device: torch.device, seed: int, mask_ratio: float | None = None) -> FeatureMap:
    """ViT-MAE-base (harness/configs/vit-mae-base.json) with random weights, float32, the SDXL keys."""
    return random_vit_mae(archs.build_random("vit-mae-base", device=device), keys=SDXL_KEYS, mask_ratio=mask_ratio,
                          seed=seed).to(device)


def sd_turbo_random(cfg: RunConfig) -> World:
    """SD-Turbo at full size with random weights (timing only; prompts are the tiny set)."""
    return _random_full_size(cfg, "sd")


def sdxl_turbo_random(cfg: RunConfig) -> World:
    """SDXL-Turbo at full size with random weights (timing only; prompts are the tiny set)."""
    return _random_full_size(cfg, "sdxl")


def sd_turbo_random_256(cfg: RunConfig) -> World:
    """SD-Turbo at full size with random weights at 256 px (32x32 latents): every network at full size, a quarter
    of the pixels; the CPU smoke run's size (``nox -s paper_smoke``)."""
    return _random_full_size(cfg, "sd", resolution=256)
