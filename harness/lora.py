"""LoRA on any torch module through peft, with the reference pass as "adapters off".

The same three helpers serve the diffusers UNets and the Shapes world's generator, so the frozen
reference generator is always the trainable network with its adapters disabled (no second copy of
the weights, the trick torchtune's LoRA-DPO recipe uses).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from harness import memory

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The attention projections DrPO and every baseline adapt (drpo-method.md section 2.3)."""


def add_lora(module: torch.nn.Module, *, rank: int, alpha: float | None = None,
             targets: Sequence[str] = DEFAULT_TARGETS, seed: int = 0) -> torch.nn.Module:
    """Freeze ``module`` and inject rank-``rank`` LoRA adapters into the named submodules.

    ``alpha`` defaults to ``rank`` (scale 1, the paper's r=16, alpha=16). The adapters' B matrices start
    at zero, so the adapted network equals the base network until the first update. ``seed`` makes the
    A matrices' initialisation reproducible without touching the global RNG.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    device = next((p.device for p in module.parameters()), "cpu")
    need = memory.lora_params(module, rank, targets) * memory.LORA_BYTES_PER_PARAM
    memory.check_fits(need, device, f"LoRA rank {rank} (its adapters, gradients and AdamW state)",
                      "give a smaller --lora-rank")
    module.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=0.0,
                        target_modules=list(targets), init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, module)
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError(f"no LoRA target among {list(targets)} was found in {type(module).__name__}")
    return module


def has_lora(module: torch.nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


@contextlib.contextmanager
def adapters_disabled(module: torch.nn.Module) -> Iterator[None]:
    """Run ``module`` as its frozen base: adapters off and no autograd graph."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        with torch.no_grad():
            yield
    finally:
        # enable_adapters(True) also restores requires_grad on the adapter weights.
        for layer in layers:
            layer.enable_adapters(True)


def lora_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights in peft's naming (``...to_q.lora_A.weight``), detached copies."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(module).items()}


def load_lora_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load weights produced by :func:`lora_state`; every adapter weight must be present."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(module, state)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"adapter state is missing {len(missing)} LoRA weights, e.g. {missing[0]}")
