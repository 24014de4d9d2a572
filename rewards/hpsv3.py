"""HPSv3 (Ma et al., ICCV 2025): a Qwen2-VL-7B reward model whose ``rm_head`` gives (mu, sigma); score = mu.

The ``hpsv3`` package pins transformers 4.45.2 (and needs torchvision, deepspeed, trl), so it lives in its own
environment; there ``driftbench serve-reward hpsv3`` serves it and the main environment scores through
``remote:URL``. Built anywhere the package does not import, this reward raises a RuntimeError naming the
environment and the command that starts its server.

Inside that environment, from **local files only** (``HF_HUB_OFFLINE=1`` is set before the import):

* ``checkpoint=``: the HPSv3 reward weights (``HPSv3.safetensors`` or a torch file); required.
* ``qwen=``: a local Qwen2-VL-7B-Instruct directory (weights and processor); it replaces
  ``model_name_or_path`` of the YAML config (a temporary copy is written).
* ``config=``: the HPSv3 YAML (default: the package's own ``HPSv3_7B.yaml``).
* ``device`` (cuda when available), ``batch`` (images per forward, 4). Off CUDA the model runs in float32:
  the package's config loads bfloat16 and relies on CUDA autocast for its float32 ``rm_head``.

Scoring without gradients calls ``reward(prompts=..., image_paths=...)`` **with keywords** (its argument
order differs between hpsv3 versions) under ``torch.no_grad`` and keeps column 0 (mu). Images go in as
float CHW tensors in 0-255 and the package's differentiable image processor is used, so the gradient path
(DRaFT, VGG-Flow) shares the preprocessing: with grad enabled it calls ``prepare_batch`` and then the model
itself (``reward`` may be decorated with ``inference_mode``), and gradients reach the images.

``tiny=true`` builds a tiny random Qwen2-VL reward model of the same architecture class
(``Qwen2VLForConditionalGeneration`` + an rm_head read at a ``<|Reward|>`` token) in *this* environment and
scores it through the harness's own differentiable Qwen2-VL path (:class:`QwenRewardPath`: bicubic resize
to a multiple of 28, CLIP mean/std, the exact Qwen2-VL patchify, M-RoPE inputs); tests use it to check
shapes, batching and gradients. Input size: 448 x 448 (256*28*28 pixels) for the real model, 56 for tiny.

``random=true`` builds HPSv3's architecture at full width from ``harness/configs/hpsv3.json`` (Qwen2-VL-7B +
rm_head) with random weights, scored through the same :class:`QwenRewardPath` at 448 px, with a word-level
tokenizer and an instruction padded to the config's token counts, so the sequence is as long as the real one
(256 image tokens + template + instruction + the prompt's words). ``layers=N`` / ``vision_layers=N`` keep only
the first N language / vision blocks (the CPU smoke run's reduced depth; 0 = the full 28 / 32). ``dtype``
(float32 | bfloat16 | float16) applies to this stand-in and ``tiny`` (the package path runs its config's
dtype). Its scores mean nothing: it is for timing and memory (``nox -s gpu_check``) and smoke runs.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from harness.compute import archs
from harness.generator import word_tokenizer
from rewards import check_images
from rewards.clip_rewards import CLIP_MEAN, CLIP_STD, default_device, flag, torch_dtype
from rewards.remote import isolated_env_error

SESSION = "reward_env-hpsv3"
IMAGE_SIZE = 448
"""HPSv3 resizes every image to min_pixels = max_pixels = 256*28*28, i.e. 448 x 448 for a square."""
TINY_IMAGE_SIZE = 56


# ---------------------------------------------------------------------------------------------------
# A differentiable Qwen2-VL reward path (used by the tiny stand-in; works with transformers 4.45 and 5.x)
# ---------------------------------------------------------------------------------------------------

def qwen_patchify(pixels: Tensor, patch: int = 14, temporal: int = 2, merge: int = 2) -> tuple[Tensor, Tensor]:
    """Normalised images (B, C, H, W) -> (pixel_values (B*gh*gw, C*temporal*patch*patch), grid_thw (B, 3)).

    The same layout as ``Qwen2VLImageProcessor`` for a still image (the frame repeated ``temporal`` times,
    patches ordered by merge window); differentiable. H and W must be multiples of ``patch * merge``.
    """
    b, c, h, w = pixels.shape
    unit = patch * merge
    if h % unit or w % unit:
        raise ValueError(f"Qwen2-VL patchify needs H and W divisible by {unit}, got {h}x{w}")
    x = pixels.unsqueeze(1).expand(b, temporal, c, h, w)
    x = x.reshape(b, 1, temporal, c, h // unit, merge, patch, w // unit, merge, patch)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    grid = torch.tensor([[1, h // patch, w // patch]] * b, dtype=torch.long, device=pixels.device)
    return x.reshape(-1, c * temporal * patch * patch), grid


def qwen_pixels(images: Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                std: Sequence[float] = CLIP_STD) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] -> (B, 3, size, size) normalised, bicubic and differentiable."""
    x = images
    if tuple(x.shape[-2:]) != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class QwenVLReward(nn.Module):
    """HPSv3's architecture: a Qwen2-VL with an MLP ``rm_head`` on the hidden state at the reward token."""

    def __init__(self, vlm: nn.Module, head: Sequence[int]):
        super().__init__()
        self.vlm = vlm
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(head[:-1], head[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(head) - 2:
                layers.append(nn.ReLU())
        self.rm_head = nn.Sequential(*layers)

    def hidden(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor, image_grid_thw: Tensor) -> Tensor:
        inner = getattr(self.vlm, "model", None)
        if inner is not None and hasattr(inner, "visual"):  # transformers 5.x layout
            kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                          image_grid_thw=image_grid_thw)
            if "mm_token_type_ids" in inspect.signature(inner.forward).parameters:
                kwargs["mm_token_type_ids"] = (input_ids == self.vlm.config.image_token_id).long()
            return inner(**kwargs).last_hidden_state
        out = self.vlm(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                       image_grid_thw=image_grid_thw, output_hidden_states=True, return_dict=True)
        return out.hidden_states[-1]  # transformers 4.45 layout

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor, image_grid_thw: Tensor,
                reward_token_id: int) -> Tensor:
        """(B, 2) = (mu, sigma) read at the first ``reward_token_id`` of each row."""
        hidden = self.hidden(input_ids, attention_mask, pixel_values, image_grid_thw)
        found = input_ids == reward_token_id
        if not bool(found.any(dim=1).all()):
            raise ValueError("every sequence needs a reward token")
        position = found.float().argmax(dim=1)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), position]
        return self.rm_head(picked.float())


class QwenRewardPath:
    """Builds Qwen2-VL reward inputs from image tensors and prompts, differentiably, and scores them.

    Sequence per sample: ``<|vision_start|> <|image_pad|> x N <|vision_end|> instruction prompt <|Reward|>``,
    right-padded (the reward token sees no padding under causal attention, so batching is exact).
    """

    def __init__(self, model: QwenVLReward, tokenizer: Any, special: dict[str, int], image_size: int,
                 instruction: str, max_text_tokens: int = 256, patch: int = 14, merge: int = 2, temporal: int = 2):
        self.model, self.tokenizer, self.special = model, tokenizer, special
        self.image_size, self.instruction, self.max_text_tokens = image_size, instruction, max_text_tokens
        self.patch, self.merge, self.temporal = patch, merge, temporal

    def inputs(self, images: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
        device = next(self.model.parameters()).device
        pixels = qwen_pixels(images.to(device).float(), self.image_size)
        pixel_values, grid = qwen_patchify(pixels, self.patch, self.temporal, self.merge)
        n_image = int(grid[0, 1] * grid[0, 2]) // self.merge ** 2
        s = self.special
        rows = []
        for prompt in prompts:
            text = self.tokenizer(f"{self.instruction} {prompt}", add_special_tokens=False)["input_ids"]
            rows.append([s["vision_start"]] + [s["image"]] * n_image + [s["vision_end"]]
                        + list(text[: self.max_text_tokens]) + [s["reward"]])
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), s["pad"], dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "pixel_values": pixel_values,
                "image_grid_thw": grid}

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """(B,) mu, differentiable with respect to ``images`` when grad is enabled."""
        return self.model(**self.inputs(images, prompts), reward_token_id=self.special["reward"])[:, 0]


def tiny_hpsv3(seed: int = 0) -> QwenRewardPath:
    """A tiny random Qwen2-VL reward model (text 64 wide x 2 layers, vision 32 x 2, rm_head 64-32-16-2), offline."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = word_tokenizer(max_length=512)
    base = len(tok)
    special = {"pad": tok.pad_token_id, "vision_start": base, "vision_end": base + 1, "image": base + 2,
               "video": base + 3, "reward": base + 4}
    text = dict(vocab_size=base + 5, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3]))
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=special["image"],
                           video_token_id=special["video"], vision_start_token_id=special["vision_start"],
                           vision_end_token_id=special["vision_end"], pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = QwenVLReward(Qwen2VLForConditionalGeneration(config), head=(64, 32, 16, 2))
    return QwenRewardPath(model.eval().requires_grad_(False), tok, special, TINY_IMAGE_SIZE,
                          instruction="rate the image for the prompt")


QWEN2_VL_SPECIAL = {"pad": 151643, "vision_start": 151652, "vision_end": 151653, "image": 151655, "video": 151656,
                    "reward": 151657}
"""Qwen2-VL-7B-Instruct's special-token ids (``<|endoftext|>`` as padding); ``<|Reward|>`` is the token HPSv3 adds,
which takes the tokenizer's next id."""


def random_hpsv3(seed: int = 0, layers: int = 0, vision_layers: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> QwenRewardPath:
    """HPSv3's architecture (``harness/configs/hpsv3.json``) with random weights, optionally at reduced depth.

    Built directly on ``device`` in ``dtype`` (no float32 copy of 8B parameters first; the fast random fill of
    :func:`harness.archs.random_weights`). ``lm_head`` is dropped:
    HPSv3 reads the last hidden state and never runs it (1.1 GB of bf16 weights that would only hold memory).
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    arch = archs.load_config("hpsv3")
    c, inputs = arch["config"], arch["inputs"]
    text = {k: v for k, v in c["text_config"].items() if not k.startswith("_")}
    vision = {k: v for k, v in c["vision_config"].items() if not k.startswith("_")}
    for key, value, full in (("layers", layers, text["num_hidden_layers"]), ("vision_layers", vision_layers,
                                                                             vision["depth"])):
        if not 0 <= value <= full:
            raise ValueError(f"reward 'hpsv3' option {key}={value} must lie in [0, {full}] (0: all)")
    text["num_hidden_layers"] = layers or text["num_hidden_layers"]
    vision["depth"] = vision_layers or vision["depth"]
    s = QWEN2_VL_SPECIAL
    config = Qwen2VLConfig(text_config={**text, "pad_token_id": s["pad"]}, vision_config=vision,
                           image_token_id=s["image"], video_token_id=s["video"], vision_start_token_id=s["vision_start"],
                           vision_end_token_id=s["vision_end"], pad_token_id=s["pad"])

    def build() -> QwenVLReward:
        vlm = Qwen2VLForConditionalGeneration(config)
        vlm.lm_head = nn.Identity()
        return QwenVLReward(vlm, head=c["rm_head"])

    model = archs.random_weights(build, device=device, seed=seed, dtype=dtype)
    model.rm_head.float()  # HPSv3 runs its rm_head in float32 (QwenVLReward.forward feeds it float32)
    # The chat template and the rubric are tokens the word-level tokenizer cannot spell: an instruction of as
    # many one-token words keeps the sequence as long as the real one (the three vision and reward markers
    # the path adds count among the template's tokens).
    filler = inputs["template_tokens"] + inputs["instruction_tokens"] - 3
    return QwenRewardPath(model.eval().requires_grad_(False), word_tokenizer(max_length=4096), dict(s), IMAGE_SIZE,
                          instruction=" ".join(["rate"] * filler), max_text_tokens=filler + 256)


# ---------------------------------------------------------------------------------------------------
# The hpsv3 package (its own environment)
# ---------------------------------------------------------------------------------------------------

class _PackagePath:
    """HPSv3RewardInferencer from local files; ``score`` is mu, differentiable when grad is enabled."""

    def __init__(self, config: str | None, checkpoint: str | None, qwen: str | None, device: torch.device):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported by hpsv3
        try:
            import hpsv3
            from hpsv3 import HPSv3RewardInferencer
        except Exception as exc:  # ImportError, or torchvision failing beside a CPU torch
            raise isolated_env_error("hpsv3", "hpsv3", SESSION,
                                     "--option checkpoint=/data/HPSv3.safetensors --option qwen=/data/Qwen2-VL-7B-Instruct",
                                     exc, module="hpsv3") from None
        if not checkpoint:
            raise FileNotFoundError("reward 'hpsv3' needs a local checkpoint (no Hub downloads): pass "
                                    "checkpoint=/path/to/HPSv3.safetensors")
        for option, path in (("checkpoint", checkpoint), ("config", config), ("qwen", qwen)):
            if path and not os.path.exists(os.path.expanduser(path)):
                raise FileNotFoundError(f"reward 'hpsv3': {option} '{path}' does not exist")
        if config is None:
            config = os.path.join(os.path.dirname(hpsv3.__file__), "config", "HPSv3_7B.yaml")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="driftbench-hpsv3-") as tmp:
            config_path = _local_config(config, qwen, tmp)
            self.inferencer = HPSv3RewardInferencer(config_path=config_path, checkpoint_path=os.path.expanduser(checkpoint),
                                                    device=str(device), differentiable=True)
        self.inferencer.model.requires_grad_(False)
        if device.type != "cuda":
            # HPSv3_7B.yaml loads the model in bfloat16 and runs its float32 rm_head under CUDA-only autocast: on
            # CPU the bfloat16 hidden states reach the float32 head and the matmul fails. Run it in float32.
            self.inferencer.model.float()
        self.device = device

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        tensors = [image * 255.0 for image in images.to(self.device).float()]  # CHW float, 0-255
        prompts = list(prompts)
        if torch.is_grad_enabled():
            batch = self.inferencer.prepare_batch(image_paths=tensors, prompts=prompts)
            return self.inferencer.model(return_dict=True, **batch)["logits"][:, 0].float()
        with torch.no_grad():
            return self.inferencer.reward(prompts=prompts, image_paths=tensors)[:, 0].float().clone()


def _local_config(config: str, qwen: str | None, tmp: str) -> str:
    """The YAML to use: ``config`` itself, or a copy whose model_name_or_path is the local ``qwen`` dir."""
    config = os.path.expanduser(config)
    if not qwen:
        return config
    import yaml

    with open(config) as f:
        data = yaml.safe_load(f)
    data["model_name_or_path"] = os.path.abspath(os.path.expanduser(qwen))
    path = os.path.join(tmp, os.path.basename(config))
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


class HPSv3:
    name = "hpsv3"
    version = 1
    differentiable = True
    resolution = IMAGE_SIZE
    requires = (f"the hpsv3 environment (hpsv3 pins transformers==4.45.2; nox -s {SESSION}, then remote:URL); "
                "local checkpoint= HPSv3.safetensors and qwen= Qwen2-VL-7B-Instruct dir (or config=)")

    def __init__(self, config: str | None = None, checkpoint: str | None = None, qwen: str | None = None,
                 device: str | None = None, batch: int | str = 4, tiny: Any = False, seed: int | str = 0,
                 random: Any = False, layers: int | str = 0, vision_layers: int | str = 0, dtype: str = "float32"):
        self.batch = int(batch)
        if self.batch < 1:
            raise ValueError(f"reward 'hpsv3' needs batch >= 1, got {batch}")
        self.device = default_device(device)
        if flag(tiny):
            self.path: Any = tiny_hpsv3(int(seed))
            self.path.model.to(self.device, torch_dtype(dtype)).rm_head.float()
            self.resolution = TINY_IMAGE_SIZE
        elif flag(random):
            self.path = random_hpsv3(int(seed), int(layers), int(vision_layers), self.device, torch_dtype(dtype))
        else:
            self.path = _PackagePath(config, checkpoint, qwen, self.device)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> (B,) mu in float32 on the images' device.

        Differentiable with respect to the images when grad is enabled; ``batch`` images per forward.
        """
        check_images(images, prompts, self.name)
        prompts = list(prompts)
        out = [self.path.score(images[i:i + self.batch], prompts[i:i + self.batch])
               for i in range(0, len(prompts), self.batch)]
        return torch.cat(out).float().to(images.device)
