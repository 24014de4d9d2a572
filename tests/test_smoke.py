"""Every registered method x every compatible reward: two updates on the tiny profile, through ``run()``.

Parametrised over the registry, so a new method is smoke-tested without editing this file. ``jpeg`` is a
black-box reward and ``colorfulness`` a differentiable one.
"""

import dataclasses
import json

import pytest
import torch

from harness.run import CapabilityError, run
from harness.store import Store
from methods import METHODS
from tests.conftest import tiny_run

pytestmark = pytest.mark.smoke

REWARDS = ("jpeg", "colorfulness")
SMOKE = {"k": 4, "prompts_per_step": 2, "updates": 2, "eval_at": (1.0,)}
"""Two prompts per micro-batch, so the per-prompt (P, K) paths run too."""


def small_config(module):
    """The method's defaults, with M=2 where it ranks top-M/bottom-M (K=4 here)."""
    cfg = module.Config()
    return dataclasses.replace(cfg, m=2) if "m" in module.Config.__dataclass_fields__ else cfg


@pytest.fixture(scope="module")
def initial_weights(tmp_path_factory):
    """The tiny profile's trainable weights before any update (the profile builds them from a fixed seed)."""
    from harness.profiles import PROFILES

    world = PROFILES.get("tiny")(tiny_run(tmp_path_factory.mktemp("init"), **SMOKE))
    return world.generator.trainable_state()


@pytest.mark.parametrize("reward", REWARDS)
@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_on_the_tiny_profile(tmp_path, name, reward, initial_weights):
    module = METHODS.get(name)
    cfg = tiny_run(tmp_path, method=name, reward=reward, evals=(reward,), run_id="smoke", **SMOKE)
    if module.REWARD_GRADIENT and reward == "jpeg":
        with pytest.raises(CapabilityError, match="not differentiable"):
            run(cfg, small_config(module), progress=False)
        assert not (tmp_path / "runs").exists()
        return
    summary = run(cfg, small_config(module), progress=False)
    per_update = SMOKE["prompts_per_step"] * SMOKE["k"]
    assert summary["budget/updates"] == 2
    assert summary["budget/images"] == summary["budget/reward_calls"] == 2 * per_update
    assert Store(tmp_path).manifest("smoke")["status"] == "complete"
    # Every update had a real gradient, and the adapter weights moved.
    rows = Store(tmp_path).rows("smoke", "train")
    assert len(rows) == 2 and all(r["train/grad_norm"] > 0 for r in rows)
    trained = torch.load(tmp_path / "runs" / "smoke" / "checkpoint.pt", weights_only=False)["trainable"]
    assert trained.keys() == initial_weights.keys()
    assert any(not torch.equal(trained[k], initial_weights[k]) for k in trained)


def test_every_method_gets_the_same_budget(tmp_path):
    """Same RunConfig, every method: identical images and reward calls per update, and identical updates."""
    seen = {}
    for name in METHODS:
        module = METHODS.get(name)
        cfg = tiny_run(tmp_path, method=name, reward="colorfulness", evals=("colorfulness",), run_id=name,
                       count_flops=False, **SMOKE)
        summary = run(cfg, small_config(module), progress=False)
        manifest = json.loads((tmp_path / "runs" / name / "manifest.json").read_text())
        per_update = manifest["per_update"]
        seen[name] = (per_update["images"], per_update["reward_calls"], summary["budget/updates"])
    assert len(set(seen.values())) == 1, seen
