"""Canonical tasks: one form for every wording of the same constraints, and the check that no canonical task
sits in two splits (issue 18)."""

from __future__ import annotations

from collections import Counter

import pytest

from harness.shapes.prompts import (
    TAGS,
    all_prompts,
    canonical_task,
    check_disjoint_tasks,
    parse_prompt,
    split,
    task_overlaps,
)


def task(text: str) -> tuple:
    return canonical_task(parse_prompt(text))


@pytest.mark.parametrize("a, b", [
    ("a photo of a triangle and a circle", "a photo of a circle and a triangle"),
    ("a photo of a circle right of a square", "a photo of a square left of a circle"),
    ("a photo of a circle below a triangle", "a photo of a triangle above a circle"),
    ("a photo of a red circle and a blue square", "a photo of a blue square and a red circle"),
])
def test_restatements_share_a_canonical_task(a, b):
    assert task(a) == task(b)


@pytest.mark.parametrize("a, b", [
    ("a photo of a circle left of a square", "a photo of a circle right of a square"),
    ("a photo of a circle left of a square", "a photo of a circle above a square"),
    ("a photo of a circle left of a square", "a photo of a circle and a square"),
    ("a photo of a red circle and a blue square", "a photo of a blue circle and a red square"),
    ("a photo of two circles", "a photo of three circles"),
    ("a photo of a circle", "a photo of a red circle"),
])
def test_different_constraints_differ(a, b):
    assert task(a) != task(b)


def test_canonical_tasks_per_tag_and_no_task_crosses_tags():
    prompts = all_prompts()
    per_tag = {t: {canonical_task(m) for m in prompts if m["tag"] == t} for t in TAGS}
    # Ordered pairs collapse to unordered ones: 6 -> 3 two_object, 24 -> 12 position, 72 -> 36 color_attr.
    assert {t: len(v) for t, v in per_tag.items()} == {"single_object": 3, "two_object": 3, "counting": 9,
                                                        "colors": 12, "position": 12, "color_attr": 36}
    assert sum(len(v) for v in per_tag.values()) == len(set().union(*per_tag.values()))


def test_check_names_both_prompts_on_constructed_lists():
    train = ["a photo of a red circle and a blue square", "a photo of two circles"]
    check_disjoint_tasks({"train": train, "val": ["a photo of a blue circle and a red square"]})  # disjoint
    with pytest.raises(ValueError) as err:
        check_disjoint_tasks({"train": train, "val": ["a photo of three squares",
                                                      "a photo of a blue square and a red circle"]})
    message = str(err.value)
    assert "\n" not in message and "train prompt 'a photo of a red circle and a blue square'" in message
    assert "val prompt 'a photo of a blue square and a red circle'" in message
    # Shared tags are ignored unless asked; a task repeated within one split is no overlap.
    shared = {"train": ["a photo of a circle"], "test": ["a photo of a circle", "a photo of a circle"]}
    check_disjoint_tasks(shared)
    assert task_overlaps(shared, ignore_tags=()) == [("train", "a photo of a circle", "test", "a photo of a circle")] * 2


def test_known_overlaps_of_the_first_edition_splits():
    """The measured state of the committed (first-edition) splits, which the second edition must fix: then
    this test becomes ``check_disjoint_tasks`` passing on train, val and test."""
    found = task_overlaps({name: split(name) for name in ("train", "val", "test")})
    by = Counter((a, b, parse_prompt(pa)["tag"]) for a, pa, b, _ in found)
    assert by == {("train", "val", "color_attr"): 8, ("train", "test", "color_attr"): 8,
                  ("train", "val", "position"): 3, ("train", "test", "position"): 3,
                  ("val", "test", "two_object"): 1, ("val", "test", "color_attr"): 1}
    assert ("val", "a photo of a triangle and a circle", "test", "a photo of a circle and a triangle") in found
    with pytest.raises(ValueError, match="state the same task"):
        check_disjoint_tasks({name: split(name) for name in ("train", "val", "test")})
