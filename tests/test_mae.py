"""The official latent MAE-256 encoder: checkpoints in every official format load, and their features equal an
independent computation written here from the official semantics (UGVly/DrPO src/drpo/features.py and
utils/tensors.py, lambertae/drifting models/mae_model.py) with plain torch.nn.functional calls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness import features, profiles
from harness.mae import SD_TURBO_KEYS, load_mae_encoder

# -- an independent reading of the official code ---------------------------------------------------

def groups(c: int) -> int:  # choose_gn_groups
    g = min(32, c)
    while g > 1 and c % g:
        g -= 1
    return g


def official_state(in_ch: int, base: int, layers, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official names, convolutions in torch OIHW layout."""
    gen = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, o, i, k):
        state[f"{name}.weight"] = torch.randn(o, i, k, k, generator=gen) * (2.0 / (i * k * k)) ** 0.5

    def gn(name, c):
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=gen)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=gen)

    conv("encoder.conv1", base, in_ch, 3)
    gn("encoder.gn1", base)
    c_in = base
    for s, n in enumerate(layers):
        c_out = base * 2 ** s
        for b in range(n):
            p, ci = f"encoder.stages_{s}.layers_{b}", c_in if b == 0 else c_out
            conv(f"{p}.conv1", c_out, ci, 3)
            gn(f"{p}.gn1", c_out)
            conv(f"{p}.conv2", c_out, c_out, 3)
            gn(f"{p}.gn2", c_out)
            if b == 0 and (s > 0 or ci != c_out):
                conv(f"{p}.proj_conv", c_out, ci, 1)
                gn(f"{p}.proj_gn", c_out)
        gn(f"encoder.layer{s + 1}_norm", c_out)
        c_in = c_out
    return state


def jax_form(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights as the JAX export names them: kernels HWIO, norm scales."""
    out = {}
    for k, v in state.items():
        if v.ndim == 4:
            out[k.replace(".weight", ".kernel")] = v.permute(2, 3, 1, 0).contiguous()
        elif k.endswith(".weight"):
            out[k.replace(".weight", ".scale")] = v
        else:
            out[k] = v
    return out


def std32(x, dim):  # safe_std
    x32 = x.float()
    var = (x32 - x32.mean(dim=dim, keepdim=True)).pow(2).mean(dim=dim)
    return torch.sqrt(var.clamp_min(0) + 1e-6).to(x.dtype)


def reference_features(w: dict[str, torch.Tensor], layers, x: torch.Tensor, block_stride: int = 2):
    def gn(y, p):
        return F.group_norm(y, groups(y.shape[1]), w[f"{p}.weight"], w[f"{p}.bias"], eps=1e-5)

    maps = {}
    y = F.relu(gn(F.conv2d(x, w["encoder.conv1.weight"], padding=1), "encoder.gn1"))
    maps["conv1"] = y
    for s, n in enumerate(layers):
        for b in range(n):
            p, stride = f"encoder.stages_{s}.layers_{b}", 2 if s > 0 and b == 0 else 1
            h = F.relu(gn(F.conv2d(y, w[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.gn1"))
            h = gn(F.conv2d(h, w[f"{p}.conv2.weight"], padding=1), f"{p}.gn2")
            r = y if h.shape == y.shape else gn(F.conv2d(y, w[f"{p}.proj_conv.weight"], stride=stride), f"{p}.proj_gn")
            y = F.relu(r + h)
            if (b + 1) % block_stride == 0 and b + 1 < n:
                maps[f"layer{s + 1}_blk{b + 1}"] = y
        y = maps[f"layer{s + 1}"] = gn(y, f"encoder.layer{s + 1}_norm")
    out = {}
    for name, v in maps.items():
        out[f"{name}_mean"] = v.mean(dim=(2, 3))[:, None]
        out[f"{name}_std"] = std32(v, (2, 3))[:, None]
        for p in (2, 4):
            if v.shape[2] % p == 0 and v.shape[3] % p == 0:
                pt = F.unfold(v, p, stride=p)  # (B, C*p*p, N), channel-major, patches row-major
                pt = pt.view(v.shape[0], v.shape[1], p * p, -1)
                out[f"{name}_mean_{p}"] = pt.mean(dim=2).transpose(1, 2)
                out[f"{name}_std_{p}"] = std32(pt, 2).transpose(1, 2)
    return out


LAYERS = [1, 3, 2, 1]


def _save(path, state, wrapper, layers=LAYERS, prefix=""):
    state = {prefix + k: v for k, v in state.items()}
    meta = {"model_config": {"layers": list(layers), "in_channels": 4}}
    obj = {"state_dict": {"state_dict": state, "metadata": meta}, "model_state_dict": {"model_state_dict": state,
           "metadata": meta}, "bare": state}[wrapper]
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict"])
@pytest.mark.parametrize("layout", ["torch", "jax"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod."])
def test_official_formats_load_and_match_the_official_semantics(tmp_path, wrapper, layout, prefix):
    state = official_state(4, 8, LAYERS)
    stored = state if layout == "torch" else jax_form(state)
    fmap = load_mae_encoder(_save(tmp_path / "mae.pth", stored, wrapper, prefix=prefix))
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    ours, ref = fmap(x), reference_features(state, LAYERS, x)
    assert sorted(ours) == sorted(ref)
    assert "layer2_blk2_mean" in ours and ours["layer4_mean_4"].shape == (2, 1, 64)  # layer4 is 4x4 here
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], atol=1e-5, rtol=1e-5, msg=k)


def test_bare_dict_uses_the_default_layers_and_the_sd_turbo_keys(tmp_path):
    layers = [3, 4, 6, 3]  # the official default, when the file carries no metadata
    state = official_state(4, 4, layers, seed=3)
    path = _save(tmp_path / "bare.pth", jax_form(state), "bare", layers)
    fmap = load_mae_encoder(path, SD_TURBO_KEYS)
    x = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    ours, ref = fmap(x), reference_features(state, layers, x.detach())
    assert list(ours) == list(SD_TURBO_KEYS)
    assert ours["layer4_mean"].shape == (2, 1, 32) and ours["layer4_std_2"].shape == (2, 16, 32)
    assert ours["layer4_mean_4"].shape == (2, 4, 32)
    for k in SD_TURBO_KEYS:
        torch.testing.assert_close(ours[k], ref[k], atol=1e-5, rtol=1e-5, msg=k)
    # frozen weights, differentiable in the latents
    assert not any(p.requires_grad for p in fmap.parameters())
    sum(v.sum() for v in ours.values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    fmap.train()
    assert not fmap.training
    assert features.load_mae_encoder is load_mae_encoder


def test_runs_in_the_checkpoint_dtype(tmp_path):
    state = official_state(4, 8, LAYERS)
    fmap = load_mae_encoder(_save(tmp_path / "m.pth", state, "state_dict"), ["layer4_std"])
    out = fmap(torch.randn(1, 4, 16, 16).half())
    assert out["layer4_std"].dtype == torch.float32  # latents are cast to the weights' dtype, as official


def test_profile_loader_gives_the_six_layer4_keys(tmp_path):
    path = _save(tmp_path / "m.pth", official_state(4, 8, LAYERS), "state_dict")
    out = profiles._mae256(str(path), torch.device("cpu"))(torch.randn(1, 4, 64, 64))
    assert list(out) == list(SD_TURBO_KEYS)
    with pytest.raises(FileNotFoundError, match="--features-path"):
        profiles._mae256(str(tmp_path / "absent.pth"), torch.device("cpu"))


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.pop("encoder.stages_1.layers_2.gn2.bias"), "missing [encoder.stages_1.layers_2.gn2.bias]"),
    (lambda s: s.update({"encoder.extra.weight": torch.zeros(3)}), "unexpected [encoder.extra.weight]"),
    (lambda s: s.update({"encoder.layer2_norm.weight": torch.zeros(5)}),
     "misshapen [encoder.layer2_norm.weight (5,) != (16,)]"),
])
def test_bad_checkpoint_is_one_line_naming_keys_and_file(tmp_path, edit, expected):
    state = official_state(4, 8, LAYERS)
    edit(state)
    path = _save(tmp_path / "bad.pth", state, "state_dict")
    with pytest.raises(ValueError) as info:
        load_mae_encoder(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and expected in msg


def test_the_old_layout_and_non_checkpoints_are_refused_in_one_line(tmp_path):
    old = {"conv1.0.weight": torch.zeros(8, 4, 3, 3), "stages.0.0.conv1.weight": torch.zeros(8, 8, 3, 3)}
    torch.save(old, tmp_path / "old.pth")
    with pytest.raises(ValueError, match=r"old\.pth: not an official MAE checkpoint: no 4-d encoder\.conv1"):
        load_mae_encoder(tmp_path / "old.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth: not an MAE checkpoint"):
        load_mae_encoder(tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.pth: cannot be read as a torch checkpoint"):
        load_mae_encoder(tmp_path / "text.pth")


def test_latent_token_std_is_computed_in_float32():
    x = (1000 + torch.randn(2, 4, 8, 8)).bfloat16()  # a large mean: var in bf16 loses everything
    out = features.multiscale_features({"layer0": x}, ["layer0_std", "layer0_std_2"])
    assert out["layer0_std"].dtype == torch.bfloat16
    torch.testing.assert_close(out["layer0_std"], std32(x, (2, 3))[:, None], atol=0, rtol=0)
