"""PickScore / CLIP score / aesthetic and the HPSv3 path, on tiny random models built offline.

The real weights never load here; these tests pin the code paths the real models go through: the
differentiable preprocessing (checked against transformers' own PIL processors), the score formulas,
batching, frozen parameters, gradients reaching the images, local-path handling and the errors that name
the environment a reward lives in.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from rewards import build

pytestmark = pytest.mark.unit
CLIP_NAMES = ("pickscore", "clip-score", "aesthetic")
PROMPTS = ["a red cat", "a dog on a big blue car", "a red cat", "a photo of a house with a tree"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (two threads spin against each other on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def images(n: int = 4, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.6 * torch.rand(n, 3, h, w, generator=g)


@pytest.fixture(scope="module")
def tiny():
    """One tiny instance of each reward (building them is the slow part)."""
    out = {name: build(name, {"tiny": "true", "batch": "3"}) for name in CLIP_NAMES}
    out["hpsv3"] = build("hpsv3", {"tiny": "true", "batch": "3"})
    return out


@pytest.mark.parametrize("name", CLIP_NAMES + ("hpsv3",))
def test_shape_batching_and_gradients(tiny, name):
    reward = tiny[name]
    assert reward.differentiable and all(not p.requires_grad for p in _parameters(reward))
    x = images().requires_grad_(True)
    scores = reward.score(x, PROMPTS)  # batch=3: two forwards (3 + 1)
    assert scores.shape == (4,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    with torch.no_grad():
        one_by_one = torch.cat([reward.score(x[i:i + 1], [p]) for i, p in enumerate(PROMPTS)])
    torch.testing.assert_close(scores.detach(), one_by_one, atol=1e-5, rtol=1e-5)
    scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in _parameters(reward))
    # Higher is better, and the gradient points uphill: a small ascent step raises every score (a CLIP
    # score clamped at 0 has no gradient and stays put).
    norm = x.grad.flatten(1).norm(dim=1)
    step = x.detach() + 1e-3 * x.grad / norm.clamp(min=1e-12).view(-1, 1, 1, 1)
    with torch.no_grad():
        after = reward.score(step, PROMPTS)
    moved = norm > 0
    assert moved.any() and (after[moved] > scores.detach()[moved]).all()
    assert torch.equal(after[~moved], scores.detach()[~moved])


def _parameters(reward):
    model = reward.path.model if hasattr(reward, "path") else reward
    return list(model.parameters())


def test_clip_formulas(tiny):
    x = images(2)
    ps, cs = tiny["pickscore"], tiny["clip-score"]
    with torch.no_grad():
        cos = (ps.image_embeds(x) * ps.text_embeds(PROMPTS[:2])).sum(-1)
        torch.testing.assert_close(ps.score(x, PROMPTS[:2]), ps.model.logit_scale.exp() * cos)
        raw = build("clip-score", {"tiny": "true", "raw": "true"}).score(x, PROMPTS[:2])
        assert raw.abs().max() <= 1
        torch.testing.assert_close(cs.score(x, PROMPTS[:2]), 100 * raw.clamp(min=0))
        assert torch.allclose(ps.image_embeds(x).norm(dim=-1), torch.ones(2))
        # Prompts matter for the text-image rewards and not for the aesthetic one.
        same = x[:1].expand(2, -1, -1, -1)
        p = ps.score(same, ["a red cat", "a blue car"])
        a = tiny["aesthetic"].score(same, ["a red cat", "a blue car"])
    # Two identical images in one batch may differ by float rounding (batched kernels), hence the tolerance.
    assert not torch.isclose(p[0], p[1]) and torch.isclose(a[0], a[1], rtol=1e-5, atol=1e-6)


def test_differentiable_preprocessing_matches_the_pil_processor():
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    from rewards.clip_rewards import clip_pixels

    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    x = torch.nn.functional.interpolate(images(2, 6, 5), size=(64, 48), mode="bilinear")
    u8 = (x * 255).round().to(torch.uint8)
    reference = processor(images=[Image.fromarray(a.permute(1, 2, 0).numpy()) for a in u8],
                          return_tensors="pt")["pixel_values"]
    ours = clip_pixels(u8.float() / 255, 32)
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() < 0.03  # bicubic kernels differ slightly; the layout is exact


def test_qwen_patchify_matches_the_pil_processor_exactly():
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil

    from rewards.clip_rewards import CLIP_MEAN, CLIP_STD
    from rewards.hpsv3 import qwen_patchify

    u8 = (torch.rand(2, 3, 56, 84, generator=torch.Generator().manual_seed(1)) * 255).round().to(torch.uint8)
    processor = Qwen2VLImageProcessorPil(min_pixels=56 * 84, max_pixels=56 * 84, patch_size=14, merge_size=2,
                                         temporal_patch_size=2)
    reference = processor(images=[Image.fromarray(a.permute(1, 2, 0).numpy()) for a in u8], return_tensors="pt")
    pixels = (u8.float() / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    values, grid = qwen_patchify(pixels)
    assert grid.tolist() == reference["image_grid_thw"].tolist() == [[1, 4, 6]] * 2
    torch.testing.assert_close(values, reference["pixel_values"], atol=1e-6, rtol=0)


def test_hpsv3_tiny_reads_mu_at_the_reward_token(tiny):
    path = tiny["hpsv3"].path
    inputs = path.inputs(images(2), PROMPTS[:2])
    ids = inputs["input_ids"]
    assert (ids == path.special["image"]).sum(dim=1).tolist() == [4, 4]  # 56 px: 4x4 patches, 2x2 merge
    assert ((ids == path.special["reward"]).sum(dim=1) == 1).all()
    with torch.no_grad():
        both = path.model(**inputs, reward_token_id=path.special["reward"])
    assert both.shape == (2, 2)  # (mu, sigma)
    torch.testing.assert_close(tiny["hpsv3"].score(images(2), PROMPTS[:2]), both[:, 0])


def test_local_directories_load_and_missing_paths_are_named(tmp_path, tiny):
    source = tiny["pickscore"]
    source.model.save_pretrained(tmp_path / "ps")
    source.tokenizer.save_pretrained(tmp_path / "ps")
    (tmp_path / "ps" / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 32, "width": 32}, "image_mean": [0.48145466, 0.4578275, 0.40821073],
         "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    loaded = build("pickscore", {"model": str(tmp_path / "ps"), "processor": str(tmp_path / "ps")})
    assert loaded.resolution == 32
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(images(2), PROMPTS[:2]), source.score(images(2), PROMPTS[:2]))
    with pytest.raises(FileNotFoundError, match=f"model directory '{tmp_path}/missing' does not exist"):
        build("pickscore", {"model": str(tmp_path / "missing")})
    with pytest.raises(FileNotFoundError, match="processor directory '/no/such/processor'"):
        build("pickscore", {"model": str(tmp_path / "ps"), "processor": "/no/such/processor"})
    with pytest.raises(FileNotFoundError, match="'nobody/no-such-model' is not a local directory and not in the "
                                                "local Hugging Face cache"):
        build("clip-score", {"model": "nobody/no-such-model"})
    with pytest.raises(FileNotFoundError, match=r"sac\+logos\+ava1-l14-linearMSE.pth"):
        build("aesthetic", {"model": str(tmp_path / "ps")})
    with pytest.raises(FileNotFoundError, match=f"head file '{tmp_path}/head.pth' does not exist"):
        build("aesthetic", {"tiny": "true", "head": str(tmp_path / "head.pth")})


def test_aesthetic_head_loads_from_a_local_file(tmp_path, tiny):
    from rewards.clip_rewards import AestheticHead

    head = AestheticHead(16)
    torch.save(head.state_dict(), tmp_path / "head.pth")
    reward = build("aesthetic", {"tiny": "true", "head": str(tmp_path / "head.pth")})
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(reward.score(x, ["a", "b"]), head.eval()(reward.image_embeds(x)).squeeze(-1))


@pytest.mark.skipif(importlib.util.find_spec("hpsv3") is not None, reason="the hpsv3 package is installed here")
def test_isolated_rewards_name_their_environment():
    with pytest.raises(RuntimeError, match=r"'hpsv3' package.*nox -s reward_env-hpsv3.*remote:http://127.0.0.1:8000"):
        build("hpsv3", {"checkpoint": "/data/HPSv3.safetensors"})
    for name, session in (("imagereward", "reward_env-imagereward"), ("hpsv2", "reward_env-hpsv2")):
        if importlib.util.find_spec({"imagereward": "ImageReward", "hpsv2": "hpsv2"}[name]) is None:
            with pytest.raises(RuntimeError, match=f"own environment.*nox -s {session}.*serve-reward {name}"):
                build(name)


def test_hpsv3_config_points_at_the_local_qwen(tmp_path):
    import yaml

    from rewards.hpsv3 import _local_config

    config = tmp_path / "HPSv3_7B.yaml"
    config.write_text("model_name_or_path: Qwen/Qwen2-VL-7B-Instruct\nrm_head_type: ranknet\noutput_dim: 2\n")
    assert _local_config(str(config), None, str(tmp_path)) == str(config)
    (tmp_path / "out").mkdir()
    with open(_local_config(str(config), str(tmp_path / "qwen"), str(tmp_path / "out"))) as f:
        written = yaml.safe_load(f)
    assert written == {"model_name_or_path": str(tmp_path / "qwen"), "rm_head_type": "ranknet", "output_dim": 2}


@pytest.mark.slow
def test_reward_gradient_method_trains_through_tiny_pickscore(tmp_path):
    """DRaFT backpropagates through the tiny PickScore into the generator, inside `harness.run.run`."""
    from harness.run import run
    from tests.conftest import tiny_run

    summary = run(tiny_run(tmp_path, method="draft", reward="pickscore", reward_options=("pickscore.tiny=true",),
                           evals=(), updates=1, eval_at=(1.0,), eval_prompt_limit=1, count_flops=False,
                           run_id="draft-ps"), progress=False)
    assert np.isfinite(summary["eval/pickscore/mean"])


@pytest.mark.skipif(importlib.util.find_spec("hpsv2") is not None, reason="the hpsv2 package is installed here")
def test_a_broken_reward_environment_names_what_is_missing(tmp_path, monkeypatch):
    """Inside a reward's own environment (its package installed) a failing import says what it lacks instead of
    sending the user to the environment they are in."""
    (tmp_path / "hpsv2").mkdir()
    (tmp_path / "hpsv2" / "__init__.py").write_text("import driftbench_no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="the 'hpsv2' package is installed here but does not import: "
                                           "'driftbench_no_such_module' is missing") as info:
        build("hpsv2", {"checkpoint": "/data/HPS_v2.1_compressed.pt"})
    assert "serve-reward" not in str(info.value)
