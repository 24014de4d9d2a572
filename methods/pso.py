"""PSO: Pairwise Sample Optimization (Miao et al., arXiv 2410.03190), DrPO's one-step Gaussian-policy version.

PSO raises the relative likelihood (policy over reference) of the preferred sample of each pair and lowers
it for the other. The paper's trainer sums per-step Gaussian log-ratios along a multi-step SDXL-Turbo
trajectory; a one-step generator has a single transition, so DrPO's baseline makes the action itself
Gaussian: a = sg(x0_theta) + sigma z, with z the sample's noise standardised per sample, and

    log pi(a) = -1/2 mean_d ((a - mu) / sigma)^2        (mu = x0_theta, or x0_ref for the reference),
    rho = log clamp(exp(clamp(log pi_theta(a) - log pi_ref(a), -10, 10)), 1 - c, 1 + c),
    L = -mean_{non-tied pairs} log sigmoid(beta sum_{i in pair} p_i rho_i),   p = +1 winner, -1 loser.

Source: UGVly/DrPO ``baselines/spo/train_lora.py`` and ``baselines/spo/losses.py``@61329a4 (the
directory is called spo), launch script ``scripts/train/spo.sh`` (sigma 0.05, beta 50, c 0.1, lr 1e-5,
K=24). Following the code rather than the paper: the Gaussian one-step action and its per-sample
standardised noise (``derive_noise_policy_offset``), the log-ratio clamp followed by the ratio clamp
(which zeroes the gradient of a pair member whose ratio leaves [1 - c, 1 + c]), adjacent pairs (2k, 2k+1)
in sampling order rather than all pairs, and the per-prompt mean over non-tied pairs, averaged over
prompts with an all-tied prompt counting 0 (``total_loss / bsz``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.api import Context, Needs, Rollout
from harness.validate import Bound, positive, within

NAME = "pso"
VERSION = 1
REWARD_GRADIENT = False


@dataclass(frozen=True)
class Config:
    """PSO's hyperparameters; defaults are the official SD-Turbo launch script (spo.sh@61329a4)."""

    sigma: float = 0.05
    """Std of the Gaussian action around the detached rollout mean (``--rollout_action_std``)."""
    beta: float = 50.0
    """Inverse temperature of the pairwise logistic loss (``--spo_beta``)."""
    clip: float = 0.1
    """The policy/reference ratio is clamped to [1 - clip, 1 + clip]; 0 disables it (``--spo_clip_range``)."""
    max_log_ratio: float = 10.0
    """The log-ratio is clamped to [-max_log_ratio, max_log_ratio] before the ratio clamp."""
    lr: float = 1e-5
    """AdamW learning rate (constant, no warm-up)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"sigma": positive(), "beta": positive(), "clip": within(0, 1, strict_high=True),
                                          "max_log_ratio": positive(), "lr": positive()}
    """Valid range of every numeric field (``harness.validate``)."""


def space(trial) -> dict:
    """Optuna search space: the action std sigma, beta and the learning rate (the range every method gets)."""
    return {
        "sigma": trial.suggest_float("sigma", 0.01, 0.5, log=True),
        "beta": trial.suggest_float("beta", 5.0, 500.0, log=True),
        "lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
    }


def needs(cfg: Config) -> Needs:
    return Needs(reference=True, reward_grad=False)


def init(cfg: Config, ctx: Context) -> dict:
    """Check the config against the run before any compute is spent."""
    if ctx.k < 2 or ctx.k % 2:
        raise ValueError(f"PSO pairs adjacent candidates, so K must be even and >= 2; got K={ctx.k}")
    if cfg.sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {cfg.sigma}")
    if cfg.beta <= 0:
        raise ValueError(f"beta must be > 0, got {cfg.beta}")
    if not 0 <= cfg.clip < 1:
        raise ValueError(f"clip must lie in [0, 1), got {cfg.clip}")
    if cfg.max_log_ratio <= 0:
        raise ValueError(f"max_log_ratio must be > 0, got {cfg.max_log_ratio}")
    return {}


def act(cfg: Config, latents: Tensor, noise: Tensor) -> Tensor:
    """The scored action a = latents + sigma z, z = noise standardised per sample; all (B, C, h, w).

    ``latents`` arrive detached (the rollout mean), so the action is a fixed sample for the loss.
    """
    flat = noise.float().flatten(1)
    z = (flat - flat.mean(1, keepdim=True)) / flat.std(1, unbiased=False, keepdim=True).clamp_min(1e-6)
    return latents + cfg.sigma * z.view_as(noise).to(latents.dtype)


def step(cfg: Config, state: dict, batch: Rollout, ctx: Context) -> tuple[Tensor, dict[str, float]]:
    """The PSO loss of one micro-batch (mean over prompts), and diagnostics."""
    action = batch.scored_latents.detach()
    logp = gaussian_logprob(action, batch.latents, cfg.sigma)                  # (P*K,) with grad
    with torch.no_grad():
        ref_logp = gaussian_logprob(action, batch.ref_latents, cfg.sigma)
    rewards = batch.per_prompt(batch.rewards.detach().float())                    # (P, K)
    return pso_loss(batch.per_prompt(logp), batch.per_prompt(ref_logp), rewards, cfg.beta, cfg.clip,
                    cfg.max_log_ratio)


def gaussian_logprob(action: Tensor, mean: Tensor, sigma: float) -> Tensor:
    """-1/2 mean_d ((action - mean) / sigma)^2 for action and mean (B, ...); returns (B,).

    The constant normaliser is dropped: it cancels in the policy/reference ratio.
    """
    return -0.5 * ((action.float() - mean.float()) / sigma).square().flatten(1).mean(1)


def pso_loss(logp: Tensor, ref_logp: Tensor, rewards: Tensor, beta: float, clip: float,
             max_log_ratio: float) -> tuple[Tensor, dict[str, float]]:
    """Pairwise PSO loss over adjacent pairs (2k, 2k+1); mean over prompts; and diagnostics.

    logp (P, K) with grad, ref_logp (P, K) and rewards (P, K); K even. A prompt whose pairs all tie
    contributes 0 (no gradient).
    """
    log_ratio = (logp.float() - ref_logp.float()).clamp(-max_log_ratio, max_log_ratio)
    ratio = log_ratio.exp()
    if clip > 0:
        # The clamp zeroes the gradient of a sample whose ratio already left the trust region.
        ratio = ratio.clamp(1.0 - clip, 1.0 + clip)
        log_ratio = ratio.log()
    pairs = log_ratio.reshape(log_ratio.shape[0], -1, 2)                           # (P, K/2, 2)
    r = rewards.float().reshape(pairs.shape)
    first = torch.sign(r[..., 0] - r[..., 1])                                       # +1, -1, or 0 for a tie
    preference = torch.stack([first, -first], dim=-1)                              # (P, K/2, 2)
    non_tie = first != 0
    logits = beta * (pairs * preference).sum(-1)                                    # (P, K/2)
    per_pair = -F.logsigmoid(logits) * non_tie
    per_prompt = per_pair.sum(1) / non_tie.sum(1).clamp_min(1)                      # 0 for an all-tied prompt
    accuracy = ((pairs[..., 0] - pairs[..., 1]) * first > 0)[non_tie].float()
    logs = {"tie_fraction": float(1.0 - non_tie.float().mean()), "ratio_mean": float(ratio.detach().mean()),
            "pair_accuracy": float(accuracy.mean()) if accuracy.numel() else 0.0}
    return per_prompt.mean(), logs
