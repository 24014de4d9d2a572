"""The official latent MAE-256 encoder (the drifting release's ResNet, as DrPO's SD-Turbo trainer loads it).

What ``mae_latent_256_torch.pth`` holds and how the official code reads it (UGVly/DrPO ``src/drpo/features.py``
``load_mae_checkpoint`` and ``FrozenMAELatentFeatureExtractor``, ``src/drpo/utils/tensors.py``; lambertae/drifting
``models/mae_model.py`` ``_BasicBlock`` and ``_ResNetEncoder``):

* **File.** A dict with ``state_dict`` (and optional ``metadata``), a dict with ``model_state_dict``, or a bare
  dict of tensors; the prefixes ``module.`` and ``_orig_mod.`` are stripped. ``metadata.model_config`` may give
  ``layers`` (default [3, 4, 6, 3]) and ``in_channels`` (default: inferred from the stem kernel).
* **Names.** ``encoder.conv1``, ``encoder.gn1``; per block ``encoder.stages_{s}.layers_{b}.{conv1,gn1,conv2,gn2}``
  and, where the residual changes shape, ``.proj_conv`` / ``.proj_gn``; after each stage ``encoder.layer{s+1}_norm``.
  Convolutions are ``.kernel`` or ``.weight`` in JAX HWIO or torch OIHW layout (the official code tells them
  apart by which axis matches the input channels, HWIO first); norms are ``.scale`` or ``.weight`` plus ``.bias``.
* **Forward.** conv3x3 -> GroupNorm -> ReLU; each block is conv3x3 (stride 2 on the first block of stages 2-4)
  -> GN -> ReLU -> conv3x3 -> GN, plus the residual (conv1x1 + GN where the shape changes), then ReLU; a GroupNorm
  after each stage. Groups: the largest divisor of C up to 32. Widths base, 2 base, 4 base, 8 base. GroupNorm eps
  is 1e-5, the official torch port's (the JAX original uses flax's 1e-6; the port is what DrPO ran).
* **Features** (``vector_features``): for every map ``conv1``, ``layer{s}`` and ``layer{s}_blk{b}`` (every
  ``block_stride``-th block short of the last), ``{name}_mean`` and ``{name}_std`` (B, 1, C) and, for patch sizes
  2 and 4 where they tile the map, ``{name}_mean_{p}`` / ``{name}_std_{p}`` (B, hw/p^2, C) over non-overlapping
  p x p patches in row-major order. std = sqrt(var + 1e-6), computed in float32 and cast back. The encoder runs in
  its weights' dtype (the official extractor keeps its tensors in a plain dict that accelerate moves but never
  casts, so latents are cast to the checkpoint's dtype).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_LAYERS = (3, 4, 6, 3)
SD_TURBO_KEYS = ("layer4_mean", "layer4_std", "layer4_mean_2", "layer4_std_2", "layer4_mean_4", "layer4_std_4")
"""The keys DrPO's SD-Turbo launch script drifts (drpo.sh@61329a4 ``--drifting_feature_keys``)."""
GN_EPS = 1e-5
STD_EPS = 1e-6
_PREFIXES = ("module.", "_orig_mod.")


def gn_groups(channels: int, max_groups: int = 32) -> int:
    """The official group count: the largest divisor of ``channels`` that is at most ``max_groups``."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def safe_std(x: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    """Population std plus 1e-6 under the root, computed in float32 and returned in ``x``'s dtype."""
    x32 = x.float()
    var = (x32 - x32.mean(dim=dim, keepdim=True)).pow(2).mean(dim=dim)
    return torch.sqrt(var.clamp_min(0.0) + STD_EPS).to(x.dtype)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(gn_groups(channels), channels, eps=GN_EPS)


class Block(nn.Module):
    """``_BasicBlock``: (B, c_in, h, w) -> (B, c_out, h / stride, w / stride)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.gn1 = _gn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.gn2 = _gn(c_out)
        if stride != 1 or c_in != c_out:  # the official block projects only where the residual's shape differs
            self.proj_conv = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)
            self.proj_gn = _gn(c_out)

    def forward(self, x: Tensor) -> Tensor:
        y = self.gn2(self.conv2(F.relu(self.gn1(self.conv1(x)))))
        residual = self.proj_gn(self.proj_conv(x)) if hasattr(self, "proj_conv") else x
        return F.relu(residual + y)


class MAELatentEncoder(nn.Module):
    """The official ``_ResNetEncoder``; its state dict uses the official names (``encoder.stages_0.layers_0...``)."""

    def __init__(self, in_channels: int = 4, base_width: int = 256, layers: Sequence[int] = DEFAULT_LAYERS):
        super().__init__()
        if not layers or min(layers) < 1:
            raise ValueError(f"layers must be a non-empty list of positive block counts, got {list(layers)}")
        self.in_channels, self.base_width, self.layers = in_channels, base_width, tuple(int(n) for n in layers)
        enc = self.encoder = nn.Module()
        enc.conv1 = nn.Conv2d(in_channels, base_width, 3, 1, 1, bias=False)
        enc.gn1 = _gn(base_width)
        c_in = base_width
        for s, n_blocks in enumerate(self.layers):
            c_out = base_width * 2 ** s
            stage = nn.Module()
            for b in range(n_blocks):
                stage.add_module(f"layers_{b}", Block(c_in if b == 0 else c_out, c_out, 2 if s > 0 and b == 0 else 1))
            enc.add_module(f"stages_{s}", stage)
            enc.add_module(f"layer{s + 1}_norm", _gn(c_out))
            c_in = c_out

    def forward(self, x: Tensor) -> Tensor:
        """The last stage's normalised map (B, 8 base, h / 8, w / 8)."""
        return self.spatial_features(x, block_stride=0)[f"layer{len(self.layers)}"]

    def spatial_features(self, x: Tensor, block_stride: int = 2) -> dict[str, Tensor]:
        """Every official map: ``conv1``, ``layer{s}_blk{b}`` (b a multiple of ``block_stride`` below the stage's
        block count) and ``layer{s}`` (after the stage norm), each (B, C, h, w)."""
        enc = self.encoder
        x = F.relu(enc.gn1(enc.conv1(x)))
        maps = {"conv1": x}
        for s, n_blocks in enumerate(self.layers):
            for b in range(n_blocks):
                x = getattr(getattr(enc, f"stages_{s}"), f"layers_{b}")(x)
                if block_stride and (b + 1) % block_stride == 0 and b + 1 < n_blocks:
                    maps[f"layer{s + 1}_blk{b + 1}"] = x
            x = maps[f"layer{s + 1}"] = getattr(enc, f"layer{s + 1}_norm")(x)
        return maps


def vector_features(maps: dict[str, Tensor], patch_sizes: Sequence[int] = (2, 4)) -> dict[str, Tensor]:
    """The official ``vector_features`` of spatial maps: {name}_mean/_std (B, 1, C) and p x p patch
    {name}_mean_{p}/_std_{p} (B, hw/p^2, C) for every p that tiles the map."""
    out: dict[str, Tensor] = {}
    for name, value in maps.items():
        b, c, h, w = value.shape
        out[f"{name}_mean"] = value.mean(dim=(2, 3)).unsqueeze(1)
        out[f"{name}_std"] = safe_std(value, dim=(2, 3)).unsqueeze(1)
        for p in sorted({int(p) for p in patch_sizes if int(p) > 1}):
            if h % p or w % p:
                continue
            patches = value.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p, c)
            out[f"{name}_mean_{p}"] = patches.mean(dim=2)
            out[f"{name}_std_{p}"] = safe_std(patches, dim=2)
    return out


class MAELatentFeatures(nn.Module):
    """A frozen official MAE encoder as a feature map: latents (B, C, h, w) -> {key: (B, N, D)}.

    ``keys`` None returns every key the official ``vector_features`` makes. Frozen and always in eval mode; the
    output stays differentiable with respect to the latents.
    """

    def __init__(self, encoder: MAELatentEncoder, keys: Sequence[str] | None = None, *, block_stride: int = 2,
                 patch_sizes: Sequence[int] = (2, 4)):
        super().__init__()
        self.mae = encoder.eval().requires_grad_(False)
        self.keys = tuple(keys) if keys is not None else None
        self.block_stride, self.patch_sizes = max(int(block_stride), 0), tuple(patch_sizes)

    def train(self, mode: bool = True) -> "MAELatentFeatures":
        return super().train(False)  # a fixed function whatever mode its parent is in

    def forward(self, latents: Tensor) -> dict[str, Tensor]:
        if latents.ndim != 4 or latents.shape[1] != self.mae.in_channels:
            raise ValueError(f"MAE encoder expects latents (B, {self.mae.in_channels}, H, W), "
                             f"got {tuple(latents.shape)}")
        maps = self.mae.spatial_features(latents.to(self.mae.encoder.conv1.weight.dtype), self.block_stride)
        feats = vector_features(maps, self.patch_sizes)
        if self.keys is None:
            return feats
        missing = [k for k in self.keys if k not in feats]
        if missing:
            raise ValueError(f"MAE feature keys {missing} not produced; available: {', '.join(sorted(feats))}")
        return {k: feats[k] for k in self.keys}


# -- loading -------------------------------------------------------------------------------------------

def _unwrap(obj: Any, path: str) -> tuple[dict[str, Tensor], dict]:
    """The official loader's three formats -> (state dict with prefixes stripped, metadata)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, meta = obj["state_dict"], obj.get("metadata") or {}
    elif isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
        state, meta = obj["model_state_dict"], obj.get("metadata") or {}
    elif isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state, meta = obj, {}
    else:
        raise ValueError(f"{path}: not an MAE checkpoint (expected a dict with 'state_dict' or 'model_state_dict', "
                         "or a dict of tensors)")
    clean = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        clean[key] = value
    return clean, meta if isinstance(meta, dict) else {}


def _torch_state(state: dict[str, Tensor], in_channels_of: dict[str, int]) -> dict[str, Tensor]:
    """Official names -> this module's: ``.kernel`` -> ``.weight`` (HWIO permuted to OIHW when its third axis is
    the layer's input channels, the official rule), ``.scale`` -> ``.weight``."""
    out = {}
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".")
        name = f"{stem}.weight" if leaf in ("kernel", "scale") else key
        if value.ndim == 4 and name in in_channels_of and value.shape[2] == in_channels_of[name]:
            value = value.permute(3, 2, 0, 1)
        out.setdefault(name, value.contiguous())  # "kernel" before "weight", as the official .get order
    return out


def _brief(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def load_mae_encoder(path: str | Path, keys: Sequence[str] | None = None, *, block_stride: int = 2,
                     patch_sizes: Sequence[int] = (2, 4)) -> MAELatentFeatures:
    """Load an official-format latent MAE checkpoint as a frozen feature map (see the module docstring).

    Raises ValueError in one line naming the file and the first missing, unexpected or misshapen keys.
    """
    path = str(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a file that is not a checkpoint
        raise ValueError(f"{path}: cannot be read as a torch checkpoint ({str(exc).splitlines()[0][:160]})") from None
    state, meta = _unwrap(obj, path)
    config = meta.get("model_config") or {}
    layers = tuple(int(n) for n in config.get("layers", DEFAULT_LAYERS))
    stem = state.get("encoder.conv1.kernel", state.get("encoder.conv1.weight"))
    if stem is None or stem.ndim != 4:
        raise ValueError(f"{path}: not an official MAE checkpoint: no 4-d encoder.conv1.kernel or .weight "
                         f"(first keys: {_brief(sorted(state))})")
    in_channels = int(config.get("in_channels", stem.shape[2] if stem.shape[2] <= 16 else stem.shape[1]))
    base = int(stem.shape[3] if stem.shape[2] == in_channels else stem.shape[0])
    model = MAELatentEncoder(in_channels, base, layers)
    expected = model.state_dict()
    conv_in = {n: m.in_channels for n, m in ((f"{k}.weight", m) for k, m in model.named_modules())
               if isinstance(m, nn.Conv2d)}
    given = _torch_state(state, conv_in)
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    misshapen = [f"{k} {tuple(given[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in given and given[k].shape != v.shape]
    if missing or unexpected or misshapen:
        parts = [f"{label} [{_brief(names)}]" for label, names in
                 (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)) if names]
        raise ValueError(f"{path}: not an official MAE checkpoint for in_channels {in_channels}, base width {base}, "
                         f"layers {list(layers)}: " + "; ".join(parts))
    dtype = given["encoder.conv1.weight"].dtype
    model.to(dtype).load_state_dict(given)
    return MAELatentFeatures(model, keys, block_stride=block_stride, patch_sizes=patch_sizes)
