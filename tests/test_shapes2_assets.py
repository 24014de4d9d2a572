"""Edition 2's committed assets: the profile builds from them, its learned reward ranks its renders, a short DrPO run
trains and evaluates on it with its own verifier, and each edition's assets load only as that edition's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.config import RunConfig
from harness.profiles import PROFILES
from harness.run import run
from harness.shapes import editions as E
from harness.shapes.assets import AssetError, asset_info, load_asset
from harness.shapes.prompts import split
from harness.shapes.render import render_batch
from methods import METHODS
from rewards.shapes_pref import PrefConfig, ShapesPref, ShapesPref2


def test_profile_shapes2_builds_edition_2_from_its_own_assets():
    world = PROFILES.get("shapes2")(RunConfig(profile="shapes2"))
    assert world.name == "shapes2" and world.default_reward == "shapes2-pref"
    assert world.default_evals == ("shapes2-geneval", "shapes2-pref")
    assert len(world.splits["val"]) == len(world.splits["test"]) == 5 * 24 + 12
    assert world.generator.base_asset["base_asset"] == "shapes2/generator.safetensors"
    world.check_prompt("a photo of two hourglasses")
    with pytest.raises(ValueError, match="unknown token 'hexagon'"):
        world.check_prompt("a photo of a hexagon")


def test_shapes2_pref_ranks_correct_renders_above_broken_ones():
    reward = ShapesPref2()
    assert reward.model.cfg.edition == 2 and reward.model.cfg.aux_channels == (12, 7)
    rng = np.random.default_rng(11)
    metas = split("test", 0, E.SECOND)[::3]
    good, _ = render_batch(metas, rng, correct=True, ed=E.SECOND)
    bad, _ = render_batch(metas, rng, correct=False, ed=E.SECOND)
    prompts = [m["prompt"] for m in metas]
    with torch.no_grad():
        wins = (reward.score(good, prompts) > reward.score(bad, prompts)).float().mean().item()
    assert wins > 0.8


def test_an_editions_reward_refuses_the_other_editions_config():
    with pytest.raises(ValueError, match="edition 1 reward; its config says edition 2"):
        ShapesPref(PrefConfig(edition=2))
    state, config = load_asset("reward", E.SECOND.asset_dir)
    assert config["edition"] == 2 and asset_info("reward", E.SECOND.asset_dir)["base_asset"] == "shapes2/reward.safetensors"
    with pytest.raises(AssetError, match="missing"):
        load_asset("reward", E.SECOND.asset_dir / "nowhere")


def test_a_short_drpo_run_on_edition_2_trains_and_evaluates_with_its_verifier(tmp_path):
    cfg = RunConfig(method="drpo", profile="shapes2", reward="shapes2-pref", evals=("shapes2-geneval",), k=4,
                    prompts_per_step=1, updates=2, eval_at=(0.0, 1.0), eval_seeds=1,
                    out=str(tmp_path), run_id="e2")
    run(cfg, METHODS.get("drpo").Config(m=2), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "e2" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2]
    assert all("eval/shapes2-geneval/overall_disjoint" in r for r in evals)
    with pytest.raises(ValueError, match="use 'shapes2-geneval'"):
        run(RunConfig(**{**cfg.__dict__, "evals": ("shapes-geneval",), "run_id": "e2b"}), progress=False)


def test_a_prompt_file_restating_a_test_task_is_refused_in_one_line(tmp_path):
    held = next(m for m in split("test", 0, E.SECOND) if m["tag"] == "two_object")
    a, b = (c["class"] for c in held["include"])
    restated = f"a photo of {'an' if b[0] in 'aeiou' or b.startswith('hour') else 'a'} {b} and " \
               f"{'an' if a[0] in 'aeiou' or a.startswith('hour') else 'a'} {a}"
    prompts = tmp_path / "train.txt"
    prompts.write_text(f"{split('train', 0, E.SECOND)[40]['prompt']}\n{restated}\n")
    cfg = RunConfig(method="drpo", profile="shapes2", reward="shapes2-pref", evals=("shapes2-geneval",), k=4,
                    prompts_per_step=1, updates=1, eval_seeds=1, test_split="test", prompts=str(prompts),
                    out=str(tmp_path), run_id="leak")
    with pytest.raises(ValueError, match="state the same task") as err:
        run(cfg, METHODS.get("drpo").Config(m=2), progress=False)
    assert restated in str(err.value) and held["prompt"] in str(err.value) and "\n" not in str(err.value)
