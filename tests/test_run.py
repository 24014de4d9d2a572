"""End to end on the tiny profile: the record, resume, determinism and bad input."""

import json

import pytest
import torch

from harness.run import CapabilityError, run
from harness.store import Store
from tests.conftest import tiny_run

pytestmark = pytest.mark.slow


def test_run_writes_the_record(tmp_path):
    summary = run(tiny_run(tmp_path, run_id="r1"), progress=False)
    run_dir = tmp_path / "runs" / "r1"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["run"]["method"] == "drpo" and manifest["method_config"]["m"] == 2
    for key in ("git", "packages", "device"):
        assert key in manifest["environment"]
    assert manifest["per_update"] == {"images": 4, "reward_calls": 4, "reference_images": 4, "prompts": 1, "k": 4,
                                   "noise_seeds": 4}
    assert manifest["layout"]["processes"] == 1 and manifest["precision"]["frozen_weights"] == "float32"
    rows = Store(tmp_path).rows("r1")
    assert [r["kind"] for r in rows] == ["eval", "train", "train", "eval"]
    assert rows[-1]["budget/updates"] == 2 and rows[-1]["budget/flops"] > 0
    assert (run_dir / "samples.png").is_file() and (run_dir / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    assert summary["budget/images"] == 8 and "eval/jpeg/win_rate" in summary
    assert summary["phases"]["generate"]["flops"] > 0 and summary["phases"]["generator_backward"]["flops"] > 0


@pytest.fixture(autouse=True)
def small_m(monkeypatch):
    """DrPO's default M=8 needs K >= 16; these runs use K=4, so M=2 by default here."""
    import dataclasses

    import methods.drpo as drpo

    monkeypatch.setattr(drpo, "Config", dataclasses.make_dataclass(
        "Config", [("m", int, dataclasses.field(default=2))], bases=(drpo.Config,), frozen=True))


def interrupted_at(update: int, cfg) -> None:
    """Run ``cfg`` with a Ctrl-C raised at the start of update ``update``."""
    import harness.run as run_module

    original = run_module.update

    def flaky(parts, step, spend):
        if step == update:
            raise KeyboardInterrupt
        return original(parts, step, spend)

    run_module.update = flaky
    try:
        with pytest.raises(KeyboardInterrupt):
            run(cfg, progress=False)
    finally:
        run_module.update = original


def test_same_seed_same_result_and_resume_is_exact(tmp_path):
    full = run(tiny_run(tmp_path, run_id="full", updates=3, checkpoint_every=1), progress=False)
    again = run(tiny_run(tmp_path, run_id="again", updates=3), progress=False)
    assert full["eval/jpeg/mean"] == again["eval/jpeg/mean"]
    # Interrupt after the first update, then resume.
    store = Store(tmp_path)
    cfg = tiny_run(tmp_path, run_id="cut", updates=3, checkpoint_every=1, eval_at=(0.0, 0.34, 1.0))
    interrupted_at(2, cfg)
    assert store.manifest("cut")["status"] == "interrupted"
    resumed = run(cfg, resume="cut", progress=False)
    assert resumed["budget/updates"] == 3
    torch.testing.assert_close(torch.tensor(resumed["eval/jpeg/mean"]), torch.tensor(full["eval/jpeg/mean"]))
    with pytest.raises(ValueError, match="already complete"):
        run(cfg, resume="cut", progress=False)


@pytest.mark.parametrize("changes,match", [
    (dict(method="drpx"), "did you mean 'drpo'"),
    (dict(profile="tiney"), "did you mean 'tiny'"),
    (dict(reward="jpg"), "did you mean 'jpeg'"),
    (dict(k=1), r"--k must be in \[2, 4096\], got 1"),
    (dict(prompts="missing-file.txt"), "neither a split"),
    (dict(eval_split="vall"), "unknown split of profile 'tiny' .* 'vall'; did you mean 'val'\\?"),
    (dict(test_split="tets"), "did you mean 'test'"),
    (dict(select_metric="jpge"), "unknown select_metric reward 'jpge'; did you mean 'jpeg'"),
    (dict(profile="sd-turbo"), "needs --model"),
    (dict(profile="sd-turbo", model="/no/such/dir"), "does not exist"),
])
def test_bad_input_fails_before_writing_anything(tmp_path, changes, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        run(tiny_run(tmp_path, **changes), progress=False)
    assert not (tmp_path / "runs").exists()


def test_empty_prompt_file_and_k_below_2m(tmp_path):
    import methods.drpo as drpo

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="is empty"):
        run(tiny_run(tmp_path, prompts=str(empty)), progress=False)
    with pytest.raises(ValueError, match="K >= 2M"):
        run(tiny_run(tmp_path), drpo.Config(m=3), progress=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("answer,match", [("nan", "non-finite"), ("short", "expected"), ("text", r"expected \d+ numbers")])
def test_bad_reward_marks_the_run_failed(tmp_path, test_reward, answer, match):
    from rewards import RewardError

    with pytest.raises(RewardError, match=match):
        run(tiny_run(tmp_path, reward=f"test-{answer}", evals=(), run_id="bad"), progress=False)
    manifest = Store(tmp_path).manifest("bad")
    assert manifest["status"] == "failed" and "RewardError" in manifest["error"]
    assert not (tmp_path / "runs" / "bad" / "summary.json").exists()


def test_black_box_reward_returning_floats_works(tmp_path, test_reward):
    summary = run(tiny_run(tmp_path, reward="test-ok", evals=()), progress=False)
    assert summary["budget/reward_calls"] == 8


def test_reward_gradient_methods_are_refused_black_box_rewards(tmp_path, monkeypatch):
    import methods.drpo as drpo

    monkeypatch.setattr(drpo, "REWARD_GRADIENT", True)
    with pytest.raises(CapabilityError, match="not differentiable"):
        run(tiny_run(tmp_path), progress=False)


def test_selected_checkpoint_is_the_best_validation_point_and_the_test_split_is_read_after_training(tmp_path):
    """Selection keeps the best evaluation point's weights across a resume; the test split is evaluated at
    the selected checkpoint and at the end, with its own noise."""
    cfg = tiny_run(tmp_path, run_id="sel", updates=4, eval_at=(0.0, 0.25, 0.5, 0.75, 1.0), checkpoint_every=1,
                   select_metric="jpeg", test_split="test", test_seeds=1)
    full = run(cfg, progress=False)
    evals = Store(tmp_path).rows("sel", "eval")
    best = max(evals, key=lambda r: (r["eval/jpeg/mean"], -r["step"]))
    assert (full["select/step"], full["select/value"]) == (best["step"], best["eval/jpeg/mean"])
    assert full["select/metric"] == "eval/jpeg/mean" and "test/jpeg/mean" in full and "test/drift/latent_rms" in full
    if full["select/step"] == 4:
        assert full["test_selected/jpeg/mean"] == full["test/jpeg/mean"]
    else:
        assert full["test_selected/drift/latent_rms"] != full["test/drift/latent_rms"]
    # The same run interrupted after update 3 and resumed selects the same point and tests the same weights.
    interrupted_at(3, cfg.replace(run_id="cut-sel"))
    resumed = run(cfg.replace(run_id="cut-sel"), resume="cut-sel", progress=False)
    for key in ("select/step", "select/value", "test_selected/jpeg/mean", "test/jpeg/mean"):
        assert resumed[key] == full[key], key
