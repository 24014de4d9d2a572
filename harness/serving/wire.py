"""The reward server's wire format, shared by the server (``harness/serving/server.py``) and the ``remote:URL``
client (``rewards/remote.py``): its constants, request encoding and decoding. Standard library, numpy and
torch only.

Wire format (protocol 1, JSON over HTTP/1.1, loopback by default)::

    GET  /health  -> {"name", "version", "differentiable": false, "served_differentiable", "resolution",
                      "higher_is_better": true, "max_batch", "max_bytes", "formats": ["uint8", "png"],
                      "protocol": 1, "auth": bool}
    POST /score   <- {"prompts": [str] * B, "uint8": {"shape": [B, H, W, 3], "data": base64(raw bytes)}}
                  or {"prompts": [str] * B, "png": [base64(PNG file)] * B}
                  -> {"scores": [float] * B}

Raw ``uint8`` arrays are row-major (B, H, W, 3) RGB; PNGs may be any mode PIL reads (converted to RGB).
All images of one request share one size. The reward sees them as floats ``uint8 / 255`` of shape
(B, 3, H, W), exactly what it would see in-process after the same uint8 rounding.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

PROTOCOL = 1
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_BYTES = 256 * 2 ** 20
"""256 MiB: 64 images of 1024x1024 as base64 uint8 with room to spare."""
MAX_BATCH_LIMIT = 4096
"""The largest --max-batch a server takes."""
MAX_PROMPT_CHARS = 10_000
"""Longest prompt accepted (text encoders read 77 tokens; this only bounds what a request can make the server hold)."""
MAX_PIXELS = 4096 * 4096
"""Largest single image accepted (guards against decompression bombs)."""
TOKEN_ENV = "DRIFTBENCH_REWARD_TOKEN"
"""Environment variable read for the shared token when none is given (keeps it off the command line)."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class BadRequest(ValueError):
    """A request the server rejects; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status



def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, rounded the way the JPEG reward rounds."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(0, 2, 3, 1).cpu().numpy())


def encode_request(images: Tensor, prompts: Sequence[str], fmt: str = "uint8") -> bytes:
    """The JSON body of ``POST /score`` for images (B, 3, H, W) in [0, 1]."""
    array = to_uint8(images)
    if fmt == "uint8":
        payload: dict[str, Any] = {"uint8": {"shape": list(array.shape),
                                             "data": base64.b64encode(array.tobytes()).decode("ascii")}}
    elif fmt == "png":
        from PIL import Image

        pngs = []
        for image in array:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            pngs.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        payload = {"png": pngs}
    else:
        raise ValueError(f"unknown image format '{fmt}'; expected uint8 or png")
    return json.dumps({"prompts": list(prompts), **payload}).encode("utf-8")


def request_bytes(height: int, width: int, n: int = 1) -> int:
    """An upper bound on the ``uint8`` request size for ``n`` images (base64 plus JSON framing)."""
    return n * (4 * math.ceil(height * width * 3 / 3) + 64) + 1024


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(f"{what} must be a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{what} is not valid base64 ({exc})") from None


def decode_request(body: bytes, max_batch: int = DEFAULT_MAX_BATCH) -> tuple[Tensor, list[str]]:
    """Parse a ``POST /score`` body into images (B, 3, H, W) float in [0, 1] and B prompts.

    Raises :class:`BadRequest` (status 400, or 413 for a batch over ``max_batch``) with a message that
    says what was wrong.
    """
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not JSON ({exc})") from None
    if not isinstance(request, dict):
        raise BadRequest(f"request must be a JSON object, got {type(request).__name__}")
    prompts = request.get("prompts")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("'prompts' must be a list of strings")
    if any(len(p) > MAX_PROMPT_CHARS for p in prompts):
        raise BadRequest(f"a prompt of {max(len(p) for p in prompts)} characters exceeds the {MAX_PROMPT_CHARS} "
                         "character limit")
    formats = [f for f in ("uint8", "png") if f in request]
    if len(formats) != 1:
        raise BadRequest("give the images as exactly one of 'uint8' {shape, data} or 'png' [base64 ...]")
    if formats[0] == "uint8":
        spec = request["uint8"]
        if not isinstance(spec, dict) or "shape" not in spec or "data" not in spec:
            raise BadRequest("'uint8' must be an object {\"shape\": [B, H, W, 3], \"data\": base64}")
        shape = spec["shape"]
        if (not isinstance(shape, list) or len(shape) != 4 or not all(type(s) is int and s > 0 for s in shape)
                or shape[3] != 3):
            raise BadRequest(f"'uint8.shape' must be [B, H, W, 3] with positive integers, got {shape!r}")
        n = shape[0]
        if n > max_batch:
            raise BadRequest(f"batch of {n} images exceeds this server's max-batch {max_batch}", 413)
        if shape[1] * shape[2] > MAX_PIXELS:
            raise BadRequest(f"images of {shape[1]}x{shape[2]} exceed the {MAX_PIXELS} pixel limit")
        raw = _b64(spec["data"], "'uint8.data'")
        if len(raw) != n * shape[1] * shape[2] * 3:
            raise BadRequest(f"'uint8.data' holds {len(raw)} bytes but shape {shape} needs "
                             f"{n * shape[1] * shape[2] * 3}")
        array = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    else:
        pngs = request["png"]
        if not isinstance(pngs, list) or not pngs:
            raise BadRequest("'png' must be a non-empty list of base64 PNG files")
        n = len(pngs)
        if n > max_batch:
            raise BadRequest(f"batch of {n} images exceeds this server's max-batch {max_batch}", 413)
        array = _decode_pngs(pngs)
    if len(prompts) != n:
        raise BadRequest(f"got {n} images but {len(prompts)} prompts")
    if n == 0:
        raise BadRequest("empty batch")
    images = torch.from_numpy(array.copy()).permute(0, 3, 1, 2).float() / 255.0
    return images, prompts


def _decode_pngs(pngs: list) -> np.ndarray:
    from PIL import Image

    arrays = []
    for i, text in enumerate(pngs):
        raw = _b64(text, f"'png[{i}]'")
        try:
            with Image.open(io.BytesIO(raw)) as image:
                if image.format != "PNG":
                    raise BadRequest(f"'png[{i}]' is a {image.format} file, expected PNG")
                if image.size[0] * image.size[1] > MAX_PIXELS:
                    raise BadRequest(f"'png[{i}]' is {image.size[0]}x{image.size[1]}, over the "
                                     f"{MAX_PIXELS} pixel limit")
                arrays.append(np.asarray(image.convert("RGB")))
        except BadRequest:
            raise
        except Exception as exc:  # PIL raises many types for corrupt files
            raise BadRequest(f"'png[{i}]' is not a readable PNG ({type(exc).__name__}: {exc})") from None
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise BadRequest(f"all images of one request must share one size, got {sorted(s[:2] for s in sizes)}")
    return np.stack(arrays)
