"""Feature encoders for drift losses: a GroupNorm ResNet encoder and its multi-scale mean/std features.

DrPO (drpo-method.md sections 1.3 and 2.3) compares generated and anchor samples in the feature space of
a frozen latent MAE encoder. The drifting release's ``_ResNetEncoder`` is a conv3x3 stem at stride 1
followed by stages of GroupNorm basic blocks that halve the resolution from the second stage on; its
``get_activations`` turns each stage's map into tokens: global mean/std and mean/std over p x p patches.
This module rebuilds that shape of encoder (any width, depth and input channels, so the same code serves
SD-Turbo's 4x64x64 latents with the MAE-256 and the Shapes world's 4x16x16 latents) and the feature keys.

That encoder (SiLU, no stage norms) is the Shapes world's own. The official MAE-256 that DrPO's SD-Turbo
trainer loads (ReLU, a GroupNorm after every stage, the official parameter names and checkpoint formats) is
:mod:`harness.mae`; :func:`load_mae_encoder` is re-exported here.

Key grammar for :func:`multiscale_features`: ``<stage>_mean`` / ``<stage>_std`` (global, N = 1) and
``<stage>_mean_<p>`` / ``<stage>_std_<p>`` (non-overlapping p x p patches, N = h*w/p^2), where
``<stage>`` is ``conv1`` or ``layer1`` ... ``layerK``.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from harness.mae import load_mae_encoder, safe_std

__all__ = ["BasicBlock", "LatentFeatures", "ResNetEncoder", "load_mae_encoder", "multiscale_features", "parse_key"]

_KEY = re.compile(r"^(?P<stage>conv1|layer\d+)_(?P<stat>mean|std)(?:_(?P<patch>\d+))?$")


def _groups(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= ``max_groups`` that divides ``channels`` (GroupNorm needs a divisor)."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


class BasicBlock(nn.Module):
    """Two 3x3 convs with GroupNorm + SiLU and a residual; ``stride`` 2 halves h and w.

    (B, c_in, h, w) -> (B, c_out, h / stride, w / stride).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(_groups(c_out), c_out)))

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.silu(h + self.skip(x))


class ResNetEncoder(nn.Module):
    """GroupNorm ResNet encoder: stem conv3x3 (stride 1), then ``len(layers)`` stages of basic blocks.

    Stage ``i`` (1-based) has ``base_width * 2**(i-1)`` channels and ``layers[i-1]`` blocks; stages from
    the second on start with a stride-2 block. Input (B, in_channels, h, w); stage ``i`` has spatial size
    (h / 2**(i-1), w / 2**(i-1)). The latent MAE-256 is ``ResNetEncoder(4, 256, (3, 4, 6, 3))``.
    """

    def __init__(self, in_channels: int, base_width: int, layers: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        if not layers or min(layers) < 1:
            raise ValueError(f"layers must be a non-empty list of positive block counts, got {list(layers)}")
        self.in_channels, self.base_width, self.layers = in_channels, base_width, tuple(layers)
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, base_width, 3, 1, 1, bias=False),
                                   nn.GroupNorm(_groups(base_width), base_width), nn.SiLU())
        stages, c_in = [], base_width
        for i, n_blocks in enumerate(layers):
            c_out = base_width * 2 ** i
            blocks = [BasicBlock(c_in, c_out, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(c_out, c_out) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.ModuleList(stages)

    @property
    def stage_names(self) -> list[str]:
        return ["conv1"] + [f"layer{i + 1}" for i in range(len(self.stages))]

    def stage_channels(self, name: str) -> int:
        """Channel count of stage ``name`` (``conv1`` has ``base_width``)."""
        index = self.stage_names.index(name)
        return self.base_width * 2 ** max(index - 1, 0)

    def forward_stages(self, x: Tensor, upto: str | None = None) -> dict[str, Tensor]:
        """Every stage's activation: {"conv1": (B, base, h, w), "layer1": ..., "layerK": (B, C_K, h_K, w_K)}.

        ``upto`` stops after that stage (later stages are neither computed nor returned).
        """
        out = {"conv1": self.conv1(x)}
        h = out["conv1"]
        for name, stage in zip(self.stage_names[1:], self.stages):
            if upto == "conv1":
                break
            h = out[name] = stage(h)
            if name == upto:
                break
        return out

    def forward(self, x: Tensor) -> Tensor:
        """The last stage's map (B, C_K, h_K, w_K)."""
        return self.forward_stages(x)[self.stage_names[-1]]


def parse_key(key: str) -> tuple[str, str, int | None]:
    """``"layer4_std_2"`` -> ("layer4", "std", 2); ``"layer4_mean"`` -> ("layer4", "mean", None)."""
    match = _KEY.match(key)
    if match is None:
        raise ValueError(f"bad feature key '{key}': expected <conv1|layerN>_<mean|std>[_<patch>]")
    patch = match["patch"]
    return match["stage"], match["stat"], int(patch) if patch else None


def multiscale_features(stages: dict[str, Tensor], keys: Sequence[str]) -> dict[str, Tensor]:
    """Mean/std tokens of stage maps.

    ``stages``: {stage: (B, C, h, w)} as returned by :meth:`ResNetEncoder.forward_stages`.
    Returns {key: (B, N, C)}: N = 1 for global statistics, N = (h/p) * (w/p) for p x p patches
    (row-major patch order). The std is the population std plus 1e-6 under the root, computed in float32 and
    returned in the input's dtype (the official ``safe_std``; the means stay in the input's dtype).
    """
    out = {}
    for key in keys:
        stage, stat, patch = parse_key(key)
        if stage not in stages:
            raise ValueError(f"feature key '{key}' needs stage '{stage}', have {sorted(stages)}")
        x = stages[stage]
        b, c, h, w = x.shape
        p = patch or 1
        if patch is None:
            tokens = x.reshape(b, c, 1, h * w)
        elif h % p or w % p:
            raise ValueError(f"feature key '{key}': patch {p} does not tile the {h}x{w} map of '{stage}'")
        else:
            # (B, C, h/p, p, w/p, p) -> (B, C, N, p*p): one row of p*p values per patch.
            tokens = x.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, -1, p * p)
        mean = tokens.mean(dim=-1)
        value = mean if stat == "mean" else safe_std(tokens, dim=-1)
        out[key] = value.transpose(1, 2)  # (B, C, N) -> (B, N, C)
    return out


class LatentFeatures(nn.Module):
    """A frozen feature map: latents (B, C, h, w) -> {key: (B, N, D)}.

    The encoder's parameters are frozen and it runs in eval mode, but the output stays differentiable
    with respect to the input latents, which is all a drift loss needs.
    """

    def __init__(self, encoder: ResNetEncoder, keys: Sequence[str]):
        super().__init__()
        if not keys:
            raise ValueError("LatentFeatures needs at least one feature key")
        self.keys = tuple(keys)
        stage_order = encoder.stage_names
        needed = [parse_key(k)[0] for k in self.keys]
        bad = [s for s in needed if s not in stage_order]
        if bad:
            raise ValueError(f"feature keys need stages {bad} that the encoder lacks (has {stage_order})")
        self._upto = max(needed, key=stage_order.index)  # skip stages no key reads
        self.encoder = encoder.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "LatentFeatures":
        # Stays in eval mode: the wrapper is a fixed function whatever mode its parent is in.
        return super().train(False)

    def forward(self, latents: Tensor) -> dict[str, Tensor]:
        """latents (B, C, h, w) -> {key: (B, N, D)}, in the encoder's dtype (the run's mixed precision)."""
        dtype = next(self.encoder.parameters()).dtype
        stages = self.encoder.forward_stages(latents.to(dtype), upto=self._upto)
        return multiscale_features(stages, self.keys)
