"""The Shapes world's generator object (``harness.api.Generator``) around the nets of
``harness/shapes/model.py``, and the loaders of the committed assets: the generator, the image -> latent
encoder and the latent MAE feature encoder. Every asset is checksum-verified when it is loaded."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import Cond
from harness.features import LatentFeatures, ResNetEncoder
from harness.lora import DEFAULT_TARGETS, adapters_disabled, add_lora, load_lora_state, lora_state
from harness.shapes.assets import asset_info, load_asset
from harness.shapes.model import (
    CODE_POOL,
    LATENT_SHAPE,
    ImageEncoder,
    LatentDecoder,
    ModelConfig,
    ShapesNet,
    TextEncoder,
)


def pooled_code(noise: Tensor) -> Tensor:
    """noise (B, 4, 16, 16) -> u (B, 64): CODE_POOL x the 4x4 block means, exactly N(0, I) for N(0, I) noise."""
    return (CODE_POOL * F.avg_pool2d(noise, CODE_POOL)).flatten(1)


def component_pick(noise: Tensor) -> Tensor:
    """noise (B, 4, 16, 16) -> (B,) uniform in [0, 1), independent of ``pooled_code``: the first element's offset
    from its block mean is N(0, 15/16) and uncorrelated with every block mean (so, being Gaussian, independent),
    and its normal CDF is uniform."""
    block = CODE_POOL * CODE_POOL
    resid = noise[:, 0, 0, 0] - noise[:, 0, :CODE_POOL, :CODE_POOL].mean(dim=(1, 2))
    return 0.5 * (1 + torch.erf(resid / math.sqrt(2 * (block - 1) / block)))


class ShapesGenerator:
    """The Shapes world's ``harness.api.Generator``: frozen text encoder and decoder, trainable ShapesNet.

    ``lora_rank`` > 0 adapts the net's attention projections with LoRA (the reference pass is the net with
    adapters off); 0 fine-tunes the whole net (the reference pass is a frozen deep copy).
    """

    name = "shapes"
    resolution = 64
    latent_shape = LATENT_SHAPE
    _in_reference = False

    def __init__(self, cfg: ModelConfig, state: Mapping[str, Tensor] | None = None, *, lora_rank: int = 8,
                 seed: int = 0, device: str | torch.device = "cpu", base_asset: dict | None = None):
        self.cfg, self.device, self.lora_rank = cfg, torch.device(device), lora_rank
        self.base_asset = base_asset or {}
        self.text_encoder = TextEncoder(cfg.text)
        self.net = ShapesNet(cfg.net, cfg.text.width)
        self.decoder = LatentDecoder(cfg.decoder)
        if state is not None:
            load_model_state(self, state)
        for module in (self.text_encoder, self.net, self.decoder):
            module.to(self.device).eval()
        self.text_encoder.requires_grad_(False)
        self.decoder.requires_grad_(False)
        if lora_rank > 0:
            add_lora(self.net, rank=lora_rank, seed=seed)
            self._reference_net = None
        else:
            self._reference_net = copy.deepcopy(self.net).requires_grad_(False)

    def encode(self, prompts: Sequence[str]) -> Cond:
        """{"tokens": (B, L, d), "mask": (B, L) bool, "pooled": (B, d)}; frozen, no grad."""
        with torch.no_grad():
            return Cond(self.text_encoder(self.text_encoder.ids(prompts)))

    def noise(self, seeds: Sequence[int]) -> Tensor:
        """(B, 4, 16, 16) standard normal, one ``torch.Generator`` per seed (independent of the global RNG)."""
        draws = [torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(draws).to(self.device)

    def latents(self, noise: Tensor, cond: Cond) -> Tensor:
        """noise (B, 4, 16, 16) -> scaled latent x0 (B, 4, 16, 16); differentiable in ``trainable()``."""
        net = self._reference_net if self._in_reference and self._reference_net is not None else self.net
        return net(pooled_code(noise), cond.tensors, component_pick(noise)) * self.cfg.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """latents (B, 4, 16, 16) -> images (B, 3, 64, 64) in [0, 1]; frozen, differentiable in ``latents``."""
        return self.decoder(latents / self.cfg.scaling_factor)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """``latents`` runs the frozen base net inside this context (no grad)."""
        self._in_reference = True
        try:
            if self._reference_net is None:
                with adapters_disabled(self.net):
                    yield
            else:
                with torch.no_grad():
                    yield
        finally:
            self._in_reference = False

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, Tensor]:
        if self.lora_rank > 0:
            return lora_state(self.net)
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def load_trainable_state(self, state: Mapping[str, Tensor]) -> None:
        if self.lora_rank > 0:
            load_lora_state(self.net, dict(state))
        else:
            self.net.load_state_dict(state)

    def save_adapter(self, directory: str) -> None:
        """Write the fine-tuned weights (safetensors) and a JSON naming the base asset and the adapter setup.

        LoRA: ``adapter_model.safetensors`` (peft key names) + ``adapter_config.json`` (peft's LoRA fields);
        full fine-tuning: ``net.safetensors``. Both write ``base.json``.
        """
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        state = {k: v.contiguous().cpu() for k, v in self.trainable_state().items()}
        if self.lora_rank > 0:
            save_file(state, os.path.join(directory, "adapter_model.safetensors"))
            peft_cfg = {"peft_type": "LORA", "r": self.lora_rank, "lora_alpha": self.lora_rank,
                        "lora_dropout": 0.0, "target_modules": sorted(_lora_targets(self.net)), "bias": "none"}
            _write_json(os.path.join(directory, "adapter_config.json"), peft_cfg)
        else:
            save_file(state, os.path.join(directory, "net.safetensors"))
        _write_json(os.path.join(directory, "base.json"),
                    {"generator": self.name, "lora_rank": self.lora_rank, **self.base_asset})

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.text_encoder, "net": self.net, "decoder": self.decoder}


def _lora_targets(module: nn.Module) -> set[str]:
    names = {n for n, _ in module.named_modules()}
    return {t for t in DEFAULT_TARGETS if any(n == t or n.endswith("." + t) for n in names)}


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def model_state(text_encoder: nn.Module, net: nn.Module, decoder: nn.Module) -> dict[str, Tensor]:
    """One flat state dict with ``text_encoder.``, ``net.``, ``decoder.`` prefixes (the asset's layout)."""
    out = {}
    for prefix, module in (("text_encoder", text_encoder), ("net", net), ("decoder", decoder)):
        out.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    return out


def load_model_state(gen: ShapesGenerator, state: Mapping[str, Tensor]) -> None:
    """Load an asset state (see :func:`model_state`) into a generator built without adapters."""
    for prefix, module in gen.modules.items():
        part = {k[len(prefix) + 1:]: v.float() for k, v in state.items() if k.startswith(prefix + ".")}
        module.load_state_dict(part)


def load_generator(*, lora_rank: int = 8, seed: int = 0, device: str | torch.device = "cpu",
                   directory: str | os.PathLike | None = None) -> ShapesGenerator:
    """The pretrained generator (``harness/assets/shapes/generator.safetensors`` unless ``directory`` says
    otherwise), checksum-verified; ``lora_rank`` 0 means full fine-tuning."""

    state, config = load_asset("generator", directory)
    return ShapesGenerator(ModelConfig.from_dict(config), state, lora_rank=lora_rank, seed=seed, device=device,
                           base_asset=asset_info("generator", directory))


class LatentImageEncoder(nn.Module):
    """images (B, 3, 64, 64) in [0, 1] -> scaled generator latents (B, 4, 16, 16): ImageEncoder x scaling."""

    def __init__(self, encoder: ImageEncoder, scaling_factor: float):
        super().__init__()
        self.encoder, self.scaling_factor = encoder.eval().requires_grad_(False), scaling_factor

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder(images) * self.scaling_factor


def load_image_encoder(*, device: str | torch.device = "cpu",
                       directory: str | os.PathLike | None = None) -> LatentImageEncoder:
    """The committed image -> latent encoder (``image_encoder`` asset), checksum-verified."""

    state, config = load_asset("image_encoder", directory)
    encoder = ImageEncoder(config["width"])
    encoder.load_state_dict(state)
    return LatentImageEncoder(encoder, config["scaling_factor"]).to(device)


def load_features(keys: Sequence[str] | None = None, *, device: str | torch.device = "cpu",
                  directory: str | os.PathLike | None = None) -> LatentFeatures:
    """The pretrained latent MAE encoder as a frozen feature map on Shapes latents (B, 4, 16, 16) ->
    {key: (B, N, D)}; ``keys`` defaults to the asset's suggested DrPO keys."""

    state, config = load_asset("encoder", directory)
    encoder = ResNetEncoder(config["in_channels"], config["base_width"], tuple(config["layers"]))
    encoder.load_state_dict(state)
    return LatentFeatures(encoder, keys or config["keys"]).to(device)
