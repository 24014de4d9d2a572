"""Image grids with PIL (no torchvision)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def grid(images: Tensor, columns: int, *, pad: int = 2, borders: Sequence[tuple[int, int, int] | None] = ()) -> np.ndarray:
    """Tile (B, 3, H, W) images row-major into one (rows*(H+pad)+pad, ...) uint8 array on white.

    ``borders[i]``, when given, paints a coloured frame around image i (e.g. verifier pass/fail).
    """
    pixels = to_uint8(images)
    b, h, w, _ = pixels.shape
    rows = -(-b // columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i, image in enumerate(pixels):
        y, x = pad + (i // columns) * (h + pad), pad + (i % columns) * (w + pad)
        if i < len(borders) and borders[i] is not None:
            out[y - pad:y + h + pad, x - pad:x + w + pad] = borders[i]
        out[y:y + h, x:x + w] = image
    return out


def save_grid(images: Tensor, path: str | Path, *, columns: int, limit: int | None = None, scale: int = 1,
              borders: Sequence[tuple[int, int, int] | None] = ()) -> Path:
    from PIL import Image

    images = images[:limit] if limit else images
    image = Image.fromarray(grid(images, columns, borders=borders))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def save_samples(run_dir: Path, images: Tensor, base: tuple[Tensor, Sequence[str]], seeds: int,
                 prompts_shown: int = 8, name: str = "samples") -> None:
    """The final evaluation's first prompts: ``<name>.png`` (rows = prompts, columns = seeds) and
    ``<name>.npz`` (uint8 images, base images on the same noise, prompts) for cross-method figures."""
    n = prompts_shown * seeds
    save_grid(images, Path(run_dir) / f"{name}.png", columns=seeds, limit=n)
    np.savez_compressed(Path(run_dir) / f"{name}.npz", images=to_uint8(images[:n]), base=to_uint8(base[0][:n]),
                        prompts=np.array(list(base[1][:n])), seeds=np.array(seeds))
