"""Evaluation during and after training: fixed-noise image sets, the base generator cached once, and the
one definition of how far a generator has moved from its base.

An evaluation set is a split's prompts x ``seeds`` fixed noise seeds (image j of prompt i uses
``seed_base + 1000 i + j``, the same for every method, run and the base). The base generator's latents,
images and reward scores on that noise are computed once per set and reused at every evaluation point, so
an over-optimisation curve (proxy and gold against distance from the base) costs one trained-generator pass
per point.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from evals.heldout import HeldoutReward
from harness import faults

EVAL_SEED_BASE = 10_000_000
"""Default base of the evaluation noise seeds (validation during training and tuning)."""
TEST_SEED_BASE = 20_000_000
"""Default base of the test split's noise seeds: disjoint from ``EVAL_SEED_BASE`` for up to 10,000 prompts."""


def noise_seeds(prompts: Sequence[str], seeds_per_prompt: int, seed_base: int) -> list[tuple[str, int]]:
    """(prompt, noise seed) for every image of an evaluation set, prompt-major."""
    return [(p, seed_base + 1000 * i + j) for i, p in enumerate(prompts) for j in range(seeds_per_prompt)]


@torch.no_grad()
def generate(gen, prompts: Sequence[str], seeds_per_prompt: int, reference: bool = False, batch_size: int = 64,
             seed_base: int = EVAL_SEED_BASE) -> tuple[Tensor, list[str], Tensor]:
    """Images (n, 3, H, W), their prompts and latents (n, C, h, w), all on CPU, for every prompt x seed."""
    rows = noise_seeds(prompts, seeds_per_prompt, seed_base)
    images, latents = [], []
    scope = gen.reference() if reference else contextlib.nullcontext()
    with scope:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            z = gen.latents(gen.noise([s for _, s in chunk]), gen.encode([p for p, _ in chunk]))
            latents.append(z.float().cpu())
            images.append(gen.decode(z).float().cpu())
    return torch.cat(images), [p for p, _ in rows], torch.cat(latents)


def distances(latents: Tensor, base_latents: Tensor, images: Tensor, base_images: Tensor) -> dict[str, float]:
    """How far a generator has moved from its base on the same noise; 0 means unchanged.

    ``latent_rms``: RMS latent difference in units of the base latents' standard deviation (comparable across
    profiles); ``pixel_rms``: RMS difference of the decoded images in [0, 1]. Every curve, table and study
    reads distance from here.
    """
    scale = base_latents.float().std().clamp_min(1e-8)
    return {"latent_rms": float((latents.float() - base_latents.float()).square().mean().sqrt() / scale),
            "pixel_rms": float((images.float() - base_images.float()).square().mean().sqrt())}


@dataclass
class EvalSet:
    """One evaluation set with the base generator's side computed once.

    ``prefix`` names its metrics: ``<prefix>/<reward>/<metric>`` and ``<prefix>/drift/<distance>``.
    """

    prefix: str
    prompts: list[str]
    seeds: int
    seed_base: int
    rewards: dict[str, Any]
    _base: tuple[Tensor, list[str], Tensor] | None = None
    _base_scores: dict[str, tuple[Tensor, dict[str, float]]] = field(default_factory=dict)
    last_scores: dict[str, list[float]] = field(default_factory=dict)
    """Per-image scores of the latest :meth:`evaluate`, per reward, prompt-major (``noise_seeds`` order): what
    ``driftbench power`` decomposes into training-seed, prompt and evaluation-noise variance."""

    def base(self, gen) -> tuple[Tensor, list[str], Tensor]:
        """The base generator's (images, prompts, latents) on this set's noise, generated on first use."""
        if self._base is None:
            self._base = generate(gen, self.prompts, self.seeds, reference=True, seed_base=self.seed_base)
        return self._base

    def evaluate(self, gen) -> tuple[dict[str, float], Tensor]:
        """Metrics of the generator's current weights, and its images (n, 3, H, W)."""

        base_images, prompts, base_latents = self.base(gen)
        images, _, latents = generate(gen, self.prompts, self.seeds, seed_base=self.seed_base)
        faults.point(self.prefix)  # "eval" or "test": the fault suite kills a run inside an evaluation
        out = {f"{self.prefix}/drift/{k}": v for k, v in distances(latents, base_latents, images, base_images).items()}
        # Before the first update (a fresh adapter) the images are the base's, bit for bit: their scores are the
        # base's, so the reward is not run twice on them (a fifth of a Shapes run's validation cost).
        unchanged = torch.equal(images, base_images)
        for name, reward in self.rewards.items():
            judge = HeldoutReward(reward)
            if name not in self._base_scores:
                self._base_scores[name] = shared_base_scores(reward, base_images, prompts)
            trained = self._base_scores[name] if unchanged else judge.score(images, prompts)
            self.last_scores[name] = [float(v) for v in trained[0]]
            for metric, value in judge.compare(trained, self._base_scores[name]).items():
                out[f"{self.prefix}/{name}/{metric}"] = value
        return out, images


_SHARED_BASE: dict[tuple[str, int, str, str], tuple[Tensor, dict[str, float]]] = {}
"""Base-side scores every run of one process shares (a table's or a study's worker runs many runs on the same base
and noise): keyed by the reward's name, version and ``fingerprint`` and a digest of the exact pixels and prompts."""


def shared_base_scores(reward: Any, images: Tensor, prompts: Sequence[str]) -> tuple[Tensor, dict[str, float]]:
    """``HeldoutReward(reward).score(images, prompts)``, computed once per process for a reward that declares a
    ``fingerprint`` (a string that changes with anything its scores depend on besides the images and prompts: its
    weights, its options); a reward without one is scored every time."""
    fingerprint = getattr(reward, "fingerprint", None)
    if fingerprint is None:
        return HeldoutReward(reward).score(images, prompts)
    digest = hashlib.sha256(images.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(repr((tuple(images.shape), list(prompts))).encode())
    key = (reward.name, reward.version, str(fingerprint), digest.hexdigest())
    if key not in _SHARED_BASE:
        _SHARED_BASE[key] = HeldoutReward(reward).score(images, prompts)
    return _SHARED_BASE[key]


def scores_record(evals: EvalSet, step: int, which: str) -> dict[str, Any]:
    """One line of a run's ``scores.jsonl``: the per-image scores of ``evals``' latest evaluation with what
    identifies each image (prompt i, noise seed ``seed_base + 1000 i + j`` for j < ``seeds``). ``which``:
    "eval", "test" (final weights) or "test_selected"."""
    return {"which": which, "step": step, "prompts": list(evals.prompts), "seeds": evals.seeds,
            "seed_base": evals.seed_base, "scores": {k: list(v) for k, v in evals.last_scores.items()}}


def headline_key(metrics: dict[str, float], prefix: str, reward: str) -> str | None:
    """The key of a reward's headline metric: ``overall_disjoint`` (GenEval without tags shared between
    splits), else ``overall``, else ``mean``."""
    for metric in ("overall_disjoint", "overall", "mean"):
        if f"{prefix}/{reward}/{metric}" in metrics:
            return f"{prefix}/{reward}/{metric}"
    return None


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
