"""Choosing the preference anchors of one prompt from its K ranked candidates (DrPO and DPO-1step).

The official code has two paths. Its PickScore path (``select_disjoint_pref_indices``, utils/tensors.py:92-94)
argsorts the K rewards and takes the top-M as positives and the bottom-M as negatives, breaking ties
arbitrarily; run with a binary reward, that would put correct samples among the negatives whenever more than
K - M are correct, and incorrect ones among the positives whenever fewer than M are. Its GenEval path
(trainer.py:691-731, 763-820) never ranks: it thresholds the verifier's score at 0.5, takes M random correct
and M random incorrect candidates, and skips the prompt when either kind has fewer than M
(:func:`verifier_anchors`, :func:`verifier_counts_met`).

:func:`rank_anchors` is the PickScore path, with ties broken at random; ``strict=True`` (driftbench's own
option) keeps the largest anchor sets whose rewards separate strictly (every positive above every negative),
shrinking the sets only as far as ties demand; without ties it returns the plain top-M / bottom-M.
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


def verifier_anchors(rewards: Tensor, m: int, rng: torch.Generator) -> tuple[Tensor | None, Tensor | None]:
    """The official GenEval anchors of one prompt: m random correct (reward >= 0.5) and m random incorrect
    candidates, or (None, None) when either kind has fewer than m (the prompt is skipped)."""
    correct = torch.nonzero(rewards >= 0.5).flatten()
    wrong = torch.nonzero(rewards < 0.5).flatten()
    if correct.numel() < m or wrong.numel() < m:
        return None, None
    return (correct[torch.randperm(correct.numel(), generator=rng)[:m].to(correct.device)],
            wrong[torch.randperm(wrong.numel(), generator=rng)[:m].to(wrong.device)])


def verifier_counts_met(rewards: Tensor, m: int) -> bool:
    """Whether every prompt of rewards (P, n) has at least m correct (>= 0.5) and m incorrect candidates: the
    official GenEval trainer's condition to stop sampling rounds (``_geneval_stop_requirements_met``)."""
    correct = (rewards >= 0.5).sum(dim=1)
    return bool(((correct >= m) & (rewards.shape[1] - correct >= m)).all())
