"""Full-size SD-Turbo and SDXL-Turbo generators with random weights, built from ``harness/configs`` (no
download): ``driftbench profile-step`` times real updates on them, since timing does not depend on weight values."""

from __future__ import annotations

import torch

from harness.compute import archs
from harness.config import RunConfig
from harness.features import LatentFeatures
from harness.generator import OneStepGenerator, word_tokenizer
from harness.profiles import DEFAULT_REWARDS, tiny_prompts
from harness.world import (
    FeatureMap,
    World,
    device_for,
    dtype_for,
    latent_token_features,
    pixel_features,
    raw_latent_features,
)


def _random_full_size(cfg: RunConfig, family: str) -> World:
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
    gen = OneStepGenerator(name=f"{prefix}-turbo-random", family=family, unet=unet, vae=vae, text_encoders=encoders,
                           tokenizers=tokenizers, resolution=512, lora_rank=cfg.lora_rank or 16, device=device,
                           dtype=dtype)
    features = {"encoder": lambda: _random_mae(device, dtype), "latent": raw_latent_features,
                "latent-tokens": latent_token_features, "pixel": pixel_features}
    return World(name=gen.name, generator=gen, splits=tiny_prompts(cfg.split_seed), default_reward=DEFAULT_REWARDS[gen.name],
                 default_evals=("pickscore",), feature_factories=features)


def _random_mae(device: torch.device, dtype: torch.dtype = torch.float32) -> FeatureMap:
    keys = ("layer4_mean", "layer4_std", "layer4_mean_2", "layer4_std_2", "layer4_mean_4", "layer4_std_4")
    return LatentFeatures(archs.build_random("mae-latent-256", device=device), keys).to(device, dtype)


def sd_turbo_random(cfg: RunConfig) -> World:
    """SD-Turbo at full size with random weights (timing only; prompts are the tiny set)."""
    return _random_full_size(cfg, "sd")


def sdxl_turbo_random(cfg: RunConfig) -> World:
    """SDXL-Turbo at full size with random weights (timing only; prompts are the tiny set)."""
    return _random_full_size(cfg, "sdxl")
