"""What the three Shapes pretraining jobs share: seeding, tag-balanced prompt draws, an EMA of weights,
writing an asset with its checksum and timing, the training loop with its progress bar, and the image
autoencoder's reconstruction loss (the generator's first phase and the encoder job use it)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from harness.shapes import assets
from harness.shapes.model import ImageEncoder
from harness.shapes.prompts import TAGS


def seed_all(seed: int, threads: int) -> np.random.Generator:
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


def train_loop(name: str, steps: int, params: list[nn.Parameter], loss_fn: Callable[[int], tuple[Tensor, dict]],
               *, lr: float, warmup: int, clip: float | None = None, weight_decay: float = 0.0,
               on_step: Callable[[int], None] | None = None, decay: int = 0) -> None:
    """AdamW (Adam when ``weight_decay`` is 0) with linear warm-up and optional norm clipping over
    ``loss_fn(step) -> (loss, logs)``, with a tqdm bar; ``on_step(step)`` runs after each update. ``decay`` > 0
    lowers the rate linearly over the last ``decay`` steps, to 1/decay of it at the last step."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, steps, warmup, decay))
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


def lr_factor(step: int, steps: int, warmup: int, decay: int = 0) -> float:
    """The learning-rate multiplier of update ``step`` (0-based) of ``steps``: linear warm-up over ``warmup``
    updates, constant, then (``decay`` > 0) linear decay over the last ``decay`` updates, ending at 1/decay."""
    factor = min(1.0, (step + 1) / warmup)
    return min(factor, (steps - step) / decay) if decay else factor


def reconstruction_loss(encoder: ImageEncoder, decoder: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """(loss, pixel MSE) of decoding ``encoder(images)`` (B, 3, 64, 64): the MSE plus a tiny pull of the latent
    towards 0, which keeps its scale from drifting (SD's VAE uses a 1e-6 KL for this)."""
    latent = encoder(images)
    mse = F.mse_loss(decoder(latent), images)
    return mse + 1e-4 * latent.pow(2).mean(), mse
