"""Measure the Shapes world's bands with fixed seeds: ``python -m harness.shapes.measure [--edition N] [--out PATH]``.

Reports, for the committed assets:

* the base generator's shapes-GenEval on held-out prompts, per tag and overall, with 4 and 16 samples per
  prompt (the 4-sample figure uses the first 4 of the 16 samples), and on train prompts with 16;
* diversity: the fraction of prompts whose 16 samples contain both a correct and an incorrect image;
* shapes-pref's ROC AUC for separating correct from one-clause-broken renders of held-out prompts, and for
  separating the verifier's correct from incorrect held-out generator samples;
* FLOPs per image (FlopCounterMode, SDPA forced to the math kernel) of the generator's net and decoder and
  of the reward, and the reward / generator ratio.

Edition 2 (``--edition 2``, issue 18) also reports the validation and test splits apart (every disjoint tag's base
score should sit in 0.05-0.85 on each, so every tag can move both ways), the held-out figures with the detector's
raw template IoU as the score (edition 2's verifier is calibrated by default), and reads its train figures on a
seeded ``calibrate.PER_TAG`` training prompts per tag (its train split has 5,976).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from evals.geneval import summarize
from harness.shapes.calibrate import calibration_prompts
from harness.shapes.editions import EDITIONS, FIRST, Edition, edition
from harness.shapes.generator import load_generator
from harness.shapes.prompts import DISJOINT_TAGS, split
from harness.shapes.render import render_batch
from rewards.shapes_geneval import VERIFIERS
from rewards.shapes_pref import PREFS

BANDS = {"overall": (0.25, 0.65), "tag_max_except_single": 0.9, "reward_auc_min": 0.9, "flop_ratio_min": 5.0}
"""The bands the project relies on (see the module docstring)."""
TAG_BAND = (0.05, 0.85)
"""Edition 2: every disjoint tag's base score on val and on test, so that every tag can move both ways (issue 18)."""


@dataclass(frozen=True)
class MeasureConfig:
    samples: int = 16
    """Generator samples per prompt (the 4-sample figures use the first 4)."""
    renders: int = 16
    """Correct and incorrect renders per held-out prompt for the reward's render AUC (each)."""
    seed: int = 0
    """Noise seeds are ``seed * 1_000_003 + 1000 * prompt index + sample index``; renders use numpy(seed)."""
    split_seed: int = 0
    """Seed of the train/held-out prompt split."""
    edition: int = 1
    """The Shapes world's edition (``harness.shapes.editions``) whose assets are measured."""
    threads: int = 2
    """torch CPU threads."""


def flops_per_image(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` as FlopCounterMode counts them with SDPA forced to the math kernel (the CPU flash
    kernel is counted as zero). Forward only."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # Not under no_grad: FlopCounterMode's module tracker fails on parameters that require grad there
    # (torch 2.13); only the forward runs, so the count is the same.
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops()


def model_flops(gen, reward, prompt: str | None = None) -> dict[str, float]:
    """GFLOPs per image (batch of one) of the generator's net and decoder and of the reward."""
    prompt = prompt or split("train")[0]["prompt"]
    noise, cond = gen.noise([0]), gen.encode([prompt])
    latent = gen.latents(noise, cond).detach()
    image = gen.decode(latent).detach()
    out = {"generator_net": flops_per_image(lambda: gen.latents(noise, cond)) / 1e9,
           "generator_decoder": flops_per_image(lambda: gen.decode(latent)) / 1e9,
           "reward": flops_per_image(lambda: reward.score(image, [prompt])) / 1e9}
    out["generator"] = out["generator_net"] + out["generator_decoder"]
    out["reward_over_generator"] = out["reward"] / out["generator"]
    return {k: round(v, 4) for k, v in out.items()}


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Mann-Whitney ROC AUC of ``scores`` for binary ``labels`` (ties count one half)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def sample_and_verify(gen, verifier, metas: Sequence[dict], k: int, seed: int,
                      chunk: int = 256) -> tuple[torch.Tensor, list[dict]]:
    """k samples per prompt, prompt-major: images (P*k, 3, 64, 64) and the verifier's rows."""
    prompts = [m["prompt"] for m in metas for _ in range(k)]
    seeds = [seed * 1_000_003 + 1000 * i + j for i in range(len(metas)) for j in range(k)]
    images, rows = [], []
    for i in range(0, len(prompts), chunk):
        x = gen.decode(gen.latents(gen.noise(seeds[i:i + chunk]), gen.encode(prompts[i:i + chunk])))
        images.append(x)
        rows += verifier.verify(x, prompts[i:i + chunk])
    return torch.cat(images), rows


def diversity(rows: Sequence[dict], k: int) -> float:
    """Fraction of prompts (rows prompt-major, k per prompt) with both a correct and an incorrect sample."""
    hits = [row["correct"] for row in rows]
    groups = [hits[i:i + k] for i in range(0, len(hits), k)]
    return float(np.mean([0 < sum(g) < len(g) for g in groups]))


def first_k(rows: Sequence[dict], k_all: int, k: int) -> list[dict]:
    """The first ``k`` of every prompt's ``k_all`` rows."""
    return [row for i, row in enumerate(rows) if i % k_all < k]


def _tags(summary: dict) -> dict:
    return {k: round(v, 4) for k, v in summary.items() if k not in ("correct_images", "correct_prompts")}


@torch.no_grad()
def reward_scores(reward, images: torch.Tensor, prompts: Sequence[str], chunk: int = 256) -> list[float]:
    return torch.cat([reward.score(images[i:i + chunk], prompts[i:i + chunk])
                      for i in range(0, len(prompts), chunk)]).tolist()


def render_auc(reward, metas: Sequence[dict], per_prompt: int, rng: np.random.Generator, ed: Edition = FIRST
               ) -> float:
    """shapes-pref AUC: correct vs one-clause-broken renders, ``per_prompt`` of each per prompt."""

    rows = [m for m in metas for _ in range(per_prompt)]
    good, _ = render_batch(rows, rng, correct=True, ed=ed)
    bad, _ = render_batch(rows, rng, correct=False, ed=ed)
    prompts = [m["prompt"] for m in rows]
    scores = reward_scores(reward, torch.cat([good, bad]), prompts + prompts)
    return roc_auc(scores, [1] * len(rows) + [0] * len(rows))


def measure(cfg: MeasureConfig, gen=None, reward=None) -> dict:
    """Every band figure for the committed assets (or the given generator and reward)."""

    torch.set_num_threads(cfg.threads)
    ed = edition(cfg.edition)
    gen = gen or load_generator(lora_rank=0, directory=ed.asset_dir)
    reward = reward or PREFS[ed.number]()
    verifier, k = VERIFIERS[ed.number](), cfg.samples
    held = split("heldout", cfg.split_seed, ed)
    train = split("train", cfg.split_seed, ed) if ed.number == 1 else calibration_prompts(ed)
    images, rows = sample_and_verify(gen, verifier, held, k, cfg.seed)
    _, train_rows = sample_and_verify(gen, verifier, train, k, cfg.seed + 1)
    gen_scores = reward_scores(reward, images, [r["prompt"] for r in rows])
    out = {
        "heldout_k4": _tags(summarize(first_k(rows, k, 4))),
        f"heldout_k{k}": _tags(summarize(rows)),
        f"diversity_heldout_k{k}": round(diversity(rows, k), 4),
        f"train_k{k}": _tags(summarize(train_rows)),
        f"diversity_train_k{k}": round(diversity(train_rows, k), 4),
        "reward_auc_heldout_renders": round(render_auc(reward, held, cfg.renders, np.random.default_rng(cfg.seed),
                                                       ed), 4),
        "reward_auc_heldout_generator": round(roc_auc(gen_scores, [r["correct"] for r in rows]), 4),
        "flops_gflops_per_image": model_flops(gen, reward, train[0]["prompt"]),
        "config": asdict(cfg),
        "bands": BANDS,
    }
    if ed.number != 1:
        for name in ("val", "test"):
            prompts = {m["prompt"] for m in split(name, cfg.split_seed, ed)}
            out[f"{name}_k{k}"] = _tags(summarize([r for r in rows if r["prompt"] in prompts]))
        out["tag_band"] = list(TAG_BAND)
        out["outside_tag_band"] = {f"{name}/{tag}": out[f"{name}_k{k}"][tag] for name in ("val", "test")
                                   for tag in DISJOINT_TAGS if not TAG_BAND[0] <= out[f"{name}_k{k}"][tag] <= TAG_BAND[1]}
        raw = VERIFIERS[ed.number](calibrated=False).verify(images, [r["prompt"] for r in rows])
        out[f"heldout_k{k}_template_iou"] = _tags(summarize(raw))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.shapes.measure", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/shapes/measure.json", help="JSON output (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="noise and render seed (default: 0)")
    parser.add_argument("--edition", type=int, choices=sorted(EDITIONS), default=1, help="the world's edition")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    args = parser.parse_args(argv)
    result = measure(MeasureConfig(seed=args.seed, edition=args.edition, threads=args.threads))
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
