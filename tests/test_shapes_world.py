"""The Shapes world: prompts and metadata, renderer, detector, and the verifier end to end."""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest
import torch

from evals.geneval import evaluate_detections, filter_detections
from harness.api import Reward
from harness.shapes import detect as D
from harness.shapes import prompts as P
from harness.shapes import render as R
from rewards.shapes_geneval import ShapesGenEval

unit = pytest.mark.unit


def by_tag(tag: str) -> list[dict]:
    return [m for m in P.all_prompts() if m["tag"] == tag]


# -- prompts ----------------------------------------------------------------------------------------------


@unit
def test_prompt_set_counts_and_geneval_format():
    metas = P.all_prompts()
    assert Counter(m["tag"] for m in metas) == {"single_object": 3, "two_object": 6, "counting": 9,
                                                 "colors": 12, "position": 24, "color_attr": 72}
    assert len({m["prompt"] for m in metas}) == len(metas)
    for m in metas:
        assert P.validate_metadata(m) is m
        assert next(iter(m)) == "tag" and list(m)[-1] == "prompt"  # GenEval's key order
    count = next(m for m in metas if m["prompt"] == "a photo of three triangles")
    assert count == {"tag": "counting", "include": [{"class": "triangle", "count": 3}],
                     "exclude": [{"class": "triangle", "count": 4}], "prompt": "a photo of three triangles"}
    pos = next(m for m in metas if m["prompt"] == "a photo of a circle left of a square")
    assert pos["include"] == [{"class": "square", "count": 1},
                              {"class": "circle", "count": 1, "position": ["left of", 0]}]
    attr = next(m for m in metas if m["prompt"] == "a photo of a red circle and a blue square")
    assert attr["include"] == [{"class": "circle", "count": 1, "color": "red"},
                               {"class": "square", "count": 1, "color": "blue"}]


@unit
def test_parse_prompt_inverts_every_prompt():
    for m in P.all_prompts():
        assert P.parse_prompt(m["prompt"]) == m
    assert P.parse_prompt("  A Photo of  a Blue square ")["include"] == [
        {"class": "square", "count": 1, "color": "blue"}]


@unit
@pytest.mark.parametrize("text, bad", [
    ("a photo of a hexagon", "'hexagon'"),
    ("a photo of a magenta circle", "'magenta'"),
    ("a photo of five circles", "'five'"),
    ("a photo of a circle near a square", "'near'"),
    ("a drawing of a circle", "'drawing'"),
    ("a photo of a circle and", "ends early"),
    ("a photo of a circle please", "'please'"),
])
def test_parse_prompt_errors_name_the_token(text, bad):
    with pytest.raises(ValueError, match=bad) as err:
        P.parse_prompt(text)
    assert "\n" not in str(err.value)


@unit
def test_splits_are_deterministic_disjoint_and_quarter_held_out():
    train, held = P.split("train"), P.split("heldout")
    assert train == P.split("train", seed=0) and held == P.split("heldout", seed=0)
    train_p, held_p = {m["prompt"] for m in train}, {m["prompt"] for m in held}
    shared = {m["prompt"] for m in by_tag("single_object")}
    assert train_p & held_p == shared  # only single_object sits in both, and it is flagged
    assert all(P.is_shared(m) for m in held if m["prompt"] in shared)
    for tag in P.TAGS[1:]:
        n_held = sum(m["tag"] == tag for m in held)
        assert n_held == int(len(by_tag(tag)) * 0.25 + 0.5)
    assert train_p | held_p == {m["prompt"] for m in P.all_prompts()}
    assert {m["prompt"] for m in P.split("heldout", seed=1)} != held_p
    with pytest.raises(ValueError, match="did you mean 'test'.*valid splits: train, val, test, heldout"):
        P.split("tset")


@unit
def test_val_and_test_partition_the_held_out_prompts_disjointly_in_every_disjoint_tag():
    val, test, held = ({m["prompt"] for m in P.split(s)} for s in ("val", "test", "heldout"))
    train = {m["prompt"] for m in P.split("train")}
    shared = {m["prompt"] for m in by_tag("single_object")}
    assert val | test == held and val & test == shared and val & train == shared and test & train == shared
    for tag in P.DISJOINT_TAGS:  # every disjoint tag is in both splits
        assert any(m["tag"] == tag for m in P.split("val")) and any(m["tag"] == tag for m in P.split("test"))
    assert (len(val), len(test)) == (18, 19)
    assert {m["prompt"] for m in P.split("val", seed=1)} != val


@unit
@pytest.mark.parametrize("meta, message", [
    ({"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "mauve"}], "prompt": "p"},
     "unknown colour 'mauve'"),
    ({"tag": "colors", "include": [{"class": "dog", "count": 1}], "prompt": "p"}, "unknown shape 'dog'"),
    ({"tag": "texture", "include": [{"class": "circle", "count": 1}], "prompt": "p"}, "unknown tag 'texture'"),
    ({"tag": "colors", "include": [{"class": "circle"}], "prompt": "p"}, "missing key 'count'"),
    ({"tag": "colors", "include": [{"class": "circle", "count": 1}]}, "missing key 'prompt'"),
    ({"tag": "colors", "include": [{"class": "circle", "count": 0}], "prompt": "p"}, "count 0"),
    ({"tag": "position", "include": [{"class": "circle", "count": 1, "position": ["left of", 0]}], "prompt": "p"},
     "no earlier include group"),
    ({"tag": "position", "include": [{"class": "square", "count": 1},
                                     {"class": "circle", "count": 1, "position": ["left of", 1]}], "prompt": "p"},
     "points at group 1"),
    ({"tag": "position", "include": [{"class": "square", "count": 1},
                                     {"class": "circle", "count": 1, "position": ["near", 0]}], "prompt": "p"},
     "unknown relation 'near'"),
])
def test_validate_metadata_errors(meta, message):
    with pytest.raises(ValueError, match=message) as err:
        P.validate_metadata(meta)
    assert "\n" not in str(err.value)


@unit
def test_metadata_jsonl_round_trip_and_line_numbers(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    P.write_metadata_jsonl(path, P.all_prompts())
    assert P.load_metadata_jsonl(path) == P.all_prompts()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == P.all_prompts()[0]
    path.write_text("\n".join([lines[0], lines[1], '{"tag": "colors", "include": [', lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r":3: malformed JSON"):
        P.load_metadata_jsonl(path)
    path.write_text(lines[1] + "\n" + lines[0].replace('"circle"', '"oval"') + "\n")
    with pytest.raises(ValueError, match=r":2: unknown shape 'oval'"):
        P.load_metadata_jsonl(path)


# -- renderer ---------------------------------------------------------------------------------------------


@unit
def test_render_is_deterministic_and_well_formed():
    metas = P.all_prompts()[::7]
    a, scenes_a = R.render_batch(metas, np.random.default_rng(5))
    b, scenes_b = R.render_batch(metas, np.random.default_rng(5))
    assert torch.equal(a, b) and scenes_a == scenes_b
    assert a.shape == (len(metas), 3, 64, 64) and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    img = R.render(scenes_a[0], size=128)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == P.BACKGROUND


@unit
def test_scenes_in_bounds_apart_and_sized():
    rng = np.random.default_rng(0)
    for meta in P.all_prompts():
        for correct in (True, False):
            objs = R.sample_scene(meta, rng, correct=correct).objects
            lo, hi = R.SIZE_RANGE[max(len(objs), 1)]  # a "missing" single object leaves an empty scene
            for i, o in enumerate(objs):
                assert lo <= o.size <= hi and o.shape in P.SHAPES and o.color in P.COLORS
                x1, y1, x2, y2 = o.box
                assert x1 >= R.MARGIN and y1 >= R.MARGIN and x2 <= 64 - R.MARGIN and y2 <= 64 - R.MARGIN
                for other in objs[i + 1:]:
                    gap = max(abs(o.cx - other.cx), abs(o.cy - other.cy)) - (o.size + other.size) / 2
                    assert gap >= R.MIN_GAP - 1e-9


@unit
def test_correct_scenes_pass_and_incorrect_scenes_fail_by_ground_truth():
    rng = np.random.default_rng(1)
    for meta in P.all_prompts():
        assert R.ground_truth(meta, R.sample_scene(meta, rng, correct=True)) == (True, "")
        for _ in range(3):
            ok, reason = R.ground_truth(meta, R.sample_scene(meta, rng, correct=False))
            assert not ok and reason


@unit
def test_incorrect_scenes_cover_every_corruption():
    rng = np.random.default_rng(2)

    def seen(prompt: str) -> set[tuple]:
        meta = P.parse_prompt(prompt)
        return {tuple(sorted((o.shape, o.color) for o in R.sample_scene(meta, rng, correct=False).objects))
                for _ in range(60)}

    counts = {len(objs) for objs in seen("a photo of three triangles")}
    assert counts == {2, 3, 4}  # fewer, a changed shape (3 objects), more
    layouts = seen("a photo of a red circle and a blue square")
    assert (("circle", "blue"), ("square", "red")) in layouts  # swapped colours
    assert any(("triangle", "red") in objs or ("triangle", "blue") in objs for objs in layouts)  # wrong shape
    # Wrong relation keeps the right objects, so only their geometry can fail.
    meta = P.parse_prompt("a photo of a circle left of a square")
    wrong = [R.sample_scene(meta, rng, correct=False) for _ in range(40)]
    relation = [s for s in wrong if sorted(o.shape for o in s.objects) == ["circle", "square"]]
    assert relation and all(s.objects[1].cx > s.objects[0].cx for s in relation)


@unit
def test_render_speed():
    metas = P.all_prompts() * 4
    start = time.perf_counter()
    R.render_batch(metas, np.random.default_rng(0))
    assert (time.perf_counter() - start) / len(metas) < 0.005  # "1,000 scenes in a few seconds"


@unit
def test_damage_kinds():
    rng = np.random.default_rng(3)
    images, scenes = R.render_batch(P.all_prompts()[:8], rng)
    for kind in R.DAMAGE_KINDS:
        out = R.damage(images, rng, kind, scenes=scenes)
        assert out.shape == images.shape and 0.0 <= out.min() and out.max() <= 1.0
        assert not torch.allclose(out, images)
    with pytest.raises(ValueError, match="valid kinds: blur, noise, blob"):
        R.damage(images, rng, "jpeg")
    with pytest.raises(ValueError, match="needs one scene per image"):
        R.damage(images, rng, "blob")


# -- detector ---------------------------------------------------------------------------------------------


@unit
@pytest.mark.parametrize("shape", P.SHAPES)
@pytest.mark.parametrize("color", list(P.COLORS))
def test_detector_finds_each_shape_and_colour(shape, color):
    rng = np.random.default_rng(4)
    for size in (10.0, 16.0, 22.0):
        obj = R.Obj(shape, color, float(rng.uniform(15, 49)), float(rng.uniform(15, 49)), size)
        found = D.detect(R.render(R.Scene((obj,))))
        assert list(found) == [shape] and len(found[shape]) == 1
        hit = found[shape][0]
        assert hit.color == color and hit.score > 0.98
        assert np.allclose(hit.box, obj.box, atol=0.5)


@unit
def test_detector_inputs_agree():
    images, _ = R.render_batch(P.all_prompts()[:6], np.random.default_rng(5))
    as_uint8 = [D.detect(np.rint(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for img in images]
    assert D.detect_batch(images) == as_uint8 == [D.detect(img) for img in images]
    with pytest.raises(ValueError, match="got shape"):
        D.detect(torch.zeros(2, 4, 8, 8))


@unit
def test_blobs_are_not_shapes():
    rng = np.random.default_rng(6)
    metas = [m for m in P.all_prompts() if m["tag"] == "single_object"] * 100
    images, scenes = R.render_batch(metas, rng)
    found = D.detect_batch(R.damage(images, rng, "blob", scenes=scenes))
    assert sum(bool(f) for f in found) / len(found) < 0.03
    # A peanut of two overlapping discs: one blob-ish component that fill-ratio tests would call a circle.
    xs = (np.arange(64 * R.SUPERSAMPLE) + 0.5) / R.SUPERSAMPLE
    peanut = ((xs[None] - 28) ** 2 + (xs[:, None] - 32) ** 2 <= 36) | ((xs[None] - 36) ** 2
                                                                       + (xs[:, None] - 30) ** 2 <= 36)
    img = np.full((64, 64, 3), P.BACKGROUND, dtype=np.float32)
    img += R._downsample(peanut)[..., None] * (np.array(P.COLORS["red"]) - img)
    assert D.detect(np.rint(img).astype(np.uint8)) == {}


@unit
def test_blur_degrades_gracefully():
    rng = np.random.default_rng(7)
    metas = [m for m in P.all_prompts() if m["tag"] == "single_object"] * 20
    images, scenes = R.render_batch(metas, rng)
    found = D.detect_batch(R.damage(images, rng, "blur"))
    right = [list(f) == [s.objects[0].shape] for f, s in zip(found, scenes)]
    assert np.mean(right) > 0.6  # allowed to degrade, not to collapse


@unit
def test_detector_speed():
    images, _ = R.render_batch(P.all_prompts() * 2, np.random.default_rng(8))
    D.detect_batch(images[:4])  # builds the colour table once
    start = time.perf_counter()
    D.detect_batch(images)
    assert (time.perf_counter() - start) / len(images) < 0.004  # target 2 ms; slack for shared CPUs


# -- verifier end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_verifier_accuracy_on_fresh_scenes():
    rng = np.random.default_rng(2024)
    metas = P.all_prompts()
    chosen = [metas[i] for i in rng.integers(len(metas), size=2000)]
    correct = [bool(c) for c in rng.integers(2, size=2000)]
    images, scenes = R.render_batch(chosen, rng, correct=correct)
    agree = []
    for meta, found, scene in zip(chosen, D.detect_batch(images), scenes):
        verdict = evaluate_detections(meta, filter_detections(found, meta["tag"]))[0]
        agree.append(verdict == R.ground_truth(meta, scene)[0])
    assert np.mean(agree) >= 0.99
    assert {m["tag"] for m in chosen} == set(P.TAGS)


# -- reward -----------------------------------------------------------------------------------------------


@unit
def test_reward_scores_correct_and_incorrect_scenes():
    rng = np.random.default_rng(9)
    metas = P.all_prompts()[::5]
    prompts = [m["prompt"] for m in metas]
    good, _ = R.render_batch(metas, rng, correct=True)
    bad, _ = R.render_batch(metas, rng, correct=False)
    reward = ShapesGenEval()
    assert isinstance(reward, Reward) and not reward.differentiable
    assert torch.equal(reward.score(good, prompts), torch.ones(len(metas)))
    assert torch.equal(reward.score(bad, prompts), torch.zeros(len(metas)))
    graded = ShapesGenEval(fraction=True).score(bad, prompts)
    assert graded.dtype == torch.float32 and (graded < 1).all() and (graded >= 0).all()
    rows = reward.verify(bad, prompts)
    assert [r["prompt"] for r in rows] == prompts and not any(r["correct"] for r in rows)
    assert all(r["reason"] and r["tag"] in P.TAGS and r["fraction"] < 1 for r in rows)


@unit
def test_reward_rejects_bad_input():
    reward = ShapesGenEval()
    images = torch.full((2, 3, 64, 64), 0.5)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        reward.score(images, ["a photo of a circle"])
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        reward.score(images[0], ["a photo of a circle"])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        reward.score(images * 3, ["a photo of a circle"] * 2)
    with pytest.raises(ValueError, match="unknown token 'hexagon'"):
        reward.score(images, ["a photo of a circle", "a photo of a hexagon"])
