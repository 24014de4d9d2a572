"""The reward server on real loopback sockets, the remote:URL client, and the cmd:COMMAND reward."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import os
import re
import select
import shlex
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.serving.server import RewardServer
from harness.serving.wire import encode_request, to_uint8
from rewards import build, parse_options
from rewards.remote import RemoteReward

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (two threads spin against each other on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def images(n: int = 5, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Images in [0, 1] with varied structure (flat to noisy), so JPEG and colourfulness scores differ."""
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bilinear")
    noise = torch.rand(n, 3, size, size, generator=g)
    mix = torch.linspace(0, 1, n).view(n, 1, 1, 1)
    return (1 - mix) * smooth + mix * noise


def quantised(x: torch.Tensor) -> torch.Tensor:
    """What the server sees: the images rounded to uint8, back in [0, 1]."""
    return torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2).float() / 255


def post(url: str, body: bytes, path: str = "/score", token: str | None = None, method: str = "POST"):
    """(status, parsed JSON) for a raw request."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body if method == "POST" else None, headers=headers)
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, data


@pytest.fixture(scope="module")
def servers():
    """jpeg and colorfulness served from threads on free loopback ports; one more with a token and limits."""
    started = {
        "jpeg": RewardServer(build("jpeg"), port=0).start(),
        "colorfulness": RewardServer(build("colorfulness"), port=0).start(),
        "locked": RewardServer(build("jpeg"), port=0, token="s3cret", max_batch=4, max_bytes=30_000).start(),
    }
    yield started
    for server in started.values():
        server.close()


def test_health(servers):
    status, info = post(servers["colorfulness"].url, b"", path="/health", method="GET")
    assert status == 200
    assert info["name"] == "colorfulness" and info["version"] == 1 and info["protocol"] == 1
    assert info["differentiable"] is False and info["served_differentiable"] is True
    assert info["higher_is_better"] is True and info["resolution"] is None and "uint8" in info["formats"]
    assert post(servers["jpeg"].url, b"", path="/nope", method="GET")[0] == 404


@pytest.mark.parametrize("name", ["jpeg", "colorfulness"])
def test_remote_scores_equal_in_process_scores(servers, name):
    x = images(7)
    remote = build(f"remote:{servers[name].url}", {"batch": "3"})  # 3 requests: 3 + 3 + 1
    assert (remote.name, remote.version, remote.differentiable) == (name, 1, False)
    got = remote.score(x, [f"p{i}" for i in range(7)])
    want = build(name).score(quantised(x), [f"p{i}" for i in range(7)])
    assert isinstance(got, list) and len(got) == 7
    np.testing.assert_allclose(got, [float(v) for v in want], rtol=1e-5, atol=1e-5)
    # The PNG wire format gives the same answer.
    status, data = post(servers[name].url, encode_request(x, ["p"] * 7, fmt="png"))
    assert status == 200
    np.testing.assert_allclose(data["scores"], got, rtol=1e-5, atol=1e-5)


def _uint8(shape, data=None, prompts=None):
    data = base64.b64encode(bytes(int(np.prod(shape))) if data is None else data).decode()
    return json.dumps({"prompts": prompts if prompts is not None else ["a"] * shape[0],
                       "uint8": {"shape": shape, "data": data}}).encode()


def _png(size=(8, 8)):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("body,match", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"uint8": {}}).encode(), "'prompts' must be a list"),
    (json.dumps({"prompts": ["a"]}).encode(), "exactly one of"),
    (_uint8([1, 4, 4, 4]), r"\[B, H, W, 3\]"),
    (_uint8([2, 4, 4, 3], data=bytes(10)), "holds 10 bytes"),
    (_uint8([2, 4, 4, 3], prompts=["a"]), "2 images but 1 prompts"),
    (json.dumps({"prompts": ["a"], "uint8": {"shape": [1, 2, 2, 3], "data": "***"}}).encode(), "not valid base64"),
    (json.dumps({"prompts": ["a"], "png": [base64.b64encode(b"garbage").decode()]}).encode(), "not a readable PNG"),
    (json.dumps({"prompts": ["a", "b"], "png": [_png((8, 8)), _png((8, 9))]}).encode(), "share one size"),
])
def test_malformed_requests_get_400(servers, body, match):
    status, data = post(servers["jpeg"].url, body)
    assert status == 400
    assert re.search(match, data["error"]), data["error"]


def test_limits_and_token(servers):
    locked = servers["locked"]
    small = encode_request(images(1, 8), ["a"])
    assert post(locked.url, small)[0] == 401  # no token
    assert post(locked.url, small, token="wrong")[0] == 401
    assert post(locked.url, b"", path="/health", method="GET")[0] == 401
    assert post(locked.url, small, token="s3cret")[0] == 200
    status, data = post(locked.url, encode_request(images(2, 64), ["a", "b"]), token="s3cret")  # ~33 kB > 30 kB
    assert status == 413 and "max-bytes 30000" in data["error"]
    status, data = post(locked.url, encode_request(images(5, 4), ["a"] * 5), token="s3cret")
    assert status == 413 and "max-batch 4" in data["error"]
    # The client sizes its requests to the server's limits, so the same batch goes through in pieces.
    remote = RemoteReward(locked.url, token="s3cret")
    x = images(5, 64)
    assert remote.batch_size(64, 64, ["a"]) == 1
    np.testing.assert_allclose(remote.score(x, ["a"] * 5), build("jpeg").score(quantised(x), ["a"] * 5))
    with pytest.raises(RuntimeError, match=rf"{locked.url}.*HTTP 401.*token"):
        RemoteReward(locked.url, token="wrong")


def test_server_killed_mid_run_retries_then_raises(monkeypatch):
    """A real `driftbench serve-reward` process, killed between two scoring calls."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "harness", "serve-reward", "jpeg", "--port", "0"], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        assert ready, "server did not start"
        line = process.stdout.readline()
        assert "serving reward 'jpeg' v1 on http://127.0.0.1:" in line, line + process.stderr.read()
        url = line.split(" on ")[1].split()[0]
        remote = build(f"remote:{url}", {"retries": "2", "backoff": "0.05", "timeout": "5"})
        x = images(3)
        assert remote.score(x, ["a", "b", "c"]) == build("jpeg").score(quantised(x), ["a", "b", "c"])
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()
    import rewards.remote as remote_module

    waits = []
    monkeypatch.setattr(remote_module.time, "sleep", waits.append)
    with pytest.raises(RuntimeError, match=rf"reward server {url} failed after 3 attempt\(s\).*serve-reward"):
        remote.score(x, ["a", "b", "c"])
    assert waits == [0.05, 0.1]  # exponential backoff between the three attempts


class _Fake(BaseHTTPRequestHandler):
    """A misbehaving server: healthy /health, then whatever ``answer`` says for /score."""

    answer: tuple[int, bytes] = (200, b"{}")
    calls = 0

    def log_message(self, *args):
        pass

    def _reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._reply(200, json.dumps({"name": "fake", "version": 3, "max_batch": 8}).encode())

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls += 1
        self._reply(*self.answer)


@pytest.fixture
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    _Fake.calls = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("answer,match", [
    ((200, b"<html>oops</html>"), "not JSON"),
    ((200, b'{"result": [1, 2]}'), "without a 'scores' list"),
    ((200, b'{"scores": [1.0]}'), "answered 1 scores for 2 images"),
    ((200, b'{"scores": [1.0, "high"]}'), "non-numbers"),
    ((200, b'{"scores": [1.0, NaN]}'), "non-finite"),
    ((503, b'{"error": "busy"}'), r"failed after 2 attempt\(s\) \(HTTP 503: busy\)"),
    ((400, b'{"error": "bad images"}'), "refused the request: HTTP 400: bad images"),
])
def test_malformed_server_answers_raise_naming_the_url(fake, answer, match):
    _Fake.answer = answer
    remote = RemoteReward(fake, retries=1, backoff=0)
    assert (remote.name, remote.version) == ("fake", 3)
    with pytest.raises(RuntimeError, match=match) as info:
        remote.score(images(2), ["a", "b"])
    assert fake in str(info.value)
    assert _Fake.calls == (2 if answer[0] == 503 else 1)  # only 5xx is retried


def test_several_servers_share_the_requests_and_a_failing_one_is_named(servers):
    import socket

    class Counted:
        name, version, differentiable, resolution = "jpeg", 1, False, None

        def __init__(self):
            self.inner, self.calls = build("jpeg"), 0

        def score(self, images, prompts):
            self.calls += 1
            return self.inner.score(images, prompts)

    pair = [RewardServer(Counted(), port=0).start() for _ in range(2)]
    try:
        x, prompts = images(7), [f"p{i}" for i in range(7)]
        remote = build(f"remote:{pair[0].url},{pair[1].url}", {"batch": "2"})  # 4 requests over 2 servers
        got = remote.score(x, prompts)
        want = build("jpeg").score(quantised(x), prompts)
        np.testing.assert_allclose(got, [float(v) for v in want], rtol=1e-5, atol=1e-5)
        assert [server.reward.calls for server in pair] == [2, 2]
        with pytest.raises(RuntimeError, match="serves 'colorfulness' v1, but"):
            build(f"remote:{servers['jpeg'].url},{servers['colorfulness'].url}")
    finally:
        for server in pair:
            server.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError, match=rf"http://127.0.0.1:{port} failed after 1 attempt"):
        RemoteReward(f"{servers['jpeg'].url},127.0.0.1:{port}", retries=0, backoff=0, timeout=2)


def test_unreachable_server_at_construction():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError, match=rf"http://127.0.0.1:{port} failed after 2 attempt"):
        RemoteReward(f"127.0.0.1:{port}", retries=1, backoff=0, timeout=2)


def test_serving_a_light_reward_imports_no_model_libraries():
    """The server runs inside other environments (other transformers): it must not drag them in itself."""
    code = ("import sys; from harness.cli import COMMANDS; from harness.serving.server import RewardServer; "
            "from rewards import build, REWARDS; from harness.registry import load; "
            "[load(REWARDS.target(n)) for n in REWARDS]; "
            "s = RewardServer(build('jpeg'), port=0); s.server_close(); "
            "print(sorted(m for m in ('transformers', 'diffusers', 'tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_serve_reward_cli_rejects_unknown_names(capsys):
    from harness.cli import main

    assert main(["serve-reward", "jpg"]) == 2
    assert "did you mean 'jpeg'" in capsys.readouterr().err


def test_reward_options_allow_dots_in_names():
    assert parse_options(["remote:http://127.0.0.1:8000.token=a.b=c", "pickscore.model=/d/p.s"]) == {
        "remote:http://127.0.0.1:8000": {"token": "a.b=c"}, "pickscore": {"model": "/d/p.s"}}
    with pytest.raises(ValueError, match="REWARD.KEY=VALUE"):
        parse_options(["pickscore=1"])


def record_remote_scores(monkeypatch) -> list[tuple[torch.Tensor, list[str], list[float]]]:
    """Make every ``RemoteReward.score`` call append (images, prompts, scores) to the returned list."""
    seen = []
    original = RemoteReward.score

    def recording(self, x, prompts):
        scores = original(self, x, prompts)
        seen.append((x.detach().clone(), list(prompts), scores))
        return scores

    monkeypatch.setattr(RemoteReward, "score", recording)
    return seen


@pytest.mark.slow
def test_training_run_through_a_remote_reward_ranks_like_in_process(tmp_path, servers, monkeypatch):
    """`harness.run.run` on the tiny profile with remote:URL; every scored batch is checked in-process."""
    from harness.run import run
    from methods import drpo
    from tests.conftest import tiny_run

    monkeypatch.setattr(drpo, "Config", dataclasses.make_dataclass(
        "Config", [("m", int, dataclasses.field(default=2))], bases=(drpo.Config,), frozen=True))
    seen = record_remote_scores(monkeypatch)
    url = servers["jpeg"].url
    summary = run(tiny_run(tmp_path, reward=f"remote:{url}", run_id="remote", updates=1, eval_at=(1.0,), eval_prompt_limit=1,
                           count_flops=False),
                  progress=False)
    manifest = json.loads((tmp_path / "runs" / "remote" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["reward"] == "jpeg"
    assert len(seen) >= 2 and any(len(p) == 4 for _, p, _ in seen)  # a training batch (K=4) and evaluations
    local = build("jpeg")
    for x, prompts, remote_scores in seen:
        in_process = local.score(x, prompts)
        assert remote_scores == in_process  # same uint8 rounding, same JPEG encoder
        assert np.argsort(remote_scores, kind="stable").tolist() == np.argsort(in_process, kind="stable").tolist()
    # Metrics are keyed by the served reward's name, not the URL, and jpeg reached two ways is evaluated once.
    assert not [k for k in summary if "remote:" in k or "127.0.0.1" in k] and "eval/jpeg/mean" in summary
    assert manifest["versions"]["evals"] == {"jpeg": 1}


# ---------------------------------------------------------------------------------------------------
# cmd:COMMAND
# ---------------------------------------------------------------------------------------------------

SCRIPT = r'''
import json, sys, time
from pathlib import Path
from PIL import Image
mode = sys.argv[1]
directory = Path(sys.argv[-1])
rows = [json.loads(line) for line in (directory / "prompts.jsonl").read_text().splitlines()]
if mode == "fail":
    print("model exploded", file=sys.stderr); sys.exit(3)
if mode == "sleep":
    time.sleep(30)
scores = []
for row in rows:
    pixels = Image.open(directory / row["image"]).convert("RGB").getdata()
    scores.append(sum(sum(p) for p in pixels) / (3 * 255 * len(pixels)) + len(row["prompt"]))
if mode == "short":
    scores = scores[:-1]
for s in scores:
    print({"text": "high", "nan": "nan"}.get(mode, repr(s)))
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("cmd") / "score.py"
    path.write_text(SCRIPT)
    return lambda mode: f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(path))} {mode}"


def test_command_reward_scores_through_a_program(script):
    x = images(5, 16)
    prompts = ["a", "bb", "a", "ccc", "dd"]
    reward = build(script("ok"), {"batch": "2", "name": "brightness", "version": "4"})
    got = reward.score(x, prompts)
    want = (quantised(x).mean(dim=(1, 2, 3)) + torch.tensor([len(p) for p in prompts])).tolist()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert (reward.name, reward.version, reward.differentiable) == ("brightness", 4, False)


@pytest.mark.parametrize("mode,options,match", [
    ("fail", {}, "exited with status 3: model exploded"),
    ("sleep", {"timeout": "0.5"}, "timed out after 0.5 s"),
    ("short", {}, "printed 1 lines for 2 images"),
    ("text", {}, "non-number on line 1: 'high'"),
    ("nan", {}, "non-finite score on line 1"),
])
def test_command_reward_errors(script, mode, options, match):
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=match):
        build(script(mode), options).score(images(2, 8), ["a", "b"])
    assert time.monotonic() - start < 20


def test_command_reward_missing_program():
    with pytest.raises(RuntimeError, match="could not start"):
        build("cmd:/nonexistent/scorer --flag").score(images(1, 8), ["a"])


@pytest.mark.slow
def test_shapes_run_through_a_served_shapes_pref_ranks_like_in_process(tmp_path, monkeypatch):
    """A Shapes-world run whose reward is shapes-pref served over HTTP: every batch ranks as in process."""
    from harness.run import run
    from tests.conftest import tiny_run

    seen = record_remote_scores(monkeypatch)
    local = build("shapes-pref")
    server = RewardServer(local, port=0).start()
    try:
        run(tiny_run(tmp_path, profile="shapes", reward=f"remote:{server.url}", evals=("shapes-geneval",), k=16,
                     run_id="remote-shapes", updates=1, eval_at=(1.0,), eval_prompt_limit=1, count_flops=False),
            progress=False)
    finally:
        server.close()
    manifest = json.loads((tmp_path / "runs" / "remote-shapes" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["reward"] == "shapes-pref"
    assert any(len(p) == 16 for _, p, _ in seen)
    for x, prompts, remote_scores in seen:
        with torch.no_grad():
            in_process = local.score(quantised(x), prompts).tolist()
        assert np.allclose(remote_scores, in_process, atol=1e-5)
        assert np.argsort(remote_scores).tolist() == np.argsort(in_process).tolist()
