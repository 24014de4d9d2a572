"""Colourfulness (Hasler and Suesstrunk, 2003): a cheap differentiable image reward for CPU runs.

With opponent channels rg = R - G and yb = (R + G)/2 - B on a 0-255 scale,
score = sqrt(var(rg) + var(yb)) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from rewards import check_images


class Colorfulness:
    name = "colorfulness"
    version = 1
    differentiable = True
    resolution = None
    requires = "main environment; no local files"

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> (B,), differentiable with respect to the images."""
        check_images(images, prompts, self.name)
        x = images.float() * 255.0
        rg = x[:, 0] - x[:, 1]
        yb = 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
        spread = (rg.var(dim=(1, 2), unbiased=False) + yb.var(dim=(1, 2), unbiased=False) + 1e-6).sqrt()
        centre = (rg.mean(dim=(1, 2)).square() + yb.mean(dim=(1, 2)).square() + 1e-6).sqrt()
        return spread + 0.3 * centre
