"""What a profile gives a run: the ``World`` (generator, prompt splits, rewards, feature spaces), the run's
device and dtype, and the feature spaces every profile shares.

Kept apart from ``harness.profiles`` (the registry and the built-in profiles) so that a profile defined
elsewhere (``harness/shapes/profile.py``, ``harness/compute/random_profiles.py``) builds a World without
importing the registry that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from harness import distributed
from harness.api import Generator
from harness.config import RunConfig
from harness.features import multiscale_features
from harness.precision import dtype_for as resolve_dtype
from harness.registry import unknown

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
    check_splits: Callable[[dict[str, list[str]]], None] | None = None
    """Raises a one-line ValueError naming both prompts when two of a run's prompt sets (train, eval, test; splits
    or files) state the same task, for worlds whose splits are disjoint by task (the Shapes world's edition 2)."""
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
            raise unknown(f"split of profile '{self.name}' (or prompt file)", spec, list(self.splits))
        else:
            raise ValueError(f"prompts '{spec}' is neither a split of profile '{self.name}' "
                             f"({', '.join(self.splits) or 'none'}) nor an existing file")
        if not prompts:
            raise ValueError(f"prompt set '{spec}' is empty")
        return prompts


def device_for(cfg: RunConfig) -> torch.device:
    """The run's device; in a data-parallel run on GPUs, this process's own GPU."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", distributed.current().local_rank)


def dtype_for(cfg: RunConfig) -> torch.dtype:
    """The frozen weights' dtype under ``cfg.mixed_precision`` on the run's device (float32 on CPU)."""
    return resolve_dtype(cfg.mixed_precision, device_for(cfg))


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
