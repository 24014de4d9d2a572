"""Fault injection: kill -9 at every phase of a run, SIGTERM/SIGINT, a full disk, torn files, run locks, secrets,
a catalogue of bad inputs, and the reward server under 100 concurrent, slow and lying clients.

Kill points are events, not sleeps: ``DRIFTBENCH_FAULT=POINT:N:ACTION`` (``harness/faults.py``) makes the run
kill itself at the N-th passage through a named point. Every killed run is resumed and must end bitwise equal
to an uninterrupted run (same rows, same evaluation numbers, same weights), with no temporary file left.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.store import Store, read_json

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tok-9f3c1e7d5b"
pytestmark = pytest.mark.unit

# The tiny run every kill point uses: 6 updates, a checkpoint every 2, evaluations at 0, 0.5 and 1.
OPTIONS = {"--preset": "tiny-jpeg", "--method": "drpo", "--updates": "6", "--checkpoint-every": "2",
           "--eval-at": "0 0.5 1", "--eval-seeds": "1", "--eval-prompt-limit": "1", "--k": "4",
           "--prompts-per-step": "1", "--drpo.m": "1", "--evals": "jpeg"}


def train_args(**changes: str) -> list[str]:
    """``OPTIONS`` as train flags; ``changes`` (underscores for dashes) replace or add options."""
    options = {**OPTIONS, **{"--" + k.replace("_", "-"): v for k, v in changes.items()}}
    return [word for flag, value in options.items() for word in (flag, *value.split())] + ["--no-count-flops",
                                                                                            "--quiet"]


ARGS = train_args()


def tiny(out: Path, run_id: str = ""):
    """The RunConfig and DrPO Config that ``ARGS`` give (for in-process runs and resumes)."""
    import dataclasses

    from harness import presets

    preset = presets.get("tiny-jpeg")
    cfg = preset.run.replace(method="drpo", updates=6, checkpoint_every=2, eval_at=(0.0, 0.5, 1.0), eval_seeds=1,
                             eval_prompt_limit=1, k=4, prompts_per_step=1, evals=("jpeg",), count_flops=False,
                             out=str(out), run_id=run_id)
    return cfg, dataclasses.replace(preset.method_config("drpo"), m=1)


def driftbench(args: list[str], cwd: Path, fault: str = "", timeout: float = 600, **kwargs):
    """``python -m harness ARGS`` in a subprocess of this checkout, one torch thread, with a fault armed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "DRIFTBENCH_FAULT": fault}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def record(store: Store, run_id: str) -> dict:
    """What must match bitwise between two runs: every row's train/eval values by step, the summary's
    evaluation numbers and budget counts, and the trained weights."""
    from safetensors.torch import load_file

    rows = [(r["kind"], r["step"], {k: v for k, v in r.items() if k.startswith(("train/", "eval/"))})
            for r in store.rows(run_id)]
    summary = read_json(store.run_dir(run_id) / "summary.json")
    adapter = store.run_dir(run_id) / "adapter"
    weights = {f"{p.name}:{k}": v for p in sorted(adapter.glob("*.safetensors")) for k, v in load_file(p).items()}
    return {"rows": rows, "summary": {k: v for k, v in summary.items() if k.startswith(("eval/", "budget/updates",
                                                                                        "budget/images"))},
            "weights": weights}


def assert_same(got: dict, want: dict) -> None:
    import torch

    assert got["rows"] == want["rows"]  # no lost or duplicated step, identical numbers
    assert got["summary"] == want["summary"]
    assert got["weights"].keys() == want["weights"].keys() and got["weights"]
    for key, tensor in want["weights"].items():
        assert torch.equal(got["weights"][key], tensor), key


def leftovers(root: Path) -> list[str]:
    """Temporary files or directories anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp"))


def assert_clean_complete(store: Store, run_id: str) -> None:
    assert store.manifest(run_id)["status"] == "complete" and store.status(run_id) == "complete"
    assert store.holder(run_id) is None
    assert not leftovers(store.root)
    raw = (store.run_dir(run_id) / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in raw)  # no torn line survives


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one must equal."""
    from harness.run import run

    out = tmp_path_factory.mktemp("reference")
    run(*tiny(out, "ref"), progress=False)
    return record(Store(out), "ref")


# ---------------------------------------------------------------------------------------------------
# kill -9 at every phase, then resume
# ---------------------------------------------------------------------------------------------------

KILL_POINTS = [
    ("eval:1", "during the base evaluation (before any checkpoint)"),
    ("update:2", "mid-update, before the first checkpoint"),
    ("checkpoint:1", "while the first checkpoint is written"),
    ("update:4", "mid-update after a checkpoint"),
    ("checkpoint:2", "while a later checkpoint is written"),
    ("checkpoint:3", "while the final checkpoint is written"),
    ("final-checkpoint:1", "after the final checkpoint, before the final evaluation"),
    ("eval:3", "during the final evaluation"),
    ("summary:1", "adapter and samples written, summary not"),
]


@pytest.mark.slow
@pytest.mark.parametrize("point", [p for p, _ in KILL_POINTS], ids=[p for p, _ in KILL_POINTS])
def test_kill_at_each_phase_resumes_bitwise_equal(tmp_path, reference, point):
    from harness.run import run

    out = tmp_path / "results"
    killed = driftbench(["train", *ARGS, "--out", str(out), "--run-id", "R"], tmp_path, fault=f"{point}:kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    store = Store(out)
    # The killed run says "running", but nobody holds its lock: it counts as interrupted (table2 resumes it).
    assert store.manifest("R")["status"] == "running" and store.status("R") == "interrupted"
    run(*tiny(out), resume="R", progress=False)
    assert_clean_complete(store, "R")
    assert_same(record(store, "R"), reference)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["term", "int"])
def test_sigterm_and_sigint_stop_at_a_safe_point_marked_interrupted(tmp_path, reference, sig):
    out = tmp_path / "results"
    stopped = driftbench(["train", *ARGS, "--out", str(out), "--run-id", "R"], tmp_path, fault=f"update:3:{sig}")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    lines = [line for line in stopped.stderr.splitlines() if line.strip()]
    name = "SIGTERM" if sig == "term" else "SIGINT"
    assert lines == [f"driftbench: interrupted ({name} at update 3; continue with --resume R)"]
    store = Store(out)
    assert store.manifest("R")["status"] == "interrupted" and not leftovers(out)
    assert [r["step"] for r in store.rows("R", "train")] == [1, 2, 3]
    resumed = driftbench(["train", *ARGS, "--out", str(out), "--resume", "R"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert store.manifest("R")["resumed_from"] == 3  # the checkpoint taken at the stop
    assert_clean_complete(store, "R")
    assert_same(record(store, "R"), reference)


def test_a_run_killed_before_its_first_checkpoint_is_neither_dead_nor_duplicated(tmp_path, capsys):
    """--resume restarts it from the beginning; a fresh start with the same id points to --resume."""
    from harness.cli import main

    out = tmp_path / "results"
    store = Store(out)
    store.start("R", {"run": {}, "method_config": {}})
    store.release("R")  # what the kernel does when the writer dies
    assert main(["train", *ARGS, "--out", str(out), "--run-id", "R"]) == 2
    assert "--resume R" in capsys.readouterr().err
    assert main(["train", *ARGS, "--out", str(out), "--resume", "R"]) == 2  # its manifest is not this config
    assert "config differs" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Locks and status
# ---------------------------------------------------------------------------------------------------

def test_a_second_writer_is_refused_with_one_line(tmp_path, capsys):
    """Two --resume of one run: the second is refused before it touches anything."""
    from harness.cli import main

    out = tmp_path / "results"
    holder = Store(out)
    holder.start("R", {"status": "interrupted"})
    holder.set_status("R", "interrupted")
    before = (out / "runs" / "R" / "manifest.json").read_bytes()
    try:
        code = main(["train", *ARGS, "--out", str(out), "--resume", "R"])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 1 and len(err) == 1, err
        assert f"run 'R' is being written by pid {os.getpid()}" in err[0] and ".lock" in err[0]
        assert (out / "runs" / "R" / "manifest.json").read_bytes() == before
    finally:
        holder.release("R")


def test_status_is_never_downgraded_from_complete(tmp_path):
    store = Store(tmp_path)
    store.start("R", {})
    store.finish("R", {"eval/x/mean": 1.0})
    store.set_status("R", "failed", error="a late failure")
    assert store.manifest("R")["status"] == "complete" and "error" not in store.manifest("R")
    store.release("R")


def test_orphans_are_cleaned_and_torn_metrics_lines_skipped_and_cut(tmp_path):
    store = Store(tmp_path)
    store.start("R", {})
    store.append("R", {"kind": "train", "step": 1})
    store.release("R")
    run_dir = store.run_dir("R")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # kill -9 inside a write
    (run_dir / ".checkpoint.abc.tmp").write_bytes(b"half a checkpoint")
    (store.runs_dir / ".S.xyz.tmp").mkdir()  # a run directory a dead writer was building two minutes ago
    os.utime(store.runs_dir / ".S.xyz.tmp", (time.time() - 120, time.time() - 120))
    (store.runs_dir / ".U.xyz.tmp").mkdir()  # one another process made a moment ago and has not locked yet
    with pytest.warns(UserWarning, match=r"metrics.jsonl:2: skipped a torn metrics line"):
        assert [r["step"] for r in store.rows("R")] == [1]
    with pytest.warns(UserWarning, match="removed a torn last line"):
        store.claim("R")
    assert (run_dir / "metrics.jsonl").read_text().endswith("}\n") and not leftovers(run_dir)
    store.append("R", {"kind": "train", "step": 2})
    assert [r["step"] for r in store.rows("R")] == [1, 2]
    store.release("R")
    store.start("T", {})
    assert not (store.runs_dir / ".S.xyz.tmp").exists() and (store.runs_dir / ".U.xyz.tmp").is_dir()
    store.release("T")


def test_table2_resumes_every_unfinished_run_and_never_starts_a_duplicate(tmp_path):
    from harness.reporting.reproduce import Table2Config, plan, reproduce
    from harness.sections import SECTIONS
    from harness.store import RunLock, RunLocked

    cfg = Table2Config(profile="tiny", seeds=(0,), out=str(tmp_path), progress=False, plots=False)
    store = Store(tmp_path)
    (job,) = plan(SECTIONS["tiny"], cfg, store)
    from harness.config import run_key

    key = run_key(job.run_cfg.replace(run_id=""), job.method_cfg)
    from harness.store import source_hash
    from methods import drpo

    stored = {"key": key, "versions": {"method": drpo.VERSION, "code": source_hash()}}
    for status in ("running", "failed", "interrupted"):  # kill -9 / OOM leave "running"
        store.start(job.run_cfg.run_id, stored)
        store.set_status(job.run_cfg.run_id, status)
        store.release(job.run_cfg.run_id)
        (again,) = plan(SECTIONS["tiny"], cfg, store)
        assert again.resume == job.run_cfg.run_id and not again.run_cfg.run_id, status
        import shutil

        shutil.rmtree(store.run_dir(job.run_cfg.run_id))
    # A run a live process writes is not started twice: table2 refuses, naming --wait.
    store.start(job.run_cfg.run_id, stored)
    with pytest.raises(RuntimeError, match=r"is being written by pid \d+ .*; pass --wait to wait for it"):
        plan(SECTIONS["tiny"], cfg, store)
    store.release(job.run_cfg.run_id)
    # A second table2 on the same results root refuses with one line naming real options.
    other = RunLock(tmp_path / ".table2.lock", "table2").acquire()
    try:
        with pytest.raises(RunLocked, match=r"table2 in .* is being written by pid .*pass --wait .* --out DIR"):
            reproduce(cfg)
    finally:
        other.release()


# ---------------------------------------------------------------------------------------------------
# A full disk, a read-only directory
# ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("fault", ["write:1:enospc", "write:3:enospc", "write:6+:enospc", "checkpoint:2:enospc",
                                   "summary:1:enospc"])
def test_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, reference, capsys, monkeypatch, fault):
    from harness import faults
    from harness.cli import main
    from harness.run import run

    out = tmp_path / "results"
    monkeypatch.setattr(faults, "_passes", {})
    monkeypatch.setenv(faults.ENV, fault)
    code = main(["train", *ARGS, "--out", str(out), "--run-id", "R"])
    monkeypatch.delenv(faults.ENV)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0], err
    assert not leftovers(tmp_path)
    store = Store(out)
    if not store.run_dir("R").exists():  # the very first write failed: no run directory at all
        assert str(out) in err[0] and not list(store.runs_dir.iterdir())
        run(*tiny(out, "R"), progress=False)
    else:
        assert str(store.run_dir("R")) in err[0]
        assert store.status("R") in ("failed", "interrupted") and store.holder("R") is None
        run(*tiny(out), resume="R", progress=False)
    assert_clean_complete(store, "R")
    assert_same(record(store, "R"), reference)


@pytest.mark.slow
def test_a_real_write_limit_is_one_line_naming_the_checkpoint(tmp_path):
    """A file-size limit makes the kernel refuse the checkpoint's write (EFBIG), as a full disk would."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    out = tmp_path / "results"
    result = driftbench(["train", *ARGS, "--out", str(out), "--run-id", "R"], tmp_path, preexec_fn=limit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    assert "checkpoint.pt" in lines[0] and "cannot write the checkpoint" in lines[0]
    assert Store(out).status("R") == "failed" and not leftovers(tmp_path)


@pytest.mark.parametrize("command", ["train", "plots"])
def test_read_only_results_directory_is_one_line(tmp_path, capsys, monkeypatch, command):
    """A results root without write permission (as root, which ignores permissions, the first write is made
    to fail with EACCES instead)."""
    from harness import faults
    from harness.cli import main

    out = tmp_path / "results"
    out.mkdir(mode=0o555)
    if os.geteuid() == 0:
        monkeypatch.setattr(faults, "_passes", {})
        monkeypatch.setenv(faults.ENV, "write:1+:eacces")
    args = ["train", *ARGS, "--out", str(out)] if command == "train" else ["plots", "--out", str(out)]
    try:
        code = main(args)
    finally:
        out.chmod(0o755)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, lines
    assert str(out) in lines[0] and "Permission denied" in lines[0]
    assert not any(p for p in out.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------
# A torn study journal
# ---------------------------------------------------------------------------------------------------

def test_a_torn_journal_is_repaired_with_a_warning_naming_the_file(tmp_path):
    import optuna

    from harness.studies.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = tmp_path / "s.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(str(path), str(tmp_path), "s"))
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"op_code":5,"worker_id":"x","trial_id":0,"us')  # a write cut by kill -9
    # Optuna alone would append the next write to the torn line and fail on the following read.
    with pytest.warns(UserWarning, match=rf"{path}: repaired 1 line"):
        storage = open_storage(str(path), str(tmp_path), "s")
    assert path.read_bytes() == whole
    again = optuna.load_study(study_name="s", storage=storage)
    again.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=2.0))
    # A torn line with a later write appended to it: the write is kept, the torn part dropped.
    text = path.read_bytes()
    last = text.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    path.write_bytes(text[: len(text) - len(last) - 1] + b'{"op_code":5,"tr' + last + b"\n")
    with pytest.warns(UserWarning, match="repaired 1 line"):
        storage = open_storage(str(path), str(tmp_path), "s")
    assert [t.value for t in optuna.load_study(study_name="s", storage=storage).trials] == [1.0, 2.0]


# ---------------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------------

def test_the_token_never_reaches_the_record(tmp_path, capsys, monkeypatch):
    from harness.cli import main
    from harness.serving.server import RewardServer
    from rewards import build

    with RewardServer(build("jpeg"), port=0, token=TOKEN).start() as server:
        url = f"remote:{server.url}"
        argv = ["train", *train_args(updates="1", eval_at="1", reward=url), "--out", str(tmp_path), "--run-id", "R",
                "--reward-options", f"{url}.token={TOKEN}"]
        monkeypatch.setattr(sys, "argv", ["driftbench", *argv])  # the recorded command line
        assert main(argv) == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / "R"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) >= 6
    assert [p.name for p in files if TOKEN.encode() in p.read_bytes()] == []
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["run"]["reward_options"] == [f"{url}.token=***"]
    assert f"{url}.token=***" in manifest["environment"]["argv"]


def test_urls_and_flags_are_redacted():
    from harness.redact import redact
    from rewards.remote import RemoteReward

    assert redact(["serve", "--token", TOKEN, f"--password={TOKEN}", f"http://me:{TOKEN}@host:1/x?token={TOKEN}",
                   {"token": TOKEN}, f"Bearer {TOKEN}"]) == \
        ["serve", "--token", "***", "--password=***", "http://***@host:1/x?token=***", {"token": "***"}, "Bearer ***"]
    with pytest.raises(ValueError) as err:  # user-info is refused in one line (the server reads no user-info)
        RemoteReward(f"http://me:{TOKEN}@127.0.0.1:9", retries=0)
    assert TOKEN not in str(err.value) and "***@127.0.0.1:9" in str(err.value)


# ---------------------------------------------------------------------------------------------------
# Bad input: one line naming the value, nothing written
# ---------------------------------------------------------------------------------------------------

def test_every_numeric_config_field_declares_its_bound():
    import dataclasses

    from evals import geneval_bench, hpdv3, pickapic
    from evals.bench import EvaluateOptions
    from harness.compute.bench_drift import BenchDriftConfig
    from harness.compute.flops import ComputeConfig
    from harness.compute.profile_step import ProfileConfig
    from harness.compute.rank_agreement import AgreementConfig
    from harness.compute.run_time import RunTimeConfig
    from harness.config import RunConfig
    from harness.reporting.reproduce import Table2Config
    from harness.serving.bench import BenchServeConfig
    from harness.serving.server import ServeConfig
    from harness.studies.config import StudyConfig
    from harness.studies.report import StudyReportConfig
    from harness.studies.tune import TuneConfig
    from harness.validate import check, unbounded
    from methods import METHODS

    classes = [RunConfig, *(METHODS.get(m).Config for m in METHODS), StudyConfig, Table2Config, ServeConfig,
               ComputeConfig, ProfileConfig, AgreementConfig, StudyReportConfig, EvaluateOptions, pickapic.Config,
               hpdv3.Config, geneval_bench.Config, TuneConfig, RunTimeConfig, BenchDriftConfig, BenchServeConfig]
    assert {c.__module__ + "." + c.__qualname__: unbounded(c) for c in classes if unbounded(c)} == {}
    for cls in classes:  # every default lies inside its own bounds
        required = {f.name: "x" for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        check(cls(**required))


def _prompt_files(tmp: Path) -> dict[str, str]:
    (tmp / "latin1.txt").write_bytes("a photo of a caf\xe9\n".encode("latin-1"))
    (tmp / "cats.txt").write_text("a photo of a red circle\na photo of a cat\n")
    return {"{latin1}": str(tmp / "latin1.txt"), "{cats}": str(tmp / "cats.txt"), "{missing}": str(tmp / "no-such-dir")}


TRAIN = ["train", "--preset", "tiny-jpeg", "--quiet"]
BAD_INPUTS = [
    # (argv, exit code, text the one line must contain)
    (TRAIN + ["--drpo.lr", "0"], 2, "--drpo.lr must be > 0, got 0.0"),
    (TRAIN + ["--drpo.lam", "nan"], 2, "--drpo.lam must be a finite number >= 0, got nan"),
    (TRAIN + ["--drpo.require-both"], 2, "--drpo.require-both read the reward as correct or incorrect (>= 0.5), "
                                         "but reward 'jpeg' is not binary"),
    (TRAIN + ["--drpo.rounds", "4"], 2, "--drpo.rounds 4 read the reward as correct or incorrect"),
    (TRAIN + ["--drpo.rounds", "0"], 2, "--drpo.rounds must be in [1, 16], got 0"),
    (TRAIN + ["--drpo.drift-set", "negatives"], 2, "unknown drift set 'negatives' (--drpo.drift-set); did you mean"),
    (TRAIN + ["--drpo.radii", "inf"], 2, "--drpo.radii must be a finite number > 0, got inf"),
    (TRAIN + ["--drpo.radii", "0.1", "-1"], 2, "--drpo.radii must be > 0, got 0.1 -1.0"),
    (TRAIN + ["--drpo.eta", "nan"], 2, "--drpo.eta must be a finite number > 0, got nan"),
    (TRAIN + ["--drpo.eta", "inf"], 2, "--drpo.eta must be a finite number > 0, got inf"),
    (TRAIN + ["--drpo.m", "0"], 2, "--drpo.m must be >= 1, got 0"),
    (TRAIN + ["--drpo.ref-radii", "0"], 2, "--drpo.ref-radii must be > 0, got 0.0"),
    (TRAIN + ["--eval-prompt-limit", "-1"], 2, "--eval-prompt-limit must be >= 0, got -1"),
    (TRAIN + ["--grad-clip", "nan"], 2, "--grad-clip must be a finite number > 0, got nan"),
    (TRAIN + ["--grad-clip", "0"], 2, "--grad-clip must be > 0, got 0.0"),
    (TRAIN + ["--k", "1"], 2, "--k must be in [2, 4096], got 1"),
    (TRAIN + ["--updates", "-1"], 2, "--updates must be >= 0, got -1"),
    (TRAIN + ["--seed", "-3"], 2, "--seed must be in [0, 4611686018427387904], got -3"),
    (TRAIN + ["--eval-at", "0", "1.5"], 2, "--eval-at must be in [0, 1], got 0.0 1.5"),
    (TRAIN + ["--eval-at", "nan"], 2, "--eval-at must be a finite number in [0, 1], got nan"),
    (TRAIN + ["--weight-decay", "-0.1"], 2, "--weight-decay must be >= 0, got -0.1"),
    (TRAIN + ["--max-seconds", "inf"], 2, "--max-seconds must be a finite number >= 0, got inf"),
    (TRAIN + ["--max-flops", "nan"], 2, "--max-flops must be a finite number >= 0, got nan"),
    (TRAIN + ["--eval-seeds", "0"], 2, "--eval-seeds must be >= 1, got 0"),
    (TRAIN + ["--prompts-per-step", "0"], 2, "--prompts-per-step must be in [1, 4096], got 0"),
    (TRAIN + ["--grad-accum", "0"], 2, "--grad-accum must be >= 1, got 0"),
    (TRAIN + ["--checkpoint-every", "-2"], 2, "--checkpoint-every must be >= 0, got -2"),
    (TRAIN + ["--method", "dpo1", "--dpo1.beta", "0"], 2, "--dpo1.beta must be > 0, got 0.0"),
    (TRAIN + ["--method", "pso", "--pso.clip", "1"], 2, "--pso.clip must be in [0, 1), got 1.0"),
    (TRAIN + ["--method", "ngrpo", "--ngrpo.sigma", "0"], 2, "--ngrpo.sigma must be in (0, 1], got 0.0"),
    (TRAIN + ["--method", "vggflow", "--vggflow.quantile", "nan"], 2, "--vggflow.quantile must be a finite"),
    (TRAIN + ["--method", "draft", "--draft.beta-std", "-1"], 2, "--draft.beta-std must be >= 0, got -1.0"),
    (TRAIN + ["--method", "drpo", "--method", "dpo1"], 2, "--method is given twice"),
    (TRAIN + ["--reward-options", "a.b=1", "--reward-options", "c.d=2"], 2, "--reward-options is given twice"),
    (TRAIN + ["--run-id", "../../x"], 2, "--run-id '../../x' must be a plain name"),
    (TRAIN + ["--run-id", "/tmp/abs"], 2, "--run-id '/tmp/abs' must be a plain name"),
    (TRAIN + ["--run-id", "a/b"], 2, "--run-id 'a/b' must be a plain name"),
    (TRAIN + ["--resume", "../x"], 2, "--resume '../x' must be a plain name"),
    (TRAIN + ["--reward", "cmd:true", "--reward-options", "cmd:true.timeout=abc"], 2, "option timeout='abc'"),
    (TRAIN + ["--reward", "cmd:true", "--reward-options", "cmd:true.name=../x"], 2, "name '../x' must be a plain"),
    (TRAIN + ["--reward", "remote:http://127.0.0.1:9", "--reward-options", "remote:http://127.0.0.1:9.retries=zero"],
     2, "option retries='zero'"),
    (TRAIN + ["--prompts", "{latin1}"], 2, "prompt file {latin1} is not UTF-8"),
    (["train", "--profile", "shapes", "--quiet", "--prompts", "{cats}"], 2,
     "{cats}:2: unknown"),
    (TRAIN + ["--method", "drpx"], 2, "did you mean 'drpo'"),
    (TRAIN + ["--reward", "jpg"], 2, "did you mean 'jpeg'"),
    (TRAIN + ["--reward-options", "oops"], 2, "bad reward option 'oops'"),
    (["train", "--preset", "tiny-jpg"], 2, "did you mean 'tiny-jpeg'"),
    (["table2", "--jobs", "0"], 2, "--jobs must be >= 1, got 0"),
    (["table2", "--seeds", "0", "-1"], 2, "--seeds must be >= 0, got 0 -1"),
    (["table2", "--profile", "tinny"], 2, "did you mean 'tiny'"),
    (["study", "--name", "s", "--trials", "0"], 2, "--trials must be >= 1, got 0"),
    (["study", "--name", "s", "--storage", "{missing}/x.journal"], 2, "directory {missing} does not"),
    (["study", "--name", "s", "--space", "k=1:4"], 2, "space entry 'k=1:4': k must be in [2, 4096], got 1"),
    (["study", "--name", "s", "--space", "lr=0:1e-3"], 2, "space entry 'lr=0:1e-3': lr must be > 0, got 0.0"),
    (["study", "--name", "../s"], 2, "study name '../s'"),
    (["serve-reward", "jpeg", "--port", "70000"], 2, "--port must be in [0, 65535], got 70000"),
    (["serve-reward", "jpeg", "--port", "-1"], 2, "--port must be in [0, 65535], got -1"),
    (["serve-reward", "jpeg", "--read-timeout", "0"], 2, "--read-timeout must be > 0, got 0.0"),
    (["serve-reward", "jpeg", "--port", "{busy}"], 1, "cannot listen on 127.0.0.1:{busy}: Address already in use"),
    (["serve-reward", "jpeg", "--host", "no-such-host.invalid", "--port", "0"], 1,
     "cannot listen on no-such-host.invalid:0"),
    (["compute", "--k", "1"], 2, "--k must be >= 2, got 1"),
    (["profile-step", "--steps", "0"], 2, "--steps must be >= 1, got 0"),
    (["rank-agreement", "--m", "0"], 2, "--m must be >= 1, got 0"),
    (["evaluate", "hpdv3", "--run", "../x"], 2, "--run '../x' must be a plain name"),
]


@pytest.mark.parametrize("argv,code,text", BAD_INPUTS, ids=[f"{i:02d}-{a[0]}-{t[:40]}" for i, (a, _, t)
                                                           in enumerate(BAD_INPUTS)])
def test_bad_input_is_one_line_naming_the_value_and_writes_nothing(tmp_path, capsys, monkeypatch, argv, code, text):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    names = {**_prompt_files(tmp_path), "{busy}": str(busy.getsockname()[1])}
    fill = lambda s: next((s.replace(k, v) for k, v in names.items() if k in s), s)  # noqa: E731
    before = set(tmp_path.rglob("*"))
    try:
        got = main([fill(a) for a in argv])
    finally:
        busy.close()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert got == code and len(err) == 1 and err[0].startswith("driftbench: error: "), err
    assert fill(text) in err[0]
    assert set(tmp_path.rglob("*")) == before  # no run directory, no temporary file


# ---------------------------------------------------------------------------------------------------
# The reward server under load, slow and lying clients
# ---------------------------------------------------------------------------------------------------

def _body() -> bytes:
    import torch

    from harness.serving.wire import encode_request

    return encode_request(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)), ["a"])


def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes and read until the server closes or answers one response (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        got = b""
        try:
            while b"\r\n\r\n" not in got or len(got) < got.find(b"\r\n\r\n") + 4 + _length(got):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        return got


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


@pytest.fixture
def server(capfd):
    from harness.serving.server import RewardServer
    from rewards import build

    with RewardServer(build("jpeg"), port=0, token=TOKEN, read_timeout=0.5).start() as s:
        yield s
    assert "Traceback" not in capfd.readouterr().err  # disconnects and stalls are dropped quietly


def _request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body


def test_server_rejects_bad_length_type_and_token_before_reading(server):
    port, body, auth = server.server_address[1], _body(), {"Authorization": f"Bearer {TOKEN}"}
    for length in ("abc", "-5", "1e3"):
        answer = _raw(port, _request("/score", body, {**auth, "Content-Length": length,
                                                        "Content-Type": "application/json"}))
        assert answer.startswith(b"HTTP/1.1 400") and b"bad Content-Length" in answer, (length, answer[:200])
    answer = _raw(port, _request("/score", body, {**auth, "Content-Length": str(len(body)),
                                                  "Content-Type": "text/plain"}))
    assert answer.startswith(b"HTTP/1.1 415"), answer[:200]
    # A wrong token is answered at once, without waiting for (or reading) an 8 MiB body that never comes.
    started = time.perf_counter()
    answer = _raw(port, _request("/score", b"", {"Authorization": "Bearer wrong", "Content-Length": str(8 * 2 ** 20),
                                                 "Content-Type": "application/json"}))
    assert answer.startswith(b"HTTP/1.1 401") and time.perf_counter() - started < 2.0
    ok = _raw(port, _request("/score", body, {**auth, "Content-Length": str(len(body)),
                                              "Content-Type": "application/json"}))
    assert ok.startswith(b"HTTP/1.1 200") and b'"scores"' in ok


def test_slow_and_lying_clients_cost_seconds_and_others_are_served(server):
    port, body = server.server_address[1], _body()
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    for conn in stalled:  # declares 1000 bytes, sends 10, then stalls
        conn.sendall(_request("/score", b"0123456789", {**auth, "Content-Length": "1000"}))
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)  # connects and says nothing
    ok = _raw(port, _request("/score", body, {**auth, "Content-Length": str(len(body))}))
    assert ok.startswith(b"HTTP/1.1 200")
    started = time.perf_counter()
    for conn in stalled:
        answer = conn.recv(65536)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
        conn.close()
    assert silent.recv(100) == b""  # dropped after the read timeout
    assert time.perf_counter() - started < 5.0
    silent.close()
    # Clients that hang up mid-body, or before reading their answer.
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(_request("/score", body[: len(body) // 2], {**auth, "Content-Length": str(len(body))}))
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.sendall(_request("/score", body, {**auth, "Content-Length": str(len(body))}))
    time.sleep(0.2)  # let the server threads see the hang-ups before capfd is read
    assert _raw(port, _request("/score", body, {**auth, "Content-Length": str(len(body))})).startswith(b"HTTP/1.1 200")


CLIENTS = 100


def test_hundred_concurrent_clients_get_answers_and_no_resets(server):
    port, body = server.server_address[1], _body()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    barrier = threading.Barrier(CLIENTS)
    answers, resets, other = [], [], []

    def client() -> None:
        barrier.wait()
        for _ in range(3):  # a new connection per request: every one goes through the listen backlog
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("POST", "/score", body=body, headers=headers)
                response = conn.getresponse()
                answers.append(response.status)
                response.read()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
                resets.append(type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 - counted, and the test fails on it
                other.append(repr(exc))
            finally:
                conn.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert time.perf_counter() - started < 120
    assert resets == [] and other == []
    assert answers == [200] * (3 * CLIENTS)
