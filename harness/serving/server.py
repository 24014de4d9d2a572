"""Serve any registered reward over HTTP: ``driftbench serve-reward NAME``.

A reward whose package pins its own dependencies (HPSv3 pins transformers 4.45.2, ImageReward pins timm
0.6.13) runs in its own environment behind this server, and the harness scores through the
``remote:URL`` reward (``rewards/remote.py``). Only the standard library, numpy and torch are imported
here; the served reward imports what it needs when it is built.

The wire format (protocol, request encoding and decoding) lives in ``harness/serving/wire.py``; errors answer
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

import hmac
import json
import math
import socket
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any, ClassVar

import torch
import tyro
from torch import Tensor

from harness.config import parse_kv
from harness.redact import redact_text, remember
from harness.serving.wire import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BYTES,
    LOOPBACK,
    MAX_BATCH_LIMIT,
    PROTOCOL,
    TOKEN_ENV,
    BadRequest,
    decode_request,
)
from harness.validate import Bound, check, positive, within
from rewards import REWARDS, build, check_scores

BACKLOG = 1024
"""Pending connections the listening socket queues (the kernel caps it at net.core.somaxconn)."""
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_MAX_THREADS = 256
"""Connections served at once (a thread each); more are answered 503."""
MAX_BYTES_LIMIT = 2 ** 31
"""The largest --max-bytes: a body is held in memory whole (and decoded into a second copy)."""
MIN_BODY_RATE = 2 ** 20
"""Bytes per second a client must at least send its body at (with ``read_timeout`` of slack)."""


# ---------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------

def health(reward: Any, max_batch: int, max_bytes: int, auth: bool) -> dict[str, Any]:
    return {"name": reward.name, "version": reward.version, "differentiable": False,
            "served_differentiable": bool(getattr(reward, "differentiable", False)),
            "binary": getattr(reward, "binary", False) is True,
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
                 read_timeout: float = DEFAULT_READ_TIMEOUT, max_threads: int = DEFAULT_MAX_THREADS):
        if max_batch < 1 or max_bytes < 1024:
            raise ValueError(f"max-batch must be >= 1 and max-bytes >= 1024, got {max_batch} and {max_bytes}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        if not read_timeout > 0 or not math.isfinite(read_timeout):
            raise ValueError(f"read-timeout must be a finite number > 0, got {read_timeout}")
        self.reward = reward
        self.token = token or None
        remember(self.token, bare=True)  # a client may send it in the clear (?token=...): never logged
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.verbose = verbose
        self.read_timeout = float(read_timeout)
        if max_threads < 1:
            raise ValueError(f"max-threads must be >= 1, got {max_threads}")
        self.max_threads = max_threads
        self._active = 0
        self._count_lock = threading.Lock()
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if ":" in host and not host.startswith("["):
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:  # port in use, bad host: one line naming them
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection up to ``max_threads``; beyond it the connection is answered 503 at once
        (slow clients cannot hold an unbounded number of threads)."""
        with self._count_lock:
            busy = self._active >= self.max_threads
            if not busy:
                self._active += 1
        if busy:
            return self._refuse(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._count_lock:
            self._active -= 1

    def _refuse(self, request: Any) -> None:
        body = json.dumps({"error": f"server busy: {self.max_threads} connections open (max-threads); retry "
                                    "shortly"}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: "
                f"{len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.settimeout(0.5)
            request.sendall(head + body)
            request.recv(2 ** 16, socket.MSG_DONTWAIT)  # what has arrived, so that closing sends no reset
        except (OSError, ValueError):
            pass
        self.shutdown_request(request)

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
            # The request line carries a query string (a client may send ?token=...): masked like every sink.
            sys.stderr.write(redact_text(f"[serve-reward] {self.address_string()} {format % args}") + "\n")

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
            sys.stderr.write(redact_text(f"[serve-reward] {self.command} {self.path} -> {status}: {message}") + "\n")
        self._send(status, {"error": message})

    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        scheme, _, given = self.headers.get("Authorization", "").strip().partition(" ")
        given = given.strip() if scheme.lower() == "bearer" else ""  # RFC 7235: the scheme is case-insensitive
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
        except RecursionError:  # JSON nested past the parser's depth: the client's fault, not the reward's
            return self._fail(400, f"request body nests JSON deeper than {sys.getrecursionlimit()} levels; a "
                                   "/score request nests 3")
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
    """Serve one registered reward over HTTP (see ``harness/serving/server.py`` for the wire format)."""

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
    max_threads: int = DEFAULT_MAX_THREADS
    """Connections served at once, a thread each; more are answered 503 (slow clients cannot pile up threads)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"port": within(0, 65535), "max_batch": within(1, MAX_BATCH_LIMIT),
                                          "max_bytes": within(1024, MAX_BYTES_LIMIT), "read_timeout": positive(),
                                          "max_threads": within(1, 4096)}
    """Valid range of every numeric field (``harness.validate``)."""


def serve(cfg: ServeConfig) -> int:
    """Build the reward, bind, print one line with the URL and serve until interrupted."""
    import os

    REWARDS.check(cfg.name)
    token = cfg.token or os.environ.get(TOKEN_ENV, "")
    reward = build(cfg.name, parse_kv(cfg.option, "checkpoint=/data/HPSv3.safetensors"))
    server = RewardServer(reward, cfg.host, cfg.port, token=token, max_batch=cfg.max_batch,
                          max_bytes=cfg.max_bytes, verbose=cfg.verbose, read_timeout=cfg.read_timeout,
                          max_threads=cfg.max_threads)
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

    cfg = tyro.cli(ServeConfig, args=list(argv), prog="driftbench serve-reward")
    check(cfg)
    return serve(cfg)
