"""The curve split: evaluated at every evaluation point beside validation, on the test noise, never selected on;
the over-optimisation curves read it when the runs have it."""

from __future__ import annotations

import json

import pytest

from harness.reporting import overopt
from harness.run import run
from harness.store import Store
from methods import METHODS
from tests.conftest import tiny_run


def _rows(path, kind):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind", r.get("which")) == kind]


def test_curve_split_is_evaluated_at_every_point_and_its_end_equals_the_test_split(tmp_path):
    cfg = tiny_run(tmp_path, run_id="c", updates=2, eval_at=(0.0, 0.5, 1.0), test_split="test", test_seeds=1,
                   curve_split="test", curve_seeds=1, select_metric="jpeg")
    summary = run(cfg, METHODS.get("drpo").Config(m=1), progress=False)
    evals = _rows(tmp_path / "runs" / "c" / "metrics.jsonl", "eval")
    assert [r["step"] for r in evals] == [0, 1, 2]
    assert all("curve/jpeg/mean" in r and "curve/drift/latent_rms" in r for r in evals)
    assert evals[0]["curve/drift/latent_rms"] == 0.0
    # Same prompts and noise as the test split: the curve's last point is the final weights' test score.
    assert evals[-1]["curve/jpeg/mean"] == pytest.approx(summary["test/jpeg/mean"])
    assert summary["select/metric"] == "eval/jpeg/mean"  # selection never reads the curve split
    scores = [json.loads(line) for line in (tmp_path / "runs" / "c" / "scores.jsonl").read_text().splitlines()]
    assert [s["step"] for s in scores if s["which"] == "curve"] == [0, 1, 2]
    curve = overopt.curve(Store(str(tmp_path)), "drpo", ["c"], "jpeg", "jpeg")
    assert curve.prefix == "curve" and list(curve.updates) == [0, 1, 2]


def test_runs_without_a_curve_split_draw_their_curves_on_validation(tmp_path):
    run(tiny_run(tmp_path, run_id="v"), METHODS.get("drpo").Config(m=1), progress=False)
    curve = overopt.curve(Store(str(tmp_path)), "drpo", ["v"], "jpeg", "jpeg")
    assert curve.prefix == "eval" and "validation" in overopt.SPLIT_NAMES[curve.prefix]


def test_eval_split_rewards_leave_the_other_rewards_to_the_test_split_and_its_curve(tmp_path):
    cfg = tiny_run(tmp_path, run_id="r", evals=("jpeg", "colorfulness"), eval_split_rewards=("jpeg",),
                   test_split="test", test_seeds=1, curve_split="test", curve_seeds=1, select_metric="jpeg")
    summary = run(cfg, METHODS.get("drpo").Config(m=1), progress=False)
    evals = _rows(tmp_path / "runs" / "r" / "metrics.jsonl", "eval")
    assert all("eval/jpeg/mean" in r and not any(k.startswith("eval/colorfulness/") for k in r) for r in evals)
    assert all("curve/colorfulness/mean" in r for r in evals)
    assert "test/colorfulness/mean" in summary and "test_selected/colorfulness/mean" in summary
    from harness.reporting.plots import reward_curves

    made = reward_curves(Store(str(tmp_path)), "t", ["r"], tmp_path / "plots")  # validation held jpeg alone
    assert [stem for stem, _ in made] == ["t__jpeg__vs_updates_flops_seconds"]


@pytest.mark.parametrize("changes, message", [
    (dict(eval_split_rewards=("colorfulness",)), "'colorfulness'"),  # built, but not an evaluation reward here
    (dict(eval_split_rewards=("jpeg",), evals=("jpeg", "colorfulness"), select_metric="colorfulness"),
     "select_metric reward 'colorfulness'"),
])
def test_eval_split_rewards_name_built_rewards_and_keep_the_selection_reward(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        run(tiny_run(tmp_path, run_id="bad", **changes), METHODS.get("drpo").Config(m=1), progress=False)
    assert not (tmp_path / "runs" / "bad" / "summary.json").exists()
