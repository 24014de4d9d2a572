"""The Shapes world as a generator profile: the embedded default every CPU machine can run.

Pretrained one-step generator (LoRA on its attention projections, like SD-Turbo), GenEval-format prompts
with disjoint train and held-out compositions, the non-differentiable verifier reward ``shapes-geneval``,
the learned differentiable ``shapes-pref``, the latent MAE encoder for DrPO's features, and rendered
correct/incorrect scenes as offline DrPO's preference data.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import numpy as np

from harness.config import RunConfig
from harness.profiles import DEFAULT_REWARDS
from harness.shapes.editions import FIRST, SECOND, Edition, reward_name
from harness.shapes.generator import load_features, load_generator, load_image_encoder
from harness.shapes.offline import ShapesOffline
from harness.shapes.prompts import SPLITS, check_disjoint_tasks, parse_prompt, split
from harness.world import World, device_for, latent_token_features, pixel_features, raw_latent_features

LORA_RANK = 8
"""The Shapes net's attention projections are 64-128 wide; rank 8 adapts them at about the paper's
rank-to-width ratio (r=16 on SD-Turbo's 320-1280)."""


def tag_balanced(tags: dict[str, str], ed: Edition = FIRST):
    """A prompt sampler that draws a tag uniformly, then a prompt of that tag (without replacement within
    a micro-batch when possible), so rare tags are not starved by the many colour-attribute prompts."""

    def sample(rng: np.random.Generator, pool: Sequence[str], n: int) -> list[str]:
        by_tag: dict[str, list[str]] = {}
        for p in pool:  # a prompt file's prompts are not in the splits: their tag comes from the grammar
            by_tag.setdefault(tags[p] if p in tags else parse_prompt(p, ed)["tag"], []).append(p)
        names = sorted(by_tag)
        picks: list[str] = []
        for _ in range(n):
            options = by_tag[names[rng.integers(len(names))]]
            fresh = [p for p in options if p not in picks] or options
            picks.append(fresh[rng.integers(len(fresh))])
        return picks
    return sample


def build(cfg: RunConfig, ed: Edition = FIRST) -> World:
    """The Shapes world of edition ``ed`` (profile ``ed.profile``) for ``cfg``."""
    device = device_for(cfg)
    folder = ed.asset_dir
    gen = load_generator(lora_rank=cfg.lora_rank or LORA_RANK, device=device, directory=folder)
    splits = {name: split(name, cfg.split_seed, ed) for name in SPLITS}
    tags = {m["prompt"]: m["tag"] for metas in splits.values() for m in metas}
    return World(name=ed.profile, generator=gen,
                 splits={name: [m["prompt"] for m in metas] for name, metas in splits.items()},
                 default_reward=DEFAULT_REWARDS[ed.profile], default_evals=(reward_name("shapes-geneval", ed), reward_name("shapes-pref", ed)),
                 feature_factories={"encoder": lambda: load_features(device=device, directory=folder),
                                    "latent": raw_latent_features, "latent-tokens": latent_token_features,
                                    "pixel": pixel_features},
                 sample_prompts=tag_balanced(tags, ed), lora_rank=cfg.lora_rank or LORA_RANK,
                 check_prompt=partial(parse_prompt, ed=ed),
                 check_splits=partial(_check_splits, ed=ed) if ed.split_rule == "task" else None,
                 offline=ShapesOffline(load_image_encoder(device=device, directory=folder), seed=cfg.split_seed,
                                       ed=ed))


def _check_splits(sets: dict[str, list[str]], ed: Edition) -> None:
    """A run's prompt sets of edition ``ed`` share no canonical task (``prompts.check_disjoint_tasks``): a prompt
    file that restates a validation or test task is refused in one line naming both prompts."""
    check_disjoint_tasks({name: [parse_prompt(p, ed) for p in prompts] for name, prompts in sets.items()})


def build_second(cfg: RunConfig) -> World:
    """Profile ``shapes2``: the Shapes world's edition 2 (issue 18; ``harness.shapes.editions``)."""
    return build(cfg, SECOND)
