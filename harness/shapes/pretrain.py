"""Reproducible pretraining of the Shapes world's three models: generator, latent MAE encoder, reward.

    python -m harness.shapes.pretrain {generator,encoder,reward,all} [--steps N --seed S --out DIR]

* ``generator``, in two phases, the way SD was built. (1) An autoencoder on renders: a small image encoder
  and the LatentDecoder, pixel MSE; the decoder is then frozen and its latents get a unit-std scaling factor.
  (2) A conditional VAE in that latent space (shapes-probe.md's recipe, moved from pixels to latents): its
  decoder is ShapesNet and its Gaussian prior p(z | prompt) is ShapesNet's learned prior, trained from step 0
  on fresh renders of tag-balanced train prompts. The text encoder, the EMA ShapesNet and the decoder are
  kept; the image encoder and the posterior are dropped. (Training the same CVAE end to end in pixels, as
  the probe did, had not formed a single verifiable shape after 1,000 steps here; the autoencoder reaches
  90% verifiable reconstructions in 200 steps, and the latent CVAE 0.15-0.25 GenEval in 1,000.)
* ``encoder``: a masked autoencoder on the pretrained generator's latents (half the 2x2 latent patches
  masked); the ResNetEncoder is kept for DrPO's feature space, the light decoder is dropped.
* ``reward``: shapes-pref, trained on rendered positives and one-clause-broken or damaged negatives, plus
  verifier-labelled samples of the pretrained generator.

Every job is seeded (torch, numpy) and runs on the CPU; weights go to ``<out>/<name>.safetensors`` with the
model config in ``<out>/<name>.json``; ``checksums.json`` and ``timings.json`` (wall seconds per job) are
rewritten after each job.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from harness.shapes import assets
from harness.shapes.model import (
    LATENT_SHAPE,
    ImageEncoder,
    LatentDecoder,
    ModelConfig,
    ShapesNet,
    TextEncoder,
    build_vocab,
    model_state,
)
from harness.shapes.prompts import TAGS, all_prompts, split
from rewards.shapes_pref import GRID, PrefConfig, PrefModel

# -- shared helpers ---------------------------------------------------------------------------------------


def _seed_all(seed: int, threads: int) -> np.random.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return np.random.default_rng(seed)


def tag_balanced(metas: Sequence[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` prompts: a tag drawn uniformly, then a prompt of that tag (so 3 single_object prompts weigh as
    much as 54 color_attr ones)."""
    by_tag = {t: [m for m in metas if m["tag"] == t] for t in TAGS}
    by_tag = {t: ms for t, ms in by_tag.items() if ms}
    tags = list(by_tag)
    picks = rng.integers(len(tags), size=n)
    return [by_tag[tags[t]][rng.integers(len(by_tag[tags[t]]))] for t in picks]


class Ema:
    """Exponential moving average of a module's float state, with decay min(cap, (1+n)/(10+n))."""

    def __init__(self, module: nn.Module, cap: float):
        self.module, self.cap, self.n = module, cap, 0
        self.shadow = copy.deepcopy(module).requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        self.n += 1
        decay = min(self.cap, (1 + self.n) / (10 + self.n))
        for s, p in zip(self.shadow.state_dict().values(), self.module.state_dict().values()):
            if s.dtype.is_floating_point:
                s.lerp_(p, 1 - decay)


def save_asset(out: str | Path, name: str, state: dict[str, Tensor], config: dict, *, dtype: torch.dtype) -> Path:
    """Write ``<name>.safetensors`` (``dtype``) and ``<name>.json``, then refresh checksums.json."""
    from safetensors.torch import save_file

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = assets.asset_path(name, folder)
    save_file({k: v.detach().to(dtype).contiguous() for k, v in state.items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    assets.write_checksums(folder)
    return path


def record_time(out: str | Path, name: str, seconds: float, steps: int) -> None:
    """Merge {name: {"wall_s", "steps", "threads"}} into ``<out>/timings.json``."""
    path = Path(out) / "timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[name] = {"wall_s": round(seconds, 1), "steps": steps, "threads": torch.get_num_threads()}
    path.write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")


# -- generator: autoencoder, then a conditional VAE in its latent space --------------------------------------


@dataclass(frozen=True)
class GeneratorConfig:
    ae_steps: int = 1000
    """Phase 1: autoencoder steps (image encoder + LatentDecoder); the decoder is then frozen."""
    steps: int = 3000
    """Phase 2: conditional-VAE steps in the frozen autoencoder's latent space."""
    batch: int = 48
    """Prompts per step (one fresh render each)."""
    lr: float = 1e-3
    """Adam learning rate after warm-up (both phases)."""
    warmup: int = 50
    """Linear warm-up steps (both phases)."""
    clip: float = 1.0
    """Gradient-norm clip."""
    latent_sigma: float = 0.35
    """Std of the Gaussian likelihood on unit-std latents; larger weighs the KL more."""
    pixel_sigma: float = 0.0
    """Std of an extra Gaussian likelihood on the decoded pixels (0: off)."""
    kl_start: float = 20.0
    """KL weight at the first CVAE step, decaying linearly to 1 over ``kl_anneal`` steps. A heavy KL first
    makes the code nearly useless, so the net learns to read shapes, colours and counts from the prompt;
    with beta = 1 from the start the code carried everything and the prompt was ignored."""
    kl_anneal: int = 1500
    """Steps over which the KL weight decays from ``kl_start`` to 1."""
    ema: float = 0.995
    """EMA decay cap for the CVAE; the EMA weights are the ones saved."""
    seed: int = 0
    """Seeds torch (init, posterior noise) and numpy (prompt draws, renders)."""
    split_seed: int = 0
    """Seed of the train/held-out prompt split; only train prompts are seen."""
    threads: int = 2
    """torch CPU threads."""
    model: ModelConfig = ModelConfig()
    """Architecture; the vocabulary and the scaling factor are filled in by the job."""


def train_loop(name: str, steps: int, params: list[nn.Parameter], loss_fn: Callable[[int], tuple[Tensor, dict]],
               *, lr: float, warmup: int, clip: float | None = None, weight_decay: float = 0.0,
               on_step: Callable[[int], None] | None = None) -> None:
    """AdamW (Adam when ``weight_decay`` is 0) with linear warm-up and optional norm clipping over
    ``loss_fn(step) -> (loss, logs)``, with a tqdm bar; ``on_step(step)`` runs after each update."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    bar = tqdm(range(steps), desc=name, mininterval=10)
    for step in bar:
        loss, logs = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        bar.set_postfix(logs, refresh=False)
        if on_step is not None:
            on_step(step)


def reconstruction_loss(encoder: ImageEncoder, decoder: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """(loss, pixel MSE) of decoding ``encoder(images)`` (B, 3, 64, 64): the MSE plus a tiny pull of the latent
    towards 0, which keeps its scale from drifting (SD's VAE uses a 1e-6 KL for this)."""
    latent = encoder(images)
    mse = F.mse_loss(decoder(latent), images)
    return mse + 1e-4 * latent.pow(2).mean(), mse


def train_autoencoder(cfg: GeneratorConfig, rng: np.random.Generator) -> tuple[ImageEncoder, LatentDecoder, float]:
    """Phase 1: pixel-MSE autoencoder on fresh renders. Returns the frozen encoder and decoder and the
    scaling factor that gives the encoder's latents unit std (SD's 0.18215, measured)."""
    from harness.shapes.render import render_batch

    train = split("train", cfg.split_seed)
    encoder, decoder = ImageEncoder(), LatentDecoder(cfg.model.decoder)

    def loss_fn(step: int) -> tuple[Tensor, dict[str, float]]:
        loss, mse = reconstruction_loss(encoder, decoder, render_batch(tag_balanced(train, cfg.batch, rng), rng)[0])
        return loss, {"mse": mse.item()}

    train_loop("autoencoder", cfg.ae_steps, [*encoder.parameters(), *decoder.parameters()], loss_fn,
               lr=cfg.lr, warmup=cfg.warmup, clip=cfg.clip)
    encoder.eval().requires_grad_(False)
    decoder.eval().requires_grad_(False)
    with torch.no_grad():
        images, _ = render_batch(tag_balanced(train, 256, rng), rng)
        scaling = float(1.0 / encoder(images).std())
    return encoder, decoder, scaling


class LatentPosterior(nn.Module):
    """q(z | latent, prompt): two stride-2 convs on the unit-std latent (4x16x16 -> 128x4x4) + pooled text
    -> (mu, logvar), each (B, code_dim)."""

    def __init__(self, code_dim: int, d_text: int):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(LATENT_SHAPE[0], 64, 4, 2, 1), nn.GroupNorm(8, 64), nn.SiLU(),
                                   nn.Conv2d(64, 128, 4, 2, 1), nn.GroupNorm(8, 128), nn.SiLU(), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(128 * 16 + d_text, 512), nn.SiLU(), nn.Linear(512, 2 * code_dim))

    def forward(self, latents: Tensor, pooled: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(torch.cat([self.convs(latents), pooled], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-8.0, 4.0)


class Cvae(nn.Module):
    """Text encoder + ShapesNet (decoder of the code, learned prior) + posterior, trained together."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.text_encoder = TextEncoder(cfg.text)
        self.net = ShapesNet(cfg.net, cfg.text.width)
        self.posterior = LatentPosterior(cfg.net.code_dim, cfg.text.width)

    def loss(self, images: Tensor, latents: Tensor, ids: Tensor, decoder: LatentDecoder, scaling: float,
             cfg: "GeneratorConfig", beta: float) -> tuple[Tensor, dict[str, float]]:
        """Negative beta-ELBO for renders (B, 3, 64, 64) and their unit-std latents (B, 4, 16, 16), in nats
        per latent dim: ||y_hat - y||^2 / (2 latent_sigma^2) [+ ||D(y_hat) - x||^2 / (2 pixel_sigma^2)]
        + beta KL(q || p(z | text)), with y_hat = scaling * net(z) and D the frozen decoder."""
        text = self.text_encoder(ids)
        mu_q, lv_q = self.posterior(latents, text["pooled"])
        mu_p, lv_p = self.net.prior(text)
        z = mu_q + (0.5 * lv_q).exp() * torch.randn_like(mu_q)
        raw = self.net.decode_code(z, text)
        err = (raw * scaling - latents).pow(2).flatten(1).sum(1)
        nll = err / (2 * cfg.latent_sigma ** 2)
        logs = {"mse": (err.mean() / latents[0].numel()).item()}
        if cfg.pixel_sigma:
            # Pixel MSE through the frozen decoder: where the code is unsure, averaging in pixels gives a faint
            # blur the verifier ignores, while averaging in latents decodes to small solid spurious objects.
            pix = (decoder(raw) - images).pow(2).flatten(1).sum(1)
            nll = nll + pix / (2 * cfg.pixel_sigma ** 2)
            logs["pix_mse"] = (pix.mean() / images[0].numel()).item()
        kl = 0.5 * (lv_p - lv_q + (lv_q.exp() + (mu_q - mu_p) ** 2) / lv_p.exp() - 1).sum(1)
        loss = (nll + beta * kl).mean() / latents[0].numel()
        return loss, {"loss": loss.item(), **logs, "kl": kl.mean().item()}


def train_cvae(cfg: GeneratorConfig, encoder: ImageEncoder, decoder: LatentDecoder, scaling: float,
               rng: np.random.Generator, on_step: Callable[[int, Cvae, Ema], None] | None = None) -> tuple[Cvae, Ema]:
    """Phase 2: the conditional VAE on the frozen encoder's latents of fresh renders."""
    from harness.shapes.render import render_batch

    train = split("train", cfg.split_seed)
    model = Cvae(cfg.model)
    ema = Ema(model, cfg.ema)

    def loss_fn(step: int) -> tuple[Tensor, dict[str, float]]:
        metas = tag_balanced(train, cfg.batch, rng)
        images, _ = render_batch(metas, rng)
        with torch.no_grad():
            latents = encoder(images) * scaling
        beta = 1.0 + (cfg.kl_start - 1.0) * max(0.0, 1.0 - step / cfg.kl_anneal)
        ids = model.text_encoder.ids([m["prompt"] for m in metas])
        return model.loss(images, latents, ids, decoder, scaling, cfg, beta)

    def after(step: int) -> None:
        ema.update()
        if on_step is not None:
            on_step(step, model, ema)

    train_loop("generator", cfg.steps, list(model.parameters()), loss_fn, lr=cfg.lr, warmup=cfg.warmup,
               clip=cfg.clip, on_step=after)
    return model, ema


def pretrain_generator(cfg: GeneratorConfig, out: str | Path = assets.ASSET_DIR) -> Path:
    """Both phases; saves the text encoder, the EMA net and the frozen decoder as ``generator``."""
    vocab = build_vocab([m["prompt"] for m in all_prompts()])
    cfg = replace(cfg, model=replace(cfg.model, text=replace(cfg.model.text, vocab=vocab)))
    rng = _seed_all(cfg.seed, cfg.threads)
    start = time.perf_counter()
    encoder, decoder, scaling = train_autoencoder(cfg, rng)
    _, ema = train_cvae(cfg, encoder, decoder, scaling, rng)
    best = ema.shadow.eval()
    model_cfg = replace(cfg.model, scaling_factor=scaling)
    state = model_state(best.text_encoder, best.net, decoder)
    path = save_asset(out, "generator", state, model_cfg.to_dict(), dtype=torch.float32)
    record_time(out, "generator", time.perf_counter() - start, cfg.ae_steps + cfg.steps)
    return path


# -- encoder: masked autoencoder on generator latents --------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    steps: int = 1000
    """Optimizer steps."""
    batch: int = 128
    """Latents per step, drawn from the pool."""
    pool_per_prompt: int = 64
    """Generator latents sampled per train prompt (the MAE's data set)."""
    base_width: int = 32
    """ResNetEncoder base channels (stages: 32, 64, 128, 256)."""
    layers: tuple[int, ...] = (2, 2, 2, 2)
    """Basic blocks per stage; 16x16 latents give stages at 16, 8, 4 and 2 pixels."""
    patch: int = 2
    """Side of the square latent patches that are masked."""
    mask_ratio: float = 0.5
    """Fraction of patches masked (the latent MAE-256's 0.5)."""
    keys: tuple[str, ...] = ("layer3_mean", "layer3_std", "layer3_mean_2", "layer3_std_2", "layer4_mean", "layer4_std")
    """Suggested DrPO feature keys for Shapes latents (the SD-Turbo keys' scales: 1/4 and 1/8 of the latent)."""
    lr: float = 1e-3
    """AdamW learning rate after warm-up."""
    warmup: int = 50
    """Linear warm-up steps."""
    seed: int = 0
    """Seeds torch (init, masks, pool noise) and numpy."""
    split_seed: int = 0
    """Seed of the prompt split; the pool uses train prompts."""
    threads: int = 2
    """torch CPU threads."""
    image_steps: int = 400
    """Steps of the image -> latent encoder against the frozen decoder (offline DrPO's rendered anchors)."""
    image_batch: int = 32
    """Renders per image-encoder step."""


class MaeDecoder(nn.Module):
    """Light decoder: the encoder's last stage (B, C, s, s) -> latent (B, 4, 16, 16) by upsample + conv steps."""

    def __init__(self, c_in: int, size: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = c_in
        while size < LATENT_SHAPE[1]:
            layers += [nn.Upsample(scale_factor=2.0), nn.Conv2d(c, c // 2, 3, padding=1), nn.GroupNorm(8, c // 2),
                       nn.SiLU()]
            c, size = c // 2, size * 2
        self.body = nn.Sequential(*layers, nn.Conv2d(c, LATENT_SHAPE[0], 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@torch.no_grad()
def generator_latents(gen, prompts: Sequence[str], per_prompt: int, seed: int, chunk: int = 256) -> Tensor:
    """(len(prompts) * per_prompt, 4, 16, 16) scaled base-generator latents, prompt-major."""
    rows = [p for p in prompts for _ in range(per_prompt)]
    seeds = [seed * 1_000_003 + i for i in range(len(rows))]
    out = []
    for i in range(0, len(rows), chunk):
        with gen.reference():
            out.append(gen.latents(gen.noise(seeds[i:i + chunk]), gen.encode(rows[i:i + chunk])))
    return torch.cat(out)


def random_patch_mask(n: int, patch: int, ratio: float, gen: torch.Generator) -> Tensor:
    """(n, 1, 16, 16) float mask, 1 on masked latent pixels: exactly round(ratio * patches) patches per row."""
    side = LATENT_SHAPE[1] // patch
    k = round(ratio * side * side)
    order = torch.rand(n, side * side, generator=gen).argsort(dim=1)
    mask = torch.zeros(n, side * side).scatter_(1, order[:, :k], 1.0).reshape(n, 1, side, side)
    return mask.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def pretrain_encoder(cfg: EncoderConfig, out: str | Path = assets.ASSET_DIR) -> Path:
    """MAE on the pretrained generator's latents (out/generator.safetensors); saves the encoder only."""
    from harness.features import ResNetEncoder
    from harness.shapes.model import load_generator

    _seed_all(cfg.seed, cfg.threads)
    start = time.perf_counter()
    gen = load_generator(lora_rank=0, directory=out)
    pool = generator_latents(gen, [m["prompt"] for m in split("train", cfg.split_seed)], cfg.pool_per_prompt,
                             cfg.seed)
    encoder = ResNetEncoder(LATENT_SHAPE[0], cfg.base_width, cfg.layers)
    decoder = MaeDecoder(encoder.stage_channels(encoder.stage_names[-1]), LATENT_SHAPE[1] // 2 ** (len(cfg.layers) - 1))
    gen_rng = torch.Generator().manual_seed(cfg.seed)
    last: dict[str, float] = {}

    def loss_fn(step: int) -> tuple[Tensor, dict[str, float]]:
        x = pool[torch.randint(len(pool), (cfg.batch,), generator=gen_rng)]
        mask = random_patch_mask(cfg.batch, cfg.patch, cfg.mask_ratio, gen_rng)
        recon = decoder(encoder(x * (1 - mask)))
        # MAE: the loss is on the masked patches only (the visible ones are trivially copied).
        loss = ((recon - x) ** 2 * mask).sum() / (mask.sum() * LATENT_SHAPE[0])
        last["masked_mse"] = loss.item()
        return loss, dict(last)

    train_loop("encoder", cfg.steps, [*encoder.parameters(), *decoder.parameters()], loss_fn, lr=cfg.lr,
               warmup=cfg.warmup, weight_decay=0.01)
    config = {"in_channels": LATENT_SHAPE[0], "base_width": cfg.base_width, "layers": list(cfg.layers),
              "keys": list(cfg.keys), "mask_ratio": cfg.mask_ratio, "patch": cfg.patch,
              "final_masked_mse": round(last["masked_mse"], 5)}
    path = save_asset(out, "encoder", encoder.state_dict(), config, dtype=torch.float16)
    image_encoder, mse = train_image_encoder(cfg, gen)
    save_asset(out, "image_encoder", image_encoder.state_dict(),
               {"width": image_encoder.width, "scaling_factor": gen.cfg.scaling_factor,
                "final_pixel_mse": round(mse, 6)},
               dtype=torch.float32)
    record_time(out, "encoder", time.perf_counter() - start, cfg.steps + cfg.image_steps)
    return path


def train_image_encoder(cfg: EncoderConfig, gen) -> tuple[ImageEncoder, float]:
    """Image -> raw latent encoder trained to reconstruct renders through the generator's frozen decoder (the
    first phase's :func:`reconstruction_loss`, decoder fixed). Returns it and its last MSE."""
    from harness.shapes.render import render_batch

    rng = np.random.default_rng(cfg.seed)
    train = split("train", cfg.split_seed)
    encoder, decoder = ImageEncoder(), gen.decoder
    last: dict[str, float] = {}

    def loss_fn(step: int) -> tuple[Tensor, dict[str, float]]:
        loss, mse = reconstruction_loss(encoder, decoder,
                                        render_batch(tag_balanced(train, cfg.image_batch, rng), rng)[0])
        last["mse"] = mse.item()
        return loss, dict(last)

    train_loop("image encoder", cfg.image_steps, list(encoder.parameters()), loss_fn, lr=1e-3, warmup=cfg.warmup)
    return encoder.eval().requires_grad_(False), last["mse"]


# -- reward: shapes-pref --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardConfig:
    steps: int = 400
    """Optimizer steps."""
    batch: int = 16
    """Prompts per step; each gives a correct render, a one-clause-broken render and (half) a damaged render."""
    gen_batch: int = 16
    """Verifier-labelled generator samples per step, half correct and half incorrect when the pool allows;
    0 trains on renders only (and needs no generator)."""
    pool_per_prompt: int = 32
    """Generator samples drawn per train prompt for the labelled pool."""
    aux_weight: float = 1.0
    """Weight of the auxiliary per-cell object loss (objectness, shape, colour) on renders."""
    lr: float = 1e-3
    """AdamW learning rate after warm-up."""
    warmup: int = 100
    """Linear warm-up steps."""
    clip: float = 1.0
    """Gradient-norm clip."""
    seed: int = 0
    """Seeds torch (init) and numpy (prompt draws, renders, damage)."""
    split_seed: int = 0
    """Seed of the prompt split; only train prompts are seen."""
    threads: int = 2
    """torch CPU threads."""
    model: PrefConfig = PrefConfig()
    """Architecture."""




def cell_targets(scenes: Sequence, n_shapes: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    """Per-cell targets of rendered scenes: objectness (B, 8, 8) float, shape and colour class (B, 8, 8) long
    (-100, ignored, where no object's centre falls in the cell)."""
    from harness.shapes.prompts import COLORS, SHAPES

    b = len(scenes)
    obj = torch.zeros(b, GRID, GRID)
    shape = torch.full((b, GRID, GRID), -100, dtype=torch.long)
    color = torch.full((b, GRID, GRID), -100, dtype=torch.long)
    colors = list(COLORS)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            gx, gy = min(int(o.cx // 8), GRID - 1), min(int(o.cy // 8), GRID - 1)
            obj[i, gy, gx] = 1.0
            shape[i, gy, gx], color[i, gy, gx] = SHAPES.index(o.shape), colors.index(o.color)
    return obj, shape, color


@torch.no_grad()
def labelled_generator_pool(gen_dir: str | Path, prompts: Sequence[str], per_prompt: int, seed: int,
                            chunk: int = 256) -> tuple[Tensor, list[str], Tensor]:
    """Samples of the pretrained generator on ``prompts`` with the verifier's 0/1 labels:
    images (N, 3, 64, 64), their prompts, labels (N,)."""
    from harness.shapes.model import load_generator
    from rewards.shapes_geneval import ShapesGenEval

    gen, verifier = load_generator(lora_rank=0, directory=gen_dir), ShapesGenEval()
    rows = [p for p in prompts for _ in range(per_prompt)]
    seeds = [seed * 1_000_003 + i for i in range(len(rows))]
    images, labels = [], []
    for i in range(0, len(rows), chunk):
        x = gen.decode(gen.latents(gen.noise(seeds[i:i + chunk]), gen.encode(rows[i:i + chunk])))
        images.append(x)
        labels.append(verifier.score(x, rows[i:i + chunk]))
    return torch.cat(images), rows, torch.cat(labels)


def _balanced_indices(labels: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` pool indices, half with label 1 and half with label 0 (all from one side if the other is empty)."""
    groups = [g for g in ((labels > 0.5).nonzero().flatten(), (labels <= 0.5).nonzero().flatten()) if len(g)]
    if n == 0 or not groups:
        return torch.zeros(0, dtype=torch.long)
    sizes = [n // len(groups) + (i < n % len(groups)) for i in range(len(groups))]
    return torch.cat([g[torch.randint(len(g), (k,), generator=gen)] for g, k in zip(groups, sizes)])


class RewardBatches:
    """Training batches for shapes-pref: renders (correct, broken, damaged) plus labelled generator samples."""

    def __init__(self, cfg: RewardConfig, pool: tuple[Tensor, list[str], Tensor], rng: np.random.Generator):
        self.cfg, self.rng, self.pool = cfg, rng, pool
        self.train = split("train", cfg.split_seed)
        self.torch_rng = torch.Generator().manual_seed(cfg.seed)

    def next(self) -> dict:
        """{"images" (N, 3, 64, 64), "prompts" N, "labels" (B + B + G,) for the pointwise rows, "scenes" 2B,
        "sizes" (B, B, D, G)}: rows are [correct renders | broken renders | damaged | generator samples]."""
        from harness.shapes.render import DAMAGE_KINDS, damage, render_batch

        b, rng = self.cfg.batch, self.rng
        metas = tag_balanced(self.train, b, rng)
        pos, pos_scenes = render_batch(metas, rng, correct=True)
        neg, neg_scenes = render_batch(metas, rng, correct=False)
        d = b // 2
        kind = DAMAGE_KINDS[rng.integers(len(DAMAGE_KINDS))]
        damaged = damage(pos[:d], rng, kind, scenes=pos_scenes[:d])
        images, prompts, labels = self.pool
        idx = _balanced_indices(labels, self.cfg.gen_batch, self.torch_rng)
        texts = [m["prompt"] for m in metas]
        return {"images": torch.cat([pos, neg, damaged, images[idx]]),
                "prompts": texts + texts + texts[:d] + [prompts[i] for i in idx.tolist()],
                "labels": torch.cat([torch.ones(b), torch.zeros(b), labels[idx]]),
                "scenes": pos_scenes + neg_scenes, "sizes": (b, b, d, len(idx))}


def log_bce(log_p: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy for log-probabilities ``log_p`` (N,) <= 0 and 0/1 ``labels`` (N,)."""
    log_p = log_p.clamp(max=-1e-4)
    return -(labels * log_p + (1 - labels) * torch.log(-torch.expm1(log_p))).mean()


def reward_loss(model: PrefModel, batch: dict, aux_weight: float) -> tuple[Tensor, dict[str, float]]:
    """Logistic loss on verifier-style labels (the score is a log-probability) + Bradley-Terry on (correct,
    broken) and (clean, damaged) pairs of the same prompt + the per-cell object loss on renders."""
    b, _, d, g = batch["sizes"]
    feats = model.image_features(batch["images"])
    scores = model.score_features(feats, batch["prompts"])
    pos, neg, dmg, gen = scores.split([b, b, d, g])
    pointwise = log_bce(torch.cat([pos, neg, dmg, gen]),
                        torch.cat([batch["labels"][:2 * b], torch.zeros(d), batch["labels"][2 * b:]]))
    pairwise = F.softplus(neg - pos).mean() + F.softplus(dmg - pos[:d]).mean()
    logits = model.aux_logits(feats[:2 * b])  # (2B, 8, 8, 1 + 3 + 4)
    obj, shape, color = cell_targets(batch["scenes"])
    aux = (F.binary_cross_entropy_with_logits(logits[..., 0], obj)
           + F.cross_entropy(logits[..., 1:4].reshape(-1, 3), shape.flatten())
           + F.cross_entropy(logits[..., 4:].reshape(-1, 4), color.flatten()))
    loss = pointwise + pairwise + aux_weight * aux
    return loss, {"loss": loss.item(), "bce": pointwise.item(), "bt": pairwise.item(), "aux": aux.item()}


def pretrain_reward(cfg: RewardConfig, out: str | Path = assets.ASSET_DIR) -> Path:
    """Train shapes-pref on renders and the generator's verifier-labelled samples (out/generator.safetensors)."""
    rng = _seed_all(cfg.seed, cfg.threads)
    start = time.perf_counter()
    model_cfg = cfg.model
    train_prompts = [m["prompt"] for m in split("train", cfg.split_seed)]
    pool = (labelled_generator_pool(out, train_prompts, cfg.pool_per_prompt, cfg.seed) if cfg.gen_batch
            else (torch.zeros(0, 3, 64, 64), [], torch.zeros(0)))
    batches = RewardBatches(cfg, pool, rng)
    model = PrefModel(model_cfg)
    train_loop("reward", cfg.steps, list(model.parameters()),
               lambda step: reward_loss(model, batches.next(), cfg.aux_weight),
               lr=cfg.lr, warmup=cfg.warmup, clip=cfg.clip, weight_decay=0.01)
    path = save_asset(out, "reward", model.state_dict(), model_cfg.to_dict(), dtype=torch.float16)
    record_time(out, "reward", time.perf_counter() - start, cfg.steps)
    return path


# -- command line -------------------------------------------------------------------------------------------

JOBS = {"generator": (GeneratorConfig, pretrain_generator), "encoder": (EncoderConfig, pretrain_encoder),
        "reward": (RewardConfig, pretrain_reward)}
"""Each job's config class and function, in dependency order (encoder and reward read the generator)."""


def run_jobs(names: Iterable[str], out: str | Path, *, steps: int | None = None, seed: int | None = None) -> None:
    """Run the named jobs in dependency order with their default configs, overriding ``steps`` and ``seed``."""
    for name in (n for n in JOBS if n in set(names)):
        config_cls, job = JOBS[name]
        overrides = {k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None}
        cfg = replace(config_cls(), **overrides)
        print(f"pretrain {name}: {', '.join(f'{f.name}={getattr(cfg, f.name)}' for f in fields(cfg) if f.name != 'model')}")
        path = job(cfg, out)
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.shapes.pretrain",
                                     description="Pretrain the Shapes world's generator, latent encoder and reward.")
    parser.add_argument("job", choices=[*JOBS, "all"], help="which model to pretrain ('all': the three, in order)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the job's config)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the job's config, 0)")
    parser.add_argument("--out", default=str(assets.ASSET_DIR), help="asset folder (default: %(default)s)")
    args = parser.parse_args(argv)
    run_jobs(list(JOBS) if args.job == "all" else [args.job], args.out, steps=args.steps, seed=args.seed)


if __name__ == "__main__":
    main()
