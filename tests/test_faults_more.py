"""The fault suite's second part (issue 21, parts 4-8): tables that refuse missing data, workers that die with
their parent, bounds on sizes and memory, damaged records named, and the unclear errors made one line.

Each test here failed on 678faa3 (the commit the probes were run on) and passes after.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.store import Store
from tests.test_faults import ARGS, ROOT, TOKEN, TRAIN, _body, _raw, _request, driftbench

pytestmark = pytest.mark.unit


def one_line(capsys, code: int, got: int) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert got == code and len(err) == 1 and err[0].startswith("driftbench: error: "), err
    return err[0]


# ---------------------------------------------------------------------------------------------------
# Part 8: the unclear errors, each one line naming the value, the option and what is valid
# ---------------------------------------------------------------------------------------------------

UNCLEAR = [
    # (argv, text the one line must contain)
    (TRAIN + ["--eval-seed-base", str(2 ** 64)], f"--eval-seed-base must be in [0, {2 ** 62}], got {2 ** 64}"),
    (TRAIN + ["--test-seed-base", str(2 ** 64)], f"--test-seed-base must be in [0, {2 ** 62}], got {2 ** 64}"),
    (TRAIN + ["--reward-options", "jpeg.quality=abc"], "jpeg option quality='abc' must be an integer in [0, 100]"),
    (TRAIN + ["--reward-options", "jpeg.quality=101"], "jpeg option quality='101' must be an integer in [0, 100]"),
    (TRAIN + ["--reward", "remote:http://me:pw@127.0.0.1:9"], "remote reward URL 'http://***@127.0.0.1:9' carries "
                                                              "user-info"),
    # Part 6: sizes bounded in the config's bound table
    (TRAIN + ["--lora-rank", "100000"], "--lora-rank must be in [0, 4096], got 100000"),
    (TRAIN + ["--k", "100000"], "--k must be in [2, 4096], got 100000"),
    (TRAIN + ["--prompts-per-step", "100000"], "--prompts-per-step must be in [1, 4096], got 100000"),
    (TRAIN + ["--tag", "x" * 100_000], "--tag must be at most 200 characters, got 100000"),
    (TRAIN + ["--reward-options", "jpeg.quality=" + "9" * 5000], "--reward-options must be at most 4096 characters"),
    (["serve-reward", "jpeg", "--max-bytes", str(2 ** 40)], "--max-bytes must be in [1024, 2147483648], got"),
    (["serve-reward", "jpeg", "--max-batch", "100000"], "--max-batch must be in [1, 4096], got 100000"),
    (["serve-reward", "jpeg", "--max-threads", "0"], "--max-threads must be in [1, 4096], got 0"),
    # Part 4: duplicate seeds refused before any compute
    (["table2", "--profile", "tiny", "--seeds", "0", "0"], "--seeds must not repeat a value, got 0 0"),
]


@pytest.mark.parametrize("argv,text", UNCLEAR, ids=[f"{i:02d}-{t[:40]}" for i, (_, t) in enumerate(UNCLEAR)])
def test_unclear_errors_are_one_line_naming_value_option_and_range(tmp_path, capsys, monkeypatch, argv, text):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    line = one_line(capsys, 2, main(argv))
    assert text in line, line
    assert time.perf_counter() - started < 150  # refused before any compute (a 100 KB tag once took 332 s)
    assert list(tmp_path.rglob("*")) == []  # nothing written


@pytest.mark.parametrize("spec,text", [
    ("update:abc", "DRIFTBENCH_FAULT: N must be a positive integer (optionally followed by +), got 'abc'"),
    ("updat:2", "unknown fault point 'updat'; did you mean 'update'?"),
    ("update:2:explode", "unknown action 'explode'"),
])
def test_a_bad_fault_spec_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch, spec, text):
    from harness import faults
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(faults, "_passes", {})
    monkeypatch.setenv(faults.ENV, spec)
    line = one_line(capsys, 2, main(["train", *ARGS, "--out", str(tmp_path / "results")]))
    assert text in line, line
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize("value", [-1, "NaN"])
def test_a_bad_tuned_value_names_the_tuned_file_and_field_not_a_flag(tmp_path, value):
    """table2 reads the tuned file this way (after its study preflight); a bad value is blamed on the file and
    field before any run starts, not on --drpo.lr, a flag the user never gave."""
    from harness.studies.tuned import tuned_configs

    data = json.loads((ROOT / "harness" / "tuned" / "shapes.json").read_text())
    section = next(s for s, methods in data["sections"].items() if "drpo" in methods)
    data["sections"][section]["drpo"]["config"]["lr"] = value
    bad = tmp_path / "tuned.json"
    bad.write_text(json.dumps(data).replace('"NaN"', "NaN"))
    with pytest.raises(ValueError) as err:
        tuned_configs(section, bad)
    line = str(err.value)
    assert "\n" not in line and f"tuned file {bad}: {section}.drpo.lr must be" in line and "--drpo.lr" not in line, line


def test_a_full_disk_during_a_checkpoint_says_no_space_left(tmp_path, capsys, monkeypatch):
    """The checkpoint's temporary file is made to lie on /dev/full, which fails every write with ENOSPC."""
    import tempfile

    from harness import store as store_module
    from harness.cli import main

    real = tempfile.mkstemp

    def mkstemp(*args, prefix="", **kwargs):
        fd, path = real(*args, prefix=prefix, **kwargs)
        if prefix.startswith(".checkpoint.pt."):
            os.unlink(path)
            os.symlink("/dev/full", path)
        return fd, path
    monkeypatch.setattr(store_module.tempfile, "mkstemp", mkstemp)
    out = tmp_path / "results"
    line = one_line(capsys, 1, main(["train", *ARGS, "--out", str(out), "--run-id", "R"]))
    assert "checkpoint.pt" in line and "No space left on device" in line, line
    assert not [p for p in (out / "runs" / "R").iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------------
# Part 6: memory estimated before it is allocated
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,text", [
    (["--lora-rank", "8"], "LoRA rank 8 (its adapters, gradients and AdamW state) needs about"),
    (["--k", "64", "--prompts-per-step", "4"], "a micro-batch of 256 images (--k x --prompts-per-step) at 32x32 "
                                               "needs about"),
])
def test_what_cannot_fit_the_machine_is_refused_in_one_line(tmp_path, capsys, monkeypatch, argv, text):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    # The machine is made to have 1 MB free: LoRA rank 4 of the tiny profile (0.25 MB) fits, rank 8 with
    # AdamW (0.49 MB) does too, and 256 decoded 32x32 images (9.4 MB) do not.
    monkeypatch.setenv("DRIFTBENCH_MEMORY_BYTES", str(400_000 if "--lora-rank" in argv else 1_000_000))
    line = one_line(capsys, 2, main(TRAIN + ["--drpo.m", "1", "--updates", "1", "--no-count-flops", *argv]))
    assert text in line and "is free on cpu" in line, line
    assert list(tmp_path.rglob("*")) == []


# ---------------------------------------------------------------------------------------------------
# Part 6 and 8: the reward server (JSON depth, prompt length, a cap on threads, the bearer scheme)
# ---------------------------------------------------------------------------------------------------

@pytest.fixture
def small_server(capfd, request):
    """A token-guarded jpeg server; ``max_threads`` (4) only where a test is parametrised indirectly with it."""
    from harness.serving.server import RewardServer
    from rewards import build

    cap = {"max_threads": request.param} if hasattr(request, "param") else {}
    with RewardServer(build("jpeg"), port=0, token=TOKEN, read_timeout=2.0, **cap).start() as s:
        yield s
    assert "Traceback" not in capfd.readouterr().err


def _post(port: int, body: bytes, scheme: str = "Bearer") -> bytes:
    return _raw(port, _request("/score", body, {"Authorization": f"{scheme} {TOKEN}", "Content-Type": "application/json",
                                                "Content-Length": str(len(body))}))


def test_deeply_nested_json_is_a_400_without_a_traceback(small_server):
    answer = _post(small_server.server_address[1], b"[" * 200_000 + b"]" * 200_000)
    assert answer.startswith(b"HTTP/1.1 400") and b"nests JSON deeper" in answer, answer[:300]


def test_an_overlong_prompt_is_a_400(small_server):
    body = json.loads(_body())
    body["prompts"] = ["a" * 20_000]
    answer = _post(small_server.server_address[1], json.dumps(body).encode())
    assert answer.startswith(b"HTTP/1.1 400") and b"character limit" in answer, answer[:300]


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_the_bearer_scheme_is_case_insensitive(small_server, scheme):
    assert _post(small_server.server_address[1], _body(), scheme).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("small_server", [4], indirect=True)
def test_connections_beyond_the_thread_cap_get_503_and_the_server_recovers(small_server):
    port = small_server.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]  # slow-header clients
    time.sleep(0.3)
    try:
        answer = _post(port, _body())
        assert answer.startswith(b"HTTP/1.1 503") and b"max-threads" in answer, answer[:300]
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.3)
    assert _post(port, _body()).startswith(b"HTTP/1.1 200")


# ---------------------------------------------------------------------------------------------------
# Parts 4 and 7: damaged records named, missing data never averaged away
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    """Three complete tiny runs (seeds 0, 1, 2) of one tag, 2 updates each."""
    import dataclasses

    from harness.run import run
    from tests.test_faults import tiny

    out = tmp_path_factory.mktemp("three")
    for seed in range(3):
        cfg, method_cfg = tiny(out, f"s{seed}")
        run(dataclasses.replace(cfg, seed=seed, updates=2, eval_at=(0.0, 1.0)), method_cfg, progress=False)
    return out


@pytest.fixture
def results(three_seeds, tmp_path):
    import shutil

    shutil.copytree(three_seeds, tmp_path / "results")
    return tmp_path / "results"


def _table(out: Path) -> str:
    from harness.reporting.table2 import write_table
    from harness.sections import Section

    store = Store(out)
    section = Section("Tiny", "tiny-jpeg", ("drpo",))
    return write_table([(section, ["s0", "s1", "s2"])], store, out, elapsed=0.0).read_text()


def _mean_of(out: Path, run_ids: list[str]) -> float:
    return sum(json.loads((out / "runs" / r / "summary.json").read_text())["eval/jpeg/mean"] for r in run_ids) / len(run_ids)


@pytest.mark.parametrize("damage", ["nan", "missing", "corrupt"])
def test_a_run_with_nan_missing_or_damaged_summary_is_named_and_counted(results, damage):
    path = results / "runs" / "s2" / "summary.json"
    summary = json.loads(path.read_text())
    if damage == "nan":
        summary["eval/jpeg/mean"] = math.nan
        path.write_text(json.dumps(summary))
    elif damage == "missing":
        del summary["eval/jpeg/mean"]
        path.write_text(json.dumps(summary))
    else:
        path.write_text('{"eval/jpeg/mean": -1.5, "tor')
    text = _table(results)
    row = next(line for line in text.splitlines() if line.startswith("| drpo |"))
    assert "(n=2 of 3)" in row and row.rstrip(" |").endswith("2 of 3"), row
    assert f"{_mean_of(results, ['s0', 's1']):.3f} ±" in row.split("|")[4], row  # the mean of the two kept
    note = next(line for line in text.splitlines() if line.startswith("**Left out of this table"))
    expected = {"nan": "seed 2 of drpo (s2): nan in eval/jpeg/mean", "missing": "seed 2 of drpo (s2): missing "
                "eval/jpeg/mean", "corrupt": f"{path}: damaged record, not valid JSON"}[damage]
    assert expected in note, note


def test_a_tuned_section_names_a_nan_run(tmp_path):
    from harness.reporting import tuned_table

    store = Store(tmp_path)
    for seed in range(3):
        run_id = f"r{seed}"
        store.start(run_id, {"run": {"method": "drpo", "seed": seed}, "versions": {"code": "c"}, "reward": "jpeg"})
        value = math.nan if seed == 1 else -1.5 + 0.01 * seed
        summary = {"test_selected/jpeg/mean": value, "test_selected/jpeg/base_mean": -1.6, "test/jpeg/mean": -1.5,
                   "select/step": 2, "budget/updates": 2, "budget/flops": 1e9, "budget/seconds": 1.0}
        store.finish(run_id, summary)
        store.release(run_id)
    lines, _ = tuned_table.render(tuned_table.compute("T", store, ["r0", "r1", "r2"], {}))
    text = "\n".join(lines)
    assert "seed 1 of drpo (r1): nan in test_selected/jpeg/mean" in text and "(n=2 of 3)" in text, text


def test_a_corrupt_manifest_is_skipped_by_plots_and_named_in_the_index(results, tmp_path):
    manifest = results / "runs" / "s1" / "manifest.json"
    manifest.write_text('{"run": {"method": "dr')
    result = driftbench(["plots", "--out", str(results)], tmp_path, timeout=300)
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 0 and len(err) == 1, result.stderr[-2000:]
    assert err[0].startswith("driftbench: warning: ") and str(manifest) in err[0], err
    index = (results / "plots" / "README.md").read_text()
    assert "## Left out" in index and str(manifest) in index
    assert "vs_updates_flops_seconds.png" in index  # the other runs are still drawn


def test_plots_name_the_nan_points_they_drop(results):
    from harness.reporting.plots import PlotsConfig, plots

    path = results / "runs" / "s0" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    last = max(i for i, row in enumerate(rows) if row.get("kind") == "eval")
    rows[last]["eval/jpeg/mean"] = math.nan  # the final evaluation's point
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match="run s0: jpeg curve: 1 of 2 point"):
        index = plots(PlotsConfig(out=str(results))).read_text()
    assert "run s0: jpeg curve: 1 of 2 point(s) are NaN or missing" in index


def test_a_corrupt_manifest_is_named_by_resume_and_skipped_by_table2(results, capsys):
    from harness.cli import main
    from harness.reporting.reproduce import Table2Config, plan
    from harness.sections import SECTIONS

    manifest = results / "runs" / "s1" / "manifest.json"
    manifest.write_text("\x00\x01 not json")
    line = one_line(capsys, 2, main(["train", *ARGS, "--out", str(results), "--resume", "s1"]))
    assert str(manifest) in line and "damaged record" in line, line
    with pytest.warns(UserWarning, match=f"{manifest}: damaged record.*left out"):
        jobs = plan(SECTIONS["tiny"], Table2Config(profile="tiny", seeds=(0,), out=str(results), progress=False),
                    Store(results))
    assert len(jobs) == 1


def test_a_damaged_metrics_line_is_named_and_the_rest_kept(results):
    path = results / "runs" / "s0" / "metrics.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"\xff\xfe\x00 binary\n" + b"[1, 2]\n" + b"".join(lines[1:]))
    with pytest.warns(UserWarning, match=f"{path}:2: skipped a torn metrics line"):
        rows = Store(results).rows("s0")
    assert len(rows) == len(lines)


# ---------------------------------------------------------------------------------------------------
# Part 5: workers die with their parent; SIGTERM reaches every worker
# ---------------------------------------------------------------------------------------------------

def _children(pid: int) -> set[int]:
    """Live descendants of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - out
        out |= frontier
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _start_until_workers(args: list[str], cwd: Path, ready, n: int, module: str = "harness"):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        workers = {p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)}
        if len(workers) >= n and ready():
            return proc, workers
        if proc.poll() is not None:
            pytest.fail(f"exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)
    proc.kill()
    pytest.fail("the workers never started")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\x00", b" ").decode()
    except OSError:
        return ""


def _gone_within(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _alive(pids)
    for pid in left:  # never leave a stray process behind a failed test
        os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL], ids=["kill-9"])
def test_killing_table2s_parent_leaves_no_worker_running(tmp_path, sig):
    out = tmp_path / "out"
    runs = out / "runs"
    ready = lambda: runs.is_dir() and len([p for p in runs.iterdir() if not p.name.startswith(".")]) >= 2  # noqa: E731
    proc, workers = _start_until_workers(["table2", "--profile", "tiny", "--seeds", "0", "1", "--jobs", "2",
                                          "--out", str(out), "--no-plots", "--no-progress"], tmp_path, ready, 2)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert _gone_within(workers, 90) == set()
    # Each worker stopped its run at a safe point: nothing is left "running" without a live writer.
    store = Store(out)
    assert all(store.status(r) in ("interrupted", "complete") for r in store.run_ids(status=None))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_killing_a_studys_parent_leaves_no_worker_running(tmp_path, sig):
    out = tmp_path / "out"
    runs = out / "runs"
    ready = lambda: runs.is_dir() and len([p for p in runs.iterdir() if not p.name.startswith(".")]) >= 2  # noqa: E731
    proc, workers = _start_until_workers(["study", "--name", "s", "--preset", "test-study", "--trials", "40",
                                          "--n-workers", "2", "--seeds", "0", "--space", "m=1:2", "--out", str(out)],
                                         ROOT, ready, 2, module="tests.study_cli")
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert _gone_within(workers, 60) == set()
