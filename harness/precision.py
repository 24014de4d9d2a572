"""``--mixed-precision no|fp16|bf16``: the dtype of every frozen component, resolved once per run.

As in diffusers' and accelerate's LoRA training scripts, the frozen weights (text encoders, UNet, VAE,
and so the reference, which is the same UNet with adapters off; the reward; the feature encoder) are
cast to the half dtype while the LoRA weights and AdamW's state stay float32. Two exceptions follow the
model's own config or the device:

* SDXL's VAE keeps float32 under fp16 when its config says ``force_upcast`` (it overflows in fp16;
  diffusers' SDXL pipeline upcasts it the same way);
* on CPU everything runs in float32 whatever was asked, and the manifest says so.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def dtype_for(requested: str, device: torch.device) -> torch.dtype:
    """The frozen weights' dtype for ``requested`` on ``device``; raises for bf16 where it is missing."""
    if requested not in DTYPES:
        raise ValueError(f"unknown mixed precision '{requested}'; valid: {', '.join(DTYPES)}")
    if device.type != "cuda":
        return torch.float32
    if requested == "bf16" and not bf16_supported(device):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"--mixed-precision bf16: {name} has no bf16 support; use fp16 or no")
    return DTYPES[requested]


def describe(requested: str, device: torch.device) -> dict[str, str]:
    """The manifest's record of what was asked and what ran."""
    used = NAMES[dtype_for(requested, device)]
    out = {"requested": requested, "frozen_weights": used, "trainable": "float32"}
    if device.type != "cuda" and requested != "no":
        out["note"] = f"{device.type} runs in float32; --mixed-precision {requested} applies on CUDA only"
    return out


def reward_options(factory: Any, options: dict[str, str] | None, dtype: torch.dtype) -> dict[str, str]:
    """A reward's options with ``dtype`` set to the run's, if the reward takes one and none was given."""
    options = dict(options or {})
    if "dtype" not in options and _takes_dtype(factory):
        options["dtype"] = NAMES[dtype]
    return options


def _takes_dtype(factory: Any) -> bool:
    if isinstance(factory, tuple):  # a pattern entry (remote:URL, cmd:...): never in-process weights
        return False
    classes = inspect.getmro(factory) if inspect.isclass(factory) else (factory,)
    for cls in classes:
        init = cls.__init__ if inspect.isclass(cls) else cls
        try:
            if "dtype" in inspect.signature(init).parameters:
                return True
        except (TypeError, ValueError):
            continue
    return False
