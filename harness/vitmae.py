"""SDXL-Turbo DrPO's MAE feature space: ViT-MAE-base hidden states on decoded images, through transformers.

What the official code does (UGVly/DrPO ``src/drpo/methods/sdxl_drpo/trainer.py``@dd473d8,
``FrozenViTMAEImageFeatureExtractor``, run by ``scripts/train/sdxl_turbo_drpo_mae.sh``):

* **Model.** ``AutoModel.from_pretrained(<local facebook-vit-mae-base>, local_files_only=True)``, i.e.
  ``ViTMAEModel``, in float32, frozen and in eval mode. The script never sets ``mask_ratio``, so the released
  config's 0.75 applies: every call keeps a fresh random 25% of the 196 patches (49, plus CLS), drawn with
  ``torch.rand``. That is what the official features are, so it is this module's default; ``mask_ratio=0``
  (the space ``vit-mae-full``) keeps every patch and is deterministic. Here the masking noise comes from a
  generator the feature map owns, seeded from the run seed (no global RNG); a resumed run restarts that stream.
* **Preprocessing.** Decoded images in [-1, 1] are clamped, mapped to [0, 1], resized with
  ``F.interpolate(bicubic, align_corners=False)`` (no antialias) to the processor's size (224) when they differ,
  then normalised with the processor's ``image_mean`` / ``image_std``. The harness's decoded images are already
  ``clamp(x / 2 + 0.5, 0, 1)`` of the same decode, so only the clamp to [0, 1] is repeated.
* **Features** from ``hidden_states[L]`` (the L-th block's output, before the final layernorm):
  ``layer{L}_patch_mean`` (B, 1, 768) the mean over the kept patch tokens, ``layer{L}_patch_std`` (B, 1, 768)
  their std (sqrt(var + 1e-6), float32), ``layer{L}_cls`` (B, 1, 768) the CLS token. The script drifts
  ``layer12_patch_mean, layer12_patch_std, layer12_cls`` and averages the keys (``aggregation="mean"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.mae import safe_std

SDXL_KEYS = ("layer12_patch_mean", "layer12_patch_std", "layer12_cls")
"""``--mae_feature_keys`` of sdxl_turbo_drpo_mae.sh."""


class ViTMAEFeatures(nn.Module):
    """A frozen ViT-MAE as a feature map: images (B, 3, H, W) in [0, 1] -> {key: (B, 1, hidden)}.

    ``mask_ratio`` None keeps the model config's ratio (the official behaviour); the masking noise is drawn
    from a generator seeded with ``seed`` on first use.
    """

    def __init__(self, model: nn.Module, *, image_size: int, image_mean: Sequence[float], image_std: Sequence[float],
                 keys: Sequence[str] = SDXL_KEYS, mask_ratio: float | None = None, seed: int = 0):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        if mask_ratio is not None:
            if not 0 <= mask_ratio < 1:
                raise ValueError(f"ViT-MAE mask_ratio must be in [0, 1), got {mask_ratio}")
            model.config.mask_ratio = float(mask_ratio)
        self.image_size, self.keys, self.seed = int(image_size), tuple(keys), int(seed)
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1), False)
        layers = int(model.config.num_hidden_layers)
        self._layers = {}
        for key in self.keys:
            head, _, stat = key.partition("_")
            layer = int(head[5:]) if head.startswith("layer") and head[5:].isdigit() else -1
            if not 1 <= layer <= layers or stat not in ("patch_mean", "patch_std", "cls"):
                raise ValueError(f"bad ViT-MAE feature key '{key}': expected layer<1..{layers}>_"
                                 "<patch_mean|patch_std|cls>")
            self._layers[key] = (layer, stat)
        self._generator: torch.Generator | None = None

    def train(self, mode: bool = True) -> "ViTMAEFeatures":
        return super().train(False)

    @property
    def mask_ratio(self) -> float:
        return float(self.model.config.mask_ratio)

    def preprocess(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> the model's normalised pixel values, as the official ``_preprocess``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ViT-MAE features expect images (B, 3, H, W), got {tuple(images.shape)}")
        x = images.float().clamp(0, 1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return (x - self.image_mean.to(x.device)) / self.image_std.to(x.device)

    def noise(self, batch: int, device: torch.device) -> Tensor:
        """Masking noise (B, patches): the official ``torch.rand`` draw, from this map's own generator."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        patches = (self.image_size // int(self.model.config.patch_size)) ** 2
        return torch.rand(batch, patches, generator=self._generator, device=device)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        dtype = next(self.model.parameters()).dtype
        pixels = self.preprocess(images).to(dtype)
        hidden = self.model(pixel_values=pixels, noise=self.noise(pixels.shape[0], pixels.device),
                            output_hidden_states=True).hidden_states
        out = {}
        for key, (layer, stat) in self._layers.items():
            h = hidden[layer]
            if stat == "cls":
                out[key] = h[:, :1]
            elif stat == "patch_mean":
                out[key] = h[:, 1:].mean(dim=1, keepdim=True)
            else:
                out[key] = safe_std(h[:, 1:], dim=1).unsqueeze(1)
        return out


def processor_settings(directory: str | Path) -> dict[str, Any]:
    """``image_size``, ``image_mean``, ``image_std`` from a local ``preprocessor_config.json``, read as the
    official extractor reads the processor (``crop_size`` or ``size``: height, shortest_edge or width; 224)."""
    path = Path(directory) / "preprocessor_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"ViT-MAE directory '{directory}' has no preprocessor_config.json (download "
                                "facebook/vit-mae-base with its processor)")
    proc = json.loads(path.read_text())
    size = proc.get("crop_size") or proc.get("size") or {}
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or size.get("width") or 224
    return {"image_size": int(size or 224), "image_mean": proc["image_mean"], "image_std": proc["image_std"]}


def load_vit_mae(directory: str | Path, keys: Sequence[str] = SDXL_KEYS, *, mask_ratio: float | None = None,
                 seed: int = 0) -> ViTMAEFeatures:
    """The official SDXL MAE feature map from a local ``facebook/vit-mae-base`` directory (float32)."""
    from transformers import ViTMAEConfig, ViTMAEModel

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"ViT-MAE weights not found at '{directory}'; pass --features-path (a local "
                                "facebook/vit-mae-base directory), or use --drpo.features pixel")
    config = ViTMAEConfig.from_pretrained(str(directory), local_files_only=True)
    if config.model_type != "vit_mae":
        raise ValueError(f"{directory}: model_type '{config.model_type}' is not vit_mae")
    model = ViTMAEModel.from_pretrained(str(directory), config=config, local_files_only=True)
    return ViTMAEFeatures(model.float(), **processor_settings(directory), keys=keys, mask_ratio=mask_ratio, seed=seed)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
"""facebook/vit-mae-base's ``preprocessor_config.json`` ``image_mean`` / ``image_std``."""

TINY_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
               "image_size": 32, "patch_size": 8, "decoder_hidden_size": 16, "decoder_num_hidden_layers": 1,
               "decoder_num_attention_heads": 2, "decoder_intermediate_size": 32, "mask_ratio": 0.75}
"""A ViT-MAE at toy size (16 patches, 4 kept at the released 0.75) for the tiny profiles and tests."""
TINY_KEYS = ("layer2_patch_mean", "layer2_patch_std", "layer2_cls")


def random_vit_mae(model: nn.Module | None = None, *, keys: Sequence[str] = TINY_KEYS, mask_ratio: float | None = None,
                   seed: int = 0) -> ViTMAEFeatures:
    """A ViT-MAE feature map with random weights: ``model`` (e.g. ``archs.build_random("vit-mae-base")``) or,
    by default, :data:`TINY_CONFIG` built with ``seed``; ImageNet normalisation as the released processor."""
    if model is None:
        from transformers import ViTMAEConfig, ViTMAEModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ViTMAEModel(ViTMAEConfig(**TINY_CONFIG))
    return ViTMAEFeatures(model.float(), image_size=int(model.config.image_size), image_mean=IMAGENET_MEAN,
                          image_std=IMAGENET_STD, keys=keys, mask_ratio=mask_ratio, seed=seed)
