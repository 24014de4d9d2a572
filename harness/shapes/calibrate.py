"""The Shapes detector's calibrated confidence: fitted on rendered scenes whose objects are known.

GenEval's detector (Mask2Former) scores a detection by its class probability; its rules keep detections above
0.3 and count only those above 0.9. The Shapes detector's raw score is a template IoU, a shape-fit quality that
generated (soft-edged) objects never push past 0.9, so counting scored 0 in every run (issue 18). This module fits
P(true object | features) so that the thresholds read as probabilities again.

Calibration set: scenes of the training prompts (correct and incorrect, half each), rendered, then one of
``VARIANTS``: clean, Gaussian blur (sigma 0.7-1.5 px), pixel noise (std 0.02-0.08), blur then noise, or one
object replaced by a shapeless blob of its colour (the renderer's ``damage``). Every candidate the detector keeps
(template IoU >= 0.8) is labelled true when an unmatched ground-truth object of the same shape and colour has box
IoU >= 0.5 with it (greedy, best template IoU first); a blobbed object is no true object. A logistic regression on
(template IoU, margin over the second-best shape, log area) is fitted by iteratively reweighted least squares
(with a small ridge). The probability is therefore "under this mixture of degradations": the mixture is the
calibration's assumption, and the reliability table on a fresh set (other seed) says how well it holds there.

    python -m harness.shapes.calibrate [SCENES_PER_PROMPT] [--edition N]  # the coefficients, the reliability table
    python -m harness.shapes.calibrate --base [SPLIT] [SEEDS] [--edition N]  # the base generator, calibration off/on

Edition 2's training split has 5,976 prompts; its calibration set takes a seeded ``PER_TAG`` of them per tag.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from evals.geneval import box_iou
from harness.evaluation import EVAL_SEED_BASE, generate
from harness.shapes.detect import CALIBRATION, candidates, confidence, features
from harness.shapes.editions import FIRST, Edition, edition
from harness.shapes.generator import load_generator
from harness.shapes.prompts import TAGS, all_prompts, split
from harness.shapes.render import CANVAS, damage, render_batch
from rewards.shapes_geneval import VERIFIERS

VARIANTS = ("clean", "blur", "noise", "blur+noise", "blob")
PER_TAG = 40
"""Edition 2: training prompts per tag in the calibration set (edition 1 takes all 95)."""


def calibration_prompts(ed: Edition = FIRST) -> list[dict]:
    """The training prompts whose scenes calibrate: all of edition 1's; a seeded ``PER_TAG`` per tag for edition 2."""
    train = split("train", 0, ed)
    if ed.number == 1:
        return train
    rng = np.random.default_rng(ed.number)
    out = []
    for tag in TAGS:
        group = [m for m in train if m["tag"] == tag]
        out += [group[i] for i in sorted(rng.permutation(len(group))[:PER_TAG])]
    return out


def _blobbed(clean: torch.Tensor, damaged: torch.Tensor, scene, size: int) -> int:
    """Which object of ``scene`` the blob damage replaced: the one whose box changed most."""
    scale = size / CANVAS
    diffs = []
    for obj in scene.objects:
        x1, y1, x2, y2 = (int(round(v * scale)) for v in obj.box)
        x1, y1 = max(x1, 0), max(y1, 0)
        diffs.append(float((clean[:, y1:y2, x1:x2] - damaged[:, y1:y2, x1:x2]).abs().mean()))
    return int(np.argmax(diffs))


def label(cands: list[dict], scene, size: int, skip: int | None = None) -> np.ndarray:
    """1 for candidates matching an unmatched true object (same shape and colour, box IoU >= 0.5), else 0."""
    scale = size / CANVAS
    truth = [(o.shape, o.color, tuple(v * scale for v in o.box)) for i, o in enumerate(scene.objects) if i != skip]
    used: set[int] = set()
    out = np.zeros(len(cands))
    for c_idx in sorted(range(len(cands)), key=lambda i: -cands[i]["iou"]):
        c = cands[c_idx]
        for t_idx, (shape, color, box) in enumerate(truth):
            if t_idx not in used and shape == c["shape"] and color == c["color"] and box_iou(box, c["box"]) >= 0.5:
                used.add(t_idx)
                out[c_idx] = 1.0
                break
    return out


def calibration_set(scenes_per_prompt: int = 4, seed: int = 0, size: int = 64, ed: Edition = FIRST
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, 3) and labels (N,) of every candidate in ``len(VARIANTS)`` degraded copies of the scenes."""
    rng = np.random.default_rng(seed)
    metas = [m for m in calibration_prompts(ed) for _ in range(scenes_per_prompt)]
    correct = [bool(i % 2 == 0) for i in range(len(metas))]
    images, scenes = render_batch(metas, rng, correct=correct, size=size, ed=ed)
    xs, ys = [], []
    for variant in VARIANTS:
        x = images
        if "blur" in variant:
            x = damage(x, rng, "blur")
        if "noise" in variant:
            x = damage(x, rng, "noise")
        if variant == "blob":
            x = damage(x, rng, "blob", scenes=scenes)
        for i, cands in enumerate(candidates(x, ed)):
            skip = _blobbed(images[i], x[i], scenes[i], size) if variant == "blob" and scenes[i].objects else None
            xs.append(features(cands))
            ys.append(label(cands, scenes[i], size, skip))
    return np.concatenate(xs), np.concatenate(ys)


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3, iterations: int = 50) -> tuple[float, ...]:
    """Logistic regression (intercept first) by iteratively reweighted least squares, with a small ridge on the
    slopes so that a separable set still has a finite answer."""
    a = np.hstack([np.ones((len(x), 1)), x])
    beta = np.zeros(a.shape[1])
    penalty = ridge * len(x) * np.diag([0.0] + [1.0] * x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a @ beta)))
        w = np.clip(p * (1 - p), 1e-9, None)
        step = np.linalg.solve(a.T @ (a * w[:, None]) + penalty, a.T @ (y - p) - penalty @ beta)
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return tuple(float(b) for b in beta)


def reliability(p: np.ndarray, y: np.ndarray, edges: tuple[float, ...] = (0, .3, .5, .7, .8, .9, .95, .99, 1)
                ) -> tuple[list[tuple[str, int, float, float]], float]:
    """Rows (bin, count, mean predicted, observed rate) and the expected calibration error (count-weighted
    mean |predicted - observed|)."""
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        if inside.any():
            rows.append((f"[{lo:g}, {hi:g}{']' if hi == 1 else ')'}", int(inside.sum()), float(p[inside].mean()),
                         float(y[inside].mean())))
            ece += inside.sum() * abs(p[inside].mean() - y[inside].mean())
    return rows, float(ece / max(len(p), 1))


def base_scores(split_name: str = "val", seeds: int = 8, ed: Edition = FIRST) -> dict[str, dict[str, float]]:
    """The base generator's shapes-GenEval breakdown on a split's evaluation images (the runs' validation noise),
    with the calibrated confidence off and on; ``split_name`` "all" takes every prompt."""
    gen = load_generator(device=torch.device("cpu"), directory=ed.asset_dir)
    metas = all_prompts(ed) if split_name == "all" else split(split_name, 0, ed)
    images, prompts, _ = generate(gen, [m["prompt"] for m in metas], seeds, reference=True,
                                  seed_base=EVAL_SEED_BASE)
    return {name: VERIFIERS[ed.number](calibrated=on).breakdown(images, prompts) for name, on in (("off", False), ("on", True))}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ed = FIRST
    if "--edition" in argv:
        at = argv.index("--edition")
        ed = edition((argv[at + 1:at + 2] or ["?"])[0])
        del argv[at:at + 2]
    if argv[:1] == ["--base"]:
        name, seeds = (argv[1:2] or ["val"])[0], int((argv[2:3] or ["8"])[0])
        result = base_scores(name, seeds, ed)
        keys = list(result["off"])
        print(f"base generator, {name} split, {seeds} noise seeds per prompt (EVAL_SEED_BASE)")
        print("| calibrated | " + " | ".join(keys) + " |\n|---" * 1 + "|---" * len(keys) + "|")
        for label, values in result.items():
            print(f"| {label} | " + " | ".join(f"{values[k]:.4f}" for k in keys) + " |")
        return 0
    scenes = int((argv or ["4"])[0])
    x, y = calibration_set(scenes, seed=0, ed=ed)
    coef = fit_logistic(x, y)
    x_new, y_new = calibration_set(scenes, seed=1, ed=ed)
    print(f"calibration set: {len(y)} candidates, {y.mean():.3f} true; fresh set (seed 1): {len(y_new)}")
    print(f"CALIBRATION[{ed.number}] = ({', '.join(f'{c:.4g}' for c in coef)})  # intercept, iou, margin, log area")
    for name, c in (("fitted", coef), ("committed", CALIBRATION.get(ed.number))):
        if c is None:
            continue
        rows, ece = reliability(confidence(x_new, c), y_new)
        print(f"{name} coefficients on the fresh set: ECE {ece:.4f}")
        print("| predicted | candidates | mean predicted | observed true |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
