"""CLIP-family rewards in the main environment: PickScore, CLIP score and the LAION aesthetic predictor.

All three use transformers' CLIP classes with **local weights only**: ``model=`` (and ``processor=``) is a
local directory, or a Hub id already in the local Hugging Face cache (loaded with ``local_files_only=True``);
nothing is ever downloaded. A missing path raises :class:`FileNotFoundError` naming what was looked for.

Every score goes through a **differentiable tensor preprocessing path** (no PIL): images (B, 3, H, W) in
[0, 1] are resized so the short side equals the model's input size (bicubic, antialiased when shrinking),
centre-cropped, and normalised with the processor's mean/std (CLIP's by default), which is what
``CLIPImageProcessor`` does apart from its uint8 rounding. Parameters are frozen; gradients reach the
images, so DRaFT and VGG-Flow can backpropagate through these rewards. Text embeddings are computed
without grad and cached per prompt.

* ``pickscore`` (Kirstain et al. 2023, PickScore_v1): ``logit_scale.exp() * cos(image, text)``, about
  0-25 (100 x cosine for the released model). ``model`` defaults to ``yuvalkirstain/PickScore_v1`` and
  ``processor`` (the tokenizer and image statistics) to ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``.
* ``clip-score`` (CLIP ViT-L/14, ``openai/clip-vit-large-patch14``): ``100 * max(cos(image, text), 0)``,
  the torchmetrics/Hessel et al. convention (no gradient where the cosine is negative);
  option ``raw=true`` returns the plain cosine in [-1, 1] instead.
* ``aesthetic`` (LAION improved aesthetic predictor, "sac+logos+ava1-l14-linearMSE"): CLIP ViT-L/14 image
  embedding, L2-normalised, through the linear MLP 768-1024-128-64-16-1 (dropout between, no activations);
  ``head=`` is the local ``sac+logos+ava1-l14-linearMSE.pth``. Roughly 1-10, higher = more aesthetic;
  prompts are ignored.

Common options: ``device`` (default cuda when available), ``dtype`` (float32 | bfloat16 | float16),
``batch`` (images per forward, 32). ``tiny=true`` builds the same classes from tiny random configs with a
word-level tokenizer, offline (tests and CPU smoke runs); its input size is 32 px. ``random=true`` (PickScore
only) builds the released architecture at full size with random weights from ``harness/configs/pickscore.json``
(CLIP ViT-H/14, 224 px) and the word-level tokenizer: a stand-in for timing and smoke runs
(``nox -s paper_smoke``, ``nox -s gpu_check``) whose scores mean nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.compute import archs
from harness.generator import word_tokenizer
from harness.safe_load import torch_file
from rewards import check_images

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
TINY_SIZE = 32


def flag(value: Any) -> bool:
    """Option values arrive as strings from the command line: "true"/"1"/"yes"/"on" are true."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def torch_dtype(name: Any) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype '{name}'; expected one of {sorted(table)}")
    return table[name]


def default_device(device: Any = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def local_dir(path_or_id: str, reward: str, option: str) -> str:
    """A local directory for ``path_or_id``: the directory itself, or a Hub id's snapshot in the local cache.

    Raises FileNotFoundError naming the path (and the cache) when neither exists; never downloads.
    """
    path = os.path.expanduser(str(path_or_id))
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise FileNotFoundError(f"reward '{reward}': {option}='{path}' is a file; expected a model directory")
    looks_like_id = not path.startswith(("/", ".")) and path.count("/") == 1
    if looks_like_id:
        from huggingface_hub import constants, snapshot_download

        try:
            return snapshot_download(path, local_files_only=True)
        except Exception:
            raise FileNotFoundError(
                f"reward '{reward}': {option}='{path}' is not a local directory and not in the local Hugging Face "
                f"cache ({constants.HF_HUB_CACHE}); download it where there is network access and pass "
                f"{reward}.{option}=/local/dir") from None
    raise FileNotFoundError(f"reward '{reward}': {option} directory '{path}' does not exist")


def image_statistics(directory: str | None, default_size: int) -> tuple[int, tuple, tuple]:
    """(input size, mean, std) from a processor directory's ``preprocessor_config.json`` if it has one."""
    size, mean, std = default_size, CLIP_MEAN, CLIP_STD
    config = Path(directory) / "preprocessor_config.json" if directory else None
    if config is not None and config.is_file():
        data = json.loads(config.read_text())
        crop = data.get("crop_size", size)
        size = int(crop.get("height", size) if isinstance(crop, dict) else crop)
        mean = tuple(data.get("image_mean", mean))
        std = tuple(data.get("image_std", std))
    return size, mean, std


def clip_pixels(images: Tensor, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                mode: str = "bicubic") -> Tensor:
    """Differentiable CLIP preprocessing: images (B, 3, H, W) in [0, 1] -> (B, 3, size, size) normalised.

    Short side resized to ``size`` (``mode`` interpolation, antialiased), centre crop, (x - mean) / std.
    """
    h, w = images.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)  # transformers' get_resize_output_image_size truncates too
    nh, nw = (size, new_long) if h <= w else (new_long, size)
    x = images
    if (nh, nw) != (h, w):
        x = nn.functional.interpolate(x, size=(nh, nw), mode=mode, align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------------------------------------------
# Tiny offline stand-ins (tests, CPU smoke runs)
# ---------------------------------------------------------------------------------------------------

def tiny_tokenizer(max_length: int = 16):
    """The harness's word-level tokenizer with CLIP's framing: <bos> words <eos>."""
    from tokenizers.processors import TemplateProcessing

    tok = word_tokenizer(max_length=max_length)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", tok.bos_token_id), ("<eos>", tok.eos_token_id)])
    return tok


def tiny_clip(seed: int = 0, vision_only: bool = False):
    """A random CLIP (32 px, patch 8, width 32, 2 layers, projection 16) and its tokenizer; offline."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    tok = tiny_tokenizer()
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=TINY_SIZE, patch_size=8, projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if vision_only:
            return CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)), tok
        config = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37,
                                             num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                             pad_token_id=tok.pad_token_id, projection_dim=16),
                            vision_config=vision, projection_dim=16)
        return CLIPModel(config), tok


# ---------------------------------------------------------------------------------------------------
# The rewards
# ---------------------------------------------------------------------------------------------------

class _ClipReward:
    """Shared machinery: loading, frozen parameters, differentiable image path, cached text path."""

    name = "clip"
    version = 1
    differentiable = True
    resolution = 224
    requires = "main environment; local CLIP weights"
    default_model = "openai/clip-vit-large-patch14"
    default_processor: str | None = None
    vision_only = False
    arch: str | None = None
    """The ``harness/configs`` architecture ``random=true`` builds (None: this reward offers no stand-in)."""

    def __init__(self, model: str | None = None, processor: str | None = None, tiny: Any = False,
                 device: str | None = None, dtype: str = "float32", batch: int | str = 32, seed: int | str = 0,
                 random: Any = False):
        self.device = default_device(device)
        self.dtype = torch_dtype(dtype)
        self.batch = int(batch)
        if self.batch < 1:
            raise ValueError(f"reward '{self.name}' needs batch >= 1, got {batch}")
        if flag(tiny):
            net, self.tokenizer = tiny_clip(int(seed), vision_only=self.vision_only)
            self.size, self.mean, self.std = TINY_SIZE, CLIP_MEAN, CLIP_STD
        elif flag(random):
            if self.arch is None:
                raise ValueError(f"reward '{self.name}' has no random-weight stand-in (random=true); "
                                 "rewards that have one: pickscore, hpsv3")
            # Built on the target device (no CPU copy of a 1B-parameter model first), then cast below.
            net = archs.build_random(self.arch, device=self.device, seed=int(seed))
            self.tokenizer = tiny_tokenizer(max_length=net.config.text_config.max_position_embeddings)
            self.size, self.mean, self.std = net.config.vision_config.image_size, CLIP_MEAN, CLIP_STD
        else:
            net, self.tokenizer = self._load(model or self.default_model, processor or self.default_processor)
        self.model = net.to(self.device, self.dtype).eval().requires_grad_(False)
        self.resolution = self.size
        self._text_cache: dict[str, Tensor] = {}

    def _load(self, model: str, processor: str | None):
        from transformers import AutoTokenizer, CLIPModel, CLIPVisionModelWithProjection

        model_dir = local_dir(model, self.name, "model")
        processor_dir = local_dir(processor, self.name, "processor") if processor else model_dir
        cls = CLIPVisionModelWithProjection if self.vision_only else CLIPModel
        net = cls.from_pretrained(model_dir, local_files_only=True)
        tokenizer = None if self.vision_only else AutoTokenizer.from_pretrained(processor_dir, local_files_only=True)
        vision = net.config if self.vision_only else net.config.vision_config
        self.size, self.mean, self.std = image_statistics(processor_dir, vision.image_size)
        return net, tokenizer

    def parameters(self):
        return self.model.parameters()

    # -- embeddings --------------------------------------------------------------------------------
    def image_embeds(self, images: Tensor) -> Tensor:
        """Unit-norm image embeddings (B, D) in float32, differentiable with respect to ``images``."""
        pixels = clip_pixels(images.to(self.device).float(), self.size, self.mean, self.std).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return nn.functional.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> Tensor:
        """Unit-norm text embeddings (B, D) in float32 (no grad; cached per prompt)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if missing:
            if len(self._text_cache) + len(missing) > 4096:
                self._text_cache.clear()
            limit = min(77, self.model.config.text_config.max_position_embeddings)
            tokens = self.tokenizer(missing, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                           attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
            embeds = nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1)
            self._text_cache.update(zip(missing, embeds))
        return torch.stack([self._text_cache[p] for p in prompts])

    # -- scoring -----------------------------------------------------------------------------------
    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> (B,) float32 on the images' device, differentiable."""
        check_images(images, prompts, self.name)
        prompts = list(prompts)
        out = [self._score(images[i:i + self.batch], prompts[i:i + self.batch])
               for i in range(0, len(prompts), self.batch)]
        return torch.cat(out).to(images.device)

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        raise NotImplementedError


class PickScore(_ClipReward):
    """PickScore v1: logit_scale.exp() * cos(image, text) with a CLIP ViT-H/14 fine-tuned on Pick-a-Pic."""

    name = "pickscore"
    version = 1
    resolution = 224
    requires = ("main environment; local yuvalkirstain/PickScore_v1 (model=) and "
                "laion/CLIP-ViT-H-14-laion2B-s32B-b79K tokenizer/processor (processor=) dirs or HF cache")
    default_model = "yuvalkirstain/PickScore_v1"
    default_processor = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    arch = "pickscore"

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        cos = (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)
        return self.model.logit_scale.float().exp() * cos


class ClipScore(_ClipReward):
    """CLIP score with ViT-L/14: 100 * max(cos(image, text), 0), or the raw cosine with raw=true."""

    name = "clip-score"
    version = 1
    resolution = 224
    requires = "main environment; local openai/clip-vit-large-patch14 dir (model=) or HF cache"
    default_model = "openai/clip-vit-large-patch14"

    def __init__(self, raw: Any = False, **options: Any):
        self.raw = flag(raw)
        super().__init__(**options)

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        cos = (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)
        return cos if self.raw else 100.0 * cos.clamp(min=0)


class AestheticHead(nn.Module):
    """The improved aesthetic predictor's MLP; its state-dict keys match the released .pth files."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def load_aesthetic_head(path: str, dim: int) -> AestheticHead:
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reward 'aesthetic': head file '{path}' does not exist (the LAION improved "
                                f"aesthetic predictor weights, {AESTHETIC_HEAD_FILE})")
    state = torch_file(path, "reward 'aesthetic': head file")
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("layers.") for k in state):
        state = {f"layers.{k}": v for k, v in state.items()}
    head = AestheticHead(dim)
    head.load_state_dict(state, strict=True)
    return head


class Aesthetic(_ClipReward):
    """LAION improved aesthetic predictor: MLP on the L2-normalised CLIP ViT-L/14 image embedding."""

    name = "aesthetic"
    version = 1
    resolution = 224
    requires = (f"main environment; local openai/clip-vit-large-patch14 dir (model=) or HF cache, and "
                f"{AESTHETIC_HEAD_FILE} (head=)")
    default_model = "openai/clip-vit-large-patch14"
    vision_only = True

    def __init__(self, head: str | None = None, **options: Any):
        tiny = flag(options.get("tiny", False))
        if head is None and not tiny:
            raise FileNotFoundError(f"reward 'aesthetic' needs the local head weights {AESTHETIC_HEAD_FILE}: "
                                    f"pass aesthetic.head=/path/to/{AESTHETIC_HEAD_FILE}")
        super().__init__(**options)
        dim = self.model.config.projection_dim
        if head is not None:
            mlp = load_aesthetic_head(head, dim)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(options.get("seed", 0)) + 1)
                mlp = AestheticHead(dim)
        self.head = mlp.to(self.device).eval().requires_grad_(False)

    def parameters(self):
        yield from self.model.parameters()
        yield from self.head.parameters()

    def _score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.head(self.image_embeds(images)).squeeze(-1)
