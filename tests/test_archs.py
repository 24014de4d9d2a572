"""Full-size architectures on meta: config schema, parameter counts and per-image FLOPs.

The reference numbers are independent measurements (shared/reference/cpu-facts.md section 3), taken with a
hand-written build of each model, not with ``harness.compute.archs``.
"""

from __future__ import annotations

import json

import pytest

from harness.compute import archs
from harness.registry import UnknownName

G = 1e9


def close(value: float, reference: float, rel: float = 0.01) -> bool:
    return abs(value - reference) <= rel * abs(reference)


# -- schema (fast) -------------------------------------------------------------------------------

@pytest.mark.unit
def test_every_shipped_config_validates_and_cites_a_source():
    files = sorted(p.stem for p in archs.CONFIG_DIR.glob("*.json"))
    assert files == sorted(archs.NAMES)
    for name in archs.NAMES:
        cfg = archs.load_config(name)
        assert len(cfg["source"]) > 40, name
        assert cfg["kind"] in archs.PARTS


@pytest.mark.unit
def test_load_config_returns_a_copy():
    archs.load_config("sd-vae")["config"]["latent_channels"] = 99
    assert archs.load_config("sd-vae")["config"]["latent_channels"] == 4


def _write(tmp_path, name, mutate):
    data = archs.load_config(name)
    mutate(data)
    path = tmp_path / f"broken-{name}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.unit
def test_wrong_type_names_file_and_key(tmp_path):
    path = _write(tmp_path, "sd-turbo-unet", lambda d: d["config"].update(block_out_channels="320,640"))
    with pytest.raises(ValueError) as err:
        archs.load_config(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "broken-sd-turbo-unet.json" in msg and "'config.block_out_channels'" in msg and "list of positive ints" in msg


@pytest.mark.unit
def test_bool_is_not_an_int(tmp_path):
    path = _write(tmp_path, "sd-vae", lambda d: d["inputs"].update(latent_size=True))
    with pytest.raises(ValueError, match=r"broken-sd-vae\.json: key 'inputs\.latent_size' must be a positive int"):
        archs.load_config(path)


@pytest.mark.unit
@pytest.mark.parametrize("name,drop,key", [
    ("hpsv3", lambda d: d["config"]["text_config"].pop("num_key_value_heads"), "config.text_config.num_key_value_heads"),
    ("pickscore", lambda d: d.pop("source"), "source"),
    ("sdxl-turbo-unet", lambda d: d["inputs"].pop("pooled_text_dim"), "inputs.pooled_text_dim"),
    ("mae-latent-256", lambda d: d["config"].pop("layers"), "config.layers"),
])
def test_missing_key_names_file_and_key(tmp_path, name, drop, key):
    path = _write(tmp_path, name, drop)
    with pytest.raises(ValueError, match=rf"broken-{name}\.json: missing required key '{key}'"):
        archs.load_config(path)


@pytest.mark.unit
def test_inconsistent_lengths_and_bad_json(tmp_path):
    path = _write(tmp_path, "sd-turbo-unet", lambda d: d["config"].update(attention_head_dim=[5, 10, 20]))
    with pytest.raises(ValueError, match=r"'config\.attention_head_dim' has 3 entries but block_out_channels has 4"):
        archs.load_config(path)
    bad = tmp_path / "bad.json"
    bad.write_text("{\"kind\": \"unet\",")
    with pytest.raises(ValueError, match=r"bad\.json: is not valid JSON"):
        archs.load_config(bad)


@pytest.mark.unit
def test_unknown_names_suggest_the_nearest():
    with pytest.raises(UnknownName, match=r"unknown architecture 'sd-turbo-unt'; did you mean 'sd-turbo-unet'\?"):
        archs.load_config("sd-turbo-unt")
    with pytest.raises(UnknownName, match=r"did you mean 'pickscore'\?"):
        archs.component_flops("pickscor", mode="forward")
    with pytest.raises(UnknownName, match=r"unknown sd-vae part 'decodr'; did you mean 'decoder'\?"):
        archs.component_flops("sd-vae:decodr", mode="forward")
    with pytest.raises(UnknownName, match=r"unknown mode 'backward_param'; did you mean 'backward_params'\?"):
        archs.component_flops("sd-vae", mode="backward_param")
    with pytest.raises(ValueError, match="LoRA modes apply to generators"):
        archs.component_flops("hpsv3", mode="backward_lora")
    with pytest.raises(ValueError, match="token ids"):
        archs.component_flops("openclip-h-text", mode="backward_input")
    assert "backward_input" not in archs.modes("sdxl-text-encoders")
    assert archs.modes("sd-turbo-unet") == archs.MODES


# -- sizes and FLOPs on meta (slow: seconds each) ------------------------------------------------

@pytest.mark.slow
def test_param_counts():
    assert close(archs.param_count("sd-turbo-unet"), 865.9e6, 1e-3)
    assert close(archs.param_count("sd-vae"), 83.7e6, 1e-3)
    assert archs.param_count("sd-vae:decoder") + archs.param_count("sd-vae:encoder") == archs.param_count("sd-vae")
    assert close(archs.param_count("hpsv3:head"), 3584 * 1024 + 1024 + 1024 * 16 + 16 + 16 * 2 + 2, 0)


@pytest.mark.slow
def test_sd_turbo_unet_flops():
    fwd = archs.component_flops("sd-turbo-unet", mode="forward")
    assert close(fwd, 804e9) and close(fwd, 804.3e9)
    trainable = archs.component_flops("sd-turbo-unet", mode="forward_grad") + \
        archs.component_flops("sd-turbo-unet", mode="backward_params")
    assert close(trainable, 2408.8e9)
    # LoRA: the adapters add a little forward work; the backward skips every frozen weight gradient.
    lora_fwd = archs.component_flops("sd-turbo-unet", mode="forward_lora")
    lora_bwd = archs.component_flops("sd-turbo-unet", mode="backward_lora")
    assert fwd < lora_fwd < 1.01 * fwd
    assert 0.5 * archs.component_flops("sd-turbo-unet", mode="backward_params") < lora_bwd < \
        archs.component_flops("sd-turbo-unet", mode="backward_params")


@pytest.mark.slow
def test_sd_vae_decoder_flops():
    fwd = archs.component_flops("sd-vae", mode="forward")
    assert close(fwd, 2515e9) and close(fwd, 2514.5e9)
    assert close(fwd + archs.component_flops("sd-vae:decoder", mode="backward_input"), 5063.4e9)


@pytest.mark.slow
def test_text_encoder_and_hpsv3_parts():
    assert close(archs.component_flops("openclip-h-text", mode="forward"), 45.1e9)
    assert close(archs.component_flops("hpsv3:vision", mode="forward"), 1486.2e9)
    assert close(archs.component_flops("hpsv3:lm", mode="forward", inputs={"seq_len": 361}), 4763.6e9)
    # HPSv3's own length: 256 image tokens + template + instruction + prompt.
    assert archs.seq_len("hpsv3") == 256 + 21 + 530 + 24
    full = archs.component_flops("hpsv3", mode="forward")
    parts = sum(archs.component_flops(f"hpsv3:{p}", mode="forward") for p in ("vision", "lm", "head"))
    assert full == parts


@pytest.mark.slow
def test_counts_are_cached_and_per_image():
    before = len(archs._COUNTS)
    archs.component_flops("sd-vae", mode="forward")
    archs.component_flops("sd-vae", mode="forward")
    assert len(archs._COUNTS) <= before + 1
    one = archs.component_flops("mae-latent-256", mode="forward")
    two = archs.component_flops("mae-latent-256", mode="forward", batch=2)
    assert close(two, one, 1e-9)
    assert archs.component_flops("mae-latent-256", mode="backward_input") > 0
