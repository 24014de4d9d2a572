"""The Shapes detector's calibrated confidence (issue 18, "counting that counts"): off by default, a logistic fit
that recovers known coefficients, the reliability table on hand-computed values, and the committed coefficients
calibrated on a fresh rendered set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rewards
from harness.shapes.calibrate import calibration_set, fit_logistic, label, reliability
from harness.shapes.detect import CALIBRATION, candidates, confidence, detect_batch, features
from harness.shapes.editions import EDITIONS
from harness.shapes.prompts import parse_prompt
from harness.shapes.render import Obj, Scene, render, render_batch
from rewards.shapes_geneval import ShapesGenEval


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    metas = [parse_prompt("a photo of three circles"), parse_prompt("a photo of a red square and a blue circle")] * n
    return render_batch(metas, np.random.default_rng(seed))[0]


def test_off_by_default_scores_are_template_ious_and_on_scores_are_probabilities():
    images = _images()
    cands = candidates(images)
    off, on = detect_batch(images), detect_batch(images, calibrated=True)
    for c, d_off, d_on in zip(cands, off, on):
        assert sorted(d.score for ds in d_off.values() for d in ds) == sorted(x["iou"] for x in c)
        probs = sorted(d.score for ds in d_on.values() for d in ds)
        assert probs == pytest.approx(sorted(confidence(features(c))))
        assert all(0.0 < p < 1.0 for p in probs)
    assert ShapesGenEval().calibrated is False


def test_fit_logistic_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40_000, 3))
    truth = (-1.0, 2.0, -0.5, 0.7)
    p = 1.0 / (1.0 + np.exp(-(truth[0] + x @ np.array(truth[1:]))))
    y = (rng.random(len(p)) < p).astype(float)
    assert fit_logistic(x, y, ridge=0.0) == pytest.approx(truth, abs=0.06)


def test_reliability_on_hand_computed_values():
    rows, ece = reliability(np.array([0.2, 0.2, 0.9, 0.9]), np.array([0.0, 1.0, 1.0, 1.0]))
    assert [(r[0], r[1]) for r in rows] == [("[0, 0.3)", 2), ("[0.9, 0.95)", 2)]
    assert ece == pytest.approx((2 * 0.3 + 2 * 0.1) / 4)


def test_label_matches_shape_colour_and_box_once():
    scene = Scene((Obj("circle", "red", 20, 20, 16), Obj("square", "blue", 44, 44, 14)))
    cands = candidates(render(scene)[None])[0]
    assert sorted((c["shape"], c["color"]) for c in cands) == [("circle", "red"), ("square", "blue")]
    assert list(label(cands, scene, 64)) == [1.0, 1.0]
    assert sorted(label(cands, scene, 64, skip=0)) == [0.0, 1.0]  # the skipped (blobbed) object is no truth
    wrong = Scene((Obj("circle", "green", 20, 20, 16), Obj("square", "blue", 44, 44, 14)))
    assert sorted(label(cands, wrong, 64)) == [0.0, 1.0]


@pytest.mark.parametrize("number", sorted(EDITIONS))
def test_committed_coefficients_are_calibrated_on_a_fresh_set(number):
    x, y = calibration_set(scenes_per_prompt=1, seed=7, ed=EDITIONS[number])
    rows, ece = reliability(confidence(x, CALIBRATION[number]), y)
    assert ece < 0.02, rows
    assert CALIBRATION[number] != (0.0, 0.0, 0.0, 0.0)


def test_calibrated_reward_option():
    assert rewards.build("shapes-geneval", {"calibrated": "true"}).calibrated is True
    assert rewards.build("shapes-geneval-clauses", {"calibrated": "False"}).calibrated is False
    with pytest.raises(ValueError, match="shapes-geneval.calibrated must be true or false, got 'yes'"):
        rewards.build("shapes-geneval", {"calibrated": "yes"})
