"""``driftbench bench-drift``: ``methods/drift.py`` against a plain torch implementation of the same algorithm.

Both run forward and backward on the same random features at DrPO's SD-Turbo size (by default 1,536
generated points, 512 positive and 512 negative anchors, D = 2,048, the default radii), alternating, in one
process; the medians and their ratio go to ``results/compute/bench_drift.json`` (and ``.md``). The two
losses and gradients are checked to agree before anything is timed, so the ratio compares equal work.

The plain implementation is the official algorithm written the obvious way (``torch.cdist``, a dense self
mask, row and column softmax, a concatenated coefficient matrix), as one would port it.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch
from torch import Tensor

from harness.validate import Bound, at_least, nonnegative
from methods.drift import drift_loss


@dataclass(frozen=True)
class BenchDriftConfig:
    """Sizes and repetitions of the drift benchmark."""

    generated: int = 1536
    """Generated points N (with grad)."""
    positive: int = 512
    """Positive anchors P."""
    negative: int = 512
    """Negative anchors M."""
    dim: int = 2048
    """Feature dimension D."""
    groups: int = 1
    """Independent groups B (one drift field each)."""
    radii: tuple[float, ...] = (0.02, 0.05, 0.2)
    """Kernel bandwidths (DrPO's defaults)."""
    weight: float = 3000.0
    """Anchor weight (DrPO's eta)."""
    repeats: int = 7
    """Timed repetitions of each implementation (after one warm-up each), alternating."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    seed: int = 0
    """Seed of the random features."""
    out: str = "results"
    """Results root; writes ``<out>/compute/bench_drift.json`` and ``.md``."""

    # A field is called "positive", so the > 0 bound is spelled out.
    BOUNDS: ClassVar[dict[str, Bound]] = {
        "generated": at_least(1), "positive": at_least(1), "negative": at_least(1), "dim": at_least(1),
        "groups": at_least(1), "radii": Bound(low=0, strict_low=True), "weight": Bound(low=0, strict_low=True),
        "repeats": at_least(1), "threads": nonnegative(), "seed": nonnegative(),
    }
    """Valid range of every numeric field (``harness.validate``)."""


def plain_drift_loss(generated: Tensor, positive: Tensor, negative: Tensor, weight: float,
                     radii: Sequence[float]) -> Tensor:
    """The official drift loss (laplacian kernel), written plainly; generated (B, N, D) -> loss (B,)."""
    b, n, d = generated.shape
    m, p = negative.shape[1], positive.shape[1]
    old = generated.detach()
    targets = torch.cat([old, negative, positive], dim=1)
    weights = torch.cat([old.new_ones(b, n), old.new_full((b, m + p), weight)], dim=1)
    distance = torch.cdist(old, targets).clamp_min(1e-4)
    scale = ((distance * weights[:, None, :]).mean() / weights.mean()).clamp_min(1e-3)
    per_dim = (scale / math.sqrt(d)).clamp_min(1e-3)
    old_s, targets_s = old / per_dim, targets / per_dim
    mask = old.new_zeros(1, n, n + m + p)
    mask[0, torch.arange(n), torch.arange(n)] = 1.0
    force = torch.zeros_like(old_s)
    for radius in radii:
        logits = -distance / scale / radius - (100.0 / radius) * mask
        affinity = (logits.softmax(dim=-1) * logits.softmax(dim=-2)).clamp_min(1e-6).sqrt() * weights[:, None, :]
        repel, attract = affinity[:, :, : n + m], affinity[:, :, n + m:]
        coeff = torch.cat([-repel * attract.sum(-1, keepdim=True), attract * repel.sum(-1, keepdim=True)], dim=-1)
        f = torch.einsum("bnt,btd->bnd", coeff, targets_s) - coeff.sum(-1, keepdim=True) * old_s
        force = force + f / f.square().mean().clamp_min(1e-8).sqrt()
    goal = (old_s + force).detach()
    return (generated / per_dim - goal).square().mean(dim=(1, 2))


def _inputs(cfg: BenchDriftConfig) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(cfg.seed)
    gen = torch.randn(cfg.groups, cfg.generated, cfg.dim, generator=g)
    pos = torch.randn(cfg.groups, cfg.positive, cfg.dim, generator=g) + 0.1
    neg = torch.randn(cfg.groups, cfg.negative, cfg.dim, generator=g) - 0.1
    return gen, pos, neg


def _ours(cfg: BenchDriftConfig) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    def call(gen: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        return drift_loss(gen, pos, neg, positive_weight=cfg.weight, negative_weight=cfg.weight,
                          radii=cfg.radii)[0]
    return call


def _plain(cfg: BenchDriftConfig) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    return lambda gen, pos, neg: plain_drift_loss(gen, pos, neg, cfg.weight, cfg.radii)


def _step(fn: Callable, gen: Tensor, pos: Tensor, neg: Tensor) -> tuple[float, Tensor, Tensor]:
    """Seconds of one forward + backward, the loss and the gradient."""
    x = gen.clone().requires_grad_(True)
    start = time.perf_counter()
    loss = fn(x, pos, neg)
    loss.sum().backward()
    seconds = time.perf_counter() - start
    return seconds, loss.detach(), x.grad


def bench_drift(cfg: BenchDriftConfig) -> tuple[dict, Path]:
    """Time both implementations; returns the record and the JSON path it was written to."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {cfg.repeats}")
    gen, pos, neg = _inputs(cfg)
    impls = {"driftbench": _ours(cfg), "plain": _plain(cfg)}
    # Equal work first: the same loss and gradient (float32 rounding apart).
    (_, loss_a, grad_a), (_, loss_b, grad_b) = (_step(f, gen, pos, neg) for f in impls.values())
    loss_diff = float(((loss_a - loss_b).abs() / loss_b.abs()).max())
    grad_diff = float((grad_a - grad_b).abs().max() / grad_b.abs().max())
    if not (loss_diff < 1e-4 and grad_diff < 1e-4):
        raise RuntimeError(f"the implementations disagree (loss {loss_diff:.2e}, gradient {grad_diff:.2e} relative)")
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(cfg.repeats):
        for name, fn in impls.items():
            times[name].append(_step(fn, gen, pos, neg)[0])
    median = {name: statistics.median(t) for name, t in times.items()}
    record = {"config": asdict(cfg), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "seconds": times, "median_seconds": median, "ratio_driftbench_over_plain": median["driftbench"] / median["plain"],
              "agreement": {"loss_relative": loss_diff, "gradient_relative": grad_diff}}
    path = Path(cfg.out) / "compute" / "bench_drift.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    path.with_suffix(".md").write_text(
        f"# drift field, forward + backward (N={cfg.generated}, P={cfg.positive}, M={cfg.negative}, D={cfg.dim}, "
        f"B={cfg.groups}, radii {cfg.radii}, {record['threads']} thread(s))\n\n"
        "| implementation | median s | runs |\n|---|---|---|\n"
        + "".join(f"| {name} | {median[name]:.4f} | {len(times[name])} |\n" for name in impls)
        + f"\nmethods/drift.py / plain torch: **{record['ratio_driftbench_over_plain']:.3f}x**\n")
    return record, path
