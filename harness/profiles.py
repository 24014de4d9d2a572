"""Generator profiles: a generator plus the prompts, rewards and feature spaces that go with it.

``PROFILES`` maps each name to a builder ``(RunConfig) -> World``. Real profiles load weights from local
paths only; ``tiny`` and ``tiny-xl`` build SD-Turbo's and SDXL-Turbo's classes at toy size, offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from harness import archs
from harness.api import Generator
from harness.config import RunConfig
from harness.mae import SD_TURBO_KEYS, MAELatentFeatures, load_mae_encoder
from harness.registry import Registry
from harness.vitmae import SDXL_KEYS, load_vit_mae, random_vit_mae

PROFILES = Registry("profile", {
    "shapes": "harness.profiles:shapes",
    "tiny": "harness.profiles:tiny",
    "tiny-xl": "harness.profiles:tiny_xl",
    "sd-turbo": "harness.profiles:sd_turbo",
    "sdxl-turbo": "harness.profiles:sdxl_turbo",
    "sd-turbo-random": "harness.profiles:sd_turbo_random",
    "sdxl-turbo-random": "harness.profiles:sdxl_turbo_random",
})

FeatureMap = Callable[[Tensor], dict[str, Tensor]]


@dataclass
class World:
    """What a profile provides to a run."""

    name: str
    generator: Generator
    splits: dict[str, list[str]]
    """Prompt splits by name: "train", "val" (tuning, selection), "test" (the final table only), "heldout"."""
    default_reward: str
    default_evals: tuple[str, ...]
    feature_factories: dict[str, Callable[[], FeatureMap]]
    """Feature spaces by name; built on first use (the encoder may need local weights)."""
    pixel_spaces: frozenset[str] = frozenset({"pixel", "vit-mae", "vit-mae-full"})
    """Feature spaces that read decoded images rather than latents."""
    sample_prompts: Callable[[np.random.Generator, Sequence[str], int], list[str]] | None = None
    """How to draw a micro-batch's prompts (default: uniform without replacement)."""
    offline: object | None = None
    """An offline preference data set with ``anchors(prompts, m, rng)`` (offline DrPO), if any."""
    lora_rank: int = 16
    small_decoder: Callable[[Tensor], Tensor] | None = None
    """A cheaper decoder (latents -> images in [0, 1]) for the small-decoder reward economy, if any."""
    check_prompt: Callable[[str], None] | None = None
    """Raises ValueError for a prompt this world cannot use (checked on prompt files before any run starts)."""
    _features: dict[str, FeatureMap] = field(default_factory=dict)

    def features(self, space: str) -> FeatureMap:
        if space not in self.feature_factories:
            raise ValueError(f"unknown feature space '{space}'; valid spaces: {', '.join(self.feature_factories)}")
        if space not in self._features:
            self._features[space] = self.feature_factories[space]()
        return self._features[space]

    def prompts(self, spec: str) -> list[str]:
        """A split by name, or the non-empty lines of a text file."""
        if spec in self.splits:
            prompts = list(self.splits[spec])
        elif Path(spec).is_file():
            try:
                lines = Path(spec).read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as exc:
                raise ValueError(f"prompt file {spec} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                                 f"offset {exc.start})") from None
            prompts = [line.strip() for line in lines if line.strip()]
            if self.check_prompt is not None:
                for lineno, prompt in enumerate((p.strip() for p in lines), start=1):
                    if prompt:
                        try:
                            self.check_prompt(prompt)
                        except ValueError as exc:
                            raise ValueError(f"{spec}:{lineno}: {exc} (profile '{self.name}' needs prompts "
                                             "it can score)") from None
        elif self.splits and "/" not in spec and "." not in spec:
            from harness.registry import unknown

            raise unknown(f"split of profile '{self.name}' (or prompt file)", spec, list(self.splits))
        else:
            raise ValueError(f"prompts '{spec}' is neither a split of profile '{self.name}' "
                             f"({', '.join(self.splits) or 'none'}) nor an existing file")
        if not prompts:
            raise ValueError(f"prompt set '{spec}' is empty")
        return prompts


def device_for(cfg: RunConfig) -> torch.device:
    """The run's device; in a data-parallel run on GPUs, this process's own GPU."""
    from harness import distributed

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", distributed.current().local_rank)


def dtype_for(cfg: RunConfig) -> torch.dtype:
    """The frozen weights' dtype under ``cfg.mixed_precision`` on the run's device (float32 on CPU)."""
    from harness.precision import dtype_for as resolve

    return resolve(cfg.mixed_precision, device_for(cfg))


# -- feature spaces shared by every profile ---------------------------------------------------

def raw_latent_features() -> FeatureMap:
    """The whole latent as one token, (B, 1, C*h*w). A harness feature space: the official latent extractor
    (``DirectLatentFeatureExtractor``, features.py@dd473d8:162-217) has no such key; its statistics are
    ``latent-tokens``."""
    return lambda x: {"latent": x.flatten(1)[:, None, :]}


LATENT_TOKEN_KEYS = ("layer0_mean", "layer0_std", "layer0_mean_2", "layer0_std_2", "layer0_mean_4", "layer0_std_4")


def latent_token_features() -> FeatureMap:
    """The official drifting extractor's statistics taken on the raw latent (B, C, h, w): per-position tokens
    ``latent_tokens`` (B, hw, C), global ``latent_mean``/``latent_std`` (B, 1, C) and 2x2 / 4x4 patch mean/std
    ``latent_mean_2`` ... (B, hw/s^2, C); each key is its own drift problem."""
    from harness.features import multiscale_features

    def fmap(x: Tensor) -> dict[str, Tensor]:
        out = {"latent_tokens": x.flatten(2).transpose(1, 2)}
        stats = multiscale_features({"layer0": x}, LATENT_TOKEN_KEYS)
        out.update({"latent_" + k[len("layer0_"):]: v for k, v in stats.items()})
        return out
    return fmap


def pixel_features(max_side: int = 64) -> FeatureMap:
    """Decoded pixels, average-pooled to at most ``max_side``, as one token (B, 1, 3*s*s)."""
    def fmap(images: Tensor) -> dict[str, Tensor]:
        if images.shape[-1] > max_side:
            images = torch.nn.functional.adaptive_avg_pool2d(images, max_side)
        return {"pixel": images.flatten(1)[:, None, :]}
    return fmap


def _random_encoder(seed: int, in_channels: int, keys: Sequence[str]) -> Callable[[], FeatureMap]:
    def build() -> FeatureMap:
        from harness.features import LatentFeatures, ResNetEncoder

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
    return World(name=name, generator=generator, splits=tiny_prompts(split_seed), default_reward="jpeg",
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
    from harness.generator import tiny_sd

    gen = tiny_sd(seed=0, lora_rank=cfg.lora_rank or 4, device=device_for(cfg), dtype=dtype_for(cfg))
    return _tiny_world("tiny", gen, seed=0, split_seed=cfg.split_seed)


def tiny_xl(cfg: RunConfig) -> World:
    """SDXL-Turbo's classes (two encoders, pooled embeddings, time ids) at toy size."""
    from harness.generator import tiny_sdxl

    gen = tiny_sdxl(seed=0, lora_rank=cfg.lora_rank or 4, device=device_for(cfg), dtype=dtype_for(cfg))
    return _tiny_world("tiny-xl", gen, seed=0, split_seed=cfg.split_seed)


def _real(cfg: RunConfig, family: str, name: str, resolution: int) -> World:
    from harness.generator import from_pretrained

    if not cfg.model:
        raise ValueError(f"profile '{name}' needs --model PATH_OR_ID (a local diffusers directory or a cached Hub id)")
    device, dtype = device_for(cfg), dtype_for(cfg)
    gen = from_pretrained(cfg.model, family=family, name=name, resolution=resolution,
                          lora_rank=cfg.lora_rank or 16, device=device, dtype=dtype)
    return World(name=name, generator=gen, splits={}, default_reward="pickscore",
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


def shapes(cfg: RunConfig) -> World:
    """The embedded default: the Shapes world's pretrained generator, rewards and latent MAE."""
    from harness.shapes.profile import build

    return build(cfg)


def _random_full_size(cfg: RunConfig, family: str) -> World:
    """A full-size generator with random weights built from ``harness/configs`` (no download), for
    ``driftbench profile-step`` timing on a GPU: timing does not depend on weight values."""
    from harness.generator import OneStepGenerator, word_tokenizer

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
    features = {"encoder": lambda: _random_mae(device), "latent": raw_latent_features,
                "latent-tokens": latent_token_features, "pixel": pixel_features,
                "vit-mae": lambda: _random_vit_mae(device, cfg.seed),
                "vit-mae-full": lambda: _random_vit_mae(device, cfg.seed, 0.0)}
    return World(name=gen.name, generator=gen, splits=tiny_prompts(cfg.split_seed), default_reward="pickscore",
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
