"""Choosing the preference anchors of one prompt from its K ranked candidates (DrPO and DPO-1step).

The official code sorts the K rewards and takes the top-M as positives and the bottom-M as negatives, breaking
ties arbitrarily. With a binary reward (a GenEval verifier) that puts correct samples among the negatives
whenever more than K - M are correct, and incorrect ones among the positives whenever fewer than M are.
``strict=True`` keeps the largest anchor sets whose rewards separate strictly (every positive above every
negative), shrinking the sets only as far as ties demand; without ties it returns the plain top-M / bottom-M.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ranked(rewards: Tensor, rng: torch.Generator) -> Tensor:
    """Indices of rewards (K,) from best to worst; a random permutation before a stable sort breaks ties
    without favouring low indices."""
    perm = torch.randperm(rewards.numel(), generator=rng).to(rewards.device)
    return perm[torch.sort(rewards[perm], descending=True, stable=True).indices]


def rank_anchors(rewards: Tensor, m: int, rng: torch.Generator, strict: bool = False
                 ) -> tuple[Tensor | None, Tensor | None]:
    """(positive indices, negative indices) of at most m each, or (None, None) when all K rewards tie.

    ``strict``: over every cut value tau, positives are the best (up to m) candidates with reward > tau and
    negatives the worst (up to m) with reward <= tau; the cut keeping the most anchors on its smaller side
    (then the most in all) wins, so both sets are non-empty whenever two rewards differ.
    """
    if rewards.max() == rewards.min():
        return None, None
    order = ranked(rewards, rng)
    if not strict:
        return order[:m], order[-m:]
    r = rewards[order]                                                # descending
    best, best_score = None, (-1, -1)
    for tau in torch.unique(r)[:-1]:                                  # the maximum leaves no positive
        above, below = order[r > tau], order[r <= tau]
        pos, neg = above[:m], below[-m:]
        score = (min(len(pos), len(neg)), len(pos) + len(neg))
        if score > best_score:
            best, best_score = (pos, neg), score
    return best
