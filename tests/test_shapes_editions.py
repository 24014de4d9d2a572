"""The Shapes world's editions: edition 2's vocabulary, canonical-task splits, new shapes and their detection; edition
1 left as it was (its prompts, splits and detections are what the committed table's runs read)."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest

from harness.checks import check_world
from harness.shapes import editions as E
from harness.shapes import prompts as P
from harness.shapes.detect import candidates, shape_geometry
from harness.shapes.render import Obj, Scene, render, render_batch


def _tasks(metas):
    return {P.canonical_task(m) for m in metas}


@pytest.mark.parametrize("tag", P.DISJOINT_TAGS)
def test_second_edition_splits_are_disjoint_in_canonical_task_with_24_val_and_24_test_tasks(tag):
    splits = {name: [m for m in P.split(name, 0, E.SECOND) if m["tag"] == tag] for name in ("train", "val", "test")}
    tasks = {name: _tasks(metas) for name, metas in splits.items()}
    assert len(tasks["val"]) == len(splits["val"]) == P.TASKS_PER_SPLIT
    assert len(tasks["test"]) == len(splits["test"]) == P.TASKS_PER_SPLIT
    assert len(tasks["train"]) >= 12
    for a, b in itertools.combinations(tasks, 2):
        assert not tasks[a] & tasks[b], (tag, a, b)
    P.check_disjoint_tasks(splits)  # the one-line check agrees
    # Every wording of a held-out task is out of train, and the three splits cover every task of the tag.
    everything = _tasks(m for m in P.all_prompts(E.SECOND) if m["tag"] == tag)
    assert tasks["train"] | tasks["val"] | tasks["test"] == everything


def test_second_edition_split_rejects_nothing_the_first_edition_split_rejected():
    """Edition 1 keeps its prompt-string split (24 restated pairs, measured in test_canonical_tasks) and its sizes."""
    sizes = {name: len(P.split(name)) for name in ("train", "val", "test", "heldout")}
    assert sizes == {"train": 95, "val": 18, "test": 19, "heldout": 34}
    assert len(P.all_prompts()) == 126 and len(P.all_prompts(E.SECOND)) == 6360
    with pytest.raises(ValueError, match="state the same task"):
        P.check_disjoint_tasks({n: P.split(n) for n in ("train", "val", "test")})


def test_held_out_tasks_are_stratified_by_count_and_relation():
    for name in ("val", "test"):
        metas = P.split(name, 0, E.SECOND)
        counts = collections.Counter(m["include"][0]["count"] for m in metas if m["tag"] == "counting")
        assert set(counts) == set(E.SECOND.counts) and max(counts.values()) - min(counts.values()) <= 1
        relations = collections.Counter(P.canonical_task(m)[1][0][1] for m in metas if m["tag"] == "position")
        assert relations == {"left of": 12, "above": 12}


def test_split_is_deterministic_and_moves_with_its_seed():
    a, b = P.split("val", 0, E.SECOND), P.split("val", 0, E.SECOND)
    assert [m["prompt"] for m in a] == [m["prompt"] for m in b]
    assert {m["prompt"] for m in P.split("val", 1, E.SECOND)} != {m["prompt"] for m in a}


def test_every_second_edition_prompt_parses_back_and_first_edition_refuses_its_new_words():
    for meta in P.all_prompts(E.SECOND):
        assert P.parse_prompt(meta["prompt"], E.SECOND) == meta
    with pytest.raises(ValueError, match="unknown token 'star'"):
        P.parse_prompt("a photo of a star")
    assert P.parse_prompt("a photo of two crosses", E.SECOND)["include"][0] == {"class": "cross", "count": 2}
    assert P.make_prompt("single_object", ("hourglass",))["prompt"] == "a photo of an hourglass"


def test_palette_stays_segmentable():
    """Every two colours are >= 80 apart in RGB, and along the anti-aliased rim from any colour to the background
    the nearest palette colour within 80 (the detector's MAX_COLOR_DIST) is that colour or none: rims never take
    a third colour."""
    bg = np.array(E.BACKGROUND, float)
    names = list(E.PALETTE)
    pal = np.array([E.PALETTE[n] for n in names], float)
    for i, a in enumerate(names):
        assert np.linalg.norm(np.delete(pal, i, 0) - pal[i], axis=1).min() >= 80, a
        rim = bg[None] + np.linspace(0, 1, 201)[:, None] * (pal[i] - bg)[None]
        dist = np.linalg.norm(rim[:, None, :] - pal[None], axis=2)
        near = dist.min(axis=1) <= 80
        assert (dist.argmin(axis=1)[near] == i).all(), a


@pytest.mark.parametrize("shape", E.SECOND.shapes)
def test_each_new_shape_fills_its_box_and_is_found_in_every_colour(shape):
    area, ox, oy = shape_geometry(shape)
    assert 0.3 < area <= 1.0 and abs(ox) < 0.25 and abs(oy) < 0.25
    for color in E.SECOND.colors:
        scene = Scene((Obj(shape, color, 30.0, 34.0, 16.0),))
        found = candidates(render(scene)[None], E.SECOND)[0]
        assert [(c["shape"], c["color"]) for c in found] == [(shape, color)]
        assert found[0]["iou"] > 0.95
        x1, y1, x2, y2 = found[0]["box"]
        assert abs((x1 + x2) / 2 - 30.0) < 1.0 and abs((y1 + y2) / 2 - 34.0) < 1.0 and abs(x2 - x1 - 16.0) < 1.0


def test_second_edition_scenes_pass_and_fail_the_verifier_as_labelled():
    from rewards.shapes_geneval import ShapesGenEval2

    rng = np.random.default_rng(3)
    metas = [m for m in P.split("val", 0, E.SECOND)][::2]
    good, _ = render_batch(metas, rng, correct=True, ed=E.SECOND)
    bad, _ = render_batch(metas, rng, correct=False, ed=E.SECOND)
    verifier = ShapesGenEval2()
    prompts = [m["prompt"] for m in metas]
    assert verifier.calibrated
    assert float(verifier.score(good, prompts).mean()) >= 0.97
    assert float(verifier.score(bad, prompts).mean()) <= 0.03


def test_rewards_of_one_edition_are_refused_on_the_other_in_one_line():
    with pytest.raises(ValueError, match="use 'shapes2-geneval'"):
        check_world("shapes2", "shapes-geneval")
    with pytest.raises(ValueError, match="use 'shapes-pref'"):
        check_world("shapes", "shapes2-pref")
    check_world("shapes", "shapes-geneval")
    check_world("shapes2", "shapes2-geneval-clauses")
    check_world("tiny", "shapes2-pref")  # only Shapes profiles have an edition
    with pytest.raises(ValueError, match="valid Shapes editions: 1, 2"):
        E.edition(3)
