"""GenEval's rule scorer as pure functions over detections (Ghosh et al. 2023, djghosh13/geneval@af4902f).

GenEval runs a detector (Mask2Former) and a colour classifier (CLIP) on each image, then applies fixed rules
to the detections: per-class confidence filtering, top-``count`` selection, colour counting, a relative-position
test and exclude clauses. This module is the rule half only. Any detector can feed it a
``{class_name: [Detection, ...]}`` dict: the Shapes world's template detector does so today and a Mask2Former
detector can later. Nothing here imports a detector.

Metadata follows GenEval's ``evaluation_metadata.jsonl``::

    {"tag": "position",
     "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a circle left of a square"}

Deviation from upstream: box areas for the optional NMS are continuous ``(x2-x1)*(y2-y1)``; upstream adds one
pixel per side (an mmdet-1.x habit). With the default ``max_overlap=1.0`` NMS is off and this never matters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# GenEval's six tags, in the order its summary prints them.
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class Detection:
    """One detected object: ``box`` is (x1, y1, x2, y2) in pixels, ``score`` the detector's confidence and
    ``color`` the colour name a classifier gave it (None when no colour was decided)."""

    box: tuple[float, float, float, float]
    score: float
    color: str | None = None


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when both are empty."""
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def filter_detections(
    raw: Mapping[str, Sequence[Detection]],
    tag: str,
    *,
    threshold: float = 0.3,
    counting_threshold: float = 0.9,
    max_objects: int = 16,
    max_overlap: float = 1.0,
) -> dict[str, list[Detection]]:
    """GenEval's per-class filtering of raw detections.

    Keeps detections scoring strictly above ``threshold`` (``counting_threshold`` for the "counting" tag),
    sorted by score, highest first, at most ``max_objects`` per class, then greedy suppression of boxes with
    IoU >= ``max_overlap`` against a kept one (off when ``max_overlap == 1.0``). Classes left empty are dropped.
    The returned lists are in confidence order, which ``evaluate_detections`` relies on.
    """
    cut = counting_threshold if tag == "counting" else threshold
    out: dict[str, list[Detection]] = {}
    for name, dets in raw.items():
        # Python's sort is stable, so equal scores keep the detector's order (as numpy's argsort does not
        # promise; ties are rare with real confidences and harmless here).
        ranked = sorted((d for d in dets if d.score > cut), key=lambda d: -d.score)[:max_objects]
        kept: list[Detection] = []
        while ranked:
            best = ranked.pop(0)
            kept.append(best)
            if max_overlap != 1.0:
                ranked = [d for d in ranked if box_iou(best.box, d.box) < max_overlap]
        if kept:
            out[name] = kept
    return out


def relative_position(a: Detection, b: Detection, threshold: float = 0.1) -> set[str]:
    """The relations of ``a`` relative to ``b`` under GenEval's rule.

    The centre offset (a - b) is shrunk towards 0 on each axis by ``threshold`` times the summed box sizes on
    that axis, so touching-but-overlapping boxes say nothing; the shrunk offset is divided by the norm of the raw
    offset, and a component beyond 0.5 names a relation. Image y grows downwards, so negative dy is "above".
    Returns a subset of {"left of", "right of", "above", "below"}; empty when the boxes nearly coincide.
    """
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a.box, b.box
    dx = (ax1 + ax2) / 2 - (bx1 + bx2) / 2
    dy = (ay1 + ay2) / 2 - (by1 + by2) / 2
    sx = math.copysign(max(abs(dx) - threshold * ((ax2 - ax1) + (bx2 - bx1)), 0.0), dx)
    sy = math.copysign(max(abs(dy) - threshold * ((ay2 - ay1) + (by2 - by1)), 0.0), dy)
    if abs(sx) < 1e-3 and abs(sy) < 1e-3:
        return set()
    norm = math.hypot(dx, dy)
    nx, ny = sx / norm, sy / norm
    rels = set()
    if nx < -0.5:
        rels.add("left of")
    if nx > 0.5:
        rels.add("right of")
    if ny < -0.5:
        rels.add("above")
    if ny > 0.5:
        rels.add("below")
    return rels


def _include_clause(
    req: Mapping[str, Any],
    dets: Mapping[str, Sequence[Detection]],
    groups: list[list[Detection] | None],
    position_threshold: float,
) -> tuple[list[Detection] | None, str]:
    """Check one include clause; returns (the matched detections or None, the failure reason or "")."""
    name, count = req["class"], req["count"]
    found = list(dets.get(name, []))[:count]
    if len(found) < count:
        return None, f"expected {name}>={count}, found {len(found)}"
    if "color" in req:
        colors = [d.color for d in found]
        hits = colors.count(req["color"])
        if hits < count:
            seen = ", ".join(f"{colors.count(c)} {c}" for c in dict.fromkeys(colors))
            return None, f"expected {req['color']} {name}>={count}, found {hits} {req['color']}; and {seen}"
    if "position" in req:
        rel, target = req["position"]
        if target >= len(groups) or groups[target] is None:
            return None, f"no target for {name} to be {rel}"
        for obj in found:
            for other in groups[target]:
                rels = relative_position(obj, other, position_threshold)
                if rel not in rels:
                    return None, f"expected {name} {rel} target, found {' and '.join(sorted(rels)) or 'no relation'}"
    return found, ""


def clause_results(
    metadata: Mapping[str, Any],
    detections: Mapping[str, Sequence[Detection]],
    *,
    position_threshold: float = 0.1,
) -> list[tuple[bool, str]]:
    """Per-clause outcome of GenEval's ``evaluate``: one (passed, reason) per include clause, in order, then
    one per exclude clause. ``detections`` must already be filtered (``filter_detections``), so each class's
    list is in confidence order."""
    results: list[tuple[bool, str]] = []
    groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        found, reason = _include_clause(req, detections, groups, position_threshold)
        groups.append(found)
        results.append((found is not None, reason))
    for req in metadata.get("exclude", []):
        n = len(detections.get(req["class"], []))
        bad = n >= req["count"]
        results.append((not bad, f"expected {req['class']}<{req['count']}, found {n}" if bad else ""))
    return results


def evaluate_detections(
    metadata: Mapping[str, Any],
    detections: Mapping[str, Sequence[Detection]],
    *,
    position_threshold: float = 0.1,
) -> tuple[bool, str]:
    """GenEval's ``evaluate``: (correct, reason). Correct iff every include and exclude clause passes; the
    reason joins every failed clause's message with "; " and is empty when correct."""
    results = clause_results(metadata, detections, position_threshold=position_threshold)
    return all(ok for ok, _ in results), "; ".join(r for ok, r in results if not ok)


def clause_fraction(
    metadata: Mapping[str, Any],
    detections: Mapping[str, Sequence[Detection]],
    *,
    position_threshold: float = 0.1,
) -> float:
    """The fraction of include and exclude clauses satisfied, in [0, 1]: a graded version of
    ``evaluate_detections`` (1.0 exactly when it says correct)."""
    results = clause_results(metadata, detections, position_threshold=position_threshold)
    return sum(ok for ok, _ in results) / len(results) if results else 1.0


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """GenEval's summary of per-image rows.

    Each row needs ``tag`` and ``correct`` and, for the prompt-level figure, ``prompt`` (or ``metadata`` with a
    prompt). Returns each present tag's accuracy (mean of ``correct``, GenEval's tag order first), ``overall``
    (the unweighted mean of those tag accuracies), ``correct_images`` (fraction of correct rows) and
    ``correct_prompts`` (fraction of prompts with at least one correct image).
    """
    if not rows:
        raise ValueError("summarize: no rows to summarize")
    by_tag: dict[str, list[bool]] = {}
    by_prompt: dict[str, bool] = {}
    for i, row in enumerate(rows):
        if "tag" not in row or "correct" not in row:
            raise ValueError(f"summarize: row {i} lacks 'tag' or 'correct'; keys: {', '.join(row)}")
        ok = bool(row["correct"])
        by_tag.setdefault(row["tag"], []).append(ok)
        prompt = row.get("prompt") or row.get("metadata", {}).get("prompt")
        if prompt is None:
            raise ValueError(f"summarize: row {i} has neither 'prompt' nor 'metadata' with a prompt")
        by_prompt[prompt] = by_prompt.get(prompt, False) or ok
    order = [t for t in GENEVAL_TAGS if t in by_tag] + [t for t in by_tag if t not in GENEVAL_TAGS]
    out = {t: sum(by_tag[t]) / len(by_tag[t]) for t in order}
    out["overall"] = sum(out[t] for t in order) / len(order)
    out["correct_images"] = sum(bool(r["correct"]) for r in rows) / len(rows)
    out["correct_prompts"] = sum(by_prompt.values()) / len(by_prompt)
    return out
