"""DPO-1step: Diffusion-DPO with a latent-distance surrogate for the likelihood, as DrPO's baseline.

Diffusion-DPO (Wallace et al., arXiv 2311.12908) needs per-step denoising likelihoods, which a one-step
generator does not have. DrPO (Jiang, Wen and Liu, arXiv 2606.02521, "DPO 1step" in its tables) replaces
the log-likelihood of a set T under the generator by the closeness of the K on-policy samples X to it,

    s(X, T) = -mean_{i, j} mean_d (x_i - t_j)^2,

and applies the DPO loss to the top-M (chosen C) and bottom-M (rejected R) of the K candidates:

    L = -log sigmoid(beta [(s(X_theta, C) - s(X_theta, R)) - (s(X_ref, C) - s(X_ref, R))]).

Source: UGVly/DrPO ``baselines/dpo/train_lora.py``@61329a4 (``pairwise_preference_score``, online mode,
``--preference_space latent --dpo_distance_metric l2``), launch script ``scripts/train/dpo.sh`` (beta 30,
8 chosen / 8 rejected of K=24, lr 1e-4). There is no paper text to differ from beyond the reference note.
X is every candidate of the prompt (not just C and R), the anchors are detached copies of the
policy's own latents, and X_ref is the frozen base on the same noise, all as in the official code.

Ties (not reachable with PickScore, the official reward): the code takes ``topk`` twice, so with tied
rewards C and R may overlap. Here one ordering with random tie-breaks (``ctx.rng``) gives disjoint C and R,
and a prompt whose K rewards all tie contributes no term (its share of the prompt mean is 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.api import Context, Needs, Rollout
from harness.validate import Bound, at_least, positive
from methods.ranking import rank_anchors

NAME = "dpo1"
VERSION = 1
REWARD_GRADIENT = False


@dataclass(frozen=True)
class Config:
    """DPO-1step's hyperparameters; defaults are the official SD-Turbo launch script (dpo.sh@61329a4)."""

    m: int = 8
    """Chosen and rejected per prompt: the top-M and bottom-M of the K candidates (disjoint, K >= 2M)."""
    beta: float = 30.0
    """DPO inverse temperature on the distance-surrogate log-ratio (``--dpo_beta``)."""
    strict_ties: bool = False
    """Keep the largest chosen/rejected sets whose rewards separate strictly, as DrPO's option of the same
    name (``methods.ranking.rank_anchors``). The official baseline has only a PickScore path, where it takes
    ``topk`` twice (train_lora.py:873-876): tied candidates are picked arbitrarily and may land in both sets."""
    lr: float = 1e-4
    """AdamW learning rate (constant, no warm-up)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"m": at_least(1), "beta": positive(), "lr": positive()}
    """Valid range of every numeric field (``harness.validate``)."""


def space(trial) -> dict:
    """Optuna search space: beta, M, tie handling and the learning rate (the range every method gets)."""
    return {
        "beta": trial.suggest_float("beta", 1.0, 300.0, log=True),
        "m": trial.suggest_int("m", 1, 8),
        "strict_ties": trial.suggest_categorical("strict_ties", [False, True]),
        "lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
    }


def needs(cfg: Config) -> Needs:
    return Needs(reference=True, reward_grad=False, anchors=cfg.m)


def init(cfg: Config, ctx: Context) -> dict:
    """No state: the bounds (``Config.BOUNDS``) and K >= 2M (``Needs.anchors``) are checked by the harness."""
    return {}


def step(cfg: Config, state: dict, batch: Rollout, ctx: Context) -> tuple[Tensor, dict[str, float]]:
    """The DPO-1step loss of one micro-batch (mean over prompts), and diagnostics."""
    policy = batch.per_prompt(batch.latents).flatten(2)                       # (P, K, D) with grad
    ref = batch.per_prompt(batch.ref_latents).flatten(2)                      # (P, K, D)
    rewards = batch.per_prompt(batch.rewards.detach().float())               # (P, K)
    losses, logits = [], []
    for p in range(len(batch.prompts)):
        chosen, rejected = rank_anchors(rewards[p], cfg.m, ctx.rng, strict=cfg.strict_ties)
        if chosen is None:
            losses.append(policy.new_zeros(()))  # constant: no preference, no gradient
            continue
        # The official score compares every candidate (not only C and R) with detached copies of C and R.
        anchors = policy[p].detach()
        loss, logit = dpo_loss(policy[p], ref[p], anchors[chosen], anchors[rejected], cfg.beta)
        losses.append(loss)
        logits.append(float(logit))
    logs = {"dpo_logit": sum(logits) / len(logits) if logits else 0.0,
            "no_preference": 1.0 - len(logits) / len(batch.prompts)}
    return torch.stack(losses).mean(), logs


def closeness(x: Tensor, targets: Tensor) -> Tensor:
    """s(X, T) = -mean_{i,j} mean_d (x_i - t_j)^2 for x (N, D) and targets (M, D); a scalar."""
    return -(x.float()[:, None, :] - targets.float()[None, :, :]).square().mean()


def dpo_loss(policy: Tensor, ref: Tensor, chosen: Tensor, rejected: Tensor,
             beta: float) -> tuple[Tensor, Tensor]:
    """-log sigmoid(beta [(s(policy,C) - s(policy,R)) - (s(ref,C) - s(ref,R))]) and the logit.

    policy (K, D) with grad, ref (K, D), chosen (M, D) and rejected (M, D) detached anchors.
    """
    policy_gap = closeness(policy, chosen) - closeness(policy, rejected)
    with torch.no_grad():
        ref_gap = closeness(ref, chosen) - closeness(ref, rejected)
    logit = beta * (policy_gap - ref_gap)
    return -F.logsigmoid(logit), logit.detach()
