"""The paper-scale checks at toy size: `nox -s gpu_check -- --dry-run`, `nox -s paper_smoke --profile tiny`, and the
full-size reward stand-ins they use (built at reduced depth here)."""

import json

import pytest
import torch

import rewards
from harness.compute import archs
from harness.compute.gpu_check import GpuCheckConfig, gpu_check
from harness.compute.paper_smoke import PaperSmokeConfig, paper_smoke, stock_unet
from harness.generator import tiny_sd


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_part(tmp_path):
    report = gpu_check(GpuCheckConfig(dry_run=True, out=str(tmp_path)))
    stored = json.loads((tmp_path / "compute" / "gpu_check.json").read_text())
    assert report["ok"] and stored["ok"], stored
    rows = stored["timing"]["rows"]
    # Each method's update is metered per phase: DrPO's features and DRaFT's reward backward are where they differ.
    assert rows["drpo"]["features/seconds"] > 0 and rows["drpo"]["reward_backward/seconds"] == 0
    assert rows["draft"]["reward_backward/seconds"] > 0 and rows["draft"]["features/seconds"] == 0
    assert stored["timing"]["ratio"] == pytest.approx(rows["draft"]["total/seconds"] / rows["drpo"]["total/seconds"])
    assert [r["economy"] for r in stored["economy"]["rows"]] == ["exact", "bf16"]
    shapes = stored["shapes"]
    assert shapes["rows"] and shapes["max_abs_diff"] <= shapes["tolerance"]
    assert any(r["metric"].startswith("eval/shapes-geneval/") for r in shapes["rows"])
    md = (tmp_path / "compute" / "gpu_check.md").read_text()
    assert "DRaFT / DrPO update time" in md and "Shapes twins" in md


def test_gpu_check_refuses_full_size_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        gpu_check(GpuCheckConfig(out=str(tmp_path)))


@pytest.mark.slow
def test_paper_smoke_tiny_resumes_exactly_and_loads_into_a_stock_pipeline(tmp_path):
    report = paper_smoke(PaperSmokeConfig(profile="tiny", methods=("drpo",), hpsv3_methods=("draft",),
                                          out=str(tmp_path)))
    assert report["ok"] and report["complete"]
    assert [(r["method"], r["reward"]) for r in report["methods"]] == [("drpo", "pickscore"), ("draft", "hpsv3")]
    assert all(r["adapter_change"] > 0 and r["peak_rss_bytes"] > 0 for r in report["methods"])
    resume = report["resume"]
    assert resume["interrupted_status"] == "interrupted" and resume["resumed_from"] == 1
    assert resume["resumed_vs_uninterrupted_max_abs"] == 0.0
    pipe = resume["pipeline"]
    assert pipe["max_abs_pipeline_vs_trained"] <= 1e-5 < pipe["max_abs_trained_vs_base"]
    assert (tmp_path / "compute" / "paper_smoke.md").is_file()


def test_stock_unet_has_the_base_weights_without_peft_layers():
    gen = tiny_sd(seed=0)
    with torch.no_grad():
        for p in gen.trainable():
            p.add_(0.1)  # move the adapters off zero: the stock UNet must still equal the base
    plain = stock_unet(gen.unet)
    assert not any("lora" in k or "base_layer" in k for k in plain.state_dict())
    z, t = gen.noise([0]), torch.full((1,), 999)
    hidden = gen.encode(["a photo of a red cat"]).tensors["hidden"]
    with torch.no_grad(), gen.reference():
        base = gen.unet(z, t, encoder_hidden_states=hidden).sample
    with torch.no_grad():
        torch.testing.assert_close(plain(z, t, encoder_hidden_states=hidden).sample, base)


def test_random_weights_are_seeded_and_scaled():
    a = archs.random_weights(lambda: torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32)), seed=3)
    b = archs.random_weights(lambda: torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32)), seed=3)
    c = archs.random_weights(lambda: torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32)), seed=4)
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, c[0].weight)
    assert a[0].weight.std().item() == pytest.approx(64 ** -0.5, rel=0.2)  # LeCun: 1 / sqrt(fan-in)
    assert torch.all(a[0].bias == 0) and torch.all(a[1].weight == 1) and torch.all(a[1].bias == 0)


@pytest.mark.slow
def test_hpsv3_stand_in_has_the_real_sequence_length_and_gradients():
    reward = rewards.build("hpsv3", {"random": "true", "layers": "1", "vision_layers": "1", "device": "cpu"})
    vlm = reward.path.model.vlm
    assert vlm.config.text_config.hidden_size == 3584 and len(vlm.model.language_model.layers) == 1
    assert isinstance(vlm.lm_head, torch.nn.Identity)  # HPSv3 never runs lm_head
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    prompt = "a photo of a red cat"
    ids = reward.path.inputs(images.detach(), [prompt])["input_ids"]
    # 256 merged image tokens + template 21 + instruction 530 (harness/configs/hpsv3.json) + the prompt's words.
    assert ids.shape[1] == 256 + 21 + 530 + len(prompt.split())
    score = reward.score(images, [prompt])
    score.sum().backward()
    assert score.shape == (1,) and torch.isfinite(score).all() and images.grad.abs().sum() > 0


def test_stand_in_options_are_checked():
    with pytest.raises(ValueError, match="layers=40 must lie in"):
        rewards.build("hpsv3", {"random": "true", "layers": "40"})
    with pytest.raises(ValueError, match="no random-weight stand-in"):
        rewards.build("clip-score", {"random": "true"})
