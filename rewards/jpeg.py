"""JPEG compressibility (Black et al., DDPO, arXiv 2305.13301): the classic non-differentiable reward.

score = -(size of the image saved as JPEG at quality 95, in kB). Higher means more compressible.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from rewards import check_images


class JpegCompressibility:
    name = "jpeg"
    version = 1
    differentiable = False
    resolution = None
    """Any input size."""
    requires = "main environment; no local files"

    def __init__(self, quality: int | str = 95):
        text = str(quality).strip()
        if isinstance(quality, bool) or not (text.isdigit() and int(text) <= 100):
            # checked here: PIL's own message ("Invalid quality setting") names neither the value nor the range
            raise ValueError(f"{self.name} option quality={quality!r} must be an integer in [0, 100]")
        self.quality = int(text)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str]) -> list[float]:
        """images (B, 3, H, W) in [0, 1] -> B scores (-kB), as plain floats like any black-box reward."""
        from PIL import Image

        check_images(images, prompts, self.name)
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for array in pixels:
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=self.quality)
            out.append(-buffer.tell() / 1000.0)
        return out
