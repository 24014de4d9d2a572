"""The Shapes verifier's detector: colour segmentation, connected components, shape fitting.

1. Each pixel takes its nearest palette colour, or none when that colour is farther than ``MAX_COLOR_DIST`` (the
   background and the outer part of anti-aliased rims get none).
2. Per colour, 4-connected components; those smaller than ``MIN_AREA`` (specks) or with a box aspect above
   ``MAX_ASPECT`` (streaks) are dropped.
3. Each component's per-pixel coverage (its colour's share of each pixel, rim included) is matched against a
   circle, a square and a triangle fitted to it (size from its mass, centre from its centroid) and rendered
   exactly as the renderer draws them. The best soft IoU names the shape and is the detection's ``score``;
   below ``MIN_TEMPLATE_IOU`` the component is no detection. The fitted box is the detection's box.

Template IoU rather than a fill-ratio test is what keeps blobs from counting as circles (the prototype's
fill-ratio verifier gave a blob-only generator 0.10-0.23). The fit is exact on clean renders (IoU >= 0.99, where
the prototype's bounding-box templates on binary masks reached 0.917), so the threshold sits higher than the
prototype's 0.75: at 0.8, 99% of shapeless blobs (``render.damage(..., "blob")``) are rejected while 91% of
shapes blurred with sigma = 1 px are still found. Because the score is a shape-fit quality, GenEval's thresholds
keep a meaning: every detection clears 0.3, and counting's 0.9 admits only crisp shapes (blur with sigma = 1 px
leaves about a fifth of shapes above it), so counting is the tag that punishes blurry generators.

``calibrated=True`` (off by default, so stored results keep their meaning) makes the score a probability instead,
as Mask2Former's class probabilities are in GenEval: P(the detection is a true object of its shape and colour)
from a logistic model on the template IoU, its margin over the second-best shape and the component's log area,
fitted on rendered scenes with known ground truth (``harness.shapes.calibrate``; ``CALIBRATION``). GenEval's
0.3 and 0.9 then read as they do in GenEval: kept when more likely than 0.3, counted when more likely than 0.9.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from evals.geneval import Detection
from harness.shapes.editions import BACKGROUND, EDITIONS, FIRST, Edition
from harness.shapes.render import _inside, coverage

MAX_COLOR_DIST = 80.0
MIN_AREA = 30  # pixels at 64x64; scaled with image area
MAX_ASPECT = 1.5
MIN_TEMPLATE_IOU = 0.8
CALIBRATION = {1: (6.532, 0.7613, 0.8683, 0.7204), 2: (7.582, 0.7797, 0.9571, 0.9691)}
"""Per edition, logistic coefficients (intercept, template IoU, IoU margin over the second-best shape, log area in
units of the 64x64 image) of the calibrated confidence. Edition 1's from ``python -m harness.shapes.calibrate 8``
(5,796 candidates of 760 training-prompt scenes x 5 degradations, 99.3% true; expected calibration error 0.0024 on
a fresh set); edition 2's from ``python -m harness.shapes.calibrate 4 --edition 2`` (4,325 candidates of 704
training-prompt scenes x 5 degradations, 99.4% true; ECE 0.0013 on a fresh set of 4,325)."""

# 4-connectivity within an image, none across the batch axis, so one label call covers a whole batch.
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = ndimage.generate_binary_structure(2, 1)
_BG = np.array(BACKGROUND, dtype=np.float32)
_EXACT = {"circle": (math.pi / 4, 0.0, 0.0), "square": (1.0, 0.0, 0.0), "triangle": (0.5, 0.0, 1 / 6)}
"""(area over box side squared, centroid offset x and y over box side) of edition 1's shapes, exact."""


@lru_cache(maxsize=None)
def shape_geometry(shape: str) -> tuple[float, float, float]:
    """(area / side^2, centroid x offset / side, centroid y offset / side) of ``shape`` drawn in a box of side 1:
    exact for edition 1's shapes, measured on a 2,048 x 2,048 grid for the others (error below 1e-3)."""
    if shape in _EXACT:
        return _EXACT[shape]
    t = (np.arange(2048) + 0.5) / 2048 - 0.5
    inside = _inside(shape, t[None, :], t[:, None], 0.5)
    area = float(inside.mean())
    ys, xs = np.nonzero(inside)
    return area, float(t[xs].mean()), float(t[ys].mean())


@lru_cache(maxsize=2)
def _palette(number: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(colour names, palette (K, 3), scaled background-to-colour directions (K, 3)) of edition ``number``:
    (pixel - background) @ dirs[k] is colour k's coverage of the pixel."""
    pal = EDITIONS[number].palette
    colours = np.array(list(pal.values()), dtype=np.float32)
    return list(pal), colours, np.stack([(c - _BG) / ((c - _BG) ** 2).sum() for c in colours])


def _as_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Images as uint8 (B, H, W, 3): accepts uint8 (H, W, 3) / (B, H, W, 3) arrays and float (3, H, W) /
    (B, 3, H, W) arrays or tensors in [0, 1]."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().float().numpy()
    x = np.asarray(images)
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (H, W, 3) or (B, H, W, 3), got shape {x.shape}")
        return x
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"float images must be (3, H, W) or (B, 3, H, W) in [0, 1], got shape {x.shape}")
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


@lru_cache(maxsize=2)
def _colour_table(number: int) -> np.ndarray:
    """Nearest palette index of edition ``number`` (or -1 beyond ``MAX_COLOR_DIST``) for every 24-bit RGB value:
    flat int8 (2^24,), 16 MiB, built once per process in a fraction of a second from per-channel squared distances."""
    palette = _palette(number)[1]
    sq = ((np.arange(256)[None, None, :] - palette.astype(np.int32)[:, :, None]) ** 2).astype(np.int32)
    green_blue = [(sq[k, 1][:, None] + sq[k, 2][None, :]).ravel() for k in range(len(palette))]
    table = np.empty((256, 256 * 256), dtype=np.int8)
    for r in range(256):
        best = np.full(256 * 256, int(MAX_COLOR_DIST ** 2) + 1, dtype=np.int32)
        idx = np.full(256 * 256, -1, dtype=np.int8)
        for k, gb in enumerate(green_blue):
            d2 = gb + sq[k, 0, r]
            closer = d2 < best  # strict: ties keep the earlier palette colour, as argmin would
            best = np.where(closer, d2, best)
            idx[closer] = k
        table[r] = idx
    return table.ravel()


def _palette_labels(x: np.ndarray, number: int = 1) -> np.ndarray:
    """Nearest palette index of edition ``number`` per pixel of uint8 (B, H, W, 3) images, -1 where no colour is
    near: (B, H, W). A table lookup: the per-pixel distance computation was half of the detector's time."""
    key = (x[..., 0].astype(np.int32) << 16) | (x[..., 1].astype(np.int32) << 8) | x[..., 2]
    return _colour_table(number).take(key)


def _fit(alpha: np.ndarray, win: tuple[int, int, int, int], shapes: tuple[str, ...] = FIRST.shapes
         ) -> tuple[str, float, tuple[float, ...], float]:
    """Fit each of ``shapes`` to a component's coverage ``alpha`` (h, w) over pixel window ``win`` = (x0, x1, y0, y1).

    A shape's box side follows from the coverage mass (area = side^2 times its ``shape_geometry`` area, e.g. pi/4,
    1 or 1/2) and its box centre from the centroid less the shape's centroid offset (a triangle's centroid sits a
    sixth of its height below its box centre). The fitted shape is
    rendered exactly as the renderer draws it and compared by soft IoU, sum(min) / sum(max). Returns the best
    shape, its IoU, its box (x1, y1, x2, y2) in pixels and the second-best shape's IoU.
    """
    x0, x1, y0, y1 = win
    mass = float(alpha.sum())
    mx = float(alpha.sum(axis=0) @ (np.arange(x0, x1) + 0.5)) / mass
    my = float(alpha.sum(axis=1) @ (np.arange(y0, y1) + 0.5)) / mass
    best, second = ("", -1.0, ()), -1.0
    for shape in shapes:
        area, ox, oy = shape_geometry(shape)
        side = math.sqrt(mass / area)
        # Edition 1's shapes keep their exact arithmetic (side / 6), so its stored scores keep every bit.
        cx, cy = mx - ox * side, (my - side / 6 if shape == "triangle" else my - oy * side)
        tpl = coverage(shape, cx, cy, side, win)
        iou = float(np.minimum(alpha, tpl).sum() / np.maximum(alpha, tpl).sum())
        if iou > best[1]:
            best, second = (shape, iou, (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)), best[1]
        elif iou > second:
            second = iou
    return (*best, second)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of a small (h, w) mask, as separable shifted ORs (ndimage's call overhead dominates
    on arrays this small)."""
    p = np.pad(mask, 1)
    rows = p[:-2] | p[1:-1] | p[2:]
    return rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]


def _coverage_of(x: np.ndarray, colour_idx: np.ndarray, labels: np.ndarray, j: int, direction: np.ndarray,
                 win: tuple[int, int, int, int]) -> np.ndarray:
    """Per-pixel coverage (h, w) of palette colour ``k`` for component ``j`` of one image, over ``win``.

    Coverage is the pixel's projection on the background-to-colour line, so anti-aliased rims count by how much
    of the pixel the object covers. It is kept on the component and its one-pixel rim of uncoloured pixels only,
    so neighbours and other colours do not leak in.
    """
    x0, x1, y0, y1 = win
    core = labels[y0:y1, x0:x1] == j
    rim = _dilate(core) & (colour_idx[y0:y1, x0:x1] == -1)
    alpha = (x[y0:y1, x0:x1].astype(np.float32) - _BG) @ direction
    return np.clip(alpha, 0.0, 1.0) * (core | rim)


def candidates(images: np.ndarray | torch.Tensor, ed: Edition = FIRST) -> list[list[dict]]:
    """Every component that passes the template gate of edition ``ed``'s shapes and colours, per image: ``shape``,
    ``color``, ``box`` (x1, y1, x2, y2 pixel edges), ``iou`` (template IoU), ``margin`` (over the second-best
    shape) and ``area`` (pixels over the image's). ``images``: uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1]."""
    x = _as_uint8(images)
    b, h, w, _ = x.shape
    min_area = MIN_AREA * (h * w) / (64 * 64)
    colour_idx = _palette_labels(x, ed.number)
    names, _, dirs = _palette(ed.number)
    out: list[list[dict]] = [[] for _ in range(b)]
    for k, name in enumerate(names):
        labels, n = ndimage.label(colour_idx == k, structure=_STRUCTURE)
        if n == 0:
            continue
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        for j, sl in enumerate(ndimage.find_objects(labels), start=1):
            if areas[j] < min_area:
                continue
            sb, sy, sx = sl
            bh, bw = sy.stop - sy.start, sx.stop - sx.start
            if max(bh, bw) > MAX_ASPECT * min(bh, bw):
                continue
            i = sb.start
            # Two pixels of margin hold the rim and let a slightly off-centre fit be compared in full.
            win = (max(sx.start - 2, 0), min(sx.stop + 2, w), max(sy.start - 2, 0), min(sy.stop + 2, h))
            alpha = _coverage_of(x[i], colour_idx[i], labels[i], j, dirs[k], win)
            shape, iou, box, second = _fit(alpha, win, ed.shapes)
            if iou >= MIN_TEMPLATE_IOU:
                out[i].append({"shape": shape, "color": name, "box": box, "iou": iou, "margin": iou - second,
                               "area": float(areas[j]) / (h * w)})
    return out


def features(cands: list[dict]) -> np.ndarray:
    """The calibration's features (n, 3) of candidates: template IoU, margin, log area."""
    return np.array([[c["iou"], c["margin"], math.log(c["area"])] for c in cands], dtype=np.float64).reshape(-1, 3)


def confidence(feats: np.ndarray, coef: tuple[float, ...] = CALIBRATION[1]) -> np.ndarray:
    """The calibrated probability that each candidate is a true object: sigmoid(b0 + b . features)."""
    z = coef[0] + np.asarray(feats, dtype=np.float64) @ np.asarray(coef[1:], dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-z))


def detect_batch(images: np.ndarray | torch.Tensor, calibrated: bool = False, ed: Edition = FIRST
                 ) -> list[dict[str, list[Detection]]]:
    """Detections of edition ``ed``'s shapes for each image: ``{shape: [Detection(box, score, color), ...]}`` sorted
    by score, highest first; the score is the template IoU, or with ``calibrated`` the calibrated probability
    (``confidence`` with the edition's ``CALIBRATION``).
    ``images``: uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1]. Boxes are (x1, y1, x2, y2) pixel edges."""
    out: list[dict[str, list[Detection]]] = []
    for cands in candidates(images, ed):
        scores = confidence(features(cands), CALIBRATION[ed.number]) if calibrated else [c["iou"] for c in cands]
        dets: dict[str, list[Detection]] = {}
        for c, score in zip(cands, scores):
            dets.setdefault(c["shape"], []).append(Detection(c["box"], float(score), c["color"]))
        for lst in dets.values():
            lst.sort(key=lambda d: -d.score)
        out.append(dets)
    return out


def detect(image: np.ndarray | torch.Tensor, calibrated: bool = False, ed: Edition = FIRST
           ) -> dict[str, list[Detection]]:
    """Detections for one image: uint8 (H, W, 3) or float (3, H, W) in [0, 1]; see ``detect_batch``."""
    return detect_batch(image, calibrated, ed)[0]
