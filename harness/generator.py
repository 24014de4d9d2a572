"""One-step SD-Turbo / SDXL-Turbo generators over diffusers parts, trained through LoRA (peft).

The trainable map is the UNet called once at t=999 on the noise z:

    eps = unet(z, 999, text);   x0 = (z - sqrt(1 - abar_999) eps) / sqrt(abar_999)

The schedule (betas, hence abar), the prediction type and the one-step timestep come from the model's
own scheduler config (``scheduler/scheduler_config.json``; the tiny profiles carry SD-Turbo's): a single
step with "trailing" spacing is t = num_train_timesteps - 1 = 999. A config this sampler cannot serve
(v-prediction, zero-terminal-SNR betas, a spacing whose one step is not the last timestep) is refused.

SD-Turbo then follows the official DrPO code (``src/drpo/sdturbo.py``@61329a4 ``one_step_clean_latent``),
which re-noises x0 to the t=0 point of the schedule, ``sqrt(abar_0) x0 + sqrt(1 - abar_0) eps``
(0.9996 x0 + 0.0292 eps), where the paper writes plain x0; ``renoise_t0=False`` gives the paper's x0,
which is also what diffusers' one-step Euler pipeline returns. SDXL-Turbo's official trainer runs the
pipeline scheduler for one step, which is the plain x0, so that family defaults to it.

The frozen reference generator is the same UNet with its adapters disabled (no second copy). Real weights
come only from a local directory or the local Hugging Face cache; the ``tiny`` builders make the same
classes from tiny configs, fully offline, so every test runs the real code path.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from harness.api import Cond
from harness.lora import DEFAULT_TARGETS, adapters_disabled, add_lora, load_lora_state, lora_state

TIMESTEP = 999
"""SD-Turbo and SDXL-Turbo are one-step models at the last training timestep (trailing spacing)."""

SD_TURBO_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "steps_offset": 1, "timestep_spacing": "trailing", "trained_betas": None,
}
"""stabilityai/sd-turbo ``scheduler/scheduler_config.json`` (the sampling-relevant keys); SDXL-Turbo's
schedule is the same. The tiny and random-weight profiles carry it."""


def scaled_linear_alphas(beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000) -> Tensor:
    """The cumulative alphas of Stable Diffusion's "scaled_linear" schedule, (steps,) float64."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def one_step_schedule(config: Mapping) -> tuple[Tensor, int]:
    """(abar (T,) float64, the one-step timestep) from a diffusers scheduler config; raises what it cannot serve."""
    import math

    steps = int(config.get("num_train_timesteps", 1000))
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float64)
    elif kind == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float64) ** 2
    elif kind == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine schedule, as diffusers builds it
        bar = [math.cos((i / steps + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(steps + 1)]
        betas = torch.tensor([min(1 - bar[i + 1] / bar[i], 0.999) for i in range(steps)], dtype=torch.float64)
    else:
        raise ValueError(f"scheduler beta_schedule '{kind}' is not supported; valid: linear, scaled_linear, "
                         "squaredcos_cap_v2 (or trained_betas)")
    prediction = config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ValueError(f"scheduler prediction_type '{prediction}' is not supported: the one-step sampler "
                         "computes x0 from an epsilon prediction only")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler rescale_betas_zero_snr=true makes abar at the last step 0, where an epsilon "
                         "prediction determines no x0; not supported")
    spacing = config.get("timestep_spacing", "leading")
    if spacing != "trailing":
        t = int(config.get("steps_offset", 0)) if spacing == "leading" else 0
        raise ValueError(f"scheduler timestep_spacing '{spacing}' puts a single step at t={t}, not at the last "
                         f"training timestep {steps - 1}; one-step models need 'trailing'")
    return torch.cumprod(1.0 - betas, dim=0), steps - 1


class OneStepGenerator:
    """A diffusers UNet + VAE (+ one or two CLIP text encoders) as a one-step generator.

    Implements :class:`harness.api.Generator`. ``family`` is ``"sd"`` (SD-Turbo: one text encoder) or
    ``"sdxl"`` (SDXL-Turbo: two encoders, pooled embeddings and size/crop time ids).
    """

    def __init__(self, *, name: str, family: str, unet, vae, text_encoders: Sequence, tokenizers: Sequence,
                 resolution: int, lora_rank: int = 16, lora_alpha: float | None = None,
                 lora_targets: Sequence[str] = DEFAULT_TARGETS, renoise_t0: bool | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                 scheduler: Mapping | None = None):
        if family not in ("sd", "sdxl"):
            raise ValueError(f"unknown generator family '{family}'; valid families: sd, sdxl")
        self.name, self.family, self.resolution = name, family, resolution
        self.device, self.dtype = torch.device(device), dtype
        self.unet, self.vae = unet, vae
        self.text_encoders, self.tokenizers = list(text_encoders), list(tokenizers)
        self.lora = {"r": lora_rank, "lora_alpha": lora_alpha or lora_rank, "target_modules": list(lora_targets)}
        alphas, self.timestep = one_step_schedule(SD_TURBO_SCHEDULER if scheduler is None else scheduler)
        self.scheduler_config = dict(SD_TURBO_SCHEDULER if scheduler is None else scheduler)  # for an exported pipeline
        # diffusers' SDXL pipeline decodes in float32 when the VAE config asks (it overflows in fp16).
        upcast = family == "sdxl" and dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        self.vae_dtype = torch.float32 if upcast else dtype
        for module in [unet, vae, *self.text_encoders]:
            # Casting to float32 explicitly makes diffusers warn; only cast when the dtype changes.
            module.to(self.device).eval().requires_grad_(False)
            target = self.vae_dtype if module is vae else dtype
            if target != torch.float32:
                module.to(target)
        add_lora(unet, rank=lora_rank, alpha=lora_alpha, targets=lora_targets, seed=seed)
        # Keep the adapter weights in float32 even when the frozen base runs in half precision.
        for p in self.trainable():
            p.data = p.data.float()
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_shape = (unet.config.in_channels, resolution // scale, resolution // scale)
        self._a999, self._a0 = float(alphas[self.timestep]), float(alphas[0])
        self.renoise_t0 = (family == "sd") if renoise_t0 is None else renoise_t0

    # -- conditioning and noise ---------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Cond:
        """Frozen text conditioning: SD ``hidden`` (B, L, D); SDXL also ``pooled`` and ``time_ids``."""
        prompts = list(prompts)
        if self.family == "sd":
            return Cond({"hidden": self._text(0, prompts)[0]})
        h1, _ = self._text(0, prompts, penultimate=True)
        h2, pooled = self._text(1, prompts, penultimate=True)
        r = self.resolution
        time_ids = torch.tensor([[r, r, 0, 0, r, r]], device=self.device, dtype=self.dtype).repeat(len(prompts), 1)
        return Cond({"hidden": torch.cat([h1, h2], dim=-1), "pooled": pooled, "time_ids": time_ids})

    def _text(self, i: int, prompts: list[str], penultimate: bool = False) -> tuple[Tensor, Tensor | None]:
        tok = self.tokenizers[i]
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.device)
        out = self.text_encoders[i](ids, output_hidden_states=penultimate)
        hidden = out.hidden_states[-2] if penultimate else out[0]
        pooled = out[0] if penultimate and i == 1 else None  # CLIPTextModelWithProjection's text_embeds
        return hidden.to(self.dtype), pooled

    def noise(self, seeds: Sequence[int]) -> Tensor:
        """(B, C, h, w) standard normal, one CPU generator per seed so a seed means the same noise anywhere."""
        draws = [torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(draws).to(self.device, self.dtype)

    # -- the one-step map ---------------------------------------------------------------------
    def latents(self, noise: Tensor, cond: Cond) -> Tensor:
        """One UNet call at t=999, converted to the clean latent; (B, C, h, w)."""
        if noise.shape[1:] != self.latent_shape or len(cond) != noise.shape[0]:
            raise ValueError(f"noise {tuple(noise.shape)} and {len(cond)} conditions do not match "
                             f"latent shape {self.latent_shape}")
        t = torch.full((noise.shape[0],), self.timestep, device=self.device, dtype=torch.long)
        extra = {}
        if self.family == "sdxl":
            extra["added_cond_kwargs"] = {"text_embeds": cond.tensors["pooled"], "time_ids": cond.tensors["time_ids"]}
        eps = self.unet(noise.to(self.dtype), t, encoder_hidden_states=cond.tensors["hidden"], **extra).sample
        x0 = (noise - (1 - self._a999) ** 0.5 * eps) / self._a999 ** 0.5
        if self.renoise_t0:
            x0 = self._a0 ** 0.5 * x0 + (1 - self._a0) ** 0.5 * eps
        return x0

    def decode(self, latents: Tensor) -> Tensor:
        """VAE decode to images (B, 3, H, W) in [0, 1]; differentiable with respect to ``latents``."""
        image = self.vae.decode(latents.to(self.vae_dtype) / self.vae.config.scaling_factor).sample
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def reference(self) -> contextlib.AbstractContextManager[None]:
        return adapters_disabled(self.unet)

    # -- parameters and adapters --------------------------------------------------------------
    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, Tensor]:
        return lora_state(self.unet)

    def load_trainable_state(self, state: Mapping[str, Tensor]) -> None:
        load_lora_state(self.unet, dict(state))

    def save_adapter(self, directory: str | os.PathLike) -> None:
        """Write ``pytorch_lora_weights.safetensors`` that ``pipe.load_lora_weights(directory)`` loads."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
        from diffusers.utils import convert_state_dict_to_diffusers

        layers = convert_state_dict_to_diffusers(self.trainable_state())
        pipeline = StableDiffusionPipeline if self.family == "sd" else StableDiffusionXLPipeline
        pipeline.save_lora_weights(str(directory), unet_lora_layers=layers, unet_lora_adapter_metadata=self.lora)
        Path(directory, "driftbench_adapter.json").write_text(json.dumps({"generator": self.name, **self.lora}))


# ---------------------------------------------------------------------------------------------------
# Construction: local real weights, or tiny offline configs.
# ---------------------------------------------------------------------------------------------------

def from_pretrained(path_or_id: str, *, family: str, name: str, resolution: int = 512, **kwargs) -> OneStepGenerator:
    """Load SD-Turbo / SDXL-Turbo parts from a local directory or the local Hugging Face cache only."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = resolve_local_model(path_or_id)
    scheduler = scheduler_config(root)
    one_step_schedule(scheduler)  # before any weights: a schedule the sampler cannot serve fails fast
    load = dict(local_files_only=True)
    encoders = [CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **load)]
    tokenizers = [CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", **load)]
    if family == "sdxl":
        encoders.append(CLIPTextModelWithProjection.from_pretrained(root, subfolder="text_encoder_2", **load))
        tokenizers.append(CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2", **load))
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **load)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **load)
    return OneStepGenerator(name=name, family=family, unet=unet, vae=vae, text_encoders=encoders,
                            tokenizers=tokenizers, resolution=resolution, scheduler=scheduler, **kwargs)


def scheduler_config(root: str) -> dict:
    """The model directory's ``scheduler/scheduler_config.json``; raises naming the file when it is missing."""
    path = Path(root, "scheduler", "scheduler_config.json")
    if not path.is_file():
        raise FileNotFoundError(f"model directory {root} has no {path.relative_to(root)} (the one-step sampler "
                                "reads the noise schedule, prediction type and timestep from it)")
    return json.loads(path.read_text())


def resolve_local_model(path_or_id: str) -> str:
    """A local model directory for ``path_or_id``: the path itself, or the id's snapshot in the HF cache.

    Never downloads. Raises ``FileNotFoundError`` naming what was looked for.
    """
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        if not (path / "unet").is_dir():
            raise FileNotFoundError(f"model directory {path} has no unet/ subfolder (expected a diffusers layout)")
        return str(path)
    if "/" in path_or_id and not path_or_id.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(path_or_id, local_files_only=True)
        except Exception as exc:  # the hub client raises several types for "not cached"
            raise FileNotFoundError(f"model '{path_or_id}' is not in the local Hugging Face cache and downloads "
                                    f"are disabled; fetch it once on a machine with Hub access ({exc.__class__.__name__})")
    raise FileNotFoundError(f"model path '{path_or_id}' does not exist")


TINY_WORDS = ("a photo of an the and with red green blue yellow white black cat dog car tree house flower "
              "bird boat cup chair on in next to big small painting drawing").split()


def word_tokenizer(words: Sequence[str] = TINY_WORDS, max_length: int = 16):
    """A word-level CLIP-compatible tokenizer built in code (no Hub download); unknown words map to <unk>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer, tk.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                   eos_token="<eos>", model_max_length=max_length)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_sd(*, seed: int = 0, lora_rank: int = 4, **kwargs) -> OneStepGenerator:
    """SD-Turbo's classes at toy size: 16x16x4 latents, 32x32 images, random weights from ``seed``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = word_tokenizer()
    with _seeded(seed):
        text = CLIPTextModel(CLIPTextConfig(bos_token_id=2, eos_token_id=3, pad_token_id=0, hidden_size=32,
                                            intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                            vocab_size=len(tok), max_position_embeddings=16))
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                    out_channels=4, cross_attention_dim=32, attention_head_dim=(2, 4),
                                    use_linear_projection=True, norm_num_groups=8,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        vae = AutoencoderKL(block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=4,
                            norm_num_groups=8, down_block_types=["DownEncoderBlock2D"] * 2,
                            up_block_types=["UpDecoderBlock2D"] * 2)
    return OneStepGenerator(name="tiny", family="sd", unet=unet, vae=vae, text_encoders=[text], tokenizers=[tok],
                            resolution=32, lora_rank=lora_rank, seed=seed, **kwargs)


def tiny_sdxl(*, seed: int = 0, lora_rank: int = 4, **kwargs) -> OneStepGenerator:
    """SDXL-Turbo's classes at toy size (two encoders, pooled embeddings, time ids), random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = word_tokenizer()
    cfg = dict(bos_token_id=2, eos_token_id=3, pad_token_id=0, intermediate_size=37, num_hidden_layers=2,
               num_attention_heads=4, vocab_size=len(tok), max_position_embeddings=16, hidden_act="gelu")
    with _seeded(seed):
        te1 = CLIPTextModel(CLIPTextConfig(hidden_size=16, **cfg))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=16, projection_dim=16, **cfg))
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                    out_channels=4, cross_attention_dim=32, attention_head_dim=(2, 4),
                                    use_linear_projection=True, norm_num_groups=8, addition_embed_type="text_time",
                                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 16,
                                    transformer_layers_per_block=(1, 1),
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        vae = AutoencoderKL(block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=4,
                            norm_num_groups=8, down_block_types=["DownEncoderBlock2D"] * 2,
                            up_block_types=["UpDecoderBlock2D"] * 2)
    return OneStepGenerator(name="tiny-xl", family="sdxl", unet=unet, vae=vae, text_encoders=[te1, te2],
                            tokenizers=[tok, tok], resolution=32, lora_rank=lora_rank, seed=seed, **kwargs)
