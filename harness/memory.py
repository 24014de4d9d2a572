"""What a run will allocate, estimated before it allocates, against what the machine has: a size that cannot
fit is refused in one line instead of growing until the kernel's out-of-memory killer ends the process
without a word (``--lora-rank 100000`` grew to 22 GB that way)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class TooLarge(ValueError):
    """A size the machine cannot hold (a ValueError: the CLI shows it in one line, exit status 2)."""


LORA_BYTES_PER_PARAM = 16
"""float32 weight, its gradient and AdamW's two moments."""


def available(device: Any = "cpu") -> int | None:
    """Bytes free for a new allocation on ``device``: CUDA's free memory, else the smaller of the kernel's
    MemAvailable and this cgroup's headroom; None when it cannot be read."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_fits(need: int, device: Any, what: str, fix: str) -> None:
    """Refuse (one line: ``what``, the estimate, what is free, ``fix``) an allocation of ``need`` bytes that
    the device cannot hold. ``DRIFTBENCH_MEMORY_BYTES`` overrides what is free (tests)."""
    override = os.environ.get("DRIFTBENCH_MEMORY_BYTES")
    free = int(override) if override and override.isdigit() else available(device)
    if free is not None and need > free:
        raise TooLarge(f"{what} needs about {_gb(need)} but {_gb(free)} is free on {device}; {fix}")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.2f} MB"


def lora_params(module: Any, rank: int, targets: Any) -> int:
    """Parameters rank-``rank`` LoRA adds to the submodules of ``module`` whose name ends in a target (as peft
    matches them): rank x (fan-in + fan-out) per Linear, rank x (fan-in x kernel + fan-out) per convolution."""
    import torch

    total = 0
    for name, sub in module.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if isinstance(sub, torch.nn.Linear):
            total += rank * (sub.in_features + sub.out_features)
        elif isinstance(sub, torch.nn.modules.conv._ConvNd):
            kernel = 1
            for k in sub.kernel_size:
                kernel *= k
            total += rank * (sub.in_channels * kernel + sub.out_channels)
    return total


BATCH_COPIES = 3
"""Float32 copies of a micro-batch's decoded images at least alive at once: the images, their gradient (or the
reward's copy), and the drift or feature pass's input."""


def check_batch(generator: Any, images: int, device: Any) -> None:
    """Refuse a micro-batch whose decoded images alone (a lower bound on its activations) cannot fit."""
    resolution = getattr(generator, "resolution", None)
    if not resolution:
        return
    need = images * 3 * int(resolution) ** 2 * 4 * BATCH_COPIES
    check_fits(need, device, f"a micro-batch of {images} images (--k x --prompts-per-step) at "
               f"{resolution}x{resolution}", "give a smaller --k or --prompts-per-step, or more --grad-accum")
