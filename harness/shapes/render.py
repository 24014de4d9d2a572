"""Scenes that satisfy (or break) a Shapes prompt, their anti-aliased rendering, ground truth and damage.

Scenes live on a 64-unit canvas (``CANVAS``) whatever the output resolution, so one scene renders at any size:
at the default 64x64, one unit is one pixel. Objects are drawn at 4x supersampling and box-downsampled; they never
overlap, so compositing each object's coverage straight onto the background is exact.

Correct scenes satisfy the prompt's metadata under GenEval's rules applied to the scene's own ground truth
(``scene_detections``); incorrect scenes fail it by one corruption (see ``CORRUPTIONS``). Both are checked against
that ground truth and resampled until they hold, so the label of every sampled scene is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from evals.geneval import Detection, evaluate_detections, filter_detections, relative_position
from harness.shapes.editions import ALL_SHAPES, BACKGROUND, FIRST, PALETTE, Edition

CANVAS = 64.0
SUPERSAMPLE = 4
MARGIN = 2.0
MIN_GAP = 3.0
# Object sizes (canvas units) by object count: the probe's 10-22 px, smaller when crowded.
SIZE_RANGE = {1: (10.0, 22.0), 2: (10.0, 22.0), 3: (10.0, 18.0), 4: (10.0, 16.0), 5: (10.0, 14.0), 6: (10.0, 13.0),
              7: (10.0, 12.0)}
# How an incorrect scene breaks its prompt, per tag. "shape" swaps in a shape the prompt does not name, so it
# breaks only the clause of the object it changes; "swap" exchanges the two named colours (a binding error).
CORRUPTIONS = {
    "single_object": ("shape", "missing"),
    "two_object": ("shape", "missing"),
    "counting": ("fewer", "more", "shape"),
    "colors": ("color", "shape"),
    "position": ("relation", "shape", "missing"),
    "color_attr": ("color", "swap", "shape"),
}
DAMAGE_KINDS = ("blur", "noise", "blob")
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_MAX_TRIES = 500


@dataclass(frozen=True)
class Obj:
    """One filled shape: ``cx, cy`` its centre and ``size`` its box side (circle diameter, square side, triangle
    base = height), in canvas units; ``color`` a key of ``editions.PALETTE``."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The object's box (x1, y1, x2, y2) in canvas units."""
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass(frozen=True)
class Scene:
    """The objects of one image, on the 64-unit canvas."""

    objects: tuple[Obj, ...]


# -- sampling ---------------------------------------------------------------------------------------------


def _apart(a: Obj, b: Obj) -> bool:
    """Boxes separated by at least MIN_GAP along some axis, so their pixels never touch."""
    reach = (a.size + b.size) / 2 + MIN_GAP
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def _place(items: Sequence[tuple[str, str]], rng: np.random.Generator) -> tuple[Obj, ...]:
    """Random non-touching placement of (shape, colour) items; restarts when a layout gets stuck."""
    lo, hi = SIZE_RANGE[max(len(items), 1)]
    for _ in range(_MAX_TRIES):
        objs: list[Obj] = []
        for shape, color in items:
            s = float(rng.uniform(lo, hi))
            for _ in range(50):
                cx, cy = rng.uniform(MARGIN + s / 2, CANVAS - MARGIN - s / 2, size=2)
                obj = Obj(shape, color, float(cx), float(cy), s)
                if all(_apart(obj, o) for o in objs):
                    objs.append(obj)
                    break
            else:
                break
        if len(objs) == len(items):
            return tuple(objs)
    raise RuntimeError(f"could not place {len(items)} objects on a {CANVAS:.0f}-unit canvas")


def _items(meta: Mapping, kind: str | None, rng: np.random.Generator, ed: Edition) -> list[list]:
    """The [shape, colour] of every object the scene holds, grouped per include clause, after corruption ``kind``
    (None for a correct scene). Unnamed colours follow edition ``ed``'s ``open_colour`` rule."""
    names = list(ed.colors)
    groups = [[[c["class"], c.get("color") or ed.open_colour_of(c["class"], rng)] for _ in range(c["count"])]
              for c in meta["include"]]
    named = {c["class"] for c in meta["include"]}
    # Corrupt the positioned clause when there is one: breaking its target (group 0) would fail both clauses.
    g = next((i for i, c in enumerate(meta["include"]) if "position" in c), int(rng.integers(len(groups))))
    if kind in ("missing", "fewer"):
        groups[g].pop()
    elif kind == "more":
        # Only counting is corrupted with "more", and it names no colour: the extra object's colour is open.
        groups[g].append([groups[g][0][0], ed.open_colour_of(groups[g][0][0], rng)])
    elif kind == "shape":
        unnamed = [s for s in ed.shapes if s not in named]
        groups[g][0][0] = unnamed[rng.integers(len(unnamed))]
        if ed.open_colour == "shape" and not meta["include"][g].get("color"):
            # The wrong shape in the right shape's colour would be a colour cue, not a shape error.
            groups[g][0][1] = ed.shape_colour(groups[g][0][0])
    elif kind == "color":
        named_color = meta["include"][g]["color"]
        others = [c for c in names if c != named_color]
        groups[g][0][1] = others[rng.integers(len(others))]
    elif kind == "swap":
        groups[0][0][1], groups[1][0][1] = groups[1][0][1], groups[0][0][1]
    return groups


def _opposite_holds(meta: Mapping, objs: tuple[Obj, ...]) -> bool:
    """For a wrong-relation scene: the opposite of the named relation holds, so the scene is never borderline."""
    rel, _ = next(c["position"] for c in meta["include"] if "position" in c)
    target, subject = (_as_detection(o) for o in objs)  # objects come in include order: group 0 first
    return _OPPOSITE[rel] in relative_position(subject, target)


def sample_scene(meta: Mapping, rng: np.random.Generator, *, correct: bool = True, ed: Edition = FIRST) -> Scene:
    """A random scene of edition ``ed`` that satisfies ``meta`` (GenEval metadata) or, with ``correct=False``, fails
    it through one corruption drawn from ``CORRUPTIONS[meta["tag"]]``. Resampled until the ground truth agrees."""
    kinds = CORRUPTIONS[meta["tag"]]
    for _ in range(_MAX_TRIES):
        kind = None if correct else kinds[rng.integers(len(kinds))]
        groups = _items(meta, kind, rng, ed)
        objs = _place([tuple(item) for group in groups for item in group], rng)
        if kind == "relation" and not _opposite_holds(meta, objs):
            continue
        scene = Scene(objs)
        if ground_truth(meta, scene)[0] == correct:
            return scene
    raise RuntimeError(f"no {'correct' if correct else 'incorrect'} scene found for prompt '{meta['prompt']}'")


def _as_detection(obj: Obj, scale: float = 1.0) -> Detection:
    return Detection(tuple(v * scale for v in obj.box), 1.0, obj.color)


def scene_detections(scene: Scene, size: int = 64) -> dict[str, list[Detection]]:
    """Ground-truth detections of ``scene`` rendered at ``size`` pixels: true boxes (x1, y1, x2, y2) in pixels,
    score 1.0, true colour; keyed by shape, objects in scene order."""
    out: dict[str, list[Detection]] = {}
    for obj in scene.objects:
        out.setdefault(obj.shape, []).append(_as_detection(obj, size / CANVAS))
    return out


def ground_truth(meta: Mapping, scene: Scene) -> tuple[bool, str]:
    """GenEval's verdict (correct, reason) on the scene's true geometry: what a perfect detector would say."""
    dets = filter_detections(scene_detections(scene), meta["tag"])
    return evaluate_detections(meta, dets)


# -- rendering --------------------------------------------------------------------------------------------


def _star_radius(theta: np.ndarray, outer: float, inner: float) -> np.ndarray:
    """Boundary radius of an upright five-pointed star with straight edges at polar angle ``theta`` (0 = up)."""
    sector = 2 * np.pi / 5
    phi = np.mod(theta, sector)
    phi = np.minimum(phi, sector - phi)  # fold onto the edge from an outer point (phi = 0) to an inner one
    qx, qy = inner * np.cos(sector / 2) - outer, inner * np.sin(sector / 2)  # edge direction Q - P, P = (outer, 0)
    return outer * qy / (np.cos(phi) * qy - np.sin(phi) * qx)


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Which sample points, at offsets (dx, dy) from an object's centre (y down), lie in the shape of half-size
    ``r``: every shape fills the square box of side 2r it is placed by, touching its four sides."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (ax <= r) & (ay <= r)
    if shape == "triangle":
        # Apex at dy = -r, base at dy = +r; the half-width grows linearly from 0 to r.
        return (dy <= r) & (ax <= (dy + r) / 2)
    if shape == "diamond":
        return ax + ay <= r
    if shape == "cross":  # a plus sign with arms a third of the box wide
        return (ax <= r) & (ay <= r) & ((ax <= r / 3) | (ay <= r / 3))
    if shape == "ring":
        rho2 = dx * dx + dy * dy
        return (rho2 <= r * r) & (rho2 >= (0.4 * r) ** 2)
    if shape == "frame":  # a hollow square, its wall 0.55 of the half-side thick
        edge = np.maximum(ax, ay)
        return (edge <= r) & (edge >= 0.45 * r)
    if shape == "hourglass":  # two triangles tip to tip, joined by a waist a quarter of the box wide
        return (ay <= r) & (ax <= 0.25 * r + 0.75 * ay)
    if shape == "heart":
        u, v = 1.139 * dx / r, 0.118 - 1.118 * dy / r  # the curve spans u in +-1.139, v in [-1, 1.236]
        return (u * u + v * v - 1) ** 3 - u * u * v ** 3 <= 0
    if shape == "star":  # outer radius fits the box's width; centred vertically in the box
        outer = r / np.cos(np.pi / 10)
        y = dy - (outer - outer * np.cos(np.pi / 5)) / 2
        return np.hypot(dx, y) <= _star_radius(np.arctan2(dx, -y), outer, 0.5 * outer)
    if shape == "moon":  # a crescent opening to the right: a disc less a disc shifted right
        return (dx * dx + dy * dy <= r * r) & ((dx - 0.6 * r) ** 2 + dy * dy >= (0.7 * r) ** 2)
    if shape == "arrow":  # pointing right: a shaft (left half) and a triangular head (right half)
        shaft = (dx >= -r) & (dx <= 0) & (ay <= 0.3 * r)
        return shaft | ((dx >= 0) & (ax <= r) & (ay <= r - dx))
    raise ValueError(f"unknown shape '{shape}'; valid shapes: {', '.join(ALL_SHAPES)}")


def window(box: Sequence[float], res: int) -> tuple[int, int, int, int]:
    """The pixel window (x0, x1, y0, y1), clipped to a res x res image, that covers ``box`` (x1, y1, x2, y2)."""
    return (max(int(np.floor(box[0])), 0), min(int(np.ceil(box[2])), res),
            max(int(np.floor(box[1])), 0), min(int(np.ceil(box[3])), res))


def _samples(win: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Supersample centres (xs (w*k,), ys (h*k,)) of the pixels in ``win``, in pixel coordinates."""
    x0, x1, y0, y1 = win
    k = SUPERSAMPLE
    return (np.arange(x0 * k, x1 * k) + 0.5) / k, (np.arange(y0 * k, y1 * k) + 0.5) / k


def _downsample(inside: np.ndarray) -> np.ndarray:
    """Box-downsample a supersampled mask (h*k, w*k) to per-pixel coverage (h, w) float32."""
    k = SUPERSAMPLE
    # Strided uint8 sums are ~3x faster than reshape(...).mean() on these small arrays (the detector's hot path).
    u = inside.view(np.uint8)
    rows = sum(u[i::k] for i in range(k))
    return sum(rows[:, i::k] for i in range(k)) * np.float32(1.0 / (k * k))


def coverage(shape: str, cx: float, cy: float, size: float, win: tuple[int, int, int, int]) -> np.ndarray:
    """Anti-aliased coverage (h, w) in [0, 1] of a shape with centre (cx, cy) and box side ``size`` (pixels) over
    the pixel window ``win`` = (x0, x1, y0, y1): exactly what ``render`` blends, so the detector can fit it."""
    xs, ys = _samples(win)
    return _downsample(_inside(shape, xs[None, :] - cx, ys[:, None] - cy, size / 2))


def _paint(img: np.ndarray, alpha: np.ndarray, win: tuple[int, int, int, int], rgb: Sequence[float]) -> None:
    """Blend ``rgb`` into ``img`` (H, W, 3) float over ``win`` with per-pixel coverage ``alpha`` (h, w)."""
    x0, x1, y0, y1 = win
    region = img[y0:y1, x0:x1]
    region += alpha[..., None] * (np.asarray(rgb, dtype=np.float32) - region)


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """The scene as a uint8 image (size, size, 3): flat ``BACKGROUND`` with anti-aliased objects."""
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = BACKGROUND
    scale = size / CANVAS
    for obj in scene.objects:
        win = window([v * scale for v in obj.box], size)
        _paint(img, coverage(obj.shape, obj.cx * scale, obj.cy * scale, obj.size * scale, win), win,
               PALETTE[obj.color])
    return np.rint(img).astype(np.uint8)


def render_batch(
    metas: Sequence[Mapping],
    rng: np.random.Generator,
    *,
    correct: bool | Sequence[bool] = True,
    size: int = 64,
    ed: Edition = FIRST,
) -> tuple[torch.Tensor, list[Scene]]:
    """Sample and render one scene of edition ``ed`` per metadata dict. ``correct`` is one flag for all or one per dict.
    Returns images (B, 3, size, size) float32 in [0, 1] and the B scenes."""
    flags = [correct] * len(metas) if isinstance(correct, bool) else list(correct)
    if len(flags) != len(metas):
        raise ValueError(f"render_batch: {len(flags)} correct flags for {len(metas)} prompts")
    scenes = [sample_scene(m, rng, correct=c, ed=ed) for m, c in zip(metas, flags)]
    images = np.stack([render(s, size) for s in scenes]) if scenes else np.zeros((0, size, size, 3), np.uint8)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0), scenes


# -- damage -----------------------------------------------------------------------------------------------


def _blur(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Separable Gaussian blur, sigma ~ U(0.7, 1.5) px per image, edges replicated."""
    b, c, h, w = images.shape
    sigma = torch.from_numpy(rng.uniform(0.7, 1.5, size=b)).float()
    radius = 5  # ceil(3 * 1.5): the widest kernel's support
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, 2r+1)
    x = F.pad(images.reshape(1, b * c, h, w), (radius,) * 4, mode="replicate")
    x = F.conv2d(x, kernel[:, None, :, None], groups=b * c)
    x = F.conv2d(x, kernel[:, None, None, :], groups=b * c)
    return x.reshape(b, c, h, w)


def _noise(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Additive Gaussian noise, std ~ U(0.02, 0.08) per image, clamped to [0, 1]."""
    std = rng.uniform(0.02, 0.08, size=(images.shape[0], 1, 1, 1))
    noise = torch.from_numpy(rng.standard_normal(images.shape) * std).float()
    return (images + noise).clamp_(0.0, 1.0)


def blob_mask(obj: Obj, xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A shapeless blob the size of ``obj``: a star-convex region whose radius wobbles with two random harmonics
    (orders 2-5, amplitude 0.15-0.3), so it matches none of the templates. ``xs`` (n,) and ``ys`` (m,) are sample
    coordinates in pixels; returns an (m, n) bool mask."""
    dx = xs[None, :] - obj.cx * scale
    dy = ys[:, None] - obj.cy * scale
    theta = np.arctan2(dy, dx)
    wobble = np.ones_like(theta)
    for order in rng.choice(np.arange(2, 6), size=2, replace=False):
        wobble += rng.uniform(0.15, 0.3) * np.cos(order * theta + rng.uniform(0, 2 * np.pi))
    # 0.8 keeps the wobbling outline inside the object's box for most draws.
    return np.hypot(dx, dy) <= 0.8 * obj.size * scale / 2 * wobble


def _blob(images: torch.Tensor, rng: np.random.Generator, scenes: Sequence[Scene]) -> torch.Tensor:
    """Replace one random object per image with a blob of its colour (background painted over its box)."""
    out = images.permute(0, 2, 3, 1).mul(255.0).numpy().copy()
    size = out.shape[1]
    scale = size / CANVAS
    for img, scene in zip(out, scenes):
        if not scene.objects:
            continue
        obj = scene.objects[rng.integers(len(scene.objects))]
        x1, y1, x2, y2 = (v * scale for v in obj.box)
        # One pixel of slack erases the anti-aliased rim; MIN_GAP keeps neighbours out of it.
        win = window((x1 - 1, y1 - 1, x2 + 1, y2 + 1), size)
        img[win[2]:win[3], win[0]:win[1]] = BACKGROUND
        xs, ys = _samples(win)
        _paint(img, _downsample(blob_mask(obj, xs, ys, rng, scale)), win, PALETTE[obj.color])
    return torch.from_numpy(out).permute(0, 3, 1, 2).div(255.0).clamp_(0.0, 1.0)


def damage(
    images: torch.Tensor,
    rng: np.random.Generator,
    kind: str,
    *,
    scenes: Sequence[Scene] | None = None,
) -> torch.Tensor:
    """A damaged copy of ``images`` (B, 3, H, W) in [0, 1], for training rewards on low-quality negatives.

    ``kind`` is one of ``DAMAGE_KINDS``: "blur" (Gaussian, sigma 0.7-1.5 px), "noise" (Gaussian, std 0.02-0.08)
    or "blob" (one object per image becomes a shapeless blob of its colour; needs the images' ``scenes``).
    """
    if kind not in DAMAGE_KINDS:
        raise ValueError(f"unknown damage kind '{kind}'; valid kinds: {', '.join(DAMAGE_KINDS)}")
    images = images.detach().float().cpu()
    if kind == "blur":
        return _blur(images, rng)
    if kind == "noise":
        return _noise(images, rng)
    if scenes is None or len(scenes) != images.shape[0]:
        raise ValueError(f"damage 'blob' needs one scene per image: got {None if scenes is None else len(scenes)} "
                         f"scenes for {images.shape[0]} images")
    return _blob(images, rng, scenes)
