"""Reproducible pretraining of the Shapes world's three models: generator, latent MAE encoder, reward.

    python -m harness.shapes.pretrain {generator,encoder,reward,all} [--steps N --seed S --out DIR]

* ``generator``, in two phases, the way SD was built. (1) An autoencoder on renders: a small image encoder
  and the LatentDecoder, pixel MSE; the decoder is then frozen and its latents get a unit-std scaling factor.
  (2) A conditional VAE in that latent space (shapes-probe.md's recipe, moved from pixels to latents): its
  decoder is ShapesNet and its Gaussian prior p(z | prompt) is ShapesNet's learned prior, trained from step 0
  on fresh renders of tag-balanced train prompts. The text encoder, the EMA ShapesNet and the decoder are
  kept; the image encoder and the posterior are dropped. (Training the same CVAE end to end in pixels, as
  the probe did, had not formed a single verifiable shape after 1,000 steps here; the autoencoder reaches
  90% verifiable reconstructions in 200 steps, and the latent CVAE 0.15-0.25 GenEval in 1,000.) Edition 2's
  prior is a mixture of 16 Gaussians (``NetConfig.prior_components``, ``EDITION_OVERRIDES``), its KL a
  one-sample estimate (``prior_kl``).
* ``encoder``: a masked autoencoder on the pretrained generator's latents (half the 2x2 latent patches
  masked); the ResNetEncoder is kept for DrPO's feature space, the light decoder is dropped.
* ``reward``: shapes-pref, trained on rendered positives and one-clause-broken or damaged negatives, plus
  verifier-labelled samples of the pretrained generator.

The encoder and reward jobs live in ``pretrain_encoder.py`` and ``pretrain_reward.py``, what all three share in
``pretrain_common.py``; this module holds the generator job and the command line.

Every job is seeded (torch, numpy) and runs on the CPU; weights go to ``<out>/<name>.safetensors`` with the
model config in ``<out>/<name>.json``; ``checksums.json`` and ``timings.json`` (wall seconds per job) are
rewritten after each job.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from evals.geneval import summarize
from harness.shapes.editions import EDITIONS, edition
from harness.shapes.generator import ShapesGenerator, model_state
from harness.shapes.measure import sample_and_verify
from harness.shapes.model import (
    LATENT_SHAPE,
    ImageEncoder,
    LatentDecoder,
    ModelConfig,
    ShapesNet,
    TextEncoder,
    build_vocab,
)
from harness.shapes.pretrain_common import (
    Ema,
    reconstruction_loss,
    record_time,
    save_asset,
    seed_all,
    tag_balanced,
    train_loop,
)
from harness.shapes.pretrain_encoder import EncoderConfig, pretrain_encoder
from harness.shapes.pretrain_reward import RewardConfig, pretrain_reward
from harness.shapes.prompts import all_prompts, split
from harness.shapes.render import render_batch
from rewards.shapes_geneval import VERIFIERS

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
    lr_decay: int = 0
    """Phase 2: the last this many CVAE steps lower the learning rate linearly towards 0 (0: constant)."""
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
    edition: int = 1
    """The Shapes world's edition (``harness.shapes.editions``): its prompts, renders and asset folder."""
    threads: int = 2
    """torch CPU threads."""
    eval_every: int = 0
    """Every this many conditional-VAE steps (and at the last), print the EMA net's validation shapes-GenEval per
    tag (8 images per prompt) as one JSON line; read-only (torch's RNG state is restored), so the asset is the
    same. 0: off."""
    model: ModelConfig = ModelConfig()
    """Architecture; the vocabulary and the scaling factor are filled in by the job."""


def train_autoencoder(cfg: GeneratorConfig, rng: np.random.Generator) -> tuple[ImageEncoder, LatentDecoder, float]:
    """Phase 1: pixel-MSE autoencoder on fresh renders. Returns the frozen encoder and decoder and the
    scaling factor that gives the encoder's latents unit std (SD's 0.18215, measured)."""

    ed = edition(cfg.edition)
    train = split("train", cfg.split_seed, ed)
    encoder, decoder = ImageEncoder(), LatentDecoder(cfg.model.decoder)

    def loss_fn(step: int) -> tuple[Tensor, dict[str, float]]:
        images = render_batch(tag_balanced(train, cfg.batch, rng), rng, ed=ed)[0]
        loss, mse = reconstruction_loss(encoder, decoder, images)
        return loss, {"mse": mse.item()}

    train_loop("autoencoder", cfg.ae_steps, [*encoder.parameters(), *decoder.parameters()], loss_fn,
               lr=cfg.lr, warmup=cfg.warmup, clip=cfg.clip)
    encoder.eval().requires_grad_(False)
    decoder.eval().requires_grad_(False)
    with torch.no_grad():
        images, _ = render_batch(tag_balanced(train, 256, rng), rng, ed=ed)
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
        logits, mu_p, lv_p = self.net.prior(text)
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
        kl = prior_kl(z, mu_q, lv_q, logits, mu_p, lv_p)
        loss = (nll + beta * kl).mean() / latents[0].numel()
        return loss, {"loss": loss.item(), **logs, "kl": kl.mean().item()}


def _log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Diagonal Gaussian log density summed over the last dim: z, mu, logvar (..., D) -> (...)."""
    return -0.5 * (logvar + (z - mu) ** 2 / logvar.exp() + math.log(2 * math.pi)).sum(-1)


def prior_kl(z: Tensor, mu_q: Tensor, lv_q: Tensor, logits: Tensor, mu_p: Tensor, lv_p: Tensor) -> Tensor:
    """KL(q(z | x, t) || p(z | t)) per sample (B,), for q = N(mu_q, exp lv_q) (B, D) and the mixture prior
    (logits (B, C), mu_p and lv_p (B, C, D)). One component: the closed form. More: the one-sample estimate
    log q(z) - log p(z) at the posterior draw z (B, D), the mixture's KL having no closed form."""
    if logits.shape[1] == 1:
        mu_p, lv_p = mu_p[:, 0], lv_p[:, 0]
        return 0.5 * (lv_p - lv_q + (lv_q.exp() + (mu_q - mu_p) ** 2) / lv_p.exp() - 1).sum(1)
    log_p = torch.logsumexp(logits.log_softmax(dim=1) + _log_normal(z[:, None], mu_p, lv_p), dim=1)
    return _log_normal(z, mu_q, lv_q) - log_p


def train_cvae(cfg: GeneratorConfig, encoder: ImageEncoder, decoder: LatentDecoder, scaling: float,
               rng: np.random.Generator, on_step: Callable[[int, Cvae, Ema], None] | None = None) -> tuple[Cvae, Ema]:
    """Phase 2: the conditional VAE on the frozen encoder's latents of fresh renders."""

    ed = edition(cfg.edition)
    train = split("train", cfg.split_seed, ed)
    model = Cvae(cfg.model)
    ema = Ema(model, cfg.ema)

    def loss_fn(step: int) -> tuple[Tensor, dict[str, float]]:
        metas = tag_balanced(train, cfg.batch, rng)
        images, _ = render_batch(metas, rng, ed=ed)
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
               clip=cfg.clip, on_step=after, decay=cfg.lr_decay)
    return model, ema


def validation_probe(cfg: GeneratorConfig, decoder: LatentDecoder, scaling: float
                     ) -> Callable[[int, Cvae, Ema], None] | None:
    """``train_cvae``'s ``on_step`` for ``cfg.eval_every`` (None when 0): the EMA generator's validation scores."""
    if not cfg.eval_every:
        return None
    ed, start = edition(cfg.edition), time.perf_counter()
    val, verifier = split("val", cfg.split_seed, ed), VERIFIERS[ed.number]()

    def probe(step: int, model: Cvae, ema: Ema) -> None:
        if (step + 1) % cfg.eval_every and step + 1 != cfg.steps:
            return
        rng_state = torch.get_rng_state()
        shadow = ema.shadow
        gen = ShapesGenerator(replace(cfg.model, scaling_factor=scaling),
                              model_state(shadow.text_encoder, shadow.net, decoder), lora_rank=0)
        _, rows = sample_and_verify(gen, verifier, val, 8, 0)
        tags = {k: round(v, 3) for k, v in summarize(rows).items() if k not in ("correct_images", "correct_prompts")}
        print(json.dumps({"step": step + 1, "minutes": round((time.perf_counter() - start) / 60, 1), **tags}),
              flush=True)
        torch.set_rng_state(rng_state)

    return probe


def pretrain_generator(cfg: GeneratorConfig, out: str | Path | None = None) -> Path:
    """Both phases; saves the text encoder, the EMA net and the frozen decoder as ``generator`` in ``out``
    (default: the edition's asset folder)."""
    out = out or edition(cfg.edition).asset_dir
    vocab = build_vocab([m["prompt"] for m in all_prompts(edition(cfg.edition))])
    cfg = replace(cfg, model=replace(cfg.model, text=replace(cfg.model.text, vocab=vocab)))
    rng = seed_all(cfg.seed, cfg.threads)
    start = time.perf_counter()
    encoder, decoder, scaling = train_autoencoder(cfg, rng)
    _, ema = train_cvae(cfg, encoder, decoder, scaling, rng, on_step=validation_probe(cfg, decoder, scaling))
    best = ema.shadow.eval()
    model_cfg = replace(cfg.model, scaling_factor=scaling)
    state = model_state(best.text_encoder, best.net, decoder)
    path = save_asset(out, "generator", state, model_cfg.to_dict(), dtype=torch.float32)
    record_time(out, "generator", time.perf_counter() - start, cfg.ae_steps + cfg.steps)
    return path

# -- command line -------------------------------------------------------------------------------------------

EDITION_OVERRIDES: dict[int, dict[str, dict[str, object]]] = {
    2: {"generator": {"steps": 12000, "model.net.prior_components": 16}},
}
"""Per edition and job, config values that differ from the job's defaults (a dotted key reaches a nested config).
Edition 2's generator has a 16-component mixture prior. Validation GenEval overall (single_object included): one
Gaussian with random open colours, 9,000 steps, 0.106 (16 images per prompt; blended, off-palette colours and
faint spurious objects); the mixture with random open colours 0.138 at 7,500 steps; the mixture with open colours
drawn per shape (``Edition.open_colour``) 0.28 at 3,000, 0.33 at 6,000 and 9,000 and 0.36 at 12,000 steps (8 images
per prompt; colour attribution 0.047 at 9,000, 0.156 at 12,000). A linear learning-rate decay over the last 4,000
of 12,000 steps (``lr_decay``) gave 0.34, so the rate stays constant. One Gaussian with per-shape colours was not
measured."""


def with_overrides(cfg, overrides: dict[str, object]):
    """``cfg`` (a frozen dataclass) with ``overrides`` applied; "a.b.c" replaces field c of field b of field a."""
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        cfg = replace(cfg, **{head: with_overrides(getattr(cfg, head), {rest: value}) if rest else value})
    return cfg

JOBS = {"generator": (GeneratorConfig, pretrain_generator), "encoder": (EncoderConfig, pretrain_encoder),
        "reward": (RewardConfig, pretrain_reward)}
"""Each job's config class and function, in dependency order (encoder and reward read the generator)."""


def run_jobs(names: Iterable[str], out: str | Path | None, *, steps: int | None = None, seed: int | None = None,
             edition_number: int = 1, threads: int | None = None, settings: dict[str, object] | None = None) -> None:
    """Run the named jobs in dependency order with their default configs, overriding ``steps`` and ``seed``, for
    the Shapes world's edition ``edition_number``; ``settings`` (dotted keys) override any field of the jobs that
    have it. ``out`` None writes to the edition's asset folder."""
    out = out or edition(edition_number).asset_dir
    for name in (n for n in JOBS if n in set(names)):
        config_cls, job = JOBS[name]
        overrides = dict(EDITION_OVERRIDES.get(edition_number, {}).get(name, {}))
        overrides.update({k: v for k, v in (("steps", steps), ("seed", seed), ("threads", threads)) if v is not None})
        known = {f.name for f in fields(config_cls)}
        overrides.update({k: v for k, v in (settings or {}).items() if k.partition(".")[0] in known})
        cfg = with_overrides(config_cls(), {**overrides, "edition": edition_number})
        print(f"pretrain {name}: {', '.join(f'{f.name}={getattr(cfg, f.name)}' for f in fields(cfg) if f.name != 'model')}")
        path = job(cfg, out)
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.shapes.pretrain",
                                     description="Pretrain the Shapes world's generator, latent encoder and reward.")
    parser.add_argument("job", choices=[*JOBS, "all"], help="which model to pretrain ('all': the three, in order)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the job's config)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the job's config, 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the job's config; 1 keeps a shared machine's other core free,"
                             " and 2 threads slow to a crawl when anything else runs)")
    parser.add_argument("--edition", type=int, choices=sorted(EDITIONS), default=1,
                        help="the Shapes world's edition (default: %(default)s)")
    parser.add_argument("--out", default=None, help="asset folder (default: the edition's, harness/assets/shapes[2])")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="generator: print validation shapes-GenEval every N conditional-VAE steps (default: off)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, dotted for nested ones (e.g. model.net.prior_components=1);"
                             " the value is read as JSON, else as a string")
    args = parser.parse_args(argv)
    settings = dict(_setting(item, parser) for item in args.set)
    names = list(JOBS) if args.job == "all" else [args.job]
    known = sorted({f.name for name in names for f in fields(JOBS[name][0])})
    for key in settings:
        if key.partition(".")[0] not in known:
            parser.error(f"--set {key}: no such field of {', '.join(names)}; choose from {', '.join(known)}")
    if args.eval_every:
        settings["eval_every"] = args.eval_every
    run_jobs(names, args.out, steps=args.steps, seed=args.seed, edition_number=args.edition, threads=args.threads,
             settings=settings)


def _setting(item: str, parser: argparse.ArgumentParser) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        parser.error(f"--set takes KEY=VALUE, got '{item}'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


if __name__ == "__main__":
    main()
