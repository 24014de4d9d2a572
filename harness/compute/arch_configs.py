"""The architecture config files in ``harness/configs/``: their names, the parts of each kind, the schema
every file is validated against, and loading (cached, and copied for callers). ``harness/compute/archs.py`` builds
and counts the models these files describe.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.registry import unknown

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

NAMES = ("sd-turbo-unet", "sd-vae", "openclip-h-text", "sdxl-turbo-unet", "sdxl-vae", "sdxl-text-encoders",
         "hpsv3", "pickscore", "mae-latent-256", "vit-mae-base")
"""Every architecture with a config file in ``harness/configs/``."""

PARTS = {
    "unet": ("unet",),
    "vae": ("decoder", "encoder"),
    "clip-text": ("text",),
    "sdxl-text": ("both", "text_encoder", "text_encoder_2"),
    "qwen2-vl-reward": ("full", "vision", "lm", "head"),
    "clip": ("full", "image", "text"),
    "resnet-encoder": ("encoder",),
    "vit-mae": ("encoder",),
}
"""The parts of each kind of architecture; the first is the default."""

# -- schema --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Type:
    desc: str
    check: Callable[[Any], bool]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


INT = _Type("an int", is_int)
POS = _Type("a positive int", lambda v: is_int(v) and v > 0)
NUM = _Type("a number", lambda v: (is_int(v) or isinstance(v, float)) and math.isfinite(v))
FRAC = _Type("a number in [0, 1)", lambda v: NUM.check(v) and 0 <= v < 1)
STR = _Type("a string", lambda v: isinstance(v, str) and bool(v))
BOOL = _Type("a bool", lambda v: isinstance(v, bool))
DICT = _Type("an object", lambda v: isinstance(v, dict))
INTS = _Type("a non-empty list of positive ints", lambda v: isinstance(v, list) and bool(v)
             and all(POS.check(x) for x in v))
STRS = _Type("a non-empty list of strings", lambda v: isinstance(v, list) and bool(v)
             and all(STR.check(x) for x in v))

_CLIP_TEXT = {"vocab_size": POS, "hidden_size": POS, "intermediate_size": POS, "num_hidden_layers": POS,
              "num_attention_heads": POS, "max_position_embeddings": POS, "hidden_act": STR}
_CLIP_VISION = {"hidden_size": POS, "intermediate_size": POS, "num_hidden_layers": POS,
                "num_attention_heads": POS, "image_size": POS, "patch_size": POS, "hidden_act": STR}

_SCHEMA: dict[str, dict[str, dict[str, _Type]]] = {
    "unet": {
        "config": {"sample_size": POS, "in_channels": POS, "out_channels": POS, "down_block_types": STRS,
                   "up_block_types": STRS, "block_out_channels": INTS, "layers_per_block": POS,
                   "attention_head_dim": INTS, "cross_attention_dim": POS, "use_linear_projection": BOOL,
                   "norm_num_groups": POS},
        "inputs": {"latent_channels": POS, "latent_size": POS, "text_tokens": POS, "timestep": INT},
        "lora": {"rank": POS, "targets": STRS},
    },
    "vae": {
        "config": {"in_channels": POS, "out_channels": POS, "down_block_types": STRS, "up_block_types": STRS,
                   "block_out_channels": INTS, "layers_per_block": POS, "latent_channels": POS,
                   "norm_num_groups": POS, "sample_size": POS, "scaling_factor": NUM},
        "inputs": {"latent_size": POS},
    },
    "clip-text": {"config": _CLIP_TEXT, "inputs": {"tokens": POS}},
    "sdxl-text": {"config": {"text_encoder": DICT, "text_encoder_2": DICT}, "inputs": {"tokens": POS},
                  "config.text_encoder": _CLIP_TEXT,
                  "config.text_encoder_2": {**_CLIP_TEXT, "projection_dim": POS}},
    "qwen2-vl-reward": {
        "config": {"text_config": DICT, "vision_config": DICT, "rm_head": INTS},
        "config.text_config": {"vocab_size": POS, "hidden_size": POS, "intermediate_size": POS,
                               "num_hidden_layers": POS, "num_attention_heads": POS, "num_key_value_heads": POS,
                               "rope_parameters": DICT},
        "config.vision_config": {"depth": POS, "embed_dim": POS, "hidden_size": POS, "num_heads": POS,
                                 "mlp_ratio": POS, "patch_size": POS, "spatial_merge_size": POS,
                                 "temporal_patch_size": POS, "in_channels": POS},
        "inputs": {"image_size": POS, "instruction_tokens": INT, "template_tokens": INT, "prompt_tokens": INT},
    },
    "clip": {"config": {"projection_dim": POS, "text_config": DICT, "vision_config": DICT},
             "config.text_config": {**_CLIP_TEXT, "projection_dim": POS},
             "config.vision_config": {**_CLIP_VISION, "projection_dim": POS},
             "inputs": {"image_size": POS, "text_tokens": POS}},
    "resnet-encoder": {"config": {"in_channels": POS, "base_width": POS, "layers": INTS},
                       "inputs": {"latent_size": POS}},
    "vit-mae": {"config": {"hidden_size": POS, "num_hidden_layers": POS, "num_attention_heads": POS,
                           "intermediate_size": POS, "image_size": POS, "patch_size": POS, "num_channels": POS},
                "inputs": {"image_size": POS, "mask_ratio": FRAC}},
}
OPTIONAL_INPUTS = {"unet": {"pooled_text_dim": POS, "time_ids": POS}, "qwen2-vl-reward": {"seq_len": POS}}
_TOP = {"kind": STR, "description": STR, "source": STR, "config": DICT, "inputs": DICT}


def _fail(where: str, msg: str) -> ValueError:
    return ValueError(f"architecture config {where}: {msg}")


def _lookup(data: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def validate(data: Any, where: str = "<config>") -> dict:
    """Check one config's structure and types; raise a one-line ``ValueError`` naming ``where`` and the key."""
    if not isinstance(data, dict):
        raise _fail(where, f"top level must be an object, got {type(data).__name__}")
    for key, typ in _TOP.items():
        if key not in data:
            raise _fail(where, f"missing required key '{key}'")
        if not typ.check(data[key]):
            raise _fail(where, f"key '{key}' must be {typ.desc}, got {_show(data[key])}")
    kind = data["kind"]
    if kind not in _SCHEMA:
        raise _fail(where, f"key 'kind' must be one of {', '.join(_SCHEMA)}, got '{kind}'")
    if "notes" in data and not STR.check(data["notes"]):
        raise _fail(where, f"key 'notes' must be {STR.desc}, got {_show(data['notes'])}")
    for section, keys in _SCHEMA[kind].items():
        if section not in data and "." not in section:  # a missing nested section is caught one level up
            raise _fail(where, f"missing required key '{section}'")
        block = _lookup(data, section)
        if not isinstance(block, dict):
            raise _fail(where, f"key '{section}' must be an object, got {_show(block)}")
        for key, typ in keys.items():
            if key not in block:
                raise _fail(where, f"missing required key '{section}.{key}'")
            if not typ.check(block[key]):
                raise _fail(where, f"key '{section}.{key}' must be {typ.desc}, got {_show(block[key])}")
    for key, typ in OPTIONAL_INPUTS.get(kind, {}).items():
        if key in data["inputs"] and not typ.check(data["inputs"][key]):
            raise _fail(where, f"key 'inputs.{key}' must be {typ.desc}, got {_show(data['inputs'][key])}")
    _cross_check(data, where)
    return data


def _cross_check(data: dict, where: str) -> None:
    kind, cfg, inputs = data["kind"], data["config"], data["inputs"]
    if kind == "unet":
        n = len(cfg["block_out_channels"])
        for key in ("down_block_types", "up_block_types", "attention_head_dim", "transformer_layers_per_block"):
            if key in cfg and isinstance(cfg[key], list) and len(cfg[key]) != n:
                raise _fail(where, f"key 'config.{key}' has {len(cfg[key])} entries but block_out_channels has {n}")
        if cfg.get("addition_embed_type") == "text_time":
            for key in ("pooled_text_dim", "time_ids"):
                if key not in inputs:
                    raise _fail(where, f"missing required key 'inputs.{key}' (addition_embed_type text_time)")
    elif kind == "vae" and len(cfg["down_block_types"]) != len(cfg["block_out_channels"]):
        raise _fail(where, "key 'config.down_block_types' must have one entry per block_out_channels")
    elif kind == "qwen2-vl-reward":
        text, vision = cfg["text_config"], cfg["vision_config"]
        if cfg["rm_head"][0] != text["hidden_size"]:
            raise _fail(where, f"key 'config.rm_head' must start at text hidden_size {text['hidden_size']}, "
                               f"got {cfg['rm_head'][0]}")
        if vision["hidden_size"] != text["hidden_size"]:
            raise _fail(where, "key 'config.vision_config.hidden_size' must equal text_config.hidden_size")
        if inputs["image_size"] % (vision["patch_size"] * vision["spatial_merge_size"]):
            raise _fail(where, "key 'inputs.image_size' must be a multiple of patch_size * spatial_merge_size")


def _show(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _split(name: str) -> tuple[str, str | None]:
    base, _, part = name.partition(":")
    return base, (part or None)


def load_config(name: str | Path) -> dict:
    """The validated config of architecture ``name`` (a name in :data:`NAMES`, or a path to a JSON file).

    A name with a part (``"sd-vae:encoder"``) loads the architecture's file. Unknown names raise the
    registry's error (valid names and the nearest match); a malformed file raises a one-line ``ValueError``
    naming the file and the offending key.
    """
    return copy.deepcopy(_load(name))


def _load(name: str | Path) -> dict:
    path = Path(name) if str(name).endswith(".json") else None
    if path is None:
        base, _ = _split(str(name))
        if base not in NAMES:
            raise unknown("architecture", base, list(NAMES))
        path = CONFIG_DIR / f"{base}.json"
    return _load_path(str(path))


@functools.cache
def _load_path(path: str) -> dict:
    where = Path(path).name
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise _fail(where, f"cannot be read ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(where, f"is not valid JSON: {e.msg} at line {e.lineno}") from None
    return validate(data, where)


def resolve(name: str) -> tuple[str, dict, str]:
    """(architecture name, config, part) for ``name`` or ``name:part``."""
    base, part = _split(name)
    cfg = _load(base)
    parts = PARTS[cfg["kind"]]
    if part is None:
        part = parts[0]
    elif part not in parts:
        raise unknown(f"{base} part", part, list(parts))
    return base, cfg, part


def forget() -> None:
    """Drop the cached files (after editing a config file in place)."""
    _load_path.cache_clear()
