"""Held-out reward: mean, standard error and win rate against the base generator.

The harness generates every held-out prompt x fixed seed twice, with the trained generator and with the
frozen base (adapters off) on the same noise. Per reward this reports the trained mean, its standard
error over the prompt x seed pairs, the base mean, and the win rate (the fraction of pairs where the
trained image scores higher; ties count one half). A reward with ``breakdown(images, prompts)`` (GenEval's
per-tag accuracies and overall) adds those entries for both generators.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor


class HeldoutReward:
    """Held-out mean, standard error and win rate against the base generator, for one reward."""

    name = "heldout"
    version = 1

    def __init__(self, reward: Any):
        self.reward = reward
        self.metrics = {"mean": True, "sem": False, "base_mean": True, "win_rate": True}
        """Metric -> higher is better."""

    @torch.no_grad()
    def evaluate(self, images: Tensor, base_images: Tensor, prompts: Sequence[str],
                 batch_size: int = 64) -> dict[str, float]:
        """images, base_images (B, 3, H, W) in [0, 1], B prompts -> {metric: value}."""
        from rewards import check_scores

        trained = self._score(images, prompts, batch_size, check_scores)
        base = self._score(base_images, prompts, batch_size, check_scores)
        n = trained.numel()
        wins = (trained > base).float() + 0.5 * (trained == base).float()
        out = {"mean": float(trained.mean()), "base_mean": float(base.mean()),
               "sem": float(trained.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan"),
               "win_rate": float(wins.mean()), "n": float(n)}
        if hasattr(self.reward, "breakdown"):
            out.update({k: float(v) for k, v in self.reward.breakdown(images, prompts).items()})
            out.update({f"base_{k}": float(v) for k, v in self.reward.breakdown(base_images, prompts).items()})
        return out

    def _score(self, images: Tensor, prompts: Sequence[str], batch_size: int, check) -> Tensor:
        parts = []
        for i in range(0, len(prompts), batch_size):
            chunk = images[i:i + batch_size]
            parts.append(check(self.reward.score(chunk, list(prompts[i:i + batch_size])), chunk.shape[0],
                               self.reward.name).detach().cpu())
        return torch.cat(parts)
