"""What ``accelerate launch`` asks for: a process count that does not run is one line; --mixed-precision follows
accelerate's setting when launched, and a conflict is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import distributed
from harness.cli import main
from harness.store import Store

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_ENV = ("WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR", "ACCELERATE_NUM_PROCESSES", "ACCELERATE_USE_CPU",
              "ACCELERATE_MIXED_PRECISION")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)


@pytest.mark.unit
def test_a_single_process_from_a_launch_that_asked_for_several_is_one_line(monkeypatch):
    distributed.check_single_launch()  # no launcher: fine
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    distributed.check_single_launch()  # accelerate launch with one process: fine
    monkeypatch.setenv("MASTER_PORT", "29500")  # what the simple launcher sets for --num_processes 2
    with pytest.raises(ValueError, match=r"asked for several processes .* `accelerate launch --multi_gpu"):
        distributed.check_single_launch()
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.setenv("ACCELERATE_NUM_PROCESSES", "4")
    with pytest.raises(ValueError, match="asked for 4 processes but only this one runs"):
        distributed.check_single_launch()
    monkeypatch.setenv("WORLD_SIZE", "4")  # a real 4-process launch is not this check's business
    distributed.check_single_launch()


@pytest.mark.unit
def test_mixed_precision_follows_accelerate_and_a_conflict_is_one_line(monkeypatch):
    assert distributed.launch_precision(None) is None and distributed.launch_precision("bf16") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert distributed.launch_precision(None) == "bf16" and distributed.launch_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="--mixed-precision fp16 conflicts with accelerate launch's --mixed_precision bf16"):
        distributed.launch_precision("fp16")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ValueError, match="--mixed_precision fp8 is not supported; valid: no, fp16, bf16"):
        distributed.launch_precision(None)


ARGS = ["train", "--method", "drpo", "--drpo.m", "2", "--profile", "tiny", "--reward", "jpeg", "--evals", "jpeg",
        "--k", "4", "--prompts-per-step", "1", "--updates", "1", "--eval-at", "1", "--eval-seeds", "1",
        "--eval-prompt-limit", "1", "--quiet"]


@pytest.mark.slow
def test_train_takes_accelerates_mixed_precision(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert main([*ARGS, "--out", str(tmp_path), "--run-id", "mp"]) == 0
    assert Store(tmp_path).manifest("mp")["run"]["mixed_precision"] == "no"
    assert main([*ARGS, "--out", str(tmp_path), "--run-id", "clash", "--mixed-precision", "fp16"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "driftbench: error: --mixed-precision fp16 conflicts with accelerate launch's --mixed_precision no; give one "
        "of them, or the same value to both")
    assert not (tmp_path / "runs" / "clash").exists()


@pytest.mark.slow
def test_accelerate_launch_of_two_processes_without_multi_gpu_is_one_line_before_anything_is_written(tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "harness", *ARGS, "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in LAUNCH_ENV:
        env.pop(key, None)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("driftbench: error:")]
    assert ours == ["driftbench: error: the launch asked for several processes (MASTER_PORT is set) but only this one "
                    "runs: launch with `accelerate launch --multi_gpu --num_processes N` (on CPU too, which uses gloo), "
                    "or drop --num_processes"]
    assert not (tmp_path / "runs").exists()
