"""Neighbor-GRPO (He et al., arXiv 2511.16955): GRPO for a deterministic one-step generator (DrPO's baseline).

A deterministic generator has no sampling likelihood, so Neighbor-GRPO perturbs the input instead: the K
candidates of a prompt come from neighbouring noises z_k = sqrt(1 - sigma^2) n0 + sigma delta_k, and a
surrogate policy over the candidates is a softmax of their distances to an anchor output,

    pi(k | a) = softmax_k(-mean_d (x_hat_k - x_a)^2 / T),     x_hat = sg(G(z)) (the rollout),
    A = clip(sqrt(K) (r - mean r) / ||r - mean r||_p, -5, 5)  (quasi-norm, p = 0.8),
    L = -mean_{a, k} min(rho A_k, clip(rho, 1 - eps, 1 + eps) A_k) + w mean_a MSE(x_a, x_a^ref),

with rho = pi_theta(k | x_a) / pi_old(k | x_hat_a) over a few random anchors a. Moving an anchor's output
towards high-advantage neighbours raises the surrogate.

Source: UGVly/DrPO ``baselines/grpo/losses.py`` and ``baselines/grpo/trainer.py``@61329a4, launch script
``scripts/train/grpo.sh`` (sigma 0.3, 4 anchors, p 0.8, T 1, eps 0.2, advantage clip 5, reference MSE
0.02, lr 1e-5). Following the code: one rollout and one gradient step per batch, so rho = 1 in value but
its gradient flows through the current anchor (old log-probabilities detached, log-ratio clamped to
+-10 first); candidates are detached rollout latents, the anchor's own candidate included; anchors are
distinct random indices per prompt; the reference MSE covers only the anchors; a prompt with
||r - mean r||_p <= 1e-6 gets zero advantages.

Noise: the official code draws n0 and K deltas separately (K + 1 noises per prompt); driftbench's harness
draws K. ``propose`` splits them exactly: n0 = sqrt(K) mean_k noise_k ~ N(0, I) and
delta_k = sqrt(K / (K - 1)) (noise_k - mean) ~ N(0, I), independent of n0. So each z_k is exactly
N(0, I) as in the code, but the deltas sum to zero (pairwise correlation -1/(K - 1) instead of 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.api import Context, Needs, Rollout
from harness.validate import Bound, at_least, nonnegative, positive, within

NAME = "ngrpo"
VERSION = 1
REWARD_GRADIENT = False


@dataclass(frozen=True)
class Config:
    """Neighbor-GRPO's hyperparameters; defaults are the official SD-Turbo launch script (grpo.sh@61329a4)."""

    sigma: float = 0.3
    """Neighbourhood strength: z_k = sqrt(1 - sigma^2) n0 + sigma delta_k, 0 < sigma <= 1."""
    anchors: int = 4
    """Anchors per prompt (distinct random candidates whose current output carries the gradient), <= K."""
    p: float = 0.8
    """Exponent of the quasi-norm that scales the centred rewards, 0 < p <= 2."""
    advantage_clip: float = 5.0
    """Advantages are clipped to [-advantage_clip, advantage_clip]; 0 disables it."""
    temperature: float = 1.0
    """Temperature T of the surrogate softmax over negative mean squared latent distances."""
    ppo_clip: float = 0.2
    """PPO clip range eps of the ratio."""
    max_log_ratio: float = 10.0
    """The log-ratio is clamped to [-max_log_ratio, max_log_ratio] before exponentiating."""
    ref_weight: float = 0.02
    """Weight of the MSE between the anchors' outputs and the reference's (``--ref_model_l2_weight``)."""
    lr: float = 1e-5
    """AdamW learning rate (constant, no warm-up)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"sigma": within(0, 1, strict_low=True), "anchors": at_least(1),
                                          "p": within(0, 2, strict_low=True), "advantage_clip": nonnegative(),
                                          "temperature": positive(), "ppo_clip": positive(),
                                          "max_log_ratio": positive(), "ref_weight": nonnegative(), "lr": positive()}
    """Valid range of every numeric field (``harness.validate``)."""


def space(trial) -> dict:
    """Optuna search space: the neighbourhood sigma, the PPO clip, the anchors and the learning rate (the
    range every method gets)."""
    return {
        "sigma": trial.suggest_float("sigma", 0.1, 0.7),
        "ppo_clip": trial.suggest_float("ppo_clip", 0.05, 0.5),
        "anchors": trial.suggest_int("anchors", 1, 8),
        "lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
    }


def needs(cfg: Config) -> Needs:
    return Needs(reference=cfg.ref_weight > 0, reward_grad=False)


def init(cfg: Config, ctx: Context) -> dict:
    """Check the config against the run before any compute is spent."""
    if not 0 < cfg.sigma <= 1:
        raise ValueError(f"sigma must lie in (0, 1], got {cfg.sigma}")
    if not 1 <= cfg.anchors <= ctx.k:
        raise ValueError(f"anchors must lie in [1, K={ctx.k}], got {cfg.anchors}")
    if not 0 < cfg.p <= 2:
        raise ValueError(f"p must lie in (0, 2], got {cfg.p}")
    for name in ("temperature", "ppo_clip", "max_log_ratio"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)}")
    for name in ("advantage_clip", "ref_weight"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    return {}


def propose(cfg: Config, noise: Tensor) -> Tensor:
    """Neighbours z_k = sqrt(1 - sigma^2) n0 + sigma delta_k of the harness's noise (P, K, C, h, w).

    n0 and the deltas are orthogonal projections of the K independent noises (see the module docstring).
    """
    k = noise.shape[1]
    mean = noise.mean(dim=1, keepdim=True)
    base = math.sqrt(k) * mean                                                     # (P, 1, C, h, w) ~ N(0, I)
    deltas = math.sqrt(k / (k - 1)) * (noise - mean)                               # (P, K, C, h, w)
    return math.sqrt(max(0.0, 1.0 - cfg.sigma ** 2)) * base + cfg.sigma * deltas


def step(cfg: Config, state: dict, batch: Rollout, ctx: Context) -> tuple[Tensor, dict[str, float]]:
    """The Neighbor-GRPO loss of one micro-batch (mean over prompts and anchors), and diagnostics."""
    latents = batch.per_prompt(batch.latents).flatten(2)                          # (P, K, D) with grad
    n_prompts, k = latents.shape[:2]
    rewards = batch.per_prompt(batch.rewards.detach().float())                    # (P, K)
    advantages = quasi_norm_advantages(rewards, cfg.p, cfg.advantage_clip)
    index = torch.stack([torch.randperm(k, generator=ctx.rng)[: cfg.anchors] for _ in range(n_prompts)])
    index = index.to(latents.device)                                               # (P, A)
    rows = torch.arange(n_prompts, device=latents.device)[:, None]
    current = latents[rows, index]                                                 # (P, A, D) with grad
    candidates = latents.detach()
    # One rollout, one gradient step (as in the official trainer): the old anchors are the current ones
    # detached, so rho = 1 in value while its gradient still moves the anchors.
    loss, logs = ngrpo_loss(candidates, current, candidates[rows, index], advantages, cfg.ppo_clip,
                            cfg.max_log_ratio, cfg.temperature)
    if cfg.ref_weight > 0:
        ref = batch.per_prompt(batch.ref_latents).flatten(2)[rows, index]
        ref_mse = F.mse_loss(current.float(), ref.float())
        loss = loss + cfg.ref_weight * ref_mse
        logs["ref_mse"] = float(ref_mse.detach())
    logs["advantage_abs"] = float(advantages.abs().mean())
    return loss, logs


def quasi_norm_advantages(rewards: Tensor, p: float, clip: float, eps: float = 1e-6) -> Tensor:
    """sqrt(K) (r - mean r) / ||r - mean r||_p per prompt, clipped to [-clip, clip]; rewards (P, K) -> (P, K).

    p < 1 weights a few large deviations less than the L2 norm would; all-equal rewards give zeros.
    """
    centred = rewards.float() - rewards.float().mean(dim=1, keepdim=True)
    norm = centred.abs().pow(p).sum(dim=1, keepdim=True).pow(1.0 / p)
    advantages = torch.where(norm > eps, math.sqrt(rewards.shape[1]) * centred / norm.clamp_min(eps),
                             torch.zeros_like(centred))
    return advantages.clamp(-clip, clip) if clip > 0 else advantages


def ngrpo_loss(candidates: Tensor, current: Tensor, old: Tensor, advantages: Tensor, ppo_clip: float,
               max_log_ratio: float, temperature: float) -> tuple[Tensor, dict[str, float]]:
    """PPO-clipped surrogate over the softmax-of-distances policy; mean over prompts, anchors and candidates.

    candidates (P, K, D) detached rollout outputs; current (P, A, D) the anchors' outputs with grad;
    old (P, A, D) the same anchors in the rollout; advantages (P, K).
    """
    def log_policy(anchors: Tensor) -> Tensor:                                     # (P, A, K)
        distances = (candidates.float()[:, None, :, :] - anchors.float()[:, :, None, :]).square().mean(-1)
        return torch.log_softmax(-distances / temperature, dim=-1)

    log_ratio = (log_policy(current) - log_policy(old.detach()).detach()).clamp(-max_log_ratio, max_log_ratio)
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1.0 - ppo_clip, 1.0 + ppo_clip)
    adv = advantages.detach().float()[:, None, :]                                  # (P, 1, K)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    logs = {"ratio_mean": float(ratio.detach().mean()),
            "clip_fraction": float((ratio != clipped).float().mean())}
    return -surrogate.mean(), logs
