"""VGG-Flow, one-step adaptation (Liu et al., NeurIPS 2025, arXiv 2512.05116).

VGG-Flow (value-gradient guided flow matching) fine-tunes a flow towards the reward-tilted distribution
by matching its velocity to the reference velocity plus a scaled, clipped reward gradient (the value
gradient, learned by a value network over the trajectory). A one-step generator has one transition, so
DrPO's baseline regresses the clean latent onto the reference plus the reward gradient taken at the
current output:

    g_k = clip(grad_{x0} r(D(x0_k)), thr),   x0*_k = sg(x0_ref,k + eta s g_k),
    L = mean_k mean_d (x0_k - x0*_k)^2,

where clip rescales each sample's gradient to norm <= thr, and thr is a running threshold: once per
optimizer update it becomes the 0.8-quantile of the unclipped gradient norms of that update (it starts at 1.0).

Source: UGVly/DrPO ``baselines/vggflow/train_lora.py`` and ``baselines/vggflow/reward_gradient.py``@61329a4,
launch script ``scripts/train/vggflow.sh`` (s 1000, eta constant 1, thr0 1.0, quantile 0.8, lr 1e-4).
Following the code rather than the paper: the value-network/HJB consistency branch is omitted; every
micro-batch of an update is clipped with the threshold the previous update set, and the threshold is set
once, at the update's end, from norms gathered over all processes (``end_update``, ``ctx.gather``;
train_lora.py:462-467), so ``thr`` lives in the state dict and checkpoints restore it; the unused options
stay off (reward mask, gradient jitter, the ``unet_reg`` MSE, all 0 in the script). One difference, so that
P processes equal one process with P times the accumulation: the official code takes the quantile over the
last micro-batch of each process (``rgrad_norm_values`` is overwritten per micro-batch), which depends on
the process count; here it is over every micro-batch of the update (the same when grad_accum equals the
process count).

Batch size: the official script generates 8 images per prompt where every other baseline generates 24
(``--batchsize_gen 8``). driftbench gives every method the same K, so VGG-Flow uses the shared K: it does
not rank candidates, so K is just its batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from harness.api import Context, Needs, Rollout
from harness.validate import Bound, positive, within

NAME = "vggflow"
VERSION = 2  # 2: the threshold is set once per update from every process's norms
REWARD_GRADIENT = True


@dataclass(frozen=True)
class Config:
    """VGG-Flow's hyperparameters; defaults are the official SD-Turbo launch script (vggflow.sh@61329a4)."""

    scale: float = 1000.0
    """Reward scale s multiplying the clipped reward gradient in the target (``--reward_scale``)."""
    eta: float = 1.0
    """Step eta on the scaled gradient; the code's "constant" eta mode (``eta_mode constant``)."""
    quantile: float = 0.8
    """After each update the clip threshold becomes this quantile of the update's gradient norms, in (0, 1]."""
    initial_threshold: float = 1.0
    """Clip threshold of the first update (``--rgrad_clip_threshold``)."""
    lr: float = 1e-4
    """AdamW learning rate (constant, no warm-up)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"scale": positive(), "eta": positive(), "quantile": within(0, 1, strict_low=True),
                                          "initial_threshold": positive(), "lr": positive()}
    """Valid range of every numeric field (``harness.validate``)."""


SCALE_DEFAULTS = {"pickscore": 1000.0, "shapes-pref": 1.0}
"""The reward scale s per training reward. PickScore: the official script's 1000. shapes-pref: its reward
gradient's 0.8-quantile norm on the base generator's latents is 4.0 over 1,024 latent dimensions of std 0.87,
so s = 1000 puts the target 145 latent standard deviations per dimension away (clipped reward ascent) and
s = 1 puts it 0.14 away (``tests/test_shapes_models.py::test_vggflow_shapes_pref_scale_default`` measures it).
Other rewards start from the official 1000 and should be searched (``space``)."""


def space(trial) -> dict:
    """Optuna search space: the reward scale s over five decades around the reward's gradient scale (0.0014
    to 145 latent standard deviations per dimension on shapes-pref), the clip quantile and the learning rate
    (the range every method gets)."""
    return {
        "scale": trial.suggest_float("scale", 0.01, 1000.0, log=True),
        "quantile": trial.suggest_float("quantile", 0.5, 1.0),
        "lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
    }


def needs(cfg: Config) -> Needs:
    return Needs(reference=True, reward_grad=True)


def init(cfg: Config, ctx: Context) -> dict:
    """Check the config and start the running clip threshold."""
    if not 0 < cfg.quantile <= 1:
        raise ValueError(f"quantile must lie in (0, 1], got {cfg.quantile}")
    for name in ("scale", "eta", "initial_threshold"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)}")
    return {"threshold": float(cfg.initial_threshold), "norms": []}


def step(cfg: Config, state: dict, batch: Rollout, ctx: Context) -> tuple[Tensor, dict[str, float]]:
    """The VGG-Flow loss of one micro-batch, and diagnostics; keeps its gradient norms for ``end_update``."""
    # Only the decoder and reward lie between the latents and the scores, so this is grad_{x0} r(D(x0))
    # and leaves the generator's graph intact for the harness's backward pass.
    (gradient,) = torch.autograd.grad(batch.rewards.sum(), batch.latents)
    threshold = state["threshold"]
    clipped, norms = clip_reward_gradient(gradient, threshold)
    state.setdefault("norms", []).append(norms.cpu())
    loss = vggflow_loss(batch.latents, batch.ref_latents, clipped, cfg.eta, cfg.scale)
    return loss, {"reward_grad_norm": float(norms.mean()), "clip_threshold": threshold,
                  "clip_fraction": float((norms > threshold).float().mean())}


def end_update(cfg: Config, state: dict, ctx: Context) -> None:
    """The next update's threshold: the quantile of this update's norms, gathered over every process."""
    mine = torch.cat(state.get("norms") or [torch.zeros(0)])
    state["norms"] = []
    gathered = torch.cat(ctx.gather(mine))
    if gathered.numel():
        state["threshold"] = next_threshold(gathered, cfg.quantile)


def clip_reward_gradient(gradient: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Each sample of gradient (B, ...) rescaled to norm <= threshold, and the unclipped norms (B,)."""
    norms = gradient.detach().float().flatten(1).norm(dim=1)
    factor = norms.clamp(max=threshold) / norms.clamp_min(1e-8)
    clipped = gradient.detach() * factor.view(-1, *[1] * (gradient.ndim - 1)).to(gradient.dtype)
    return clipped, norms


def next_threshold(norms: Tensor, quantile: float) -> float:
    """The ``quantile`` of the unclipped norms (linear interpolation, as ``torch.quantile``), so roughly the
    largest 1 - quantile of the next update's gradients get clipped."""
    return float(torch.quantile(norms.float(), quantile))


def vggflow_loss(latents: Tensor, ref_latents: Tensor, gradient: Tensor, eta: float, scale: float) -> Tensor:
    """mean_k mean_d (x0_k - sg(x0_ref,k + eta scale g_k))^2.

    latents (B, ...) with grad; ref_latents and gradient (B, ...), both treated as constants.
    """
    target = (ref_latents.detach().float() + eta * scale * gradient.detach().float())
    return (latents.float() - target).square().flatten(1).mean(1).mean()
