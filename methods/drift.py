"""The drifting field and its loss (Deng et al., arXiv 2602.04770, Algorithm 2), as DrPO uses it.

This reproduces the official ``drift_loss`` (lambertae/drifting ``drift_loss.py``@accd0cf, with the
kernel options and ``mask_negative_self`` of UGVly/DrPO ``src/drpo/drift.py``@dd473d8). Where the DrPO
paper's dipole-energy gradient (an unnormalised sum of kernel gradients) and the official code differ,
this follows the code: a doubly normalised kernel, one global feature scale, and a per-radius RMS
normalisation of the force (drpo-method.md sections 1.2 and 2.2).

For each group b the generated points X (B, N, D) drift towards the weighted positives and away from the
weighted negatives and from the other generated points:

    T   = [sg(X) | negatives | positives],   w_T = [1 | w_neg | w_pos]
    s   = mean_{b,i,t}(||x_i - T_t|| w_t) / mean(w_t)                   (one scalar per call)
    A_R = sqrt(softmax_t(l) * softmax_i(l)) * w_T,   l = kernel(x_i, T_t; s, R) - (100/R) [self]
    F_R = sum_t c_it T_t - (sum_t c_it) x_i,   c = +A S^- on positives, -A S^+ on negatives
    loss_b = mean_{i,d} (X / s' - sg(X / s' + sum_R F_R / rms(F_R)))^2,   s' = s / sqrt(D)
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

KERNELS = ("laplacian", "rbf", "cosine")
"""Valid kernels; ``"exponential"`` is accepted as an alias of laplacian, as in the official code."""

_SELF_MASK = 100.0
"""Logit penalty (times 1/R) that removes a point's own copy from its target set."""


def canonical_kernel(kernel: str) -> str:
    """Map a kernel name to one of :data:`KERNELS` (the official code maps exponential to laplacian)."""
    name = kernel.lower()
    if name == "exponential":
        return "laplacian"
    if name not in KERNELS:
        raise ValueError(f"unknown kernel '{kernel}'; valid kernels: {', '.join(KERNELS)}, exponential")
    return name


def pairwise_distance(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """Unsquared L2 distances (B, N, M) between x (B, N, D) and y (B, M, D); eps inside the sqrt."""
    sq = torch.baddbmm((x * x).sum(-1)[:, :, None] + (y * y).sum(-1)[:, None, :], x, y.transpose(1, 2), alpha=-2.0)
    return sq.clamp_min_(eps).sqrt_()


def kernel_logits(x: Tensor, y: Tensor, distance: Tensor, scale: Tensor, radius: float, kernel: str,
                  cosine: Tensor | None = None) -> Tensor:
    """Kernel log-affinities (B, N, M) at bandwidth ``radius``; larger means closer; a fresh tensor.

    Laplacian: -d/(sR). RBF: -(d/(sR))^2 / 2. Cosine: cos(x, y)/R, which ignores the feature scale
    (``cosine`` is the (B, N, M) cosine matrix, if already computed).
    """
    if kernel == "cosine":
        if cosine is None:
            cosine = cosine_matrix(x, y)
        return cosine / radius
    inv = 1.0 / (scale.clamp_min(1e-8) * radius)
    return distance * -inv if kernel == "laplacian" else (distance * inv).square_().mul_(-0.5)


def cosine_matrix(x: Tensor, y: Tensor) -> Tensor:
    """Cosine similarities (B, N, M) between x (B, N, D) and y (B, M, D)."""
    xn = torch.nn.functional.normalize(x, dim=-1, eps=1e-8)
    yn = torch.nn.functional.normalize(y, dim=-1, eps=1e-8)
    return torch.bmm(xn, yn.transpose(1, 2))


def drift_loss(
    generated: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    positive_weight: float | Tensor,
    negative_weight: float | Tensor,
    radii: Sequence[float],
    mask_negative_self: bool = False,
    kernel: str = "laplacian",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Drift ``generated`` towards ``positive`` and away from ``negative``; returns (loss (B,), info).

    Args:
        generated: (B, N, D) features with grad; the loss's only path to the parameters.
        positive: (B, P, D) attracting anchors (treated as constants).
        negative: (B, M, D) repelling anchors (treated as constants).
        positive_weight, negative_weight: scalar weight of each anchor, or a (B, P) / (B, M) tensor
            (a 1-D tensor is broadcast over groups). Generated points weigh 1.
        radii: kernel bandwidths; each adds one unit-RMS force.
        mask_negative_self: also mask negative i as the self-copy of generated i (requires M == N);
            DrPO's reference drift repels from the current batch this way.
        kernel: "laplacian" (default), "exponential" (alias), "rbf" or "cosine".

    ``info`` holds detached diagnostics: ``scale``, the raw (pre-normalisation) RMS of each radius'
    force (``rms_<R>``), and the mean positive and negative kernel mass per point (``mass_pos``,
    ``mass_neg``), since the normalised loss itself barely moves during training (drifting issue #3).
    """
    kernel = canonical_kernel(kernel)
    generated, positive, negative = _check_inputs(generated, positive, negative, radii, mask_negative_self)
    batch, n, dim = generated.shape
    m = negative.shape[1]

    # 1. Targets and weights: the generated block is its own (weight-1) negative set.
    old = generated.detach()
    targets = torch.cat([old, negative.detach(), positive.detach()], dim=1)
    weights = torch.cat([old.new_ones(batch, n), _weights(negative_weight, batch, m, old),
                         _weights(positive_weight, batch, positive.shape[1], old)], dim=1)

    # 2. One global scale for the whole call, so the mean distance of the scaled features is ~sqrt(D).
    distance = pairwise_distance(old, targets)
    # mean_{b,i,t}(d w_t): reduce over i first, so no weighted (B, N, T) copy is made.
    weighted = (distance.sum(dim=1) * weights).sum() / distance.numel()
    scale = (weighted / weights.mean().clamp_min(1e-8)).clamp_min(1e-3)
    per_dim = (scale / math.sqrt(dim)).clamp_min(1e-3)
    old_s, targets_s = old / per_dim, targets / per_dim
    idx = torch.arange(n, device=old.device)
    cosine = cosine_matrix(old, targets) if kernel == "cosine" else None

    # 3. One unit-RMS force per radius, summed. Every (B, N, T) step works in place on one buffer.
    force = torch.zeros_like(old_s)
    info: dict[str, Tensor] = {"scale": scale.detach()}
    mass_pos, mass_neg = old.new_zeros(()), old.new_zeros(())
    floor = math.log(1e-3)  # sqrt of the official 1e-6 clamp, in log space
    for radius in radii:
        logits = kernel_logits(old, targets, distance, scale, float(radius), kernel, cosine)
        logits[:, idx, idx] -= _SELF_MASK / radius  # a point's own copy leaves its target set
        if mask_negative_self:
            logits[:, idx, n + idx] -= _SELF_MASK / radius
        # Geometric mean of the row and column softmax (the "double normalisation"):
        # sqrt(softmax_t(l) softmax_i(l)) = exp(l - (lse_t(l) + lse_i(l)) / 2).
        half_row, half_col = logits.logsumexp(dim=-1, keepdim=True) * 0.5, logits.logsumexp(dim=-2, keepdim=True) * 0.5
        affinity = logits.sub_(half_row).sub_(half_col).clamp_min_(floor).exp_().mul_(weights[:, None, :])
        repel, attract = affinity[:, :, : n + m], affinity[:, :, n + m:]
        s_pos, s_neg = attract.sum(-1, keepdim=True), repel.sum(-1, keepdim=True)
        repel.mul_(-s_pos)  # the coefficients: -A S+ on the negatives, +A S- on the positives
        attract.mul_(s_neg)
        f = torch.baddbmm(old_s * -affinity.sum(-1, keepdim=True), affinity, targets_s)
        rms = f.square().mean().clamp_min(1e-8).sqrt()
        force.add_(f.div_(rms))
        info[f"rms_{radius:g}"] = rms.detach()
        mass_pos, mass_neg = mass_pos + s_pos.mean(), mass_neg + s_neg.mean()

    # 4. Regress the scaled features onto the detached drifted target.
    goal = (old_s + force).detach()
    loss = (generated / per_dim - goal).square().mean(dim=(1, 2))
    info["mass_pos"] = (mass_pos / len(radii)).detach()
    info["mass_neg"] = (mass_neg / len(radii)).detach()
    return loss, info


class DriftFlops(NamedTuple):
    """The analytic FLOPs of one :func:`drift_loss` call, split by kind."""

    matmul: int
    """The batched matmuls, 2 per multiply-add, as ``torch.utils.flop_counter`` counts them."""
    elementwise: int
    """Everything else on (B, N, T), (B, N, D), (B, T, D), (B, N) and (B, T) tensors."""

    @property
    def total(self) -> int:
        return self.matmul + self.elementwise


def drift_flops(groups: int, points: int, dim: int, positives: int, negatives: int, radii: int, *,
                kernel: str = "laplacian", mask_negative_self: bool = False) -> DriftFlops:
    """FLOPs of one :func:`drift_loss` forward on generated (B, N, D), positive (B, P, D), negative (B, M, D).

    The meter's counter (``torch.utils.flop_counter``) sees only the matmuls, and those only inside a metered
    call; the drift runs in the method's loss phase, so the harness charges this count there (``Context.count``).
    With T = N + M + P targets, R radii, c = 1 for the cosine kernel (else 0) and k the kernel's ops per
    logit (laplacian and cosine 1, rbf 3):

        matmul      = 2 B N T D (1 + R + c)          distances, one force per radius, cosine matrix
        elementwise = (8 + 3c + 6R) B N D + (3 + 3c) B T D + (5 + R (16 + k)) B N T
                      + (3 + 2c + 3R) B T + (2c + R (8 + s)) B N,   s = 1 with mask_negative_self

    Convention: one FLOP per element of the largest tensor an arithmetic op reads or writes (a reduction
    counts its input, a broadcast its output); ``logsumexp`` is 4 per input element (max, subtract, exp, sum)
    plus 2 per output (log, add); a vector norm 2 per input element plus 1 per output; ``baddbmm`` adds 1 per
    output element to its matmul. Copies, views, concatenation and indexing count 0, and so does the fixed
    handful of 0-dim (scalar) ops per call. The per-(B, N, T) terms of one radius (k + 16): the kernel (k), two
    log-sum-exps (8), centring, clamp, exp and weighting (5), the positive and negative masses (1), their
    products into the coefficients (1) and the coefficients' row sums (1). The regression's backward pass
    (about 4 B N D, in the generator's backward) is not part of this forward count.
    """
    c = int(canonical_kernel(kernel) == "cosine")
    k = 3 if canonical_kernel(kernel) == "rbf" else 1
    b, n, d, r = groups, points, dim, radii
    t = n + negatives + positives
    bnd, btd, bnt, bt, bn = b * n * d, b * t * d, b * n * t, b * t, b * n
    matmul = 2 * bnt * d * (1 + r + c)
    elementwise = ((8 + 3 * c + 6 * r) * bnd + (3 + 3 * c) * btd + (5 + r * (16 + k)) * bnt
                   + (3 + 2 * c + 3 * r) * bt + (2 * c + r * (8 + int(mask_negative_self))) * bn)
    return DriftFlops(matmul, elementwise)


def _check_inputs(generated: Tensor, positive: Tensor, negative: Tensor, radii: Sequence[float],
                  mask_negative_self: bool) -> tuple[Tensor, Tensor, Tensor]:
    for name, t in (("generated", generated), ("positive", positive), ("negative", negative)):
        if t.ndim != 3:
            raise ValueError(f"{name} must be (B, N, D), got shape {tuple(t.shape)}")
    b, n, d = generated.shape
    for name, t in (("positive", positive), ("negative", negative)):
        if t.shape[0] != b or t.shape[2] != d:
            raise ValueError(f"{name} shape {tuple(t.shape)} does not match generated {tuple(generated.shape)}")
        if t.shape[1] == 0:
            raise ValueError(f"{name} has no anchors; the drift needs at least one positive and one negative")
    if mask_negative_self and negative.shape[1] != n:
        raise ValueError(f"mask_negative_self needs as many negatives as generated points ({negative.shape[1]} != {n})")
    if len(radii) == 0 or any(r <= 0 for r in radii):
        raise ValueError(f"radii must be positive and non-empty, got {tuple(radii)}")
    # The official code computes in float32 whatever the training dtype.
    return generated.float(), positive.float(), negative.float()


def _weights(value: float | Tensor, batch: int, count: int, like: Tensor) -> Tensor:
    """Anchor weights (B, count) from a scalar or a (count,) / (B, count) tensor."""
    if not torch.is_tensor(value):
        return like.new_full((batch, count), float(value))
    w = value.to(like)
    w = w.expand(batch, -1) if w.ndim == 1 else w
    if tuple(w.shape) != (batch, count):
        raise ValueError(f"anchor weights must be ({batch}, {count}), got {tuple(w.shape)}")
    return w
