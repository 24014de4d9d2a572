"""GenEval's rule scorer (evals.geneval) on hand-made detections: one crafted case per rule and per tag."""

from __future__ import annotations

import pytest

from evals.geneval import (
    Detection,
    clause_fraction,
    evaluate_detections,
    filter_detections,
    relative_position,
    summarize,
)

pytestmark = pytest.mark.unit


def det(x: float, y: float, size: float = 10.0, score: float = 0.95, color: str | None = "red") -> Detection:
    """A square box of side ``size`` centred at (x, y)."""
    h = size / 2
    return Detection((x - h, y - h, x + h, y + h), score, color)


def verdict(meta: dict, raw: dict) -> tuple[bool, str]:
    return evaluate_detections(meta, filter_detections(raw, meta["tag"]))


SINGLE = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
TWO = {"tag": "two_object", "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}],
       "prompt": "a photo of a circle and a square"}
COUNT3 = {"tag": "counting", "include": [{"class": "triangle", "count": 3}],
          "exclude": [{"class": "triangle", "count": 4}], "prompt": "a photo of three triangles"}
BLUE_SQUARE = {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "blue"}],
               "prompt": "a photo of a blue square"}
ATTR = {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                         {"class": "square", "count": 1, "color": "blue"}],
        "prompt": "a photo of a red circle and a blue square"}


def position(rel: str) -> dict:
    return {"tag": "position",
            "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of a circle {rel} a square"}


# -- include counts, per tag ------------------------------------------------------------------------------


def test_single_object_pass_and_fail():
    assert verdict(SINGLE, {"circle": [det(20, 20)]}) == (True, "")
    ok, reason = verdict(SINGLE, {"square": [det(20, 20)]})
    assert not ok and reason == "expected circle>=1, found 0"


def test_two_object_needs_both_classes():
    assert verdict(TWO, {"circle": [det(10, 10)], "square": [det(40, 40)]})[0]
    ok, reason = verdict(TWO, {"circle": [det(10, 10)], "triangle": [det(40, 40)]})
    assert not ok and "expected square>=1, found 0" in reason


def test_counting_include_and_exclude():
    three = [det(10 + 15 * i, 20) for i in range(3)]
    assert verdict(COUNT3, {"triangle": three})[0]
    ok, reason = verdict(COUNT3, {"triangle": three[:2]})
    assert not ok and reason == "expected triangle>=3, found 2"
    ok, reason = verdict(COUNT3, {"triangle": three + [det(50, 50)]})
    assert not ok and reason == "expected triangle<4, found 4"


def test_colors_pass_fail_and_top_count_only():
    assert verdict(BLUE_SQUARE, {"square": [det(20, 20, color="blue")]})[0]
    ok, reason = verdict(BLUE_SQUARE, {"square": [det(20, 20, color="red")]})
    assert not ok and reason.startswith("expected blue square>=1, found 0 blue")
    # GenEval checks the colour of the top-`count` detections only: a less confident blue square does not help.
    ranked = {"square": [det(20, 20, score=0.9, color="red"), det(40, 40, score=0.8, color="blue")]}
    assert not verdict(BLUE_SQUARE, ranked)[0]


def test_color_attr_binding():
    good = {"circle": [det(10, 10, color="red")], "square": [det(40, 40, color="blue")]}
    swapped = {"circle": [det(10, 10, color="blue")], "square": [det(40, 40, color="red")]}
    assert verdict(ATTR, good)[0]
    ok, reason = verdict(ATTR, swapped)
    assert not ok and reason.count("expected") == 2
    assert clause_fraction(ATTR, filter_detections(swapped, "color_attr")) == 0.0


# -- position ---------------------------------------------------------------------------------------------

OFFSETS = {"left of": (-20, 0), "right of": (20, 0), "above": (0, -20), "below": (0, 20)}


@pytest.mark.parametrize("rel", list(OFFSETS))
def test_position_each_relation(rel):
    dx, dy = OFFSETS[rel]
    target = det(32, 32)
    assert verdict(position(rel), {"square": [target], "circle": [det(32 + dx, 32 + dy)]}) == (True, "")
    ok, reason = verdict(position(rel), {"square": [target], "circle": [det(32 - dx, 32 - dy)]})
    assert not ok and reason.startswith(f"expected circle {rel} target")


def test_position_missing_target_group():
    ok, reason = verdict(position("left of"), {"circle": [det(10, 32)]})
    assert not ok
    assert reason == "expected square>=1, found 0; no target for circle to be left of"


def test_position_checks_every_target_detection():
    meta = {"tag": "position",
            "include": [{"class": "square", "count": 2}, {"class": "circle", "count": 1, "position": ["left of", 0]}],
            "prompt": "two squares, a circle left of both"}
    squares = [det(40, 20), det(40, 50)]
    assert verdict(meta, {"square": squares, "circle": [det(10, 35)]})[0]
    # Left of the first square but not of the second one (which is further left).
    assert not verdict(meta, {"square": [det(40, 20), det(5, 50)], "circle": [det(20, 20)]})[0]


def test_relative_position_rule():
    a, b = det(10, 10), det(40, 40)
    assert relative_position(a, b) == {"left of", "above"}  # a diagonal offset names both axes
    assert relative_position(b, a) == {"right of", "below"}
    assert relative_position(det(20, 20), det(20, 20)) == set()  # same centre
    # Offsets smaller than 0.1 x (summed sizes) shrink to nothing on both axes.
    assert relative_position(det(21, 21, size=20), det(20, 20, size=20)) == set()
    # Shrinking one axis to 0 leaves a pure horizontal relation.
    assert relative_position(det(0, 21, size=20), det(30, 20, size=20)) == {"left of"}
    # The normalised, shrunk component must exceed 0.5: 30 px right, 29 px down -> both; 30 px right,
    # 10 px down -> right only (the shrunk dy is 8 of a norm of about 31.6).
    assert relative_position(det(40, 39, size=10), det(10, 10, size=10)) == {"right of", "below"}
    assert relative_position(det(40, 20, size=10), det(10, 10, size=10)) == {"right of"}


def test_position_threshold_is_used():
    meta = position("left of")
    # 10 px apart: shrunk by 4 px -> -0.6 of the raw offset (left); by 8 px -> -0.2 (no relation).
    raw = {"square": [det(32, 32, size=20)], "circle": [det(22, 32, size=20)]}
    assert evaluate_detections(meta, filter_detections(raw, "position"))[0]
    assert not evaluate_detections(meta, filter_detections(raw, "position"), position_threshold=0.2)[0]


# -- filtering --------------------------------------------------------------------------------------------


def test_threshold_is_strict_and_counting_uses_its_own():
    raw = {"circle": [det(10, 10, score=0.3), det(30, 30, score=0.5), det(50, 50, score=0.95)]}
    assert [d.score for d in filter_detections(raw, "single_object")["circle"]] == [0.95, 0.5]
    assert [d.score for d in filter_detections(raw, "counting")["circle"]] == [0.95]
    assert filter_detections({"circle": [det(10, 10, score=0.9)]}, "counting") == {}
    assert filter_detections(raw, "colors", threshold=0.6) == {"circle": [raw["circle"][2]]}


def test_sorting_and_max_objects():
    raw = {"square": [det(5 * i, 5, score=0.4 + 0.01 * i) for i in range(20)]}
    kept = filter_detections(raw, "two_object")["square"]
    assert len(kept) == 16 and kept[0].score == pytest.approx(0.59)
    assert [d.score for d in kept] == sorted((d.score for d in kept), reverse=True)
    assert len(filter_detections(raw, "two_object", max_objects=3)["square"]) == 3


def test_nms_on_and_off():
    raw = {"circle": [det(20, 20, score=0.9), det(21, 20, score=0.8), det(50, 50, score=0.7)]}
    assert len(filter_detections(raw, "single_object")["circle"]) == 3  # max_overlap=1.0: no suppression
    kept = filter_detections(raw, "single_object", max_overlap=0.5)["circle"]
    assert [d.score for d in kept] == [0.9, 0.7]


def test_empty_classes_are_dropped():
    assert filter_detections({"circle": [], "square": [det(1, 1, score=0.1)]}, "colors") == {}


# -- graded score and summary -----------------------------------------------------------------------------


def test_clause_fraction():
    raw = filter_detections({"circle": [det(10, 10)]}, "two_object")
    assert clause_fraction(TWO, raw) == 0.5
    assert clause_fraction(COUNT3, filter_detections({"triangle": [det(5 + 12 * i, 5) for i in range(4)]},
                                                     "counting")) == 0.5


def test_summarize_is_an_unweighted_tag_mean():
    rows = [{"tag": "colors", "correct": True, "prompt": "p1"}] * 9 + [{"tag": "colors", "correct": False,
                                                                          "prompt": "p2"}]
    rows += [{"tag": "counting", "correct": False, "prompt": "p3"},
             {"tag": "counting", "metadata": {"prompt": "p3"}, "correct": True}]
    out = summarize(rows)
    assert out["colors"] == 0.9 and out["counting"] == 0.5
    assert out["overall"] == pytest.approx(0.7)  # not the image mean 10/12
    assert out["correct_images"] == pytest.approx(10 / 12)
    assert out["correct_prompts"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no rows"):
        summarize([])
