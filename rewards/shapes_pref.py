"""shapes-pref: a learned, differentiable preference reward for the Shapes world (the HPSv3 analog).

    image (B, 3, 64, 64) --[CoordConv GroupNorm ResNet]--> grid (B, C, 8, 8)
        --> per-cell evidence: objectness o (B, 64), shape probs (B, 64, 3), colour probs (B, 64, 4)
        --> quality logit q (B,) from the pooled grid
    prompt --[the world's grammar]--> clauses: include (class, count, colour), exclude (class, count),
                                       position (relation of group 1 to group 0)
    score = sum over clauses of log sigmoid(soft clause margin) + log sigmoid(q)       (B,), <= 0

The score reads as the log-probability that the image is correct and clean. Each clause's margin is a
differentiable relaxation of GenEval's rule on the learned evidence: the soft count of matching objects
sum_cells o * p(shape) [* p(colour)] against the clause's count, and the offset between the groups'
evidence-weighted centres against the relation's direction (the 0.5 cosine cut of GenEval's rule). The
tower, the evidence head, the quality head and the clause temperatures are all learned
(``harness/shapes/pretrain.py``, job ``reward``): per-cell object labels on renders, a logistic loss on
correct, one-clause-broken and damaged renders and on the verifier's labels for the pretrained
generator's samples, and Bradley-Terry pairs of the same prompt.

Why this head rather than a free-form fusion transformer over image and text tokens: the held-out prompts
are new compositions, and a fusion transformer trained for the same CPU time separated correct from
broken held-out renders with an AUC of only 0.64-0.72; a head that is compositional by construction
generalises to unseen combinations. Like HPSv3 against SD-Turbo's UNet, it costs several times the
generator's forward FLOPs per image (``python -m harness.shapes.measure`` reports the ratio; a test
checks >= 5x).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.features import BasicBlock
from harness.shapes.assets import load_asset
from harness.shapes.editions import EDITIONS, FIRST, SECOND, Edition
from harness.shapes.model import coords
from harness.shapes.prompts import parse_prompt

NAME = "shapes-pref"
VERSION = 2
GRID = 8
"""The image tower's output grid: one cell per 8x8 pixels."""
AUX_CHANNELS = 1 + 3 + 4
"""Edition 1's per-cell evidence logits: objectness, then shape (circle, square, triangle), then colour; an
edition's are 1 + its shapes + its colours (``PrefConfig.aux_channels``)."""
RELATION_AXES = {"left of": (0, -1.0), "right of": (0, 1.0), "above": (1, -1.0), "below": (1, 1.0)}
"""Relation of group 1 to group 0 -> (axis of the centre offset, sign that makes it hold); y grows down."""


@dataclass(frozen=True)
class PrefConfig:
    channels: tuple[int, int, int, int] = (32, 64, 128, 256)
    """Image tower widths at 64x64 (stem), 32x32, 16x16 and 8x8."""
    quality_hidden: int = 64
    """Hidden width of the quality head (pooled grid -> logit)."""
    count_temperature: float = 6.0
    """Initial slope of the count margins (per object); learned."""
    position_temperature: float = 20.0
    """Initial slope of the position margins (per image width); learned."""
    edition: int = 1
    """The Shapes world's edition whose shapes and colours the evidence head names (edition 1's asset predates
    the field, so its config has no such key and reads as 1)."""

    @property
    def world(self) -> Edition:
        return EDITIONS[self.edition]

    @property
    def aux_channels(self) -> tuple[int, int]:
        """(shape classes, colour classes) of the evidence head."""
        return len(self.world.shapes), len(self.world.colors)

    @staticmethod
    def from_dict(d: Mapping) -> "PrefConfig":
        return PrefConfig(**dict(d, channels=tuple(d["channels"])))

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=8192)
def _clauses(prompt: str, number: int = 1) -> tuple:
    """((class, colour or None, count) per include clause, (class, count) per exclude clause,
    (relation or None)) of a Shapes prompt of edition ``number``; raises on text outside its grammar."""

    meta = parse_prompt(prompt, EDITIONS[number])
    include = tuple((c["class"], c.get("color"), c["count"]) for c in meta["include"])
    exclude = tuple((c["class"], c["count"]) for c in meta.get("exclude", ()))
    positions = [(i, c["position"]) for i, c in enumerate(meta["include"]) if "position" in c]
    if len(include) > 2 or any(i != 1 or group != 0 for i, (_, group) in positions):
        raise ValueError(f"shapes-pref handles at most two groups with group 1 placed relative to group 0; "
                         f"prompt '{prompt}' does not fit")
    return include, exclude, positions[0][1][0] if positions else None


def clause_tensors(prompts: Sequence[str], ed: Edition = FIRST) -> dict[str, Tensor]:
    """Padded clause tables for B prompts of edition ``ed``: include class/colour (-1: any)/count/valid (B, 2),
    exclude class/count/valid (B,), relation axis/sign/valid (B,)."""

    shapes, colors, b = list(ed.shapes), list(ed.colors), len(prompts)
    t = {"inc_class": torch.zeros(b, 2, dtype=torch.long), "inc_color": torch.full((b, 2), -1, dtype=torch.long),
         "inc_count": torch.zeros(b, 2), "inc_valid": torch.zeros(b, 2, dtype=torch.bool),
         "exc_class": torch.zeros(b, dtype=torch.long), "exc_count": torch.zeros(b),
         "exc_valid": torch.zeros(b, dtype=torch.bool), "rel_axis": torch.zeros(b, dtype=torch.long),
         "rel_sign": torch.zeros(b), "rel_valid": torch.zeros(b, dtype=torch.bool)}
    for i, prompt in enumerate(prompts):
        include, exclude, relation = _clauses(prompt, ed.number)
        for j, (cls, color, count) in enumerate(include):
            t["inc_class"][i, j], t["inc_count"][i, j], t["inc_valid"][i, j] = shapes.index(cls), count, True
            if color is not None:
                t["inc_color"][i, j] = colors.index(color)
        for cls, count in exclude:
            t["exc_class"][i], t["exc_count"][i], t["exc_valid"][i] = shapes.index(cls), count, True
        if relation is not None:
            axis, sign = RELATION_AXES[relation]
            t["rel_axis"][i], t["rel_sign"][i], t["rel_valid"][i] = axis, sign, True
    return t


def include_weights(evidence: dict[str, Tensor], t: Mapping[str, Tensor]) -> Tensor:
    """Per-cell weight of each include clause's objects: o * p(class) * p(colour or 1), (B, 2, 64)."""
    shape = torch.gather(evidence["shape"], 2, t["inc_class"][:, None, :].expand(-1, GRID * GRID, -1))
    color_idx = t["inc_color"].clamp(min=0)[:, None, :].expand(-1, GRID * GRID, -1)
    color = torch.gather(evidence["color"], 2, color_idx)
    color = torch.where(t["inc_color"][:, None, :] >= 0, color, torch.ones_like(color))
    return (evidence["obj"][:, :, None] * shape * color).transpose(1, 2)


def count_terms(weights: Tensor, evidence: dict[str, Tensor], t: Mapping[str, Tensor], tau: Tensor) -> Tensor:
    """log sigmoid of the count margins: include (soft count >= count), exclude (soft count < count). (B,)"""
    n_inc = weights.sum(-1)  # (B, 2)
    inc = F.logsigmoid(tau * (n_inc - t["inc_count"] + 0.5)) * t["inc_valid"]
    class_w = evidence["obj"][:, :, None] * evidence["shape"]  # (B, 64, 3)
    n_exc = torch.gather(class_w.sum(1), 1, t["exc_class"][:, None]).squeeze(1)
    exc = F.logsigmoid(tau * (t["exc_count"] - 0.5 - n_exc)) * t["exc_valid"]
    return inc.sum(1) + exc


def position_terms(weights: Tensor, centres: Tensor, t: Mapping[str, Tensor], tau: Tensor) -> Tensor:
    """log sigmoid of GenEval's direction cut on the evidence-weighted centres: the offset of group 1 from
    group 0 along the relation's axis must exceed half the offset's length. weights (B, 2, 64), centres
    (64, 2) in [0, 1] -> (B,)."""
    centre = weights @ centres / (weights.sum(-1, keepdim=True) + 1e-3)  # (B, 2, 2)
    offset = centre[:, 1] - centre[:, 0]
    along = torch.gather(offset, 1, t["rel_axis"][:, None]).squeeze(1) * t["rel_sign"]
    length = (offset.pow(2).sum(1) + 1e-6).sqrt()
    return F.logsigmoid(tau * (along - 0.5 * length)) * t["rel_valid"]


class PrefModel(nn.Module):
    """(images (B, 3, 64, 64) in [0, 1], prompts) -> scores (B,) <= 0 (log-probability of correct and clean)."""

    def __init__(self, cfg: PrefConfig):
        super().__init__()
        c64, c32, c16, c8 = cfg.channels
        self.cfg = cfg
        # Two coordinate channels (CoordConv): "left of" and "above" are about absolute positions.
        self.stem = nn.Sequential(nn.Conv2d(5, c64, 3, padding=1), nn.GroupNorm(8, c64), nn.SiLU())
        self.tower = nn.Sequential(BasicBlock(c64, c32, stride=2), BasicBlock(c32, c32),
                                   BasicBlock(c32, c16, stride=2), BasicBlock(c16, c8, stride=2))
        self.aux_head = nn.Conv2d(c8, 1 + sum(cfg.aux_channels), 1)
        self.quality = nn.Sequential(nn.Linear(c8, cfg.quality_hidden), nn.SiLU(), nn.Linear(cfg.quality_hidden, 1))
        self.log_tau_count = nn.Parameter(torch.tensor(float(cfg.count_temperature)).log())
        self.log_tau_position = nn.Parameter(torch.tensor(float(cfg.position_temperature)).log())
        cells = (torch.arange(GRID, dtype=torch.float32) + 0.5) / GRID
        ys, xs = torch.meshgrid(cells, cells, indexing="ij")
        self.register_buffer("centres", torch.stack([xs.flatten(), ys.flatten()], 1), persistent=False)

    def image_features(self, images: Tensor) -> Tensor:
        """images (B, 3, 64, 64) in [0, 1] -> the tower's grid (B, C, 8, 8)."""
        return self.tower(self.stem(torch.cat([images * 2 - 1, coords(images)], dim=1)))

    def aux_logits(self, feats: Tensor) -> Tensor:
        """Grid (B, C, 8, 8) -> per-cell logits (B, 8, 8, 1 + S + K): objectness, S shapes, K colours."""
        return self.aux_head(feats).permute(0, 2, 3, 1)

    def evidence(self, feats: Tensor) -> dict[str, Tensor]:
        """Grid (B, C, 8, 8) -> {"obj" (B, 64), "shape" (B, 64, S), "color" (B, 64, K)} probabilities."""
        logits = self.aux_logits(feats).flatten(1, 2)
        s = self.cfg.aux_channels[0]
        return {"obj": logits[..., 0].sigmoid(), "shape": logits[..., 1:1 + s].softmax(-1),
                "color": logits[..., 1 + s:].softmax(-1)}

    def score_features(self, feats: Tensor, prompts: Sequence[str]) -> Tensor:
        """Grid (B, C, 8, 8) and B prompts -> scores (B,): clause terms + log sigmoid(quality)."""
        t = {k: v.to(feats.device) for k, v in clause_tensors(prompts, self.cfg.world).items()}
        evidence = self.evidence(feats)
        weights = include_weights(evidence, t)
        quality = self.quality(feats.mean((2, 3))).squeeze(1)
        return (count_terms(weights, evidence, t, self.log_tau_count.exp())
                + position_terms(weights, self.centres, t, self.log_tau_position.exp()) + F.logsigmoid(quality))

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.score_features(self.image_features(images), prompts)


class ShapesPref:
    """The ``harness.api.Reward`` "shapes-pref": frozen weights, differentiable with respect to the images."""

    name = NAME
    version = VERSION
    differentiable = True
    resolution = 64
    requires = "main environment; the shipped harness/assets/shapes/reward.safetensors"
    edition: Edition = FIRST
    """The Shapes world whose prompts it parses and whose asset folder it loads."""

    def __init__(self, cfg: PrefConfig | None = None, state: Mapping[str, Tensor] | None = None,
                 device: str | torch.device = "cpu"):
        """``cfg`` None loads the committed pretrained weights of the class's edition (checksum-verified);
        otherwise ``state`` (or a fresh initialisation) for that architecture."""
        if cfg is None:
            state, config = load_asset("reward", self.edition.asset_dir)
            cfg = PrefConfig.from_dict(config)
        if cfg.edition != self.edition.number:
            raise ValueError(f"{self.name} is the Shapes world's edition {self.edition.number} reward; its config "
                             f"says edition {cfg.edition}")
        self.device = torch.device(device)
        self.model = PrefModel(cfg)
        if state is not None:
            self.model.load_state_dict(state)
        self.model.to(self.device).eval().requires_grad_(False)
        digest = hashlib.sha256()
        for key, value in sorted(self.model.state_dict().items()):
            digest.update(key.encode() + value.detach().float().cpu().contiguous().numpy().tobytes())
        self.fingerprint = f"{digest.hexdigest()}@{self.device}"
        """The weights' digest and the device: base-side scores are shared across runs only for the same weights."""

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """images (B, 3, 64, 64) in [0, 1], B prompts -> scores (B,), differentiable w.r.t. ``images``."""
        if images.ndim != 4 or images.shape[1:] != (3, 64, 64):
            raise ValueError(f"{self.name} takes images (B, 3, 64, 64), got {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name} got {len(prompts)} prompts for {images.shape[0]} images")
        return self.model(images.to(self.device), list(prompts))


class ShapesPref2(ShapesPref):
    """"shapes2-pref": shapes-pref pretrained on the Shapes world's edition 2 (``harness/assets/shapes2``)."""

    name = "shapes2-pref"
    requires = "main environment; the shipped harness/assets/shapes2/reward.safetensors"
    edition = SECOND


PREFS = {1: ShapesPref, 2: ShapesPref2}
"""Each Shapes edition's learned reward class, by edition number."""


def load_reward(device: str | torch.device = "cpu") -> ShapesPref:
    """The committed pretrained shapes-pref (``harness/assets/shapes/reward.safetensors``), checksum-verified."""
    return ShapesPref(device=device)
