"""Economies that ranking allows: DrPO needs the reward only to order candidates, so the reward can run
cheaper as long as the order survives. Each economy is offered only together with its measured rank
agreement with the exact path (Spearman correlation and top-M overlap), recorded in every run that uses it
and tabulated by ``driftbench rank-agreement``.

* ``bf16``: the reward under ``torch.autocast(bfloat16)`` and ``torch.inference_mode``.
* ``small-decoder``: decode for the reward with the profile's small decoder instead of the full VAE decoder
  (on SD-Turbo the VAE decoder costs about 2.5 TFLOPs per 512-pixel image, more than the UNet).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from harness.registry import unknown

ECONOMIES = ("exact", "bf16", "small-decoder", "bf16+small-decoder")


def check(name: str) -> str:
    if name not in ECONOMIES:
        raise unknown("reward economy", name, list(ECONOMIES))
    return name


def decoder(world, economy: str) -> Callable[[Tensor], Tensor]:
    """The decoder the reward sees under ``economy``."""
    if "small-decoder" not in economy:
        return world.generator.decode
    if world.small_decoder is None:
        raise ValueError(f"profile '{world.name}' has no small decoder; reward economies available here: exact, bf16")
    return world.small_decoder


def scorer(reward, economy: str, device: torch.device) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(call, count): the reward call under ``economy`` and the same computation for FLOP counting."""
    if "bf16" not in economy:
        return reward.score, reward.score

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def call(images: Tensor, prompts: Sequence[str]):
        with torch.inference_mode(), autocast():
            scores = reward.score(images, prompts)
        # Inference tensors cannot enter autograd later; the rank is all that is used.
        return scores.float().clone() if torch.is_tensor(scores) else scores

    def count(images: Tensor, prompts: Sequence[str]):
        with torch.no_grad(), autocast():
            return reward.score(images, prompts)
    return call, count


def agreement(exact: Tensor, cheap: Tensor, k: int, m: int) -> dict[str, float]:
    """Mean over prompts of the Spearman correlation and the top-M overlap between two (P*K,) scorings."""
    from scipy import stats

    a, b = exact.detach().float().reshape(-1, k).cpu().numpy(), cheap.detach().float().reshape(-1, k).cpu().numpy()
    rho, overlap = [], []
    for x, y in zip(a, b):
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            rho.append(stats.spearmanr(x, y).statistic)
        top_x, top_y = set(np.argsort(-x, kind="stable")[:m]), set(np.argsort(-y, kind="stable")[:m])
        overlap.append(len(top_x & top_y) / m)
    return {"spearman": float(np.mean(rho)) if rho else float("nan"), "top_m_overlap": float(np.mean(overlap))}
