"""SDXL-Turbo DrPO's ViT-MAE features: a tiny random ViTMAE saved to a local directory (offline) loads, and its
features equal a computation written here from the official extractor (sdxl_drpo/trainer.py@dd473d8)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from harness import profiles
from harness.compute import archs
from harness.compute import flops as compute
from harness.presets import get as get_preset
from harness.vitmae import TINY_CONFIG, TINY_KEYS, load_vit_mae, processor_settings

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture
def mae_dir(tmp_path):
    from transformers import ViTMAEConfig, ViTMAEModel

    torch.manual_seed(0)
    ViTMAEModel(ViTMAEConfig(**TINY_CONFIG)).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": MEAN, "image_std": STD, "size": {"height": 32, "width": 32}}))
    return tmp_path


def test_features_match_the_official_extractor_at_the_released_mask_ratio_and_without(mae_dir):
    tmp_path = mae_dir
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    masked = load_vit_mae(tmp_path, TINY_KEYS, seed=7)
    assert masked.mask_ratio == 0.75  # the checkpoint's config, as AutoModel.from_pretrained leaves it
    first, second = masked(images), masked(images)
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(7))
    ref, tokens = official32(tmp_path, images, noise)
    assert tokens == 1 + 4  # 16 patches, 25% kept
    for k in TINY_KEYS:
        torch.testing.assert_close(first[k], ref[k], atol=1e-5, rtol=1e-5, msg=k)
    assert not torch.equal(first["layer2_cls"], second["layer2_cls"])  # a fresh mask each call
    again = load_vit_mae(tmp_path, TINY_KEYS, seed=7)(images)
    torch.testing.assert_close(again["layer2_cls"], first["layer2_cls"], atol=0, rtol=0)
    # every patch kept: deterministic, equal to the official arithmetic on any noise
    full = load_vit_mae(tmp_path, TINY_KEYS, mask_ratio=0.0)
    ref, tokens = official32(tmp_path, images, torch.rand(2, 16), mask_ratio=0.0)
    out = full(images)
    assert tokens == 17
    for k in TINY_KEYS:
        torch.testing.assert_close(out[k], ref[k], atol=1e-5, rtol=1e-5, msg=k)
        assert out[k].shape == (2, 1, 32)


def official32(directory, images, noise, mask_ratio=None):
    from transformers import ViTMAEModel

    model = ViTMAEModel.from_pretrained(str(directory)).eval()
    if mask_ratio is not None:
        model.config.mask_ratio = mask_ratio
    x = F.interpolate(images.clamp(0, 1), size=(32, 32), mode="bicubic", align_corners=False)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        h = model(pixel_values=x, noise=noise, output_hidden_states=True).hidden_states[2]
    patches = h[:, 1:].float()
    std = (patches - patches.mean(1, keepdim=True)).pow(2).mean(1).add(1e-6).sqrt()
    return {"layer2_patch_mean": h[:, 1:].mean(1, keepdim=True), "layer2_patch_std": std[:, None],
            "layer2_cls": h[:, :1]}, h.shape[1]


@pytest.mark.parametrize("size, expected", [(224, 224), ({"height": 96, "width": 96}, 96),
                                            ({"shortest_edge": 64}, 64)])
def test_processor_size_is_read_as_the_official_extractor_reads_it(tmp_path, size, expected):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD,
                                                                   "size": size}))
    assert processor_settings(tmp_path)["image_size"] == expected


def test_bad_input_is_one_line(tmp_path, mae_dir):
    with pytest.raises(FileNotFoundError, match="--features-path"):
        load_vit_mae(tmp_path / "absent")
    with pytest.raises(ValueError, match=r"bad ViT-MAE feature key 'layer3_cls': expected layer<1..2>_"):
        load_vit_mae(mae_dir, ["layer3_cls"])


def test_sdxl_preset_drifts_vit_mae_and_compute_prices_it():
    assert get_preset("paper-sdxl-turbo").method_config("drpo").features == "vit-mae"
    cfg = compute.ComputeConfig(generator="sdxl-turbo", reward="pickscore", preset="paper-sdxl-turbo",
                                effective_batch=16, k=16, devices=1, grad_accum=1, methods=("drpo",))
    method_cfg = get_preset(cfg.preset).method_config("drpo")
    trace = compute.trace_method("drpo", method_cfg, k=16, generator="sdxl-turbo", differentiable=True)
    features = [e for e in trace if e.phase == "features"]
    assert features and all(e.component == "features:vit-mae" for e in features)
    flops = compute.price(trace, cfg)
    per_image = archs.component_flops("vit-mae-base", mode="forward")
    items = sum(e.items for e in features)
    assert flops["features"] == pytest.approx(per_image * items)
    full = archs.component_flops("vit-mae-base", mode="forward", inputs={"mask_ratio": 0.0})
    assert 3.5 < full / per_image < 4.5  # 197 tokens against 50
    def as_space(space):
        return [dataclasses.replace(e, component=f"features:{space}") if e.phase == "features" else e for e in trace]

    assert compute.price(as_space("pixel"), cfg)["features"] == 0  # pooled pixels: no encoder
    assert compute.price(as_space("vit-mae-full"), cfg)["features"] == pytest.approx(full * items)
    with pytest.raises(ValueError, match="feature space 'nope' has no full-size price"):
        compute.price(as_space("nope"), cfg)


def test_tiny_profiles_offer_the_vit_mae_spaces():
    from harness.config import RunConfig

    world = profiles.PROFILES.get("tiny-xl")(RunConfig(profile="tiny-xl"))
    assert {"vit-mae", "vit-mae-full"} <= world.pixel_spaces
    images = torch.rand(2, 3, 64, 64)
    out = world.features("vit-mae")(images)
    assert sorted(out) == sorted(TINY_KEYS) and out["layer2_cls"].shape == (2, 1, 32)
