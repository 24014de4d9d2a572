"""Rewards: ``score(images (B, 3, H, W) in [0, 1], prompts) -> (B,)``, higher is better.

``REWARDS`` maps each public name to a zero-argument factory; parametrised names (``remote:URL``) map a
prefix to a factory that receives the rest of the name. Heavy packages are imported inside the factories.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from harness.registry import Registry

REWARDS = Registry("reward", {
    "jpeg": "rewards.jpeg:JpegCompressibility",
    "colorfulness": "rewards.colorfulness:Colorfulness",
    "shapes-geneval": "rewards.shapes_geneval:ShapesGenEval",
    "shapes-geneval-clauses": "rewards.shapes_geneval:ShapesGenEvalClauses",
    "shapes-pref": "rewards.shapes_pref:ShapesPref",
    "shapes2-geneval": "rewards.shapes_geneval:ShapesGenEval2",
    "shapes2-geneval-clauses": "rewards.shapes_geneval:ShapesGenEval2Clauses",
    "shapes2-pref": "rewards.shapes_pref:ShapesPref2",
    "pickscore": "rewards.clip_rewards:PickScore",
    "clip-score": "rewards.clip_rewards:ClipScore",
    "aesthetic": "rewards.clip_rewards:Aesthetic",
    "hpsv3": "rewards.hpsv3:HPSv3",
    "imagereward": "rewards.imagereward:ImageReward",
    "hpsv2": "rewards.hpsv2:HPSv2",
    "geneval-mmdet": "rewards.geneval_mmdet:GenEvalMMDet",
}, patterns={
    "remote:": "rewards.remote:RemoteReward",
    "cmd:": "rewards.command:CommandReward",
})


class RewardError(RuntimeError):
    """A reward answered something the harness cannot use (wrong length, NaN, wrong type)."""


def build(name: str, options: dict[str, str] | None = None):
    """Instantiate the reward called ``name`` with keyword ``options`` (e.g. ``model=/local/dir``).

    ``remote:URL`` style names pass their argument first.
    """
    target = REWARDS.get(name)
    options = dict(options or {})
    try:
        if isinstance(target, tuple):
            factory, argument = target
            return factory(argument, **options)
        return target(**options)
    except TypeError as exc:
        if options and "unexpected keyword" in str(exc):
            raise ValueError(f"reward '{name}' does not take option(s) {sorted(options)} ({exc})") from exc
        raise


def number_option(reward: str, key: str, value: object, *, integer: bool = False, low: float = 0.0,
                  strict: bool = False) -> float | int:
    """A numeric reward option parsed and bounded (finite, >= or > ``low``); a one-line error names it."""
    try:
        number = int(str(value)) if integer else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = None
    kind = "an integer" if integer else "a finite number"
    if number is None or not math.isfinite(number) or (number <= low if strict else number < low):
        raise ValueError(f"{reward} option {key}={value!r} must be {kind} {'>' if strict else '>='} {low:g}")
    return number


def parse_options(entries: Sequence[str]) -> dict[str, dict[str, str]]:
    """``("pickscore.model=/data/ps", ...)`` -> {"pickscore": {"model": "/data/ps"}}.

    The key is the last dot-separated word before the first ``=``, so reward names may contain dots
    (``remote:http://127.0.0.1:8000.token=T``) and values may contain anything.
    """
    out: dict[str, dict[str, str]] = {}
    for entry in entries:
        head, eq, value = entry.partition("=")
        name, dot, key = head.rpartition(".")
        if not (dot and eq and name and key):
            raise ValueError(f"bad reward option '{entry}'; expected REWARD.KEY=VALUE, e.g. pickscore.model=/data/ps")
        out.setdefault(name, {})[key] = value
    return out


def is_binary(reward: object) -> bool:
    """Whether a reward (an instance, or a class or registry target before one is built) scores only 0 or 1,
    as a verifier does: its ``binary`` attribute, False when it declares none (``remote:`` and ``cmd:`` rewards
    cannot declare one)."""
    if isinstance(reward, tuple):  # a parametrised name's (factory, argument)
        reward = reward[0]
    return getattr(reward, "binary", False) is True


def check_scores(scores: Tensor | Sequence[float], n: int, name: str) -> Tensor:
    """Validate a reward's answer for ``n`` images and return it as a float tensor (n,).

    Black-box rewards may return plain Python floats; a tensor keeps its autograd graph.
    """
    if not torch.is_tensor(scores):
        try:
            values = [float(s) for s in scores]
        except (TypeError, ValueError) as exc:
            raise RewardError(f"reward '{name}' returned {type(scores).__name__}, expected {n} numbers ({exc})")
        scores = torch.tensor(values, dtype=torch.float32)
    if scores.ndim != 1 or scores.shape[0] != n:
        raise RewardError(f"reward '{name}' returned shape {tuple(scores.shape)} for {n} images; expected ({n},)")
    bad = (~torch.isfinite(scores.detach())).nonzero().flatten().tolist()
    if bad:
        raise RewardError(f"reward '{name}' returned non-finite scores at indices {bad[:5]} "
                          f"(e.g. {float(scores.detach()[bad[0]])})")
    return scores.float()


def check_images(images: Tensor, prompts: Sequence[str], name: str) -> None:
    """The input contract every reward shares: (B, 3, H, W) in [0, 1] with B prompts."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"reward '{name}' expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] != len(prompts):
        raise ValueError(f"reward '{name}' got {images.shape[0]} images but {len(prompts)} prompts")
    lo, hi = float(images.detach().min()), float(images.detach().max())
    if lo < -1e-4 or hi > 1 + 1e-4 or not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"reward '{name}' expects images in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
