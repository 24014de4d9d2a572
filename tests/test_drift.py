"""The drift field against a naive loop implementation of the official algorithm, and its invariants."""

import math

import pytest
import torch

from methods.drift import drift_loss

pytestmark = pytest.mark.unit


def naive_force(gen, pos, neg, w_pos, w_neg, radii, mask_negative_self, kernel):
    """Official drifting Algorithm 2, one group at a time with explicit loops over points and targets.

    Returns (per-group loss list, scaled force list, per_dim scale) in float64.
    """
    gen, pos, neg = gen.double(), pos.double(), neg.double()
    b_count, n, d = gen.shape
    m, p = neg.shape[1], pos.shape[1]
    targets = [torch.cat([gen[b], neg[b], pos[b]]) for b in range(b_count)]
    weights = [1.0] * n + [w_neg] * m + [w_pos] * p
    t_count = n + m + p
    dist = [[[math.sqrt(max(float(((gen[b, i] - targets[b][t]) ** 2).sum()), 1e-8)) for t in range(t_count)]
             for i in range(n)] for b in range(b_count)]
    total = sum(dist[b][i][t] * weights[t] for b in range(b_count) for i in range(n) for t in range(t_count))
    mean_w = sum(weights) / t_count
    scale = max(total / (b_count * n * t_count) / mean_w, 1e-3)
    per_dim = max(scale / math.sqrt(d), 1e-3)
    losses, forces = [], []
    for b in range(b_count):
        xs = gen[b] / per_dim
        ts = targets[b] / per_dim
        per_radius = []
        for r in radii:
            logit = torch.zeros(n, t_count, dtype=torch.float64)
            for i in range(n):
                for t in range(t_count):
                    if kernel == "cosine":
                        cos = float(gen[b, i] @ targets[b][t]) / (max(float(gen[b, i].norm()), 1e-8)
                                                                  * max(float(targets[b][t].norm()), 1e-8))
                        value = cos / r
                    elif kernel == "laplacian":
                        value = -dist[b][i][t] / scale / r
                    else:
                        value = -0.5 * (dist[b][i][t] / scale / r) ** 2
                    is_self = t == i or (mask_negative_self and t == n + i)
                    logit[i, t] = value - (100.0 / r if is_self else 0.0)
            row = torch.softmax(logit, dim=1)
            col = torch.softmax(logit, dim=0)
            force = torch.zeros(n, d, dtype=torch.float64)
            for i in range(n):
                aff = [max(float(row[i, t] * col[i, t]), 1e-6) ** 0.5 * weights[t] for t in range(t_count)]
                s_neg, s_pos = sum(aff[: n + m]), sum(aff[n + m:])
                for t in range(t_count):
                    c = aff[t] * s_neg if t >= n + m else -aff[t] * s_pos
                    force[i] += c * (ts[t] - xs[i])
            per_radius.append(force)
        # The official code normalises each radius' force by its RMS over the whole call.
        forces.append(per_radius)
    rms = [math.sqrt(max(sum(float((forces[b][k] ** 2).sum()) for b in range(b_count)) / (b_count * n * d), 1e-8))
           for k in range(len(radii))]
    for b in range(b_count):
        f = sum(forces[b][k] / rms[k] for k in range(len(radii)))
        losses.append(float((f ** 2).mean()))
        forces[b] = f
    return losses, forces, per_dim


def _sets(seed, b=2, n=6, m=3, p=3, d=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, n, d, generator=g), torch.randn(b, p, d, generator=g) + 0.5,
            torch.randn(b, m, d, generator=g) - 0.5)


@pytest.mark.parametrize("kernel", ["laplacian", "rbf", "cosine"])
@pytest.mark.parametrize("mask_negative_self", [False, True])
def test_matches_naive_loop(kernel, mask_negative_self):
    n = 6
    gen, pos, neg = _sets(0, n=n, m=n if mask_negative_self else 3)
    radii = (0.02, 0.05, 0.2) if kernel != "cosine" else (0.05, 0.2, 1.0)
    loss, info = drift_loss(gen, pos, neg, positive_weight=3.0, negative_weight=2.0, radii=radii,
                            mask_negative_self=mask_negative_self, kernel=kernel)
    expected, _, _ = naive_force(gen, pos, neg, 3.0, 2.0, radii, mask_negative_self, kernel)
    torch.testing.assert_close(loss.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    assert set(info) >= {"scale", "mass_pos", "mass_neg"} and all(f"rms_{r:g}" in info for r in radii)


def test_exponential_is_laplacian():
    gen, pos, neg = _sets(1)
    a, _ = drift_loss(gen, pos, neg, positive_weight=1.0, negative_weight=1.0, radii=(0.05,), kernel="laplacian")
    b, _ = drift_loss(gen, pos, neg, positive_weight=1.0, negative_weight=1.0, radii=(0.05,), kernel="exponential")
    torch.testing.assert_close(a, b)


def test_gradient_moves_features_along_the_force():
    gen, pos, neg = _sets(2)
    gen.requires_grad_(True)
    loss, _ = drift_loss(gen, pos, neg, positive_weight=30.0, negative_weight=30.0, radii=(0.02, 0.05, 0.2))
    loss.sum().backward()
    _, forces, _ = naive_force(gen.detach(), pos, neg, 30.0, 30.0, (0.02, 0.05, 0.2), False, "laplacian")
    for b in range(gen.shape[0]):
        descent = -gen.grad[b].double().flatten()
        cos = torch.nn.functional.cosine_similarity(descent, forces[b].flatten(), dim=0)
        assert cos > 1 - 1e-6


def _single_point(x, pos, neg):
    """Drift of one generated point, read back from the loss gradient (d loss / d x = -2 F / (s' D)),
    and the raw (pre-normalisation) force RMS at the largest radius.

    With a single generated point the batch's self-repulsion has no lever arm (x_i - x_i = 0); its only
    trace is the masked self-affinity (clamped at 1e-3) inside the negative mass, so the drift is the
    preference field up to a relative 1e-3.
    """
    x = x.clone().requires_grad_(True)
    loss, info = drift_loss(x, pos, neg, positive_weight=5.0, negative_weight=5.0, radii=(0.05, 0.2))
    loss.sum().backward()
    return -x.grad, float(info["rms_0.2"])


def test_swapping_positive_and_negative_flips_the_force():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 4, generator=g)
    a, b = torch.randn(1, 3, 4, generator=g) + 1.0, torch.randn(1, 3, 4, generator=g) - 1.0
    forward, _ = _single_point(x, a, b)
    backward, _ = _single_point(x, b, a)
    unit = forward.norm()
    torch.testing.assert_close(forward / unit, -backward / unit, rtol=0, atol=1e-2)
    assert float((forward * (a.mean(1) - b.mean(1))[:, None]).sum()) > 0  # towards the positives' side


def test_identical_positive_and_negative_sets_give_no_preference_force():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 1, 4, generator=g)
    s, other = torch.randn(1, 5, 4, generator=g), torch.randn(1, 5, 4, generator=g) + 2.0
    _, raw_identical = _single_point(x, s, s.clone())
    _, raw_distinct = _single_point(x, s, other)
    # Only the masked self-affinity's share of the negative mass survives the cancellation.
    assert raw_identical < 1e-2 * raw_distinct


@pytest.mark.parametrize("kernel", ["laplacian", "rbf"])
def test_translation_leaves_the_loss_unchanged(kernel):
    gen, pos, neg = _sets(5)
    shift = torch.randn(1, 1, gen.shape[-1]) * 3.0
    kw = dict(positive_weight=10.0, negative_weight=4.0, radii=(0.02, 0.05, 0.2), kernel=kernel)
    a, _ = drift_loss(gen, pos, neg, **kw)
    b, _ = drift_loss(gen + shift, pos + shift, neg + shift, **kw)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [
    dict(radii=(0.05, -0.1)), dict(radii=()), dict(kernel="gauss"),
])
def test_bad_arguments_raise(bad):
    gen, pos, neg = _sets(6)
    kw = dict(positive_weight=1.0, negative_weight=1.0, radii=(0.05,)) | bad
    with pytest.raises(ValueError):
        drift_loss(gen, pos, neg, **kw)


def test_mismatched_shapes_raise():
    gen, pos, neg = _sets(7)
    with pytest.raises(ValueError, match="does not match"):
        drift_loss(gen, pos[:, :, :3], neg, positive_weight=1.0, negative_weight=1.0, radii=(0.05,))
    with pytest.raises(ValueError, match="mask_negative_self"):
        drift_loss(gen, pos, neg, positive_weight=1.0, negative_weight=1.0, radii=(0.05,), mask_negative_self=True)
