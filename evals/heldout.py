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

from rewards import check_scores


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
        return self.compare(self.score(images, prompts, batch_size), self.score(base_images, prompts, batch_size))

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str], batch_size: int = 64) -> tuple[Tensor, dict[str, float]]:
        """Per-image scores (B,) on CPU and the reward's breakdown ({} without one), in one pass where the
        reward offers ``score_and_breakdown`` (GenEval's detector runs once)."""

        if hasattr(self.reward, "score_and_breakdown"):
            scores, breakdown = self.reward.score_and_breakdown(images, list(prompts))
            return check_scores(scores, images.shape[0], self.reward.name).detach().cpu(), breakdown
        parts = []
        for i in range(0, len(prompts), batch_size):
            chunk = images[i:i + batch_size]
            parts.append(check_scores(self.reward.score(chunk, list(prompts[i:i + batch_size])), chunk.shape[0],
                                      self.reward.name).detach().cpu())
        breakdown = self.reward.breakdown(images, prompts) if hasattr(self.reward, "breakdown") else {}
        return torch.cat(parts), {k: float(v) for k, v in breakdown.items()}

    @staticmethod
    def compare(trained: tuple[Tensor, dict[str, float]], base: tuple[Tensor, dict[str, float]]) -> dict[str, float]:
        """Metrics of trained against base scores on the same prompts and noise (outputs of :meth:`score`)."""
        t, b = trained[0].float(), base[0].float()
        n = t.numel()
        wins = (t > b).float() + 0.5 * (t == b).float()
        out = {"mean": float(t.mean()), "base_mean": float(b.mean()),
               "base_std": float(b.std(unbiased=True)) if n > 1 else float("nan"),
               "sem": float(t.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan"),
               "win_rate": float(wins.mean()), "n": float(n)}
        out.update({k: float(v) for k, v in trained[1].items()})
        out.update({f"base_{k}": float(v) for k, v in base[1].items()})
        return out
