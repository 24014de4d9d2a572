"""The Shapes world's editions: each is a vocabulary, a split rule and an asset folder.

* **Edition 1** (profile ``shapes``): 3 shapes, 4 colours, counts 2-4; 126 prompts split by prompt string (a
  restated prompt can sit in two splits: 24 pairs do, see ``prompts.task_overlaps``). Its assets, tuned file and
  table are the committed main table's.
* **Edition 2** (profile ``shapes2``, issue 18): 12 shapes, 7 colours (GenEval colour names; orange was dropped: its
  anti-aliased rim passes within 80 of yellow), counts 2-6; splits by *canonical task*
  (``prompts.canonical_task``), so no constraint set is stated in two splits, with 24 validation and 24 test tasks
  in every tag but single_object (shared, as in edition 1, and out of every decision). Why these sizes: two_object
  has C(12, 2) = 66 tasks (24 + 24 held out, 18 to train), counting 12 x 5 = 60 (24 + 24 + 12), colors 12 x 7 = 84
  (24 + 24 + 36); position and color_attr have hundreds. Fewer shapes cannot give two_object 48 held-out tasks
  with any left to train. An object whose colour the prompt leaves open is drawn in its shape's colour
  (``Edition.open_colour``), so only colors and color_attr, which name their colours, ask for colour binding.

The new shapes are upright silhouettes in a square box with distinct template fits (``harness.shapes.render``
draws them, ``harness.shapes.detect`` fits them). The new colours keep the palette segmentable: every pair of
colours is at least 80 apart in RGB, and no colour lies within 80 of the segment from another colour to the
background (the anti-aliased rims), checked by ``tests/test_shapes_editions.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.registry import unknown

ASSET_ROOT = Path(__file__).resolve().parent.parent / "assets"
BACKGROUND = (215, 215, 215)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 40),
    "purple": (140, 50, 170),
    "brown": (125, 60, 10),
    "black": (30, 30, 30),
}
"""Every colour of every edition (an edition uses a prefix of it); the renderer paints any of them."""
ALL_SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "heart", "star", "frame", "hourglass",
              "moon", "arrow")
"""Every shape of every edition (an edition uses a prefix of it)."""
PLURAL_FORMS = {s: s + ("es" if s.endswith(("s", "ss", "sh")) else "s") for s in ALL_SHAPES}
_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


@dataclass(frozen=True)
class Edition:
    """One Shapes world: its vocabulary, how its prompts split, and where its pretrained assets live."""

    number: int
    """1 or 2."""
    shapes: tuple[str, ...]
    """Shape names, in template order (the detector's tie-break follows it)."""
    colors: tuple[str, ...]
    """Colour names, keys of ``PALETTE``, in palette order (the detector's tie-break follows it)."""
    counts: tuple[int, ...]
    """The counts counting prompts ask for."""
    split_rule: str
    """"prompt": a seeded 25% of each tag's prompts held out (edition 1); "task": 24 val + 24 test canonical tasks
    per tag, stratified (edition 2)."""
    asset_dir: Path
    """The folder of its pretrained generator, encoders and reward."""
    profile: str
    """The generator profile that runs it."""
    open_colour: str = "random"
    """The colour of an object whose colour the prompt leaves open: "random" (any of ``colors``, per object;
    edition 1) or "shape" (its shape's own colour, ``shape_colour``; edition 2). With 7 open colours a one-step
    CVAE prior on 2 CPU cores blends the colour modes into off-palette ones the detector cannot segment (edition
    2's first generator: single_object 0.31 on validation); colour binding stays tested by colors and
    color_attr, whose colours are named."""

    def shape_colour(self, shape: str) -> str:
        """The colour of ``shape`` when its colour is open under "shape": colours dealt round the shapes in order
        (circle red, square green, triangle blue, ... star red again)."""
        return self.colors[self.shapes.index(shape) % len(self.colors)]

    def open_colour_of(self, shape: str, rng: np.random.Generator) -> str:
        """The colour an open-coloured ``shape`` is drawn in (draws from ``rng`` only under "random")."""
        if self.open_colour == "shape":
            return self.shape_colour(shape)
        return self.colors[rng.integers(len(self.colors))]

    @property
    def palette(self) -> dict[str, tuple[int, int, int]]:
        return {c: PALETTE[c] for c in self.colors}

    @property
    def numbers(self) -> dict[str, int]:
        """Number words -> counts ("two": 2, ...)."""
        return {_WORDS[n]: n for n in self.counts}

    @property
    def plurals(self) -> dict[str, str]:
        return {s: PLURAL_FORMS[s] for s in self.shapes}


FIRST = Edition(1, ALL_SHAPES[:3], tuple(PALETTE)[:4], (2, 3, 4), "prompt", ASSET_ROOT / "shapes", "shapes")
SECOND = Edition(2, ALL_SHAPES, tuple(PALETTE), (2, 3, 4, 5, 6), "task", ASSET_ROOT / "shapes2", "shapes2",
                 open_colour="shape")
EDITIONS = {1: FIRST, 2: SECOND}
PROFILE_EDITIONS = {e.profile: e for e in EDITIONS.values()}


def edition(number: int | str) -> Edition:
    """The edition numbered ``number``; a one-line error naming the valid ones otherwise."""
    try:
        return EDITIONS[int(number)]
    except (KeyError, ValueError):
        raise unknown("Shapes edition", str(number), [str(n) for n in EDITIONS]) from None


def reward_prefix(ed: Edition) -> str:
    """The prefix of an edition's reward names: "shapes-" (edition 1), "shapes2-" (edition 2)."""
    return "shapes-" if ed.number == 1 else f"shapes{ed.number}-"


def reward_edition(name: str) -> Edition | None:
    """The edition a Shapes reward name belongs to (``shapes-geneval`` -> 1, ``shapes2-pref`` -> 2), else None."""
    for ed in EDITIONS.values():
        if name.startswith(reward_prefix(ed)):
            return ed
    return None


def geneval_edition(name: str) -> Edition | None:
    """The edition whose GenEval verifier ``name`` is (``shapes-geneval`` -> 1, ``shapes2-geneval-clauses`` -> 2),
    else None: the rewards whose gold is GenEval's ``overall_disjoint`` over that edition's tags."""
    owner = reward_edition(name)
    return owner if owner and name[len(reward_prefix(owner)):].startswith("geneval") else None


def reward_name(name: str, ed: Edition) -> str:
    """``name`` moved to edition ``ed`` (``shapes-pref`` -> ``shapes2-pref``)."""
    owner = reward_edition(name)
    return reward_prefix(ed) + name[len(reward_prefix(owner)):] if owner else name


def for_profile(profile: str) -> Edition:
    """The edition a Shapes profile runs ("shapes" -> 1, "shapes2" -> 2)."""
    if profile not in PROFILE_EDITIONS:
        raise unknown("Shapes profile", profile, list(PROFILE_EDITIONS))
    return PROFILE_EDITIONS[profile]
