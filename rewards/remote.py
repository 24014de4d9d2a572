"""``remote:URL``: a reward served by ``driftbench serve-reward`` (possibly in another environment).

    driftbench serve-reward hpsv3 --port 8000 --option checkpoint=/data/HPSv3.safetensors   # its own env
    driftbench train --reward remote:http://127.0.0.1:8000 ...                               # main env

The client reads ``GET /health`` once on construction (the served reward's name and version become this
reward's ``name`` and ``version``, so a run records the same reward whether scored in-process or remotely),
then sends images as raw uint8 arrays in batches of at most the server's ``max_batch`` and ``max_bytes``.
Images are rounded to uint8 first, so scores equal the in-process reward's on the same uint8 images.

Several servers (one per GPU or machine) are given as one comma-separated list,
``remote:http://gpu0:8001,http://gpu1:8001``: each is health-checked on construction (a failing one is named;
all must serve the same reward name and version), and a call's batches are sent to them concurrently, round
robin, starting at the server of index ``rank % servers`` so that data-parallel processes start on different
servers. Scores come back in the images' order.

Connection errors, timeouts and 5xx answers are retried ``retries`` times with exponential backoff
(``backoff * 2**attempt`` seconds); 4xx answers and malformed replies (not JSON, wrong number of scores,
non-numbers, NaN) raise :class:`RuntimeError` at once, naming the URL. A remote reward is never
differentiable. Options (``remote:URL.KEY=VALUE`` in ``reward_options``): ``token`` (default
$DRIFTBENCH_REWARD_TOKEN), ``timeout`` seconds per request (600), ``retries`` (3), ``batch`` (the most
images per request; default the server's max-batch), ``backoff`` seconds (0.5).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from torch import Tensor

from harness import distributed
from harness.redact import redact_text, remember
from harness.serving.wire import LOOPBACK, TOKEN_ENV, encode_request, request_bytes
from rewards import check_images, number_option


class RemoteReward:
    name = "remote"
    """Replaced by the served reward's name on construction."""
    version = 0
    """Replaced by the served reward's version on construction."""
    differentiable = False
    resolution = None
    """Replaced by the served reward's input size on construction."""
    requires = "a running `driftbench serve-reward NAME` (e.g. in the reward's own environment); no local files"

    def __init__(self, url: str, token: str | None = None, timeout: float | str = 600, retries: int | str = 3,
                 batch: int | str = 0, backoff: float | str = 0.5):

        urls = [u.strip() for u in url.split(",")]
        if not all(urls):
            raise ValueError(f"remote reward URLs must be comma-separated http://HOST:PORT entries, got '{redact_text(url)}'")
        self.urls = [_normalise(u) for u in urls]
        self.url = self.urls[0]
        self.where = redact_text(self.url)
        """The (first) URL as messages show it (user-info masked)."""
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        remember(self.token, bare=True)  # masked wherever it shows up: errors, logs, trackers
        what = f"remote reward {self.where}"
        self.timeout = number_option(what, "timeout", timeout, strict=True)
        self.retries = number_option(what, "retries", retries, integer=True)
        self.backoff = number_option(what, "backoff", backoff)
        self.requested_batch = number_option(what, "batch", batch, integer=True)
        self._openers = {u: _opener(urlsplit(u).hostname) for u in self.urls}
        healths = [self._health(u) for u in self.urls]
        info = healths[0]
        for u, other in zip(self.urls[1:], healths[1:]):
            if (other["name"], other.get("version", 0)) != (info["name"], info.get("version", 0)):
                raise RuntimeError(f"reward server {redact_text(u)} serves '{other['name']}' v{other.get('version', 0)}, but "
                                   f"{self.where} serves '{info['name']}' v{info.get('version', 0)}; all must serve the same")
        self.health = info
        self.name = info["name"]
        self.version = info.get("version", 0)
        self.binary = bool(info.get("binary", False))  # a served verifier stays binary (rewards.is_binary)
        self.resolution = info.get("resolution")
        self.max_batch = min(int(h.get("max_batch") or 64) for h in healths)
        self.max_bytes = min(int(h.get("max_bytes") or 2 ** 62) for h in healths)

    def _health(self, url: str) -> dict:
        info = self._json(self._request("GET", "/health", url=url), "/health", url)
        if not isinstance(info, dict) or not isinstance(info.get("name"), str):
            raise RuntimeError(f"reward server {redact_text(url)} answered /health without a reward name: {str(info)[:200]}")
        return info

    # -- HTTP ------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None, url: str | None = None) -> bytes:
        import http.client
        import urllib.error
        import urllib.request

        url = url or self.url
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last = ""
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(url + path, data=body, method=method, headers=headers)
            try:
                with self._openers[url].open(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code >= 500:
                    last = f"HTTP {exc.code}: {message}"
                    continue
                hint = {401: " (pass the server's token: option token=... or $DRIFTBENCH_REWARD_TOKEN)",
                        413: " (lower the remote reward's batch option)"}.get(exc.code, "")
                raise RuntimeError(f"reward server {redact_text(url)}{path} refused the request: HTTP {exc.code}: "
                                   f"{message}{hint}") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = f"{type(reason).__name__}: {reason}"
                continue
        raise RuntimeError(f"reward server {redact_text(url)} failed after {attempts} attempt(s) ({last}); is "
                           f"`driftbench serve-reward` running there?")

    def _json(self, raw: bytes, path: str, url: str | None = None) -> Any:
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RuntimeError(f"reward server {redact_text(url or self.url)}{path} answered something that is not JSON: "
                               f"{raw[:120]!r}") from None

    # -- scoring ---------------------------------------------------------------------------------
    def batch_size(self, height: int, width: int, prompts: Sequence[str]) -> int:
        """Images per request: the requested batch, capped by the server's max-batch and max-bytes."""

        n = min(self.requested_batch or self.max_batch, self.max_batch)
        longest = max((len(p.encode("utf-8")) for p in prompts), default=0) * 2 + 8
        per_image = request_bytes(height, width) - 1024 + longest
        fits = (self.max_bytes - 1024) // per_image
        if fits < 1:
            raise RuntimeError(f"reward server {self.where} accepts at most {self.max_bytes} bytes per request, "
                               f"too few for one {height}x{width} image; restart it with a larger --max-bytes")
        return max(1, min(n, fits))

    def score(self, images: Tensor, prompts: Sequence[str]) -> list[float]:
        """images (B, 3, H, W) in [0, 1] -> B floats from the server, in batches."""

        check_images(images, prompts, self.name)
        prompts = list(prompts)
        step = self.batch_size(images.shape[2], images.shape[3], prompts)
        starts = list(range(0, len(prompts), step))
        first = _rank() % len(self.urls)
        jobs = [(self.urls[(first + j) % len(self.urls)], i) for j, i in enumerate(starts)]

        def one(job: tuple[str, int]) -> list[float]:
            url, i = job
            chunk = prompts[i:i + step]
            raw = self._request("POST", "/score", encode_request(images[i:i + step], chunk), url=url)
            return self._check(self._json(raw, "/score", url), len(chunk), url)
        if len(self.urls) == 1 or len(jobs) == 1:
            parts = [one(job) for job in jobs]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=len(self.urls)) as pool:
                parts = list(pool.map(one, jobs))
        return [v for part in parts for v in part]

    def _check(self, answer: Any, n: int, url: str | None = None) -> list[float]:
        url = url or self.url
        scores = answer.get("scores") if isinstance(answer, dict) else None
        if not isinstance(scores, list):
            raise RuntimeError(f"reward server {redact_text(url)}/score answered without a 'scores' list: {str(answer)[:200]}")
        if len(scores) != n:
            raise RuntimeError(f"reward server {redact_text(url)}/score answered {len(scores)} scores for {n} images")
        bad = [s for s in scores if isinstance(s, bool) or not isinstance(s, (int, float))]
        if bad:
            raise RuntimeError(f"reward server {redact_text(url)}/score answered non-numbers, e.g. {bad[0]!r}")
        values = [float(s) for s in scores]
        if not all(math.isfinite(v) for v in values):
            raise RuntimeError(f"reward server {redact_text(url)}/score answered non-finite scores: "
                               f"{[v for v in values if not math.isfinite(v)][:3]}")
        return values

    def __repr__(self) -> str:
        return f"RemoteReward({self.name!r} v{self.version} at {', '.join(redact_text(u) for u in self.urls)})"


def _normalise(url: str) -> str:
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"remote reward URL must look like http://HOST:PORT, got '{redact_text(url)}'")
    if "@" in parts.netloc:  # urllib would resolve "user:password@host" as a host name ("Name or service not known")
        raise ValueError(f"remote reward URL '{redact_text(url)}' carries user-info (USER:PASSWORD@), which the "
                         f"reward server does not read; give http://HOST:PORT and the token as "
                         "remote:URL.token=T or $DRIFTBENCH_REWARD_TOKEN")
    return url.rstrip("/")


def _rank() -> int:
    return distributed.current().rank


def _opener(host: str):
    """urllib's opener; proxies from the environment are ignored for loopback hosts."""
    import urllib.request

    if host in LOOPBACK:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _error_message(exc) -> str:
    try:
        body = exc.read()
        message = json.loads(body).get("error")
        return str(message) if message else body[:200].decode("utf-8", "replace")
    except Exception:
        return str(exc.reason)


def isolated_env_error(reward: str, package: str, session: str, options: str, exc: BaseException, *,
                       module: str = "") -> RuntimeError:
    """The error a reward that lives in its own environment raises when its package does not import.

    Where ``module`` (the package's import name) is not installed, it says which environment provides the
    reward and how to serve it for ``remote:URL``; where it is installed, i.e. inside that environment, it
    says what the import lacks.
    """
    import importlib.util

    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if module and importlib.util.find_spec(module) is not None:
        missing = getattr(exc, "name", None) or getattr(exc, "filename", None)
        what = f"'{missing}' is missing" if missing else "it fails"
        return RuntimeError(f"reward '{reward}': the '{package}' package is installed here but does not import: "
                            f"{what} ({reason}); rebuild the environment with `nox -s {session}`, which installs "
                            "what the package needs")
    return RuntimeError(
        f"reward '{reward}' needs the '{package}' package, which pins its own dependencies and lives in its own environment (nox session "
        f"'{session}'), not this one ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        f"Start its server there: `nox -s {session} -- --port 8000 {options}` (= `driftbench serve-reward {reward} "
        f"--port 8000 {options}` inside that environment), then use the reward 'remote:http://127.0.0.1:8000'")
