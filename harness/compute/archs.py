"""Full-size architectures on the meta device: per-image FLOPs and parameter counts, with no weights.

Each released component the benchmark talks about (the SD-Turbo and SDXL-Turbo generators, their VAEs
and text encoders, the HPSv3 and PickScore rewards, the DrPO feature encoders) has a JSON file in
``harness/configs/`` with the exact architecture hyperparameters of the released model and a ``source``
field saying where they come from. ``harness/compute/arch_configs.py`` validates and loads those files; this module
builds the models on ``torch.device("meta")`` (no weights, no memory, well under a second each) and counts their FLOPs with
:func:`harness.budget.count_flops`, the same counter the meter uses (math SDPA forced, never inside
``inference_mode``).

Names. ``name`` is an architecture (``"sd-vae"``) or an architecture and one of its parts
(``"sd-vae:encoder"``, ``"hpsv3:vision"``). Each kind's first part is the default:

======================  ==========================================================================
kind (files)            parts
======================  ==========================================================================
unet (sd-turbo-unet,    ``unet``: the denoiser at ``inputs.latent_size`` with ``text_tokens`` of
sdxl-turbo-unet)        context (and SDXL's pooled text + time ids)
vae (sd-vae, sdxl-vae)  ``decoder`` (latents -> pixels, what a generator step runs), ``encoder``
clip-text               ``text``
sdxl-text               ``both`` (= ``text_encoder`` + ``text_encoder_2``), ``text_encoder``,
                        ``text_encoder_2``
qwen2-vl-reward         ``full`` (= ``vision`` + ``lm`` + ``head``), ``vision`` (the ViT on
(hpsv3)                 ``image_size`` px), ``lm`` (the Qwen2 decoder on L tokens), ``head`` (rm_head
                        on every token)
clip (pickscore)        ``full`` (= ``image`` + ``text``), ``image``, ``text``
resnet-encoder          ``encoder`` (harness.mae.MAELatentEncoder, the official MAE-256, all stages)
vit-mae                 ``encoder`` (ViTMAEModel at ``inputs.mask_ratio``: 0.75 keeps 49 of 196 patches)
======================  ==========================================================================

Modes (:data:`MODES`), all per image:

* ``forward``: no-grad forward.
* ``forward_grad`` / ``backward_params``: forward with grad enabled and the backward pass that computes
  the gradient w.r.t. every weight (full fine-tuning; the input carries no grad).
* ``forward_lora`` / ``backward_lora`` (generators only): peft LoRA injected on the meta model
  (``lora.rank`` on ``lora.targets`` of the config; frozen base), the forward with the adapters and the
  backward computing only the adapters' weight gradients (which still backpropagates activations through
  every layer down to the first adapter).
* ``backward_input``: frozen component, gradient w.r.t. its differentiable input only (the decoder and
  the reward in reward backprop, the feature encoder in DrPO). Text towers have no differentiable input
  (token ids): for them this mode is an error, and for ``pickscore`` it is the image tower's.

HPSv3 is counted by parts, because the full multimodal forward fails on meta (``grid_thw.tolist()`` in
the position-id code): the vision tower with a CPU ``grid_thw`` and precomputed position ids, the
language model on meta ``inputs_embeds`` with explicit (3, B, L) M-RoPE position ids, and the rm_head on
all L tokens (HPSv3 applies it to every position and reads the score at ``<|Reward|>``; ``lm_head`` is
never run). The sum omits only the image-embedding scatter, which does no multiply-adds.

FLOPs come from ``FlopCounterMode``: matmuls, convolutions and attention, 2 FLOPs per multiply-add;
norms, activations and softmax count as zero.

API: :func:`load_config` (validated dict; :func:`validate` for a dict in hand), :func:`build_meta`,
:func:`param_count`, :func:`component_flops`, :func:`modes` (the modes a component accepts),
:func:`seq_len` (HPSv3's L), :func:`table` (every component and mode), :func:`clear_cache`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from harness.budget import count_flops
from harness.compute.arch_configs import (  # noqa: F401 - CONFIG_DIR, NAMES, PARTS and load_config re-exported
    CONFIG_DIR,
    NAMES,
    OPTIONAL_INPUTS,
    PARTS,
    forget,
    is_int,
    load_config,
    resolve,
    validate,
)
from harness.lora import add_lora
from harness.mae import MAELatentEncoder
from harness.registry import unknown

MODES = ("forward", "forward_grad", "backward_params", "forward_lora", "backward_lora", "backward_input")
"""What :func:`component_flops` can count; see the module docstring."""

_COMPOSITE = {("sdxl-text", "both"): ("text_encoder", "text_encoder_2"),
              ("qwen2-vl-reward", "full"): ("vision", "lm", "head"),
              ("clip", "full"): ("image", "text")}
_NO_INPUT_GRAD = {("clip-text", "text"), ("sdxl-text", "text_encoder"), ("sdxl-text", "text_encoder_2"),
                  ("clip", "text")}
"""Parts whose input is token ids: nothing to differentiate for ``backward_input``."""


# -- building on meta ----------------------------------------------------------------------------

def _public(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _build(cfg: dict) -> nn.Module:
    kind, c = cfg["kind"], _public(cfg["config"])
    if kind == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**c)
    if kind == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL(**c)
    if kind == "clip-text":
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(**c))
    if kind == "sdxl-text":
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        return nn.ModuleDict({"text_encoder": CLIPTextModel(CLIPTextConfig(**c["text_encoder"])),
                              "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**c["text_encoder_2"]))})
    if kind == "qwen2-vl-reward":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        # Every size is passed: Qwen2VLConfig() defaults are 72B-sized.
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=dict(c["text_config"]),
                                                              vision_config=dict(c["vision_config"])))
        dims = c["rm_head"]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers += [nn.ReLU()] + ([nn.Dropout(0.05)] if i == 0 else [])
        model.rm_head = nn.Sequential(*layers)  # HPSv3's Linear-ReLU-Dropout-Linear-ReLU-Linear
        return model
    if kind == "clip":
        from transformers import CLIPConfig, CLIPModel

        return CLIPModel(CLIPConfig(**c))
    if kind == "resnet-encoder":
        return MAELatentEncoder(c["in_channels"], c["base_width"], tuple(c["layers"]))
    if kind == "vit-mae":
        from transformers import ViTMAEConfig, ViTMAEModel

        return ViTMAEModel(ViTMAEConfig(**{**c, "mask_ratio": cfg["inputs"]["mask_ratio"]}))
    raise AssertionError(kind)  # validate() admits only the kinds above


def build_meta(name: str) -> nn.Module:
    """A fresh full-size model for architecture ``name`` on ``torch.device("meta")`` (no weights).

    ``hpsv3`` is a ``Qwen2VLForConditionalGeneration`` with HPSv3's ``rm_head`` attached; ``sdxl-text-encoders``
    is a ``ModuleDict`` of ``text_encoder`` and ``text_encoder_2``. A part suffix is ignored (the whole
    architecture is built).
    """
    _, cfg, _ = resolve(name)
    with torch.device("meta"):
        model = _build(cfg)
    return model.eval()


def build_random(name: str, *, device: str | torch.device = "cpu", seed: int = 0,
                 dtype: torch.dtype | None = None) -> nn.Module:
    """A full-size model for ``name`` with random weights on ``device`` (see :func:`random_weights`), for timing
    and smoke runs (timing does not depend on weight values). Needs the memory of the real model."""
    _, cfg, _ = resolve(name)
    return random_weights(lambda: _build(cfg), device=device, seed=seed, dtype=dtype).eval()


_BLOCK = (1 << 22) + 15
"""Length of the seeded normal block random weights are tiled from (not a multiple of any layer width)."""


def random_weights(build: Callable[[], nn.Module], *, device: str | torch.device = "cpu", seed: int = 0,
                   dtype: torch.dtype | None = None) -> nn.Module:
    """``build()`` run on ``device`` (in ``dtype`` when given) with its initialisers skipped, then filled fast.

    The default initialisers draw every value one by one: on two CPU cores a 1B-parameter model takes about a
    minute (measured: 62 s for a one-block Qwen2-VL of 0.85B, 46 of them in ``normal_``/``uniform_``). Here
    weight matrices and kernels are tiled from one seeded N(0, 1) block scaled by 1/sqrt(fan-in) (LeCun's
    variance, so activations keep their scale), 1-D parameters named ``bias`` are 0 and other 1-D ones (norm
    scales, embeddings of one vector) 1. Buffers (position ids, rotary frequencies) are computed by the modules'
    constructors as usual. Deterministic in ``seed``; the values mean nothing.
    """
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights

    default = torch.get_default_dtype()
    with no_init_weights(), torch.device(device):
        if dtype is not None:
            torch.set_default_dtype(dtype)
        try:
            model = build()
        finally:
            torch.set_default_dtype(default)
    block = torch.randn(_BLOCK, generator=torch.Generator().manual_seed(seed))
    blocks: dict[tuple, Tensor] = {}
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if p.ndim == 0:
                continue  # constructed from a config value (CLIP's logit_scale), not by an initialiser
            if p.ndim == 1:
                p.fill_(0.0 if name.endswith("bias") else 1.0)
                continue
            key = (p.device, p.dtype)
            if key not in blocks:
                blocks[key] = block.to(p.device, p.dtype)
            src, flat = blocks[key], p.view(-1)
            scale, shift = p[0].numel() ** -0.5, (i * 7919) % _BLOCK
            for start in range(0, flat.numel(), _BLOCK):
                chunk = flat[start:start + _BLOCK]
                n = chunk.numel()
                if shift + n <= _BLOCK:
                    chunk.copy_(src[shift:shift + n])
                else:
                    head = _BLOCK - shift
                    chunk[:head].copy_(src[shift:])
                    chunk[head:].copy_(src[:n - head])
                chunk.mul_(scale)
    return model


_MODELS: dict[str, nn.Module] = {}


def _model(base: str) -> nn.Module:
    if base not in _MODELS:
        _MODELS[base] = build_meta(base)
    return _MODELS[base]


def _part_modules(kind: str, model: nn.Module, part: str) -> list[nn.Module]:
    if (kind, part) in _COMPOSITE:
        return [m for sub in _COMPOSITE[kind, part] for m in _part_modules(kind, model, sub)]
    if kind == "vae":
        return [model.decoder, model.post_quant_conv] if part == "decoder" else [model.encoder, model.quant_conv]
    if kind == "sdxl-text":
        return [model[part]]
    if kind == "qwen2-vl-reward":
        return {"vision": [model.model.visual], "lm": [model.model.language_model], "head": [model.rm_head]}[part]
    if kind == "clip":
        if part == "image":
            return [model.vision_model, model.visual_projection]
        return [model.text_model, model.text_projection]
    return [model]


def param_count(name: str) -> int:
    """Parameters of architecture ``name`` (the whole model), or of one part (``"sd-vae:decoder"``).

    ``hpsv3`` counts Qwen2-VL-7B with its (unused by HPSv3) ``lm_head`` plus the rm_head; ``pickscore``
    includes ``logit_scale``.
    """
    base, cfg, part = resolve(name)
    model = _model(base)
    if ":" not in name:
        return sum(p.numel() for p in model.parameters())
    return sum(p.numel() for m in _part_modules(cfg["kind"], model, part) for p in m.parameters())


# -- per-part inputs and callables ---------------------------------------------------------------

def seq_len(name: str = "hpsv3", inputs: dict | None = None) -> int:
    """Tokens the HPSv3 language model runs on: merged image tokens + template + instruction + prompt."""
    _, cfg, _ = resolve(name)
    if cfg["kind"] != "qwen2-vl-reward":
        raise ValueError(f"seq_len applies to qwen2-vl-reward architectures, not '{name}' ({cfg['kind']})")
    return _seq_len(cfg, {**cfg["inputs"], **(inputs or {})})


def _seq_len(cfg: dict, inp: dict) -> int:
    if "seq_len" in inp:
        return int(inp["seq_len"])
    v = cfg["config"]["vision_config"]
    side = inp["image_size"] // v["patch_size"] // v["spatial_merge_size"]
    return side * side + inp["template_tokens"] + inp["instruction_tokens"] + inp["prompt_tokens"]


def _runner(kind: str, cfg: dict, model: nn.Module, part: str, batch: int, inputs: dict,
            input_grad: bool) -> tuple[Callable[..., Any], list[Tensor]]:
    """``(fn, args)``: the part's forward and its meta inputs; ``args[0]`` is the differentiable input."""
    meta = torch.device("meta")
    c = cfg["config"]

    def x(*shape: int) -> Tensor:
        return torch.empty(*shape, device=meta).requires_grad_(input_grad)

    def ids(n: int) -> Tensor:
        return torch.zeros(batch, n, dtype=torch.long, device=meta)

    if kind == "unet":
        s, n = inputs["latent_size"], inputs["text_tokens"]
        t = torch.full((batch,), inputs["timestep"], device=meta)
        ctx = torch.empty(batch, n, c["cross_attention_dim"], device=meta)
        added = None
        if c.get("addition_embed_type") == "text_time":
            added = {"text_embeds": torch.empty(batch, inputs["pooled_text_dim"], device=meta),
                     "time_ids": torch.empty(batch, inputs["time_ids"], device=meta)}
        return (lambda z: model(z, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample,
                [x(batch, inputs["latent_channels"], s, s)])
    if kind == "vae":
        s, f = inputs["latent_size"], 2 ** (len(c["block_out_channels"]) - 1)
        if part == "decoder":
            return (lambda z: model.decode(z).sample), [x(batch, c["latent_channels"], s, s)]
        return (lambda im: model.encode(im).latent_dist.mean), [x(batch, c["in_channels"], s * f, s * f)]
    if kind == "clip-text":
        return (lambda i: model(input_ids=i).last_hidden_state), [ids(inputs["tokens"])]
    if kind == "sdxl-text":
        enc = model[part]
        if part == "text_encoder":
            return (lambda i: enc(input_ids=i).last_hidden_state), [ids(inputs["tokens"])]
        return (lambda i: enc(input_ids=i).text_embeds), [ids(inputs["tokens"])]
    if kind == "qwen2-vl-reward":
        v, hidden = c["vision_config"], c["text_config"]["hidden_size"]
        if part == "vision":
            from transformers.vision_utils import get_vision_position_ids

            side = inputs["image_size"] // v["patch_size"]
            grid = torch.tensor([[1, side, side]] * batch)  # on CPU: the vision code reads its values
            pos = get_vision_position_ids(grid, v["spatial_merge_size"]).to(meta)
            patch = v["in_channels"] * v["temporal_patch_size"] * v["patch_size"] ** 2
            vis = model.model.visual
            return (lambda p: vis(p, grid_thw=grid, position_ids=pos).pooler_output,
                    [x(batch * side * side, patch)])
        n = _seq_len(cfg, inputs)
        if part == "lm":
            lm = model.model.language_model
            pos = torch.arange(n, device=meta).view(1, 1, n).expand(3, batch, n)  # M-RoPE (t, h, w)
            return (lambda e: lm(inputs_embeds=e, position_ids=pos, use_cache=False).last_hidden_state,
                    [x(batch, n, hidden)])
        return model.rm_head, [x(batch, n, hidden)]
    if kind == "clip":
        if part == "image":
            size = inputs["image_size"]
            return (lambda im: model.visual_projection(model.vision_model(pixel_values=im).pooler_output),
                    [x(batch, c["vision_config"].get("num_channels", 3), size, size)])
        return (lambda i: model.text_projection(model.text_model(input_ids=i).pooler_output),
                [ids(inputs["text_tokens"])])
    if kind == "resnet-encoder":
        s = inputs["latent_size"]
        return model, [x(batch, c["in_channels"], s, s)]
    if kind == "vit-mae":
        s = inputs["image_size"]
        ratio = inputs["mask_ratio"]

        def vit(im: Tensor) -> Tensor:
            model.config.mask_ratio = ratio  # the cached model is shared by every mask_ratio counted
            return model(pixel_values=im).last_hidden_state
        return vit, [x(batch, c["num_channels"], s, s)]
    raise AssertionError(kind)



# -- counting ------------------------------------------------------------------------------------

_SETTING = {"forward": ("nograd", "forward"), "forward_grad": ("params", "forward"),
            "backward_params": ("params", "backward"), "forward_lora": ("lora", "forward"),
            "backward_lora": ("lora", "backward"), "backward_input": ("input", "backward")}
_COUNTS: dict[tuple, Any] = {}  # key -> harness.budget._Count (forward, backward)


def _not_applicable(kind: str, part: str, mode: str) -> str | None:
    """Why ``mode`` cannot be counted for this part, or None."""
    if mode in ("forward_lora", "backward_lora") and kind != "unet":
        return f"LoRA modes apply to generators (unet configs), not {kind}"
    if mode == "backward_input":
        subs = _COMPOSITE.get((kind, part), (part,))
        if all((kind, s) in _NO_INPUT_GRAD for s in subs):
            return "its input is token ids (nothing to differentiate)"
    return None


def modes(name: str) -> tuple[str, ...]:
    """The modes :func:`component_flops` accepts for ``name``."""
    _, cfg, part = resolve(name)
    return tuple(m for m in MODES if _not_applicable(cfg["kind"], part, m) is None)


def component_flops(name: str, *, batch: int = 1, mode: str, inputs: dict | None = None) -> float:
    """FLOPs per image of component ``name`` (``arch`` or ``arch:part``) in ``mode``, counted on meta.

    The count runs at batch ``batch`` and is divided by it. ``inputs`` overrides the config's ``inputs``
    (``{"latent_size": 128}``, ``{"prompt_tokens": 77}``, ``{"seq_len": 361}``). Each (component, part,
    counting pass, batch, inputs) is counted once per process; ``forward_grad`` and ``backward_params``
    (and ``forward_lora`` and ``backward_lora``) share one pass.
    """
    if mode not in MODES:
        raise unknown("mode", mode, list(MODES))
    if not (is_int(batch) and batch > 0):
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    base, cfg, part = resolve(name)
    kind = cfg["kind"]
    setting, which = _SETTING[mode]
    why = _not_applicable(kind, part, mode)
    if why:
        raise ValueError(f"mode '{mode}' does not apply to '{name}': {why}")
    if inputs:
        valid = sorted(set(cfg["inputs"]) | set(OPTIONAL_INPUTS.get(kind, {})))
        for key in inputs:
            if key not in valid:
                raise unknown(f"{base} input", key, valid)
        validate({**cfg, "inputs": {**cfg["inputs"], **inputs}}, f"{base}.json with inputs {inputs}")
    if (kind, part) in _COMPOSITE:
        subs = _COMPOSITE[kind, part]
        if setting == "input":  # text towers carry no gradient back to the image
            subs = tuple(s for s in subs if (kind, s) not in _NO_INPUT_GRAD)
        return sum(component_flops(f"{base}:{s}", batch=batch, mode=mode, inputs=inputs) for s in subs)
    merged = {**cfg["inputs"], **(inputs or {})}
    key = (base, part, setting, batch, tuple(sorted(merged.items())))
    if key not in _COUNTS:
        _COUNTS[key] = _count(base, cfg, part, setting, batch, merged)
    return getattr(_COUNTS[key], which) / batch


def _count(base: str, cfg: dict, part: str, setting: str, batch: int, inputs: dict):
    kind = cfg["kind"]
    if setting == "lora":
        model = build_meta(base)  # a fresh copy: injection mutates the model
        with torch.device("meta"):
            add_lora(model, rank=cfg["lora"]["rank"], targets=cfg["lora"]["targets"])
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        model = _model(base)
        model.requires_grad_(setting == "params")
        params = list(model.parameters()) if setting == "params" else []
    fn, args = _runner(kind, cfg, model, part, batch, inputs, input_grad=setting == "input")
    try:
        with torch.no_grad() if setting == "nograd" else torch.enable_grad():
            return count_flops(fn, args, params)
    finally:
        if setting != "lora":
            model.requires_grad_(True)


def clear_cache() -> None:
    """Forget counted FLOPs and built models (tests; after editing a config file in place)."""
    _COUNTS.clear()
    _MODELS.clear()
    forget()


def table(names: tuple[str, ...] | None = None, batch: int = 1) -> list[tuple[str, str, float]]:
    """(component, mode, GFLOPs per image) for every applicable mode of ``names`` (default: all parts)."""
    rows = []
    for base in names or NAMES:
        kind = resolve(base)[1]["kind"]
        for part in PARTS[kind]:
            comp = base if part == PARTS[kind][0] else f"{base}:{part}"
            for mode in modes(comp):
                rows.append((comp, mode, component_flops(comp, batch=batch, mode=mode) / 1e9))
    return rows
