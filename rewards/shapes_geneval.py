"""GenEval on the Shapes world: the template detector feeding GenEval's rule scorer, as a reward.

Each prompt is parsed back into its GenEval metadata (``parse_prompt``), each image goes through the Shapes
detector, and ``evals.geneval`` filters the detections with the prompt's tag and applies GenEval's rules. The
binary score is GenEval's per-image ``correct``; ``fraction=True`` gives the fraction of satisfied clauses instead,
a denser signal for training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import torch
from torch import Tensor

from evals.geneval import clause_results, filter_detections, summarize
from harness.shapes.detect import detect_batch
from harness.shapes.editions import EDITIONS, FIRST, SECOND, Edition
from harness.shapes.prompts import DISJOINT_TAGS, parse_prompt
from rewards import check_images


@lru_cache(maxsize=8192)
def _metadata(prompt: str, number: int = 1) -> dict:
    # Cached: training repeats a few hundred prompts millions of times. Callers never mutate the dict.
    return parse_prompt(prompt, EDITIONS[number])


def _check_images(images: Tensor, n: int) -> Tensor:
    """Validate images (B, 3, H, W) in [0, 1] against ``n`` prompts (the contract every reward shares); returns
    them detached on the CPU, clamped to [0, 1] (the shared check tolerates 1e-4 of rounding)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"reward '{ShapesGenEval.name}' expects a torch.Tensor (B, 3, H, W), "
                         f"got {type(images).__name__}")
    check_images(images, range(n), ShapesGenEval.name)
    return images.detach().float().cpu().clamp(0.0, 1.0)


def verify_shapes(images: Tensor, metadatas: Sequence[Mapping], calibrated: bool = False, ed: Edition = FIRST
                  ) -> list[dict]:
    """GenEval verdicts for images (B, 3, H, W) in [0, 1] against B metadata dicts: one row per image with
    ``prompt``, ``tag``, ``correct`` (bool), ``reason`` (empty when correct) and ``fraction`` (clauses passed).
    ``calibrated``: detection scores are the detector's calibrated probabilities, not template IoUs. ``ed``: the
    Shapes world's edition, whose shapes and colours the detector looks for."""
    x = _check_images(images, len(metadatas))
    rows = []
    for meta, raw in zip(metadatas, detect_batch(x, calibrated, ed)):
        results = clause_results(meta, filter_detections(raw, meta["tag"]))
        passed = [ok for ok, _ in results]
        rows.append({
            "prompt": meta["prompt"],
            "tag": meta["tag"],
            "correct": all(passed),
            "reason": "; ".join(reason for ok, reason in results if not ok),
            "fraction": sum(passed) / len(passed),
        })
    return rows


def score_shapes(images: Tensor, metadatas: Sequence[Mapping], *, fraction: bool = False,
                 calibrated: bool = False, ed: Edition = FIRST) -> Tensor:
    """Scores (B,) float32 for images (B, 3, H, W) in [0, 1]: 1.0/0.0 GenEval correctness, or with
    ``fraction=True`` the fraction of satisfied clauses."""
    rows = verify_shapes(images, metadatas, calibrated, ed)
    key = "fraction" if fraction else "correct"
    return torch.tensor([float(r[key]) for r in rows], dtype=torch.float32)


def _flag(reward: str, key: str, value: bool | str) -> bool:
    """A boolean reward option: a bool, or "true"/"false" (case-insensitive) from the command line."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise ValueError(f"reward option {reward}.{key} must be true or false, got {value!r}")
    return text == "true"


class ShapesGenEval:
    """The Shapes-world GenEval reward (``harness.api.Reward``): not differentiable, higher is better.

    ``fraction=False`` scores GenEval's all-or-nothing correctness; ``fraction=True`` the fraction of satisfied
    clauses (a partial-credit signal; still 1.0 exactly when correct). ``calibrated`` (option
    ``shapes-geneval.calibrated=true``; off by default, so stored results keep their meaning): GenEval's
    thresholds apply to the detector's calibrated probability instead of its template IoU.
    """

    name = "shapes-geneval"
    version = 1
    differentiable = False
    resolution = None
    requires = "main environment; no local files (the Shapes world's template detector)"
    binary = True
    """Every score is 1 (correct) or 0 (``rewards.is_binary``); False on an instance scoring clause fractions."""
    edition: Edition = FIRST
    """The Shapes world whose prompts it parses and whose shapes and colours it detects."""
    calibrated_default = False

    def __init__(self, fraction: bool = False, calibrated: bool | str | None = None):
        calibrated = self.calibrated_default if calibrated is None else calibrated
        self.fraction = fraction
        self.binary = not fraction
        self.calibrated = _flag(self.name, "calibrated", calibrated)

    @property
    def fingerprint(self) -> str:
        """What the scores depend on besides the images and prompts (``harness.evaluation.shared_base_scores``):
        the detector is code, so its options."""
        return f"fraction={self.fraction},calibrated={self.calibrated}"

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Scores (B,) float32 for images (B, 3, H, W) in [0, 1] and B Shapes prompts."""
        return score_shapes(images, self._metadatas(prompts), fraction=self.fraction, calibrated=self.calibrated,
                            ed=self.edition)

    def verify(self, images: Tensor, prompts: Sequence[str]) -> list[dict]:
        """Per-image rows (``prompt``, ``tag``, ``correct``, ``reason``, ``fraction``) for evaluators; ``prompt``
        is the caller's string."""
        rows = verify_shapes(images, self._metadatas(prompts), self.calibrated, self.edition)
        for row, prompt in zip(rows, prompts):
            row["prompt"] = prompt
        return rows

    def breakdown(self, images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
        """GenEval's summary of the images: per-tag accuracy, ``overall`` (the unweighted tag mean) and
        ``overall_disjoint`` (the same mean over the tags whose splits are disjoint; decisions use it)."""
        return self.score_and_breakdown(images, prompts)[1]

    def score_and_breakdown(self, images: Tensor, prompts: Sequence[str]) -> tuple[Tensor, dict[str, float]]:
        """``score`` and ``breakdown`` from one pass of the detector."""

        rows = verify_shapes(images, self._metadatas(prompts), self.calibrated, self.edition)
        summary = {k: float(v) for k, v in summarize(rows).items() if isinstance(v, (int, float))}
        tags = [t for t in DISJOINT_TAGS if t in summary]
        if tags:
            summary["overall_disjoint"] = sum(summary[t] for t in tags) / len(tags)
        key = "fraction" if self.fraction else "correct"
        return torch.tensor([float(r[key]) for r in rows]), summary

    def _metadatas(self, prompts: Sequence[str]) -> list[dict]:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, one per image, not a single string")
        return [_metadata(p, self.edition.number) for p in prompts]


class ShapesGenEvalClauses(ShapesGenEval):
    """The same verifier with partial credit: the fraction of the prompt's clauses that hold."""

    name = "shapes-geneval-clauses"
    binary = False

    def __init__(self, calibrated: bool | str | None = None):
        super().__init__(fraction=True, calibrated=calibrated)


class ShapesGenEval2(ShapesGenEval):
    """"shapes2-geneval": the verifier of the Shapes world's edition 2 (12 shapes, 7 colours). Its detection scores
    are calibrated probabilities by default (``calibrated=false`` gives template IoUs), so GenEval's 0.9 counting
    threshold means what it means in GenEval (issue 18: with template IoUs counting was 0 in 550 evaluations)."""

    name = "shapes2-geneval"
    edition = SECOND
    calibrated_default = True


VERIFIERS = {1: ShapesGenEval, 2: ShapesGenEval2}
"""Each Shapes edition's verifier class, by edition number."""


class ShapesGenEval2Clauses(ShapesGenEvalClauses):
    """"shapes2-geneval-clauses": edition 2's verifier with partial credit."""

    name = "shapes2-geneval-clauses"
    edition = SECOND
    calibrated_default = True
