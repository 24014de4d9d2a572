"""DrPO: Drifting Preference Optimization (Jiang, Wen and Liu, arXiv 2606.02521).

For each prompt, K candidates from the current one-step generator are ranked by the target reward (the
reward only ranks, so black-box and non-differentiable rewards work). In a frozen feature space phi, the
features z = phi(G(eps)) drift towards the top-M and away from the bottom-M (the preference field, the
paper's dipole reward), plus lambda times a reference drift towards the frozen base generator's samples
on the same noise and away from the current batch (the mean-shift estimate of grad log p_base - grad
log p_theta). The features regress onto their detached drifted target (paper section 3, V_DrPO =
V_pref + lambda V_ref, z* = sg(z + eta V_DrPO), L = ||z - z*||^2 / 2K).

This follows the official SD-Turbo trainer (UGVly/DrPO ``src/drpo/training/trainer.py``@61329a4,
``_compute_prompt_terms``), not the paper's unnormalised dipole gradient: each field is
:func:`methods.drift.drift_loss`, with its global feature scale and per-radius RMS normalisation; the
anchor weights eta (3000) enter only through that normalisation, and each feature key is its own drift
problem over all tokens of all K images of one prompt (the official drifting code instead runs one
problem per token position). Keys are summed (SD-Turbo; the SDXL trainer averages: ``aggregation``).

The official trainer has a second path, for GenEval's binary verifier (``drpo-geneval.sh``@61329a4; trainer.py
691-872, 1225-1434), which these options reproduce (preset ``paper-geneval``; defaults keep the PickScore path):
it samples up to 4 rounds of 24 candidates until a prompt has 8 correct and 8 incorrect ones (``rounds``),
skips the prompt, reference term included, when it has not (``require_both``), drifts only its 8 positives
(``drift_set``), and keeps the config's default 0.2 latent MSE to the base (``latent_l2``); a prompt whose
rewards all tie therefore gets no reference term (``skip_tied``, implied by ``require_both``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal

import torch
from torch import Tensor

from harness.api import Context, Needs, Rollout
from harness.validate import Bound, at_least, nonnegative, positive, within
from methods.drift import drift_flops, drift_loss
from methods.ranking import rank_anchors, verifier_anchors, verifier_counts_met

NAME = "drpo"
VERSION = 1
REWARD_GRADIENT = False


@dataclass(frozen=True)
class Config:
    """DrPO's hyperparameters; defaults are the official SD-Turbo launch script (drpo.sh@61329a4)."""

    m: int = 8
    """Positives and negatives per prompt: the top-M and bottom-M of the K candidates (disjoint, K >= 2M)."""
    eta: float = 3000.0
    """Anchor weight of the positives, negatives, reference samples and batch negatives (the paper's eta)."""
    lam: float = 0.2
    """Weight lambda of the reference term (``drifting_ref_loss_weight``)."""
    reference: Literal["drift", "perceptual", "none"] = "drift"
    """Reference objective: "drift" (V_ref), "perceptual" (lambda * MSE to the reference features) or "none"."""
    features: Literal["encoder", "latent", "latent-tokens", "pixel", "vit-mae", "vit-mae-full"] = "encoder"
    """Feature space: "encoder" (the profile's frozen latent encoder: the official MAE-256 on SD-Turbo),
    "latent" (raw latents), "latent-tokens", "pixel" (pooled decoded pixels) or "vit-mae" (ViT-MAE-base layer-12
    features of decoded images, the official SDXL MAE variant; "vit-mae-full" keeps every patch)."""
    grouping: Literal["prompt", "position"] = "prompt"
    """Which points form one drift problem per feature key: "prompt" (all N tokens of the K images of a
    prompt together, the official DrPO trainer) or "position" (one problem per token position across the
    K images, the official drifting code; needed for per-position tokens such as ``latent-tokens``)."""
    aggregation: Literal["sum", "mean"] = "sum"
    """How feature keys combine: "sum" (SD-Turbo trainer) or "mean" (SDXL trainer)."""
    kernel: Literal["laplacian", "exponential", "rbf", "cosine"] = "laplacian"
    """Drift kernel: laplacian (alias exponential), rbf or cosine."""
    radii: tuple[float, ...] = (0.02, 0.05, 0.2)
    """Kernel bandwidths of the preference field."""
    ref_radii: tuple[float, ...] = (0.02, 0.05, 0.2)
    """Kernel bandwidths of the reference field."""
    strict_ties: bool = False
    """Keep the largest anchor sets whose rewards separate strictly (every positive above every negative;
    ``methods.ranking.rank_anchors``). The official PickScore path breaks ties arbitrarily (argsort); its GenEval
    path thresholds at 0.5 instead (``require_both``). With a binary reward, strictness keeps correct samples out
    of the negatives. A prompt whose candidates all tie gets no preference term in either mode."""
    rounds: int = 1
    """Sampling rounds of K candidates per prompt (each round new noise). The official GenEval path samples up to
    4 rounds of 24 (``geneval_max_rollout_rounds``; trainer.py:763-809) and stops once the prompt has M correct
    (reward >= 0.5) and M incorrect candidates; the PickScore path samples once. Here the whole micro-batch gets
    another round while any of its prompts lacks them (the same with the official 1 prompt per micro-batch).
    Every round is more samples, reference passes and reward calls (all metered), so matched-budget tables keep 1.
    Above 1 it needs a binary reward."""
    require_both: bool = False
    """The official GenEval skip rule (trainer.py:812, 820, 1244-1247): a prompt without M correct and M incorrect
    candidates is skipped, reference term and ``latent_l2`` included; otherwise its anchors are M random correct
    and M random incorrect ones (``methods.ranking.verifier_anchors``). Needs a binary reward. The official
    PickScore path never skips."""
    drift_set: Literal["all", "positives"] = "all"
    """Whose features drift: all K candidates (the official PickScore path, ``online_feature_top_fraction`` 1) or
    only the M positives (the official GenEval path, trainer.py:716-729: the negatives are removed from the drifted
    set, which leaves the 8 positives). The reference term and ``latent_l2`` use the same set; a prompt without
    positives (all tied) then drifts nothing."""
    latent_l2: float = 0.0
    """Weight of MSE(x0, x0_ref) in latent space over the drifted set, added to each prompt's loss (the official
    ``ref_model_l2_weight``, trainer.py:1414-1418: its config default 0.2 stays on in drpo-geneval.sh; drpo.sh
    sets 0)."""
    skip_tied: bool = False
    """A prompt whose rewards all tie gets no term at all: no preference term (never, in either mode) and no
    reference term or ``latent_l2`` either. The official GenEval path does so (such a prompt lacks correct or
    incorrect samples and is skipped); its PickScore path argsorts the tied rewards and keeps both terms with
    arbitrary anchors. Off: the prompt keeps lambda V_ref (driftbench's default)."""
    anchors: Literal["online", "offline"] = "online"
    """"online": rank the on-policy candidates; "offline": take M preferred and M rejected anchors per
    prompt from the run's fixed preference data set (the paper's initial offline experiments)."""
    lr: float = 1e-4
    """AdamW learning rate (constant, no warm-up)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"m": at_least(1), "eta": positive(), "lam": nonnegative(), "radii": positive(),
                                          "ref_radii": positive(), "lr": positive(), "rounds": within(1, 16),
                                          "latent_l2": nonnegative()}
    """Valid range of every numeric field (``harness.validate``)."""


def space(trial) -> dict:
    """Optuna search space: feature space, kernel and bandwidth, M, lambda, tie handling and the learning rate;
    with a binary reward (``trial.binary_reward``, the Shapes verifier section) also the official GenEval path's
    options that keep the matched budget: the skip rule, positives-only drift, the latent MSE and the all-tie
    skip. Resampling rounds spend more samples and reward calls, so no matched-budget search includes them.

    eta is left out: following the official code it enters only through the drift's normalisation, and the
    3-seed ablations in README measure no effect of it. ``latent-tokens`` features run one drift problem per
    token position (the official drifting layout), the others one per prompt (the official DrPO trainer).
    K is the run's candidate count (``RunConfig.k``); the study searches it through the run config.
    """
    features = trial.suggest_categorical("features", ["encoder", "latent-tokens", "latent"])
    base = trial.suggest_float("radius_scale", 0.25, 4.0, log=True)
    out = {
        "features": features,
        "grouping": "position" if features == "latent-tokens" else "prompt",
        "kernel": trial.suggest_categorical("kernel", ["laplacian", "rbf", "cosine"]),
        "radii": tuple(round(r * base, 6) for r in (0.02, 0.05, 0.2)),
        "m": trial.suggest_int("m", 2, 8),
        "lam": trial.suggest_float("lam", 0.0, 1.0),
        "strict_ties": trial.suggest_categorical("strict_ties", [False, True]),
        "lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
    }
    if getattr(trial, "binary_reward", False):
        out.update(require_both=trial.suggest_categorical("require_both", [False, True]),
                   drift_set=trial.suggest_categorical("drift_set", ["all", "positives"]),
                   latent_l2=trial.suggest_float("latent_l2", 0.0, 1.0),
                   skip_tied=trial.suggest_categorical("skip_tied", [False, True]))
    return out


def needs(cfg: Config) -> Needs:
    binary = [name for name, on in ((f"--drpo.rounds {cfg.rounds}", cfg.rounds > 1),
                                    ("--drpo.require-both", cfg.require_both)) if on]
    return Needs(reference=_uses_reference(cfg) or cfg.latent_l2 > 0, reward_grad=False, rounds=cfg.rounds,
                 enough=functools.partial(enough, cfg) if cfg.rounds > 1 else None, binary_reward=", ".join(binary),
                 anchors=cfg.m, features=cfg.features)


def enough(cfg: Config, rewards: Tensor) -> bool:
    """No more sampling rounds once every prompt of rewards (P, n) has M correct and M incorrect candidates."""
    return verifier_counts_met(rewards, cfg.m)


def init(cfg: Config, ctx: Context) -> dict:
    """Check the config against the run before any compute is spent."""
    if not cfg.radii or not cfg.ref_radii:
        raise ValueError(f"DrPO needs at least one kernel bandwidth; got radii={cfg.radii}, ref_radii={cfg.ref_radii}")
    ctx.features(cfg.features)  # raises for an unknown feature space
    if cfg.anchors == "offline" and ctx.offline is None:
        raise ValueError("anchors='offline' needs a preference data set; this run's profile provides none")
    if cfg.anchors == "offline" and (cfg.require_both or cfg.drift_set == "positives"):
        raise ValueError("--drpo.require-both and --drpo.drift-set positives choose among the online candidates; "
                         "they need --drpo.anchors online")
    return {}


def step(cfg: Config, state: dict, batch: Rollout, ctx: Context) -> tuple[Tensor, dict[str, float]]:
    """The DrPO loss of one micro-batch (mean over prompts; a skipped prompt counts as 0), and diagnostics."""
    phi = ctx.features(cfg.features)
    gen = phi(batch.latents)                                         # {key: (P*K, N, D)} with grad
    ref = None
    if _uses_reference(cfg):
        with torch.no_grad():
            ref = phi(batch.ref_latents)
    pos_idx, neg_idx, skip = _anchors(cfg, batch, ctx)
    offline = _offline_features(cfg, batch, ctx, phi)
    losses, logs = [], []
    for p in range(len(batch.prompts)):
        extra = {"skipped": float(skip[p])} if _can_skip(cfg) else {}
        extra.update({"latent_l2": 0.0} if cfg.latent_l2 > 0 else {})
        if skip[p]:
            losses.append(batch.latents.new_zeros((), dtype=torch.float32))
            logs.append({**dict.fromkeys(_LOG_KEYS, 0.0), "no_preference": 1.0, **extra})
            continue
        loss, log = _prompt_loss(cfg, p, batch.k, gen, ref, pos_idx[p], neg_idx[p], offline, ctx.count)
        if cfg.latent_l2 > 0:
            rows = slice(p * batch.k, (p + 1) * batch.k)
            mse = latent_mse(_drifted(cfg, batch.latents[rows], pos_idx[p]),
                             _drifted(cfg, batch.ref_latents[rows], pos_idx[p]))
            loss = loss + cfg.latent_l2 * mse
            extra["latent_l2"] = float(mse.detach())
        losses.append(loss)
        logs.append({**log, **extra})
    out = {k: sum(log[k] for log in logs) / len(logs) for k in logs[0]}
    return torch.stack(losses).mean(), out


_LOG_KEYS = ("pref_loss", "ref_loss", "drift_rms", "mass_pos", "mass_neg")


def latent_mse(latents: Tensor, ref_latents: Tensor) -> Tensor:
    """mean over samples and elements of (x0 - sg(x0_ref))^2 in float32 (the official ``ref_l2``)."""
    return (latents.float() - ref_latents.detach().float()).square().mean()


def _uses_reference(cfg: Config) -> bool:
    return cfg.reference != "none" and cfg.lam > 0


def _can_skip(cfg: Config) -> bool:
    return cfg.require_both or cfg.skip_tied or cfg.drift_set == "positives"


def _drifted(cfg: Config, x: Tensor, pos_idx: Tensor | None) -> Tensor:
    """The rows of one prompt's (K, ...) tensor that drift: all K, or the positives."""
    return x[pos_idx] if cfg.drift_set == "positives" else x


def _anchors(cfg: Config, batch: Rollout, ctx: Context) -> tuple[list[Tensor | None], list[Tensor | None], list[bool]]:
    """Per prompt, the indices of the positives and negatives (None: no preference) and whether the prompt is
    skipped altogether (no term at all)."""
    rewards = batch.per_prompt(batch.rewards.detach().float())      # (P, K)
    if cfg.require_both:
        pairs = [verifier_anchors(r, cfg.m, ctx.rng) for r in rewards]
    else:
        pairs = [rank_anchors(r, cfg.m, ctx.rng, strict=cfg.strict_ties) for r in rewards]
    pos, neg = [p for p, _ in pairs], [n for _, n in pairs]
    online = cfg.anchors == "online"
    skip = [online and p is None and _can_skip(cfg) for p in pos]
    return pos, neg, skip


def _offline_features(cfg: Config, batch: Rollout, ctx: Context, phi) -> tuple[dict, dict] | None:
    """Features of M preferred and M rejected offline anchors per prompt: {key: (P*M, N, D)} each."""
    if cfg.anchors != "offline":
        return None
    pos, neg = ctx.offline.anchors(batch.prompts, cfg.m, ctx.rng)     # (P, M, C, h, w) each
    with torch.no_grad():
        return phi(pos.flatten(0, 1)), phi(neg.flatten(0, 1))


def _prompt_loss(cfg: Config, p: int, k: int, gen: dict[str, Tensor], ref: dict[str, Tensor] | None,
                 pos_idx: Tensor | None, neg_idx: Tensor | None, offline,
                 count: Callable[[float], None]) -> tuple[Tensor, dict[str, float]]:
    """Sum (or mean) over feature keys of pref + lambda * ref for prompt p.

    Each key's K images x N tokens form one point set (1, K*N, D), as in the official trainer, or with
    ``grouping="position"`` N point sets (N, K, D), one per token position; with ``drift_set="positives"``
    only the M positives' points drift (and meet the reference).
    """
    log = {**dict.fromkeys(_LOG_KEYS, 0.0), "no_preference": float(pos_idx is None and offline is None)}
    terms = []
    for key, feats in gen.items():
        g = feats[p * k:(p + 1) * k]                                  # (K, N, D)
        points = _group(cfg, _drifted(cfg, g, pos_idx))               # (1, K*N, D) or (N, K, D), K: the drifted
        term = points.new_zeros(())
        anchors = _anchor_sets(cfg, p, key, g, pos_idx, neg_idx, offline)
        if anchors is not None:
            pref, info = _drift(count, points, *anchors, radii=cfg.radii, kernel=cfg.kernel, eta=cfg.eta)
            term = term + pref.mean()
            log["pref_loss"] += float(pref.detach().mean())
            # The raw drift RMS and kernel masses move when the normalised loss does not (drifting #3).
            log["drift_rms"] += sum(float(info[f"rms_{r:g}"]) for r in cfg.radii) / len(cfg.radii)
            log["mass_pos"] += float(info["mass_pos"])
            log["mass_neg"] += float(info["mass_neg"])
        if ref is not None:
            ref_loss = _reference_term(cfg, points, _group(cfg, _drifted(cfg, ref[key][p * k:(p + 1) * k], pos_idx)),
                                       count)
            term = term + cfg.lam * ref_loss
            log["ref_loss"] += float(ref_loss.detach())
        terms.append(term)
    total = torch.stack(terms).sum() if cfg.aggregation == "sum" else torch.stack(terms).mean()
    return total, log


def _anchor_sets(cfg: Config, p: int, key: str, g: Tensor, pos_idx: Tensor | None, neg_idx: Tensor | None,
                 offline) -> tuple[Tensor, Tensor] | None:
    """Positive and negative point sets, grouped as the generated points ((1, M*N, D) or (N, M, D)), for
    prompt p, or None when it has no preference."""
    if offline is not None:
        pos, neg = offline[0][key], offline[1][key]                   # (P*M, N, D)
        return _group(cfg, pos[p * cfg.m:(p + 1) * cfg.m]), _group(cfg, neg[p * cfg.m:(p + 1) * cfg.m])
    if pos_idx is None:
        return None
    # Anchors are detached copies of batch members; their self-copies stay unmasked, as in the official code.
    return _group(cfg, g[pos_idx].detach()), _group(cfg, g[neg_idx].detach())


def _group(cfg: Config, x: Tensor) -> Tensor:
    """(K, N, D) per-image tokens -> drift problems: (1, K*N, D) per prompt or (N, K, D) per position."""
    return x.reshape(1, -1, x.shape[-1]) if cfg.grouping == "prompt" else x.transpose(0, 1)


def _drift(count: Callable[[float], None], points: Tensor, positive: Tensor, negative: Tensor, *,
           radii: tuple[float, ...], kernel: str, eta: float, mask_negative_self: bool = False) -> tuple[Tensor, dict]:
    """One drift field, its analytic FLOPs reported to the harness (the meter's counter cannot see them)."""
    out = drift_loss(points, positive, negative, positive_weight=eta, negative_weight=eta, radii=radii,
                     mask_negative_self=mask_negative_self, kernel=kernel)
    b, n, d = points.shape
    count(drift_flops(b, n, d, positive.shape[1], negative.shape[1], len(radii), kernel=kernel,
                      mask_negative_self=mask_negative_self).total)
    return out


def _reference_term(cfg: Config, points: Tensor, reference: Tensor, count: Callable[[float], None]) -> Tensor:
    """V_ref (attract to the base samples, repel from the batch, self masked) or the perceptual MSE."""
    if cfg.reference == "drift":
        loss, _ = _drift(count, points, reference, points.detach(), radii=cfg.ref_radii, kernel=cfg.kernel,
                         eta=cfg.eta, mask_negative_self=True)
        return loss.mean()
    # "perceptual": the official frozen_feature_l2 term, MSE between current and base features.
    return torch.nn.functional.mse_loss(points.float(), reference.float())
