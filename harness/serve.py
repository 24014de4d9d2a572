"""Serve any registered reward over HTTP: ``driftbench serve-reward NAME``.

A reward whose package pins its own dependencies (HPSv3 pins transformers 4.45.2, ImageReward pins timm
0.6.13) runs in its own environment behind this server, and the harness scores through the
``remote:URL`` reward (``rewards/remote.py``). Only the standard library, numpy and torch are imported
here; the served reward imports what it needs when it is built.

Wire format (protocol 1, JSON over HTTP/1.1, loopback by default)::

    GET  /health  -> {"name", "version", "differentiable": false, "served_differentiable", "resolution",
                      "higher_is_better": true, "max_batch", "max_bytes", "formats": ["uint8", "png"],
                      "protocol": 1, "auth": bool}
    POST /score   <- {"prompts": [str] * B, "uint8": {"shape": [B, H, W, 3], "data": base64(raw bytes)}}
                  or {"prompts": [str] * B, "png": [base64(PNG file)] * B}
                  -> {"scores": [float] * B}

Raw ``uint8`` arrays are row-major (B, H, W, 3) RGB; PNGs may be any mode PIL reads (converted to RGB).
All images of one request share one size. The reward sees them as floats ``uint8 / 255`` of shape
(B, 3, H, W), exactly what it would see in-process after the same uint8 rounding. Errors answer
``{"error": message}`` with 400 (malformed JSON, images or lengths, a Content-Length that is not a
non-negative integer; a reward rejecting its input), 401 (wrong or missing token, sent as
``Authorization: Bearer TOKEN``; every endpoint when a token is set; checked before any body is read),
404 (unknown path), 408 (the body did not arrive in time), 411 (no Content-Length), 413 (body over
``max_bytes`` or batch over ``max_batch``), 415 (a Content-Type other than application/json) or 500 (the
reward failed). Scoring is serialised with a lock: one batch at a time reaches the model.

Under load: the listen backlog holds ``BACKLOG`` pending connections (no resets with 100+ concurrent
clients); every connection has a read timeout (``read_timeout``, default 10 s, per read and, for a body,
overall at no less than 1 MiB/s), so a stalled or lying client costs seconds; clients that hang up are
dropped quietly.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import math
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
import tyro
from torch import Tensor

from harness.validate import Bound, at_least, positive, within

PROTOCOL = 1
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_BYTES = 256 * 2 ** 20
"""256 MiB: 64 images of 1024x1024 as base64 uint8 with room to spare."""
MAX_PIXELS = 4096 * 4096
"""Largest single image accepted (guards against decompression bombs)."""
TOKEN_ENV = "DRIFTBENCH_REWARD_TOKEN"
"""Environment variable read for the shared token when none is given (keeps it off the command line)."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")
BACKLOG = 1024
"""Pending connections the listening socket queues (the kernel caps it at net.core.somaxconn)."""
DEFAULT_READ_TIMEOUT = 10.0
MIN_BODY_RATE = 2 ** 20
"""Bytes per second a client must at least send its body at (with ``read_timeout`` of slack)."""


class BadRequest(ValueError):
    """A request the server rejects; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------
# The wire format, shared by the server and the remote client
# ---------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------

def health(reward: Any, max_batch: int, max_bytes: int, auth: bool) -> dict[str, Any]:
    return {"name": reward.name, "version": reward.version, "differentiable": False,
            "served_differentiable": bool(getattr(reward, "differentiable", False)),
            "resolution": getattr(reward, "resolution", None), "higher_is_better": True,
            "requires": getattr(reward, "requires", None), "max_batch": max_batch, "max_bytes": max_bytes,
            "formats": ["uint8", "png"], "protocol": PROTOCOL, "auth": auth}


class RewardServer(ThreadingHTTPServer):
    """An HTTP server for one reward object. ``start()`` serves from a daemon thread (tests, notebooks);
    ``serve_forever()`` blocks (the CLI)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = BACKLOG

    def __init__(self, reward: Any, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, max_bytes: int = DEFAULT_MAX_BYTES, verbose: bool = False,
                 read_timeout: float = DEFAULT_READ_TIMEOUT):
        if max_batch < 1 or max_bytes < 1024:
            raise ValueError(f"max-batch must be >= 1 and max-bytes >= 1024, got {max_batch} and {max_bytes}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        if not read_timeout > 0 or not math.isfinite(read_timeout):
            raise ValueError(f"read-timeout must be a finite number > 0, got {read_timeout}")
        self.reward = reward
        self.token = token or None
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.verbose = verbose
        self.read_timeout = float(read_timeout)
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if ":" in host and not host.startswith("["):
            import socket

            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:  # port in use, bad host: one line naming them
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up or stalled is dropped quietly; anything else is a server bug and is shown."""
        kind = sys.exc_info()[0]
        if kind is not None and issubclass(kind, (ConnectionError, TimeoutError)):
            if self.verbose:
                sys.stderr.write(f"[serve-reward] {client_address[0]} dropped: {kind.__name__}\n")
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def start(self) -> RewardServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"reward-server-{self.reward.name}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server_close()

    def __enter__(self) -> RewardServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, images: Tensor, prompts: list[str]) -> list[float]:
        from rewards import check_scores

        with self.lock, torch.no_grad():
            scores = self.reward.score(images, prompts)
            check_scores(scores, len(prompts), self.reward.name)
            if torch.is_tensor(scores):
                return scores.detach().double().cpu().tolist()
            return [float(s) for s in scores]  # plain floats keep their full precision


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer
    protocol_version = "HTTP/1.1"
    server_version = "driftbench-reward/1"

    def setup(self) -> None:
        self.timeout = self.server.read_timeout  # applied to the socket by StreamRequestHandler.setup
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"[serve-reward] {self.address_string()} {format % args}\n")

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, allow_nan=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except (ConnectionError, TimeoutError):  # the client hung up before its answer
            self.close_connection = True

    def _fail(self, status: int, message: str, unread: int = 0) -> None:
        """Answer an error. Of an unread body only what has already arrived is drained (at most 64 KiB when
        unauthenticated, 1 MiB otherwise), so the client can read the answer; the connection is then closed."""
        if unread > 0:  # only what has already arrived: a client that holds its body back is not waited for
            self.close_connection = True
            left = min(unread, 2 ** 16 if status == 401 else 2 ** 20)
            self.connection.settimeout(0.05)
            try:
                while left > 0:
                    chunk = self.rfile.read1(min(left, 2 ** 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            except (ConnectionError, TimeoutError):
                pass
            self.connection.settimeout(self.server.read_timeout)
        if status >= 400 and not self.server.verbose:
            sys.stderr.write(f"[serve-reward] {self.command} {self.path} -> {status}: {message}\n")
        self._send(status, {"error": message})

    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        header = self.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        return hmac.compare_digest(given.encode(), token.encode())

    def _length(self) -> int | None:
        """The declared body length; None when the header is absent; -1 when it is not a non-negative integer."""
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return None
        if len(set(v.strip() for v in values)) != 1 or not values[0].strip().isdigit():
            return -1
        return int(values[0].strip())

    def _read_body(self, length: int) -> bytes | None:
        """The body, read within the connection's deadline; None (after a 408) when the client is too slow."""
        import time

        deadline = time.monotonic() + self.server.read_timeout + length / MIN_BODY_RATE
        parts, left = [], length
        try:
            while left > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self.connection.settimeout(min(remaining, self.server.read_timeout))
                chunk = self.rfile.read1(min(left, 2 ** 20))
                if not chunk:
                    self.close_connection = True
                    return None  # the client hung up mid-body
                parts.append(chunk)
                left -= len(chunk)
        except TimeoutError:
            self.close_connection = True
            self._fail(408, f"the request body ({length} bytes) did not arrive within the server's read timeout")
            return None
        finally:
            self.connection.settimeout(self.server.read_timeout)
        return b"".join(parts)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if not self._authorised():
            return self._fail(401, "wrong or missing token (send 'Authorization: Bearer TOKEN')")
        if path == "/health":
            s = self.server
            return self._send(200, health(s.reward, s.max_batch, s.max_bytes, s.token is not None))
        self._fail(404, f"no such endpoint '{path}'; use GET /health or POST /score")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        length = self._length()
        unread = max(length or 0, 0)
        if not self._authorised():  # before any byte of the body is read
            return self._fail(401, "wrong or missing token (send 'Authorization: Bearer TOKEN')", unread)
        if path != "/score":
            return self._fail(404, f"no such endpoint '{path}'; use GET /health or POST /score", unread)
        if length is None:
            self.close_connection = True
            return self._fail(411, "POST /score needs a Content-Length header")
        if length < 0:
            self.close_connection = True
            return self._fail(400, f"bad Content-Length {self.headers.get('Content-Length')!r}; expected a "
                                   "non-negative integer")
        kind = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            return self._fail(415, f"POST /score takes Content-Type application/json, got {kind or 'none'!r}",
                              unread)
        if length > self.server.max_bytes:
            return self._fail(413, f"request of {length} bytes exceeds this server's max-bytes "
                                   f"{self.server.max_bytes}; send smaller batches", length)
        body = self._read_body(length)
        if body is None:
            return
        try:
            images, prompts = decode_request(body, self.server.max_batch)
            scores = self.server.score(images, prompts)
        except BadRequest as exc:
            return self._fail(exc.status, str(exc))
        except ValueError as exc:  # the reward rejected its input (shape, range, prompt count)
            return self._fail(400, f"reward '{self.server.reward.name}' rejected the input: {exc}")
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            return self._fail(500, f"reward '{self.server.reward.name}' failed: {type(exc).__name__}: {exc}")
        self._send(200, {"scores": scores})


# ---------------------------------------------------------------------------------------------------
# The CLI command
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServeConfig:
    """Serve one registered reward over HTTP (see ``harness/serve.py`` for the wire format)."""

    name: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="NAME")]
    """The registered reward to serve (``driftbench list``)."""
    host: str = "127.0.0.1"
    """Interface to bind; the default accepts loopback connections only."""
    port: int = 8000
    """TCP port; 0 picks a free one (the URL is printed on start)."""
    token: str = ""
    """Shared token clients must send (``Authorization: Bearer``); default: $DRIFTBENCH_REWARD_TOKEN, else none."""
    max_batch: int = DEFAULT_MAX_BATCH
    """Most images per request (larger requests get 413)."""
    max_bytes: int = DEFAULT_MAX_BYTES
    """Largest request body in bytes (larger requests get 413)."""
    option: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
    """Reward constructor option KEY=VALUE, repeatable (e.g. --option checkpoint=/data/HPSv3.safetensors)."""
    verbose: bool = False
    """Log every request to stderr."""
    read_timeout: float = DEFAULT_READ_TIMEOUT
    """Seconds a connection may stay silent (and, for a body, the slack over 1 MiB/s) before it is dropped."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"port": within(0, 65535), "max_batch": at_least(1),
                                          "max_bytes": at_least(1024), "read_timeout": positive()}
    """Valid range of every numeric field (``harness.validate``)."""


def parse_options(entries: Sequence[str]) -> dict[str, str]:
    out = {}
    for entry in entries:
        key, eq, value = entry.partition("=")
        if not (eq and key):
            raise ValueError(f"bad option '{entry}'; expected KEY=VALUE, e.g. checkpoint=/data/HPSv3.safetensors")
        out[key] = value
    return out


def serve(cfg: ServeConfig) -> int:
    """Build the reward, bind, print one line with the URL and serve until interrupted."""
    import os

    from rewards import REWARDS, build

    REWARDS.check(cfg.name)
    token = cfg.token or os.environ.get(TOKEN_ENV, "")
    reward = build(cfg.name, parse_options(cfg.option))
    server = RewardServer(reward, cfg.host, cfg.port, token=token, max_batch=cfg.max_batch,
                          max_bytes=cfg.max_bytes, verbose=cfg.verbose, read_timeout=cfg.read_timeout)
    if cfg.host not in LOOPBACK and not token:
        print(f"serve-reward: warning: listening on {cfg.host} without a token; anyone who can reach it can "
              f"use it (set --token or ${TOKEN_ENV})", file=sys.stderr)
    print(f"serving reward '{reward.name}' v{reward.version} on {server.url} "
          f"(max-batch {cfg.max_batch}, max-bytes {cfg.max_bytes}{', token required' if token else ''})",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: Sequence[str]) -> int:
    """``driftbench serve-reward NAME [--host H --port N --token T --max-batch B --max-bytes M --option K=V ...]``."""
    from harness.validate import check

    cfg = tyro.cli(ServeConfig, args=list(argv), prog="driftbench serve-reward")
    check(cfg)
    return serve(cfg)
