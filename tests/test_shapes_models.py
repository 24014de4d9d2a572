"""The Shapes world's models: feature encoders, the generator's Generator contract, shapes-pref, assets."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from harness.api import Cond, Generator, Reward
from harness.features import LatentFeatures, ResNetEncoder, multiscale_features
from harness.shapes import assets
from harness.shapes.generator import load_features, load_generator
from harness.shapes.measure import flops_per_image
from rewards.shapes_pref import clause_tensors, count_terms, include_weights, load_reward, position_terms

PROMPTS = ["a photo of a red circle and a blue square", "a photo of three triangles"]


# -- features (unit) ------------------------------------------------------------------------------------


@pytest.mark.unit
def test_multiscale_feature_shapes():
    stages = {"layer2": torch.randn(3, 8, 8, 8), "layer4": torch.randn(3, 16, 4, 4)}
    keys = ["layer4_mean", "layer4_std", "layer4_mean_2", "layer4_std_2", "layer2_mean_4"]
    feats = multiscale_features(stages, keys)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "layer4_mean": (3, 1, 16), "layer4_std": (3, 1, 16), "layer4_mean_2": (3, 4, 16),
        "layer4_std_2": (3, 4, 16), "layer2_mean_4": (3, 4, 8)}
    # Patch means average to the global mean; the first 2x2 patch of layer4 is its top-left corner.
    assert torch.allclose(feats["layer4_mean_2"].mean(1, keepdim=True), feats["layer4_mean"], atol=1e-5)
    assert torch.allclose(feats["layer4_mean_2"][:, 0], stages["layer4"][:, :, :2, :2].mean((2, 3)), atol=1e-5)
    with pytest.raises(ValueError, match="does not tile"):
        multiscale_features(stages, ["layer4_mean_3"])
    with pytest.raises(ValueError, match="bad feature key"):
        multiscale_features(stages, ["layer4_max"])


@pytest.mark.unit
def test_resnet_encoder_stages_and_frozen_features():
    encoder = ResNetEncoder(4, 8, (1, 1, 1))
    stages = encoder.forward_stages(torch.randn(2, 4, 16, 16))
    assert {k: tuple(v.shape) for k, v in stages.items()} == {
        "conv1": (2, 8, 16, 16), "layer1": (2, 8, 16, 16), "layer2": (2, 16, 8, 8), "layer3": (2, 32, 4, 4)}
    features = LatentFeatures(encoder, ["layer3_mean", "layer3_std_2"])
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    out = features(x)
    sum(v.sum() for v in out.values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in features.parameters())


# -- shapes-pref's clause head (unit, hand-computed) ---------------------------------------------------------


def _evidence(cells: dict[int, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """One image whose evidence is certain: {cell index: (shape index, colour index)}, empty elsewhere."""
    obj, shape, color = torch.zeros(1, 64), torch.full((1, 64, 3), 1 / 3), torch.full((1, 64, 4), 1 / 4)
    for cell, (s, c) in cells.items():
        obj[0, cell], shape[0, cell], color[0, cell] = 1.0, torch.eye(3)[s], torch.eye(4)[c]
    return {"obj": obj, "shape": shape, "color": color}


@pytest.mark.unit
def test_clause_tables_follow_the_metadata():
    t = clause_tensors(["a photo of two circles", "a photo of a red circle and a green square",
                        "a photo of a circle right of a square"])
    assert t["inc_class"].tolist() == [[0, 0], [0, 1], [1, 0]]
    assert t["inc_count"].tolist() == [[2, 0], [1, 1], [1, 1]]
    assert t["inc_valid"].tolist() == [[True, False], [True, True], [True, True]]
    assert t["inc_color"].tolist() == [[-1, -1], [0, 1], [-1, -1]]
    assert t["exc_valid"].tolist() == [True, False, False] and t["exc_count"][0] == 3
    assert t["rel_valid"].tolist() == [False, False, True]
    assert (t["rel_axis"][2].item(), t["rel_sign"][2].item()) == (0, 1.0)
    with pytest.raises(ValueError, match="purple"):
        clause_tensors(["a photo of a purple circle"])


@pytest.mark.unit
def test_count_terms_by_hand():
    tau = torch.tensor(6.0)
    t = clause_tensors(["a photo of two circles"])
    ev = _evidence({0: (0, 0), 5: (0, 2)})  # two circles: soft include count 2, exclude count 2 < 3
    got = count_terms(include_weights(ev, t), ev, t, tau)
    assert torch.allclose(got, 2 * torch.nn.functional.logsigmoid(torch.tensor([3.0])), atol=1e-6)
    t = clause_tensors(["a photo of a red circle"])
    ev = _evidence({0: (0, 2)})  # a blue circle: the red circle's soft count is 0
    got = count_terms(include_weights(ev, t), ev, t, tau)
    assert torch.allclose(got, torch.nn.functional.logsigmoid(torch.tensor([-3.0])), atol=1e-6)


@pytest.mark.unit
def test_position_term_by_hand():
    from rewards.shapes_pref import GRID, PrefConfig, PrefModel

    centres = PrefModel(PrefConfig(channels=(8, 8, 8, 8))).centres
    assert centres.shape == (GRID * GRID, 2) and torch.allclose(centres[4], torch.tensor([9 / 16, 1 / 16]))
    t = clause_tensors(["a photo of a circle right of a square"])
    ev = _evidence({0: (1, 0), 4: (0, 0)})  # square at x = 1/16, circle at x = 9/16: offset (0.5, 0)
    got = position_terms(include_weights(ev, t), centres, t, torch.tensor(20.0))
    # along = 0.5, length = 0.5 (weights sum to 1, so the 1e-3 in the centre's denominator shrinks it a hair)
    expected = torch.nn.functional.logsigmoid(torch.tensor([20 * (0.5 - 0.25) / 1.001]))
    assert torch.allclose(got, expected, atol=1e-4)
    ev = _evidence({4: (1, 0), 0: (0, 0)})  # swapped: the circle is left of the square
    assert position_terms(include_weights(ev, t), centres, t, torch.tensor(20.0)).item() < -10


# -- assets (slow: they read the committed weights) ------------------------------------------------------


@pytest.mark.slow
def test_assets_match_checksums_and_corruption_is_named(tmp_path):
    sums = json.loads((assets.ASSET_DIR / assets.CHECKSUMS).read_text())
    for name in assets.NAMES:
        assert sums[f"{name}.safetensors"] == assets.sha256(assets.asset_path(name))
    copy = tmp_path / "shapes"
    shutil.copytree(assets.ASSET_DIR, copy)
    weights = assets.asset_path("reward", copy)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(assets.AssetError, match=r"reward\.safetensors is corrupted.*pretrain reward"):
        assets.load_asset("reward", copy)
    (copy / "encoder.safetensors").unlink()
    with pytest.raises(assets.AssetError, match=r"encoder\.safetensors is missing.*pretrain encoder"):
        assets.load_asset("encoder", copy)


@pytest.mark.slow
def test_damaged_assets_with_matching_checksums_are_named(tmp_path):
    """A truncated weights file or a malformed config whose checksums were regenerated passes the checksum
    check; loading it is still one AssetError naming the file and the command that rebuilds it."""
    copy = tmp_path / "shapes"
    shutil.copytree(assets.ASSET_DIR, copy)
    sums_path = copy / assets.CHECKSUMS

    def regenerate(path):
        sums = json.loads(sums_path.read_text())
        sums[path.name] = assets.sha256(path)
        sums_path.write_text(json.dumps(sums))

    weights = assets.asset_path("reward", copy)
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    regenerate(weights)
    with pytest.raises(assets.AssetError, match=r"reward\.safetensors is unreadable .*pretrain reward"):
        assets.load_asset("reward", copy)
    config = assets.asset_path("encoder", copy).with_suffix(".json")
    config.write_text('{"channels": [8, 16')
    regenerate(config)
    with pytest.raises(assets.AssetError, match=r"encoder\.json is not valid JSON .*pretrain encoder"):
        assets.load_asset("encoder", copy)
    sums_path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(assets.AssetError, match=r"checksums\.json is not valid JSON"):
        assets.load_asset("generator", copy)


@pytest.mark.slow
def test_total_asset_size_under_30_mb():
    total = sum(p.stat().st_size for p in assets.ASSET_DIR.iterdir())
    assert total <= 30 * 2 ** 20


# -- generator --------------------------------------------------------------------------------------------


@pytest.fixture
def gen():
    return load_generator(lora_rank=4, seed=0)


@pytest.mark.slow
def test_generator_protocol_shapes(gen):
    assert isinstance(gen, Generator)
    assert (gen.resolution, gen.latent_shape) == (64, (4, 16, 16))
    cond = gen.encode(PROMPTS)
    assert isinstance(cond, Cond) and len(cond) == 2 and not any(t.requires_grad for t in cond.tensors.values())
    noise = gen.noise([1, 2])
    latents = gen.latents(noise, cond)
    images = gen.decode(latents)
    assert noise.shape == latents.shape == (2, 4, 16, 16)
    assert images.shape == (2, 3, 64, 64) and 0.0 <= images.min() and images.max() <= 1.0
    assert 0.5 < latents.std().item() < 2.0  # the scaling factor gives roughly unit-std latents


@pytest.mark.unit
def test_noise_is_deterministic_per_seed(gen):
    a, b = gen.noise([5, 6]), gen.noise([6, 5])
    assert torch.equal(a[0], b[1]) and torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    assert torch.equal(gen.noise([5])[0], a[0])


@pytest.mark.slow
def test_reference_equals_trainable_until_adapters_change(gen):
    cond, noise = gen.encode(PROMPTS), gen.noise([3, 4])
    with gen.reference():
        ref = gen.latents(noise, cond)
    assert not ref.requires_grad
    assert torch.equal(gen.latents(noise, cond).detach(), ref)
    with torch.no_grad():
        for name, p in gen.net.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    assert not torch.allclose(gen.latents(noise, cond), ref)
    with gen.reference():
        assert torch.equal(gen.latents(noise, cond), ref)


@pytest.mark.slow
def test_gradients_reach_only_trainable_parameters(gen):
    trainable = gen.trainable()
    assert trainable and all("lora_" in n for n, p in gen.net.named_parameters() if p.requires_grad)
    images = gen.decode(gen.latents(gen.noise([0, 1]), gen.encode(PROMPTS)))
    images.mean().backward()
    assert all(p.grad is not None for p in trainable)
    frozen = [p for m in gen.modules.values() for p in m.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)


@pytest.mark.slow
def test_full_finetuning_reference_is_a_frozen_copy():
    gen = load_generator(lora_rank=0)
    cond, noise = gen.encode(PROMPTS), gen.noise([0, 1])
    assert len(gen.trainable()) == len(list(gen.net.parameters()))
    with torch.no_grad():
        gen.trainable()[0].add_(0.1)
    with gen.reference():
        ref = gen.latents(noise, cond)
    assert not torch.allclose(gen.latents(noise, cond), ref)
    state = gen.trainable_state()
    fresh = load_generator(lora_rank=0)
    fresh.load_trainable_state(state)
    assert torch.equal(fresh.latents(noise, cond), gen.latents(noise, cond))


@pytest.mark.slow
def test_trainable_state_round_trip_and_save_adapter(gen, tmp_path):
    with torch.no_grad():
        for p in gen.trainable():
            p.add_(0.01)
    other = load_generator(lora_rank=4, seed=1)
    other.load_trainable_state(gen.trainable_state())
    cond, noise = gen.encode(PROMPTS), gen.noise([7, 8])
    assert torch.equal(other.latents(noise, cond), gen.latents(noise, cond))
    gen.save_adapter(str(tmp_path))
    assert (tmp_path / "adapter_model.safetensors").stat().st_size > 0
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["target_modules"]) == {"to_q", "to_k", "to_v", "to_out.0"}
    assert json.loads((tmp_path / "base.json").read_text())["base_asset"] == "shapes/generator.safetensors"


# -- reward and features assets ---------------------------------------------------------------------------


@pytest.mark.slow
def test_shapes_pref_is_differentiable_and_five_times_the_generator(gen):
    reward = load_reward()
    assert isinstance(reward, Reward) and reward.differentiable
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    scores = reward.score(images, PROMPTS)
    assert scores.shape == (2,)
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.model.parameters())
    cond, noise = gen.encode(PROMPTS[:1]), gen.noise([0])
    latent = gen.latents(noise, cond).detach()
    gen_flops = flops_per_image(lambda: gen.latents(noise, cond)) + flops_per_image(lambda: gen.decode(latent))
    reward_flops = flops_per_image(lambda: reward.score(images[:1].detach(), PROMPTS[:1]))
    assert reward_flops >= 5 * gen_flops


@pytest.mark.slow
def test_pretrained_latent_features():
    features = load_features()
    out = features(torch.randn(2, 4, 16, 16))
    assert out and all(v.ndim == 3 and v.shape[0] == 2 for v in out.values())


@pytest.mark.slow
def test_offline_anchors_are_rendered_scenes_in_latent_space(gen):
    """Offline DrPO's data: rendered correct/incorrect scenes enter the latent space through the committed
    image encoder, and decoding them back keeps the verifier's verdicts."""
    from harness.shapes.generator import load_image_encoder
    from harness.shapes.offline import ShapesOffline
    from rewards.shapes_geneval import ShapesGenEval

    # Not a counting prompt: counting asks the detector for > 0.9 template confidence, which reconstructions
    # through the 16x16 latent (slightly soft edges) do not always reach.
    prompts2 = [PROMPTS[0], "a photo of a circle right of a square"]
    offline = ShapesOffline(load_image_encoder(), pairs_per_prompt=8)
    good, bad = offline.anchors(prompts2, 4, torch.Generator().manual_seed(0))
    assert good.shape == bad.shape == (2, 4, 4, 16, 16)
    again, _ = offline.anchors(prompts2, 4, torch.Generator().manual_seed(0))
    assert torch.equal(again, good)
    verifier, prompts = ShapesGenEval(), [p for p in prompts2 for _ in range(4)]
    with torch.no_grad():
        ok = verifier.score(gen.decode(good.flatten(0, 1)), prompts)
        broken = verifier.score(gen.decode(bad.flatten(0, 1)), prompts)
    assert ok.mean() >= 0.75 and broken.mean() <= 0.25
    with pytest.raises(ValueError, match="exceed the 8 offline pairs"):
        offline.anchors(PROMPTS, 9, torch.Generator())


@pytest.mark.slow
def test_vggflow_shapes_pref_scale_default(gen):
    """VGG-Flow's documented shapes-pref scale puts the target 0.05-0.5 latent std per dimension from the base
    sample at the clip threshold (the official s = 1000 would put it over 100 away)."""
    import rewards
    from harness.shapes.prompts import split
    from methods.vggflow import SCALE_DEFAULTS

    reward = rewards.build("shapes-pref", None)
    prompts = [m["prompt"] for m in split("train")][:32]
    with torch.no_grad():
        z = gen.latents(gen.noise(list(range(32))), gen.encode(prompts))
    z = z.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(reward.score(gen.decode(z), prompts).sum(), z)
    threshold = float(torch.quantile(grad.flatten(1).norm(dim=1), 0.8))
    per_dim = lambda s: s * threshold / z[0].numel() ** 0.5 / float(z.detach().std())  # noqa: E731
    assert 0.05 < per_dim(SCALE_DEFAULTS["shapes-pref"]) < 0.5
    assert per_dim(SCALE_DEFAULTS["pickscore"]) > 100
