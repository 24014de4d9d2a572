"""The contracts between driftbench's parts. Read this file first.

Four kinds of component meet in :func:`harness.run.run`:

* a **generator** (``harness/generator.py``, ``harness/shapes/generator.py``): prompt encoding, noise, the
  one-step trainable map from noise to latents, a frozen decoder to images, and a frozen reference pass;
* a **reward** (``rewards/``): scores images for prompts; the harness calls it, methods never do;
* a **method** (``methods/<name>.py``): an update rule. It receives a :class:`Rollout` that the harness
  sampled and scored, and returns the loss the harness backpropagates;
* an **evaluator** (``evals/``): held-out metrics from images the harness generated.

The harness owns the loop, the clock, the budget and the record, so every method is measured the same way.

Method modules are plain modules (no base class) with this shape::

    NAME = "drpo"                 # == file stem == registry key == CLI value
    VERSION = 1                   # bump on any change that breaks comparison
    REWARD_GRADIENT = False       # True: needs a differentiable reward (DRaFT, VGG-Flow)

    @dataclass(frozen=True)
    class Config: ...             # every field has a docstring; `lr` is the AdamW learning rate

    def space(trial) -> dict: ...                 # Optuna search space, as Config overrides
    def needs(cfg) -> Needs: ...                  # what the harness must sample for this config
    def init(cfg, ctx: Context) -> State: ...     # validate against the run, build buffers
    def step(cfg, state, batch: Rollout, ctx: Context) -> tuple[Tensor, dict[str, float]]:
        ...                                       # the loss of one micro-batch, and what to log

and, optionally, ``propose(cfg, noise)`` (transform the harness's noise before sampling, for
Neighbor-GRPO's neighbours), ``act(cfg, latents, noise)`` (the latents that are decoded and scored,
for PSO's Gaussian action) and ``end_update(cfg, state, ctx)`` (called once per optimizer update on every
process, after all its micro-batches and before the gradients are summed: state that depends on the whole
update, such as VGG-Flow's clip threshold, is set there, with ``ctx.gather`` as its only collective).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor


@dataclass
class Cond:
    """Prompt conditioning: named tensors that all share a leading batch dimension.

    SD-Turbo holds ``{"hidden": (B, 77, 1024)}``; SDXL-Turbo adds ``"pooled"`` and ``"time_ids"``; the
    Shapes world holds its text tokens and mask.
    """

    tensors: dict[str, Tensor]

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def repeat(self, k: int) -> "Cond":
        """Each row repeated ``k`` times in place: (B, ...) -> (B*k, ...), rows of a prompt adjacent."""
        return Cond({n: t.repeat_interleave(k, dim=0) for n, t in self.tensors.items()})

    def select(self, index: Tensor | Sequence[int]) -> "Cond":
        index = torch.as_tensor(index, dtype=torch.long)
        return Cond({n: t.index_select(0, index.to(t.device)) for n, t in self.tensors.items()})


@runtime_checkable
class Generator(Protocol):
    """A one-step text-to-image generator with a trainable part and a frozen reference.

    Shapes use ``C, h, w`` for one latent and ``H = W = resolution`` for one image.
    """

    name: str
    resolution: int
    latent_shape: tuple[int, int, int]
    device: torch.device

    def encode(self, prompts: Sequence[str]) -> Cond:
        """Text conditioning for ``prompts`` (frozen encoders, no grad)."""

    def noise(self, seeds: Sequence[int]) -> Tensor:
        """Standard-normal noise of shape (B, C, h, w), one independent draw per seed."""

    def latents(self, noise: Tensor, cond: Cond) -> Tensor:
        """The one-step x0 latent (B, C, h, w); differentiable in the trainable parameters."""

    def decode(self, latents: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1]; frozen, differentiable with respect to ``latents``."""

    def reference(self) -> ContextManager[None]:
        """Within this context ``latents`` is the frozen base generator (adapters off, no grad)."""

    def trainable(self) -> list[torch.nn.Parameter]:
        """The parameters an optimizer updates (LoRA weights, or all weights for full fine-tuning)."""

    def trainable_state(self) -> dict[str, Tensor]:
        """The trainable weights, for checkpoints."""

    def load_trainable_state(self, state: Mapping[str, Tensor]) -> None:
        """Restore weights saved by :meth:`trainable_state`."""

    def save_adapter(self, directory: str) -> None:
        """Save the fine-tuned weights in a format the upstream library loads (diffusers LoRA)."""


@runtime_checkable
class Reward(Protocol):
    """Scores images for prompts; higher is better.

    ``score`` takes images (B, 3, H, W) in [0, 1] and B prompts and returns B scores: a tensor, or a
    plain list of floats for black-box rewards. A non-differentiable reward is always called under
    ``no_grad``; the harness validates length and finiteness of every answer.
    """

    name: str
    version: int
    differentiable: bool
    # Optional ``binary``: True when every score is 0 or 1 (a verifier's correct / incorrect); absent means
    # False (``rewards.is_binary``).

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor | Sequence[float]:
        ...


@dataclass(frozen=True)
class Needs:
    """What the harness samples for a method config, so no method pays for what it does not use."""

    reference: bool = True
    """Run the frozen reference generator on the same noise (``Rollout.ref_latents``)."""
    reward_grad: bool = False
    """Decode and score with gradients, so ``Rollout.rewards`` is differentiable in the latents."""
    anchors: int = 0
    """M: the positives and negatives the method ranks per prompt (0: it ranks none). The harness checks
    K >= 2M once for every method and measures a reward economy's top-M agreement at this M."""
    features: str = ""
    """The feature space the method reads (``Context.features``), if any: the harness checks that the run can
    build it (the real profiles' encoder needs local weights) and prices it."""
    rounds: int = 1
    """Sample up to this many rounds of K candidates per prompt (each with its own noise); the rollout holds
    every round sampled, so ``Rollout.k`` is K times the rounds. Every extra sample and reward call is metered."""
    enough: Callable[[Tensor], bool] | None = None
    """With ``rounds`` > 1: given the rewards sampled so far (P, K * rounds so far), whether to stop before the
    next round (None: always sample every round)."""
    binary_reward: str = ""
    """Non-empty when the config reads the reward as correct (>= 0.5) or not: the options that do, named for
    the one-line error with which the run refuses a reward that is not binary (``rewards.is_binary``)."""


@dataclass
class Rollout:
    """One micro-batch, sampled and scored by the harness. P prompts x K candidates per prompt.

    Per-candidate tensors are stored flat, prompt-major: row ``p * K + k`` is candidate k of prompt p.
    """

    prompts: list[str]
    """The P prompts."""
    k: int
    """Candidates per prompt: the run's K times the sampling rounds (``Needs.rounds``) it took."""
    cond: Cond
    """Conditioning for the P*K rows (each prompt repeated K times)."""
    noise: Tensor
    """(P*K, C, h, w) the noise the trainable and reference generators saw."""
    latents: Tensor
    """(P*K, C, h, w) the trainable generator's latents, with grad."""
    ref_latents: Tensor | None
    """(P*K, C, h, w) the frozen reference generator on the same noise, or None if not requested."""
    scored_latents: Tensor
    """(P*K, C, h, w) the latents that were decoded and scored (``latents`` unless the method acts)."""
    images: Tensor
    """(P*K, 3, H, W) the scored images in [0, 1]; detached unless ``Needs.reward_grad``."""
    rewards: Tensor
    """(P*K,) the scores; detached unless ``Needs.reward_grad``."""

    def per_prompt(self, t: Tensor) -> Tensor:
        """View a flat (P*K, ...) tensor as (P, K, ...)."""
        return t.reshape(len(self.prompts), self.k, *t.shape[1:])

    def extend(self, more: "Rollout") -> "Rollout":
        """This rollout with another round for the same prompts appended: each prompt's candidates stay
        adjacent, this rollout's first (P x (K + K'), prompt-major)."""
        p = len(self.prompts)

        def cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            if a is None or b is None:
                return None
            return torch.cat([a.reshape(p, -1, *a.shape[1:]), b.reshape(p, -1, *b.shape[1:])], 1).flatten(0, 1)

        return Rollout(prompts=self.prompts, k=self.k + more.k,
                       cond=Cond({n: cat(t, more.cond.tensors[n]) for n, t in self.cond.tensors.items()}),
                       noise=cat(self.noise, more.noise), latents=cat(self.latents, more.latents),
                       ref_latents=cat(self.ref_latents, more.ref_latents),
                       scored_latents=cat(self.scored_latents, more.scored_latents),
                       images=cat(self.images, more.images),
                       rewards=cat(self.rewards, more.rewards))


@dataclass
class Context:
    """What a method may use besides its rollout. Everything here is metered by the harness."""

    k: int
    """Candidates per prompt (the run's K)."""
    reward: Reward
    """The training reward, for its attributes only (``differentiable``, ``name``); methods never call it."""
    decode: Callable[[Tensor], Tensor]
    """Metered decoder: latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1], differentiable."""
    features: Callable[[str], Callable[[Tensor], dict[str, Tensor]]]
    """``features(space)`` returns a metered feature map: latents -> {key: (B, N, D)}."""
    rng: torch.Generator
    """The method's only source of randomness, seeded by the harness per update."""
    offline: Any = None
    """An offline preference data set, when the run has one (offline DrPO)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Run facts a method may validate against (profile name, budget counts)."""
    count: Callable[[float], None] = field(default=lambda flops: None)
    """``count(flops)`` charges FLOPs the harness's counter cannot see to the phase the method runs in: a pure
    analytic count of the method's own tensor work from its shapes (``methods.drift.drift_flops``). The count
    only; the harness keeps the clock."""
    gather: Callable[[Any], list[Any]] = field(default=lambda value: [value])
    """Every process's ``value`` (picklable), in rank order (``[value]`` in a 1-process run). A collective:
    call it only from ``end_update``, which every process reaches at the same point of the update."""


def no_context() -> ContextManager[None]:
    return contextlib.nullcontext()
