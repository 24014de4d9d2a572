"""Offline DrPO's preference data set in the Shapes world: rendered correct and incorrect scenes.

The paper's "initial offline experiments" take DrPO's positive and negative anchors from a fixed data set of
preferred and rejected images for a prompt instead of ranking on-policy samples. Here each prompt owns a
fixed pool of pairs, rendered once from a seed derived from the prompt: a preferred scene that satisfies
every clause and a rejected scene that breaks exactly one (``render.sample_scene(correct=False)``). The
images enter the generator's latent space through the image encoder trained with the generator's decoder
(the SD VAE encoder's analog), so the anchors live where DrPO's features are computed.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from harness.shapes.editions import FIRST, Edition
from harness.shapes.prompts import parse_prompt
from harness.shapes.render import render_batch


class ShapesOffline:
    """``anchors(prompts, m, rng) -> (preferred, rejected)``, each (P, M, C, h, w) latents."""

    def __init__(self, encode: Callable[[Tensor], Tensor], *, pairs_per_prompt: int = 32, seed: int = 0,
                 ed: Edition = FIRST):
        if pairs_per_prompt < 1:
            raise ValueError(f"pairs_per_prompt must be >= 1, got {pairs_per_prompt}")
        self.encode, self.pairs, self.seed, self.ed = encode, pairs_per_prompt, seed, ed
        self._pool: dict[str, tuple[Tensor, Tensor]] = {}

    def pool(self, prompt: str) -> tuple[Tensor, Tensor]:
        """The prompt's fixed pairs as latents: (preferred, rejected), each (pairs, C, h, w)."""
        if prompt not in self._pool:
            meta = parse_prompt(prompt, self.ed)
            digest = int(hashlib.sha256(f"{self.seed}:{prompt}".encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng(digest)
            good, _ = render_batch([meta] * self.pairs, rng, correct=True, ed=self.ed)
            bad, _ = render_batch([meta] * self.pairs, rng, correct=False, ed=self.ed)
            with torch.no_grad():
                self._pool[prompt] = (self.encode(good), self.encode(bad))
        return self._pool[prompt]

    def anchors(self, prompts: Sequence[str], m: int, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        """M preferred and M rejected latents per prompt, drawn from its pool with the method's generator."""
        if m > self.pairs:
            raise ValueError(f"M={m} anchors exceed the {self.pairs} offline pairs per prompt")
        preferred, rejected = [], []
        for prompt in prompts:
            good, bad = self.pool(prompt)
            pick = torch.randperm(self.pairs, generator=rng)[:m]
            preferred.append(good[pick])
            rejected.append(bad[pick])
        return torch.stack(preferred), torch.stack(rejected)
