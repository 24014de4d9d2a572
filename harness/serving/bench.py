"""``driftbench bench-serve``: the reward server under sustained load, at its shipped listen backlog and at
the standard library's default of 5, in one run.

For each backlog a ``serve-reward jpeg`` server runs in its own process; ``clients`` threads in this process
then POST one 8x8 image each, on a new connection per request (so every request passes the listen backlog),
for ``seconds``. Answers, connection resets and other errors are counted per backlog and written to
``results/compute/serve_load.json`` (and ``.md``). Comparing the two backlogs in the same run, on the same
machine and load, is what makes the reset counts comparable.
"""

from __future__ import annotations

import http.client
import multiprocessing
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from harness.serving.server import BACKLOG, RewardServer
from harness.serving.wire import encode_request
from harness.store import describe_environment, write_json
from harness.validate import Bound, at_least, positive
from rewards import build

STDLIB_BACKLOG = 5
"""``socketserver.TCPServer.request_queue_size``: what the server listened with before it set its own."""


@dataclass(frozen=True)
class BenchServeConfig:
    """Load and output of the server benchmark."""

    clients: int = 100
    """Concurrent client threads."""
    seconds: float = 30.0
    """How long each backlog is loaded."""
    backlogs: tuple[int, ...] = ()
    """Listen backlogs to compare (default: the standard library's 5 and the server's own ``BACKLOG``)."""
    out: str = "results"
    """Results root; the report goes to ``<out>/compute/serve_load.{json,md}``."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"clients": at_least(1), "seconds": positive(), "backlogs": at_least(1)}


def _serve(backlog: int, ready: Any, stop: Any) -> None:
    server_class = type("LoadServer", (RewardServer,), {"request_queue_size": backlog})
    with server_class(build("jpeg"), port=0).start() as server:
        ready.put(server.server_address[1])
        stop.wait()


def _load(port: int, body: bytes, clients: int, seconds: float) -> dict[str, Any]:
    counts = {"answers": 0, "resets": 0, "other": 0}
    kinds: dict[str, int] = {}
    lock, barrier = threading.Lock(), threading.Barrier(clients)
    deadline: list[float] = []

    def client() -> None:
        if barrier.wait() == 0:
            deadline.append(time.monotonic() + seconds)
        while not deadline:
            time.sleep(0.001)
        while time.monotonic() < deadline[0]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                key = "answers" if response.status == 200 else "other"
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                key = "resets"
            except OSError as exc:  # a refused or timed-out connection: counted apart from resets
                key, name = "other", type(exc).__name__
                with lock:
                    kinds[name] = kinds.get(name, 0) + 1
            finally:
                conn.close()
            with lock:
                counts[key] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(counts.values())
    return {**counts, "requests": total, "reset_fraction": counts["resets"] / total if total else 0.0,
            "other_kinds": kinds}


def bench_serve(cfg: BenchServeConfig) -> tuple[dict[str, Any], Path]:
    """Load a server at each backlog in turn; returns the report and the path of its markdown."""
    import torch

    backlogs = cfg.backlogs or (STDLIB_BACKLOG, BACKLOG)
    body = encode_request(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)), ["a"])
    context = multiprocessing.get_context("spawn")
    rows = []
    for backlog in backlogs:
        ready, stop = context.Queue(), context.Event()
        proc = context.Process(target=_serve, args=(backlog, ready, stop), daemon=True)
        proc.start()
        try:
            port = ready.get(timeout=120)
            rows.append({"backlog": backlog, **_load(port, body, cfg.clients, cfg.seconds)})
        finally:
            stop.set()
            proc.join(timeout=30)
    report = {"config": asdict(cfg), "rows": rows, "environment": describe_environment()}
    path = Path(cfg.out) / "compute" / "serve_load.json"
    write_json(path, report)
    md = path.with_suffix(".md")
    md.write_text(_markdown(cfg, rows))
    return report, md


def _markdown(cfg: BenchServeConfig, rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"# Reward server under load: {cfg.clients} concurrent clients, {cfg.seconds:g} s per backlog", "",
             "Written by `driftbench bench-serve`; one new connection per request, an 8x8 image scored by `jpeg`.",
             "", "| listen backlog | requests | answers (200) | connection resets | reset fraction | other errors |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        other = f"{r['other']}" + (f" ({', '.join(f'{k} {v}' for k, v in r['other_kinds'].items())})"
                                   if r["other_kinds"] else "")
        lines.append(f"| {r['backlog']} | {r['requests']} | {r['answers']} | {r['resets']} | "
                     f"{100 * r['reset_fraction']:.2f}% | {other} |")
    return "\n".join(lines) + "\n"

