"""DRaFT, one-step: direct reward backpropagation (Clark et al., arXiv 2309.17400).

DRaFT ("Directly Fine-Tuning Diffusion Models on Differentiable Rewards") backpropagates the reward
through the sampler. A one-step generator has a single step, so DRaFT-K, ReFL and AlignProp all reduce
to direct reward maximisation through the decoder (DrPO's "DRaFT" row):

    L = -mean_k r(D(x0_k), c) + beta_ref MSE(x0, x0_ref) - beta_std std_k r,

per prompt, averaged over prompts. Source: UGVly/DrPO ``baselines/draft/train_lora.py``@61329a4, launch
script ``scripts/train/draft.sh`` (SD-Turbo: beta_ref 0, beta_std 0, lr 1e-5, K=24; the SDXL-Turbo
script uses beta_ref 0.02). Following the code: the std is the population std (``unbiased=False``) of
the K scores of one prompt, and the MSE is to the frozen base on the same noise. The reward gradient
needs a differentiable reward; the harness refuses black-box rewards before the run starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from harness.api import Context, Needs, Rollout
from harness.validate import Bound, nonnegative, positive

NAME = "draft"
VERSION = 1
REWARD_GRADIENT = True


@dataclass(frozen=True)
class Config:
    """DRaFT's hyperparameters; defaults are the official SD-Turbo launch script (draft.sh@61329a4)."""

    beta_ref: float = 0.0
    """Weight of the MSE between the latents and the frozen reference's (``--ref_model_l2_weight``)."""
    beta_std: float = 0.0
    """Weight of the per-prompt reward std bonus, which rewards diversity (``--score_std_weight``)."""
    lr: float = 1e-5
    """AdamW learning rate (constant, no warm-up)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"beta_ref": nonnegative(), "beta_std": nonnegative(), "lr": positive()}
    """Valid range of every numeric field (``harness.validate``)."""


def space(trial) -> dict:
    """Optuna search space: the reference weight, the std bonus and the learning rate (the range every
    method gets). A one-step generator has no sampling chain, so DRaFT-K's truncation has nothing to cut."""
    return {
        "beta_ref": trial.suggest_float("beta_ref", 0.0, 0.1),
        "beta_std": trial.suggest_float("beta_std", 0.0, 1.0),
        "lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
    }


def needs(cfg: Config) -> Needs:
    return Needs(reference=cfg.beta_ref > 0, reward_grad=True)


def init(cfg: Config, ctx: Context) -> dict:
    """Check the config against the run before any compute is spent."""
    for name in ("beta_ref", "beta_std"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    return {}


def step(cfg: Config, state: dict, batch: Rollout, ctx: Context) -> tuple[Tensor, dict[str, float]]:
    """The DRaFT loss of one micro-batch (mean over prompts), and diagnostics."""
    rewards = batch.per_prompt(batch.rewards)                                      # (P, K), differentiable
    ref = batch.ref_latents if cfg.beta_ref > 0 else None
    loss = draft_loss(rewards, batch.latents, ref, cfg.beta_ref, cfg.beta_std)
    return loss, {"reward_std_within_prompt": float(rewards.detach().std(dim=1, unbiased=False).mean())}


def draft_loss(rewards: Tensor, latents: Tensor, ref_latents: Tensor | None, beta_ref: float,
               beta_std: float) -> Tensor:
    """-mean r + beta_ref MSE(latents, ref) - beta_std mean_prompts std_k r.

    rewards (P, K) differentiable in the latents; latents and ref_latents (P*K, C, h, w) (ref may be None
    when beta_ref = 0). Each score's gradient is -1/(P K) from the first term.
    """
    loss = -rewards.float().mean()
    if beta_ref > 0:
        loss = loss + beta_ref * F.mse_loss(latents.float(), ref_latents.float())
    if beta_std > 0:
        loss = loss - beta_std * rewards.float().std(dim=1, unbiased=False).mean()
    return loss
