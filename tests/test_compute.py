"""Compute accounting: full-size FLOPs per update from traced updates, measured profiles, reward economies."""

import pytest
import torch

from harness.compute.flops import ComputeConfig, compute
from harness.compute.profile_step import ProfileConfig, profile_step
from harness.economy import agreement
from harness.run import CapabilityError, run
from tests.conftest import tiny_run


@pytest.mark.slow
def test_compute_prices_traced_updates_at_full_size(tmp_path):
    cfg = ComputeConfig(generator="sd-turbo", reward="pickscore", effective_batch=48, k=24, devices=1, grad_accum=2,
                        methods=("drpo", "draft"), out=str(tmp_path))
    rows, path = compute(cfg)
    by = {r["method"]: r for r in rows}
    # DrPO: no reward or decoder backward, but a feature-encoder backward; DRaFT the opposite.
    assert by["drpo"]["reward_backward"] == 0 and by["drpo"]["features_backward"] > 0
    assert by["draft"]["reward_backward"] > 0 and by["draft"]["decode_backward"] > 0
    # 48 images of the SD-Turbo VAE decoder forward (2,514.5 GFLOP each) in both.
    assert by["drpo"]["decode"] == pytest.approx(48 * 2514.5e9, rel=0.01)
    assert by["draft"]["ratio_to_drpo"] > 1.3 and path.is_file() and path.with_suffix(".csv").is_file()


@pytest.mark.unit
@pytest.mark.parametrize("changes,match", [
    (dict(effective_batch=100), "not divisible by K"),
    (dict(effective_batch=48, devices=4), "do not split"),
    (dict(generator="sd-trubo"), "did you mean 'sd-turbo'"),
    (dict(reward="pickscor"), "did you mean 'pickscore'"),
])
def test_compute_bad_input(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        compute(ComputeConfig(out=str(tmp_path), **changes))


@pytest.mark.slow
def test_profile_step_runs_on_cpu_tiny(tmp_path):
    rows, path = profile_step(ProfileConfig(methods=("drpo", "draft"), warmup=1, steps=1, out=str(tmp_path)))  # K: the preset's 24
    assert [r["method"] for r in rows] == ["drpo", "draft"]
    assert all(r["total/seconds"] > 0 and r["generate/flops"] > 0 for r in rows)
    assert rows[1]["reward_backward/seconds"] > 0 and rows[0]["reward_backward/seconds"] == 0
    assert "ratio to DrPO" in path.read_text()


@pytest.mark.unit
def test_agreement_hand_values():
    exact = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 3.0, 2.0, 1.0])
    same = agreement(exact, exact * 2 + 1, k=4, m=2)
    assert same == {"spearman": pytest.approx(1.0), "top_m_overlap": 1.0}
    reversed_ = agreement(exact, -exact, k=4, m=2)
    assert reversed_["spearman"] == pytest.approx(-1.0) and reversed_["top_m_overlap"] == 0.0


@pytest.mark.slow
def test_economy_runs_record_agreement_and_refuse_reward_backprop(tmp_path):
    import methods.drpo as drpo
    from harness.store import Store

    run(tiny_run(tmp_path, reward="colorfulness", evals=("colorfulness",), reward_economy="bf16", run_id="bf16"),
        drpo.Config(m=2), progress=False)
    first = Store(tmp_path).rows("bf16", "train")[0]
    assert first["train/agreement_spearman"] > 0.9
    with pytest.raises(CapabilityError, match="only serves ranking"):
        run(tiny_run(tmp_path, method="draft", reward="colorfulness", reward_economy="bf16"), progress=False)
    with pytest.raises(ValueError, match="has no small decoder"):
        run(tiny_run(tmp_path, reward_economy="small-decoder"), drpo.Config(m=2), progress=False)
