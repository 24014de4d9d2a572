"""Economies that ranking allows: DrPO needs the reward only to order candidates, so the reward can run
cheaper as long as the order survives. Each economy is offered only together with its measured rank
agreement with the exact path (Spearman correlation and top-M overlap), recorded in every run that uses it
and tabulated by ``driftbench rank-agreement``.

* ``bf16``: the reward under ``torch.autocast(bfloat16)`` and ``torch.inference_mode``.
* ``small-decoder``: decode for the reward with the profile's small decoder instead of the full VAE decoder
  (on SD-Turbo the VAE decoder costs about 2.5 TFLOPs per 512-pixel image, more than the UNet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor

from harness.validate import Bound, at_least

ECONOMIES = ("exact", "bf16", "small-decoder", "bf16+small-decoder")


def check(name: str) -> str:
    if name not in ECONOMIES:
        from harness.registry import unknown

        raise unknown("reward economy", name, list(ECONOMIES))
    return name


def decoder(world, economy: str) -> Callable[[Tensor], Tensor]:
    """The decoder the reward sees under ``economy``."""
    if "small-decoder" not in economy:
        return world.generator.decode
    if world.small_decoder is None:
        raise ValueError(f"profile '{world.name}' has no small decoder; reward economies available here: exact, bf16")
    return world.small_decoder


def scorer(reward, economy: str, device: torch.device) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(call, count): the reward call under ``economy`` and the same computation for FLOP counting."""
    if "bf16" not in economy:
        return reward.score, reward.score

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def call(images: Tensor, prompts: Sequence[str]):
        with torch.inference_mode(), autocast():
            scores = reward.score(images, prompts)
        # Inference tensors cannot enter autograd later; the rank is all that is used.
        return scores.float().clone() if torch.is_tensor(scores) else scores

    def count(images: Tensor, prompts: Sequence[str]):
        with torch.no_grad(), autocast():
            return reward.score(images, prompts)
    return call, count


def agreement(exact: Tensor, cheap: Tensor, k: int, m: int) -> dict[str, float]:
    """Mean over prompts of the Spearman correlation and the top-M overlap between two (P*K,) scorings."""
    from scipy import stats

    a, b = exact.detach().float().reshape(-1, k).cpu().numpy(), cheap.detach().float().reshape(-1, k).cpu().numpy()
    rho, overlap = [], []
    for x, y in zip(a, b):
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            rho.append(stats.spearmanr(x, y).statistic)
        top_x, top_y = set(np.argsort(-x, kind="stable")[:m]), set(np.argsort(-y, kind="stable")[:m])
        overlap.append(len(top_x & top_y) / m)
    return {"spearman": float(np.mean(rho)) if rho else float("nan"), "top_m_overlap": float(np.mean(overlap))}


@dataclass(frozen=True)
class AgreementConfig:
    """``driftbench rank-agreement``: how well each economy preserves the exact reward's ranking."""

    profile: str = "shapes"
    """Generator profile."""
    reward: str = ""
    """Reward (empty: the profile's default)."""
    reward_options: tuple[str, ...] = ()
    """REWARD.KEY=VALUE options."""
    prompts: int = 16
    """Held-out prompts to sample."""
    k: int = 16
    """Candidates per prompt."""
    m: int = 4
    """Top-M size for the overlap."""
    device: str = "auto"
    """auto, cpu or cuda."""
    out: str = "results"
    """Writes <out>/compute/rank_agreement__<profile>__<reward>.md and .csv."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"prompts": at_least(1), "k": at_least(2), "m": at_least(1)}
    """Valid range of every numeric field (``harness.validate``)."""


def rank_agreement(cfg: AgreementConfig) -> Path:
    """Score the same candidates exactly and under every economy the profile supports; tabulate."""
    import time

    import pandas as pd

    import rewards
    from harness.config import RunConfig
    from harness.profiles import PROFILES

    run_cfg = RunConfig(profile=cfg.profile, reward=cfg.reward, k=cfg.k, device=cfg.device)
    world = PROFILES.get(cfg.profile)(run_cfg)
    name = cfg.reward or world.default_reward
    reward = rewards.build(name, rewards.parse_options(cfg.reward_options).get(name))
    gen = world.generator
    prompts = world.prompts("heldout")[: cfg.prompts]
    with torch.no_grad():
        rows_prompts = [p for p in prompts for _ in range(cfg.k)]
        seeds = [9_000_000 + i for i in range(len(rows_prompts))]
        latents = torch.cat([gen.latents(gen.noise(seeds[i:i + 64]), gen.encode(rows_prompts[i:i + 64]))
                             for i in range(0, len(seeds), 64)])
    results, exact = [], None
    for economy in [e for e in ECONOMIES if "small-decoder" not in e or world.small_decoder is not None]:
        start = time.perf_counter()
        with torch.no_grad():
            images = decoder(world, economy)(latents)
            call, _ = scorer(reward, economy, gen.device)
            scores = rewards.check_scores(call(images, rows_prompts), len(rows_prompts), name)
        seconds = time.perf_counter() - start
        exact = scores if economy == "exact" else exact
        results.append({"economy": economy, "seconds": seconds, **agreement(exact, scores, cfg.k, cfg.m)})
    for r in results:
        r["speedup"] = results[0]["seconds"] / r["seconds"]
    out = Path(cfg.out) / "compute"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"rank_agreement__{cfg.profile}__{name.replace(':', '_').replace('/', '_')}"
    pd.DataFrame(results).to_csv(out / f"{stem}.csv", index=False)
    lines = [f"# Rank agreement of reward economies: {cfg.profile} + {name}", "",
             f"{len(prompts)} held-out prompts x K={cfg.k} candidates; top-M overlap with M={cfg.m}. "
             f"Generated by `driftbench rank-agreement --profile {cfg.profile}`.", "",
             "| economy | Spearman (mean over prompts) | top-M overlap | decode+reward seconds | speed-up |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['economy']} | {r['spearman']:.3f} | {r['top_m_overlap']:.3f} | {r['seconds']:.2f} | "
              f"{r['speedup']:.2f}x |" for r in results]
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
