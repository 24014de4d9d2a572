"""The drift field's analytic FLOPs (``methods.drift.drift_flops``) and their place in the meter: hand values,
an op-by-op count of what ``drift_loss`` dispatches, torch's own matmul counter, and a real DrPO run whose stored
loss-phase FLOPs are the formula's."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from harness.budget import Meter
from harness.run import prepare, run
from harness.store import read_json
from methods import drpo
from methods.drift import drift_flops, drift_loss
from tests.conftest import tiny_run


def test_hand_values():
    # B=1, N=2, D=3, one positive, one negative (T=4), one radius: BND=6, BTD=12, BNT=8, BT=4, BN=2.
    # matmul 2*8*3*(1+1) = 96; elementwise 14*6 + 3*12 + 22*8 + 6*4 + 8*2 = 84 + 36 + 176 + 24 + 16 = 336.
    assert tuple(drift_flops(1, 2, 3, 1, 1, 1)) == (96, 336)
    # rbf: 2 more ops per logit (2*8); cosine: one more matmul (48) and the normalised copies and their norms
    # (3*6 + 3*12 + 2*4 + 2*2 = 66).
    assert tuple(drift_flops(1, 2, 3, 1, 1, 1, kernel="rbf")) == (96, 352)
    assert tuple(drift_flops(1, 2, 3, 1, 1, 1, kernel="cosine")) == (144, 402)
    assert drift_flops(1, 2, 3, 1, 1, 1, kernel="exponential") == drift_flops(1, 2, 3, 1, 1, 1)
    # The self-copy mask of the reference field: one (B, N) subtraction per radius.
    assert drift_flops(1, 2, 3, 2, 2, 3, mask_negative_self=True).elementwise \
        == drift_flops(1, 2, 3, 2, 2, 3).elementwise + 3 * 2
    assert drift_flops(1, 2, 3, 1, 1, 1).total == 432


_FREE = {"detach", "cat", "new_ones", "new_full", "new_zeros", "zeros_like", "unsqueeze", "transpose", "view",
         "slice", "index", "index_put_", "arange", "expand", "clone", "_to_copy", "select", "alias", "lift_fresh"}
"""Copies, views, creation and indexing: no arithmetic."""


class _OpCount(TorchDispatchMode):
    """Every aten op ``drift_loss`` dispatches, priced by the convention ``drift_flops`` documents."""

    def __init__(self):
        super().__init__()
        self.matmul = self.elementwise = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[1]
        ins = [a for a in args if isinstance(a, torch.Tensor)]
        outs = [out] if isinstance(out, torch.Tensor) else \
            [o for o in out if isinstance(o, torch.Tensor)] if isinstance(out, (tuple, list)) else []
        if name in _FREE or not outs or not outs[0].is_floating_point():  # index arithmetic is not floating point
            return out
        largest = max(t.numel() for t in ins + outs)
        if name in ("bmm", "baddbmm"):
            a, b = ins[-2:]
            self.matmul += 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
            self.elementwise += outs[0].numel() if name == "baddbmm" else 0
        elif largest <= 1:
            pass  # the per-call scalars the formula leaves out
        elif name == "logsumexp":
            self.elementwise += 4 * ins[0].numel() + 2 * outs[0].numel()
        elif name == "linalg_vector_norm":
            self.elementwise += 2 * ins[0].numel() + outs[0].numel()
        else:
            self.elementwise += largest
        return out


_CASES = [(shape, radii, kernel, mask) for shape, radii, kernel, mask in itertools.product(
    [(1, 2, 3, 1, 1), (3, 5, 4, 2, 3), (2, 6, 7, 6, 1)], [1, 3], ["laplacian", "rbf", "cosine"], [False, True])
    if not mask or shape[3] == shape[1]]


@pytest.mark.parametrize("shape,radii,kernel,mask", _CASES)
def test_the_formula_is_what_drift_loss_computes(shape, radii, kernel, mask):
    b, n, d, m, p = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, n, d, generator=g, requires_grad=True)
    pos, neg = torch.randn(b, p, d, generator=g), torch.randn(b, m, d, generator=g)
    kw = dict(positive_weight=3.0, negative_weight=3.0, radii=(0.1, 0.2, 0.5)[:radii], kernel=kernel,
              mask_negative_self=mask)
    with _OpCount() as ops:
        drift_loss(x, pos, neg, **kw)
    counter = FlopCounterMode(display=False)
    with counter:
        drift_loss(x, pos, neg, **kw)
    expected = drift_flops(b, n, d, p, m, radii, kernel=kernel, mask_negative_self=mask)
    assert (ops.matmul, ops.elementwise) == tuple(expected)
    assert counter.get_total_flops() == expected.matmul  # torch's own counter sees the matmuls only


def test_meter_count_charges_the_running_phase():
    meter = Meter()
    with meter.phase("loss"):
        meter.count(123.0)
        with meter.phase("features"):
            meter.count(7.0)
    assert meter.stats["loss"].flops == 123.0 and meter.stats["features"].flops == 7.0
    with pytest.raises(RuntimeError, match="outside a phase"):
        meter.count(1.0)
    with meter.phase("loss"), pytest.raises(ValueError, match="non-negative"):
        meter.count(float("nan"))
    off = Meter(count_flops=False)
    with off.phase("loss"):
        off.count(5.0)
    assert off.stats["loss"].flops == 0.0


def _expected_loss_flops(cfg, method_cfg: drpo.Config) -> int:
    """The formula for one DrPO micro-batch of one prompt, from the run's feature shapes."""
    parts = prepare(cfg, method_cfg)
    latents = parts.world.generator.noise(list(range(cfg.k)))
    total = 0
    for feats in parts.world.features(method_cfg.features)(latents).values():
        k, n, d = feats.shape
        b, points = (1, k * n) if method_cfg.grouping == "prompt" else (n, k)
        anchors = points // k * method_cfg.m
        kw = dict(kernel=method_cfg.kernel)
        total += drift_flops(b, points, d, anchors, anchors, len(method_cfg.radii), **kw).total
        total += drift_flops(b, points, d, points, points, len(method_cfg.ref_radii), mask_negative_self=True,
                             **kw).total
    return total


@pytest.mark.parametrize("method_cfg", [
    drpo.Config(m=2),
    drpo.Config(m=2, features="latent-tokens", grouping="position", kernel="rbf", radii=(0.05, 0.2)),
], ids=["encoder-prompt", "tokens-position"])
def test_a_drpo_run_stores_the_drift_flops_in_its_loss_phase(tmp_path, method_cfg):
    cfg = tiny_run(tmp_path)
    summary = run(cfg, method_cfg, progress=False)
    stored = read_json(tmp_path / "runs" / summary["run_id"] / "summary.json")["phases"]
    assert stored["loss"]["flops"] == pytest.approx(_expected_loss_flops(cfg, method_cfg), rel=1e-12)
    assert stored["loss"]["flops"] > 0
