"""``driftbench best-of-k`` on the tiny profile: K = 1 is the plain evaluation (of the base, and of a stored
run's weights), K > 1 never lowers the target reward on the same noise, the compute is recorded, bad input is
one line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from evals.heldout import HeldoutReward
from harness.best_of_k import BestOfKConfig, best_of_k, references, select
from harness.cli import main
from harness.config import RunConfig
from harness.evaluation import TEST_SEED_BASE, EvalSet
from harness.profiles import PROFILES
from harness.run import run
from methods import METHODS
from rewards import build
from tests.conftest import tiny_run

SMALL = dict(profile="tiny", reward="jpeg", evals=("jpeg", "colorfulness"), split="test", seeds=2, prompt_limit=3,
             device="cpu", count_flops=False)


def _result(tmp_path, **changes) -> tuple[dict, dict, dict]:
    path = best_of_k(BestOfKConfig(out=str(tmp_path), **{**SMALL, **changes}))
    run_dir = path.parent
    [record] = [json.loads(line) for line in (run_dir / "scores.jsonl").read_text().splitlines()]
    return json.loads(path.read_text()), record, json.loads((run_dir / "manifest.json").read_text())


def test_k1_is_the_base_generators_plain_evaluation(tmp_path):
    summary, record, manifest = _result(tmp_path, k=1, run_id="k1")
    world = PROFILES.get("tiny")(RunConfig(profile="tiny", device="cpu"))
    evals = EvalSet("test", world.prompts("test")[:3], 2, TEST_SEED_BASE, {"jpeg": build("jpeg")})
    base_images, prompts, _ = evals.base(world.generator)  # what every run's evaluation compares against
    assert record["prompts"] == world.prompts("test")[:3] and record["seed_base"] == TEST_SEED_BASE
    assert record["scores"]["jpeg"] == [float(v) for v in HeldoutReward(build("jpeg")).score(base_images, prompts)[0]]
    assert summary["test/jpeg/mean"] == summary["test/jpeg/base_mean"] and summary["test/jpeg/win_rate"] == 0.5
    assert record["kept"] == [0] * 6 and manifest["kind"] == "best-of-k" and manifest["versions"]["code"]
    assert manifest["generator"] == {"profile": "tiny", "from_run": "", "weights": "base"}


def test_k_above_1_never_lowers_the_target_on_the_same_noise_and_records_its_compute(tmp_path):
    one, rec1, _ = _result(tmp_path, k=1, run_id="k1")
    four, rec4, _ = _result(tmp_path, k=4, run_id="k4", count_flops=True)
    # Round 0 of K = 4 is K = 1's evaluation; each kept image scores at least candidate 0.
    assert rec4["candidates"]["jpeg"][0] == rec1["candidates"]["jpeg"][0] == rec1["scores"]["jpeg"]
    assert all(a >= b for a, b in zip(rec4["scores"]["jpeg"], rec1["scores"]["jpeg"]))
    assert four["test/jpeg/mean"] >= one["test/jpeg/mean"]
    ranking = np.array(rec4["candidates"]["jpeg"])
    assert rec4["kept"] == select(ranking).tolist() and ranking.shape == (4, 6)
    assert rec4["scores"]["jpeg"] == pytest.approx(ranking.max(axis=0).tolist())
    assert four["test/selection/jpeg/kept_mean"] == pytest.approx(four["test/jpeg/mean"])
    assert four["test/jpeg/mean"] > one["test/jpeg/mean"]  # random tiny images: reranking 4 finds a better one
    assert "test/colorfulness/mean" in four  # the other gold evaluators score the kept images
    compute = four["compute"]
    assert (compute["reward_calls"], compute["reward_calls_per_image"], compute["reward_calls_per_prompt"],
            compute["generator_forwards"], compute["images"]) == (24, 4, 8, 24, 6)
    assert compute["flops"] > 0 and {"generate", "decode", "reward"} <= set(compute["phases"])
    assert compute["phases"]["generate"]["calls"] == 4  # one batch per candidate round


def test_ties_keep_the_earlier_candidate():
    assert select([[1.0, 0.5], [1.0, 0.7], [0.2, 0.7]]).tolist() == [0, 1]


def test_k1_from_a_stored_run_is_that_runs_test_evaluation(tmp_path, monkeypatch):
    monkeypatch.setattr(METHODS.get("drpo"), "Config", dataclasses.make_dataclass(
        "Config", [("m", int, dataclasses.field(default=2))], bases=(METHODS.get("drpo").Config,), frozen=True))
    run(tiny_run(tmp_path, run_id="r", evals=("jpeg", "colorfulness"), test_split="test", test_seeds=2), progress=False)
    [stored] = [json.loads(line) for line in (tmp_path / "runs/r/scores.jsonl").read_text().splitlines()
                if json.loads(line)["which"] == "test"]
    summary, record, manifest = _result(tmp_path, k=1, from_run="r", prompt_limit=0, run_id="from-r")
    assert record["prompts"] == stored["prompts"] and record["scores"] == stored["scores"]
    run_summary = json.loads((tmp_path / "runs/r/summary.json").read_text())
    for key in ("test/jpeg/mean", "test/jpeg/base_mean", "test/jpeg/win_rate", "test/colorfulness/mean"):
        assert summary[key] == run_summary[key], key
    assert manifest["generator"]["from_run"] == "r" and manifest["generator"]["weights"] == "final"
    assert references(str(tmp_path)).run_ids() == ["from-r"]  # beside the trained runs, not among them


@pytest.mark.parametrize("argv, message", [
    (["--k", "300", "--seeds", "4"], "1200 candidates per prompt exceed the 1000 noise seeds"),
    (["--reward", "jpg"], "did you mean 'jpeg'"),
    (["--k", "0"], "--k must be"),
    (["--from-run", "nope"], "no run 'nope'"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    assert main(["best-of-k", "--profile", "tiny", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "references").exists()


def test_every_numeric_field_has_its_bound_and_the_defaults_pass():
    from harness.validate import check, unbounded

    assert unbounded(BestOfKConfig) == []
    check(BestOfKConfig())
