"""Fault suite, part two: what a shared results root or a hostile input must never achieve. A planted pickle
never runs; a secret reaches no file and no output line; a damaged study journal never loses a trial in
silence. Each test here failed on 678faa3 (the commit issue 21 was probed on)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from harness.store import Store
from tests.test_faults import ARGS, driftbench

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------------------------------------------
# A planted checkpoint
# ---------------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Generator:
    def load_trainable_state(self, state) -> None:
        pass


def _plant(checkpoint: Path, marker: Path) -> None:
    assert checkpoint.is_file()
    torch.save({"spend": _Payload(marker), "processes": 1}, checkpoint)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "refused" in line]
    assert errors, stderr[-2000:]
    return errors[-1]


@pytest.mark.slow
def test_a_planted_checkpoint_never_runs_on_train_resume(tmp_path):
    out, marker = tmp_path / "results", tmp_path / "MARKER"
    killed = driftbench(["train", *ARGS, "--out", str(out), "--run-id", "R"], tmp_path, fault="update:4:kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoint = Store(out).run_dir("R") / "checkpoint.pt"
    _plant(checkpoint, marker)
    resumed = driftbench(["train", *ARGS, "--out", str(out), "--resume", "R"], tmp_path)
    assert not marker.exists(), "the planted payload ran"
    assert resumed.returncode == 2, resumed.stderr[-2000:]
    line = _one_error_line(resumed.stderr)
    assert str(checkpoint) in line and "posix.system" in line and "refused" in line, line
    assert len([x for x in resumed.stderr.splitlines() if x.strip()]) == 1, resumed.stderr[-2000:]


@pytest.mark.slow
def test_a_planted_checkpoint_never_runs_when_table2_resumes_it(tmp_path):
    out, marker = tmp_path / "results", tmp_path / "MARKER"
    args = ["table2", "--profile", "tiny", "--seeds", "0", "--methods", "drpo", "--jobs", "1", "--no-plots",
            "--no-progress", "--out", str(out)]
    killed = driftbench(args, tmp_path, fault="final-checkpoint:1:kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (checkpoint,) = (out / "runs").glob("*/checkpoint.pt")
    _plant(checkpoint, marker)
    resumed = driftbench(args, tmp_path)
    assert not marker.exists(), "the planted payload ran"
    assert resumed.returncode != 0
    line = _one_error_line(resumed.stderr)
    assert str(checkpoint) in line and "posix.system" in line, resumed.stderr[-2000:]


def test_every_torch_file_a_user_names_loads_as_data_only(tmp_path):
    """The other torch files read from a user's path: evaluation weights, feature and reward weights."""
    from evals.bench import load_weights
    from harness.safe_load import torch_file, weights_only

    marker = tmp_path / "MARKER"
    bad = tmp_path / "weights.pt"
    torch.save({"state_dict": _Payload(marker)}, bad)
    with pytest.raises(ValueError, match=rf"{bad} is refused: it names code \(posix.system\)"):
        torch_file(bad, "weights")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"trainable": _Payload(marker)}, run_dir / "checkpoint.pt")
    with pytest.raises(ValueError, match="checkpoint.pt is refused"):
        load_weights(_Generator(), run_dir)
    with weights_only(), pytest.raises(Exception, match="GLOBAL posix.system"):  # a third party's own torch.load
        torch.load(bad, weights_only=False)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
