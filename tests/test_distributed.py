"""Data-parallel runs through ``accelerate launch`` (gloo, 2 CPU processes) on the tiny profile.

A 2-process run must be the 1-process run of the same config (which accumulates both micro-batches
itself): same prompts and noise, same per-update loss, same final adapter, same counts, one run directory,
for every method (VGG-Flow's clip threshold included: it is set once per update from both processes' norms).
A 2-process run killed with SIGKILL and resumed ends where the uninterrupted one does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.store import Store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# Learning rates large enough that 2 updates move every adapter far beyond the 1e-5 tolerance (checked below).
METHODS = {"drpo": ("jpeg", ["--drpo.m", "2", "--drpo.lr", "1e-2"]), "draft": ("colorfulness", ["--draft.lr", "1e-3"]),
           "dpo1": ("jpeg", ["--dpo1.m", "1", "--dpo1.lr", "1e-2"]), "pso": ("jpeg", ["--pso.lr", "1e-2"]),
           "ngrpo": ("jpeg", ["--ngrpo.lr", "1e-2"]), "vggflow": ("colorfulness", ["--vggflow.lr", "1e-2"])}


def _args(method: str, out: Path, run_id: str, **extra: str) -> list[str]:
    reward, method_args = METHODS[method]
    flags = {"method": method, "profile": "tiny", "reward": reward, "evals": reward, "k": "4",
             "prompts-per-step": "1", "grad-accum": "2", "updates": "2", "eval-at": "1.0", "eval-seeds": "1",
             "eval-prompt-limit": "1", "checkpoint-every": "1", "out": str(out), "run-id": run_id, "device": "cpu",
             **extra}
    return ["train", "--quiet", *[a for k, v in flags.items() for a in (f"--{k}", *str(v).split())], *method_args]


def _launch(args: list[str], *, port: int, background: bool = False):
    """``accelerate launch`` with 2 gloo processes of one thread each; multi_gpu selects torchrun (on CPU too)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "fp16", "--dynamo_backend", "no", "--main_process_port",
               str(port), "-m", "harness", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if background:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _in_process(method: str, out: Path, run_id: str, **changes):
    """The same run in this process (one torch thread, as conftest pins)."""
    from harness.cli import main

    argv = _args(method, out, run_id, **{k.replace("_", "-"): v for k, v in changes.items()})
    assert main(argv) == 0


def _losses(store: Store, run_id: str) -> list[float]:
    return [r["train/loss"] for r in store.rows(run_id, "train")]


def _adapter(store: Store, run_id: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(store.run_dir(run_id) / "adapter" / "pytorch_lora_weights.safetensors")


def _counts(store: Store, run_id: str) -> dict:
    manifest, last = store.manifest(run_id), store.rows(run_id, "train")[-1]
    return {"per_update": manifest["per_update"], "key": manifest["key"],
            **{k: last[f"budget/{k}"] for k in ("updates", "images", "reward_calls", "reference_images")}}


@pytest.fixture(scope="module")
def two_process_drpo(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp-drpo")
    done = _launch(_args("drpo", out, "p2", updates="3"), port=29611)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_match_one_process_with_twice_the_accumulation(method, request, tmp_path):
    extra = {"updates": "3"} if method == "drpo" else {}
    if method == "drpo":
        out = request.getfixturevalue("two_process_drpo")
    else:
        out = tmp_path / "dp"
        done = _launch(_args(method, out, "p2"), port=29612 + list(METHODS).index(method))
        assert done.returncode == 0, done.stderr[-3000:]
    store = Store(out)
    assert [p.name for p in store.runs_dir.iterdir()] == ["p2"]  # process 1 wrote nothing of its own
    manifest = store.manifest("p2")
    assert manifest["status"] == "complete"
    assert manifest["layout"]["processes"] == 2 and manifest["layout"]["micro_batches_per_process"] == 1
    single = tmp_path / "single"
    _in_process(method, single, "p1", **extra)
    one = Store(single)
    assert one.manifest("p1")["layout"]["processes"] == 1
    torch.testing.assert_close(torch.tensor(_losses(store, "p2")), torch.tensor(_losses(one, "p1")), rtol=1e-5, atol=0)
    a, b = _adapter(store, "p2"), _adapter(one, "p1")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)
    # LoRA's up-projections start at zero: the comparison above means something only if they moved.
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k or "lora.up" in k) > 1e-3
    assert _counts(store, "p2") == _counts(one, "p1")
    # Seconds: each process's own, and the slowest per update as the run's.
    last = store.rows("p2", "train")[-1]
    assert last["budget/seconds"] >= max(last["train/rank_seconds/0"], last["train/rank_seconds/1"]) - 1e-9


def test_killed_two_process_run_resumes_to_the_same_end(two_process_drpo, tmp_path):
    out = tmp_path / "cut"
    proc = _launch(_args("drpo", out, "cut", updates="3"), port=29618, background=True)
    ckpt = out / "runs" / "cut" / "checkpoint.pt"
    deadline = time.time() + 600
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    for pid in [proc.pid, *_descendants(proc.pid)]:  # launcher and both workers at once, mid-run
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    store = Store(out)
    assert ckpt.is_file(), "the run ended before its first checkpoint"
    assert store.manifest("cut")["status"] != "complete"
    # One process cannot continue a 2-process run: refused before any training.
    from harness.cli import main

    assert main(_args("drpo", out, "cut", resume="cut", updates="3")) == 2
    done = _launch(_args("drpo", out, "cut", resume="cut", updates="3"), port=29619)
    assert done.returncode == 0, done.stderr[-3000:]
    full = Store(two_process_drpo)
    assert store.manifest("cut")["status"] == "complete"
    assert _losses(store, "cut") == _losses(full, "p2")
    a, b = _adapter(store, "cut"), _adapter(full, "p2")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((out / "runs" / "cut").glob(".checkpoint.*"))


def test_a_failing_process_stops_the_run_and_marks_it_failed(tmp_path):
    # A black-box reward that fails only in process 1 (torchrun sets RANK for it and its children).
    script = tmp_path / "score.py"
    script.write_text("import os, sys, pathlib\n"
                      "if os.environ.get('RANK') == '1':\n    sys.exit('scorer broke on rank 1')\n"
                      "n = len(list(pathlib.Path(sys.argv[1]).glob('*.png')))\nprint('\\n'.join(['0.5'] * n))\n")
    out = tmp_path / "fail"
    reward = f"cmd:{sys.executable} {script}"
    args = _args("drpo", out, "bad", updates="1")
    args[args.index("--reward") + 1] = reward
    args[args.index("--evals") + 1] = reward
    done = _launch(args, port=29620)
    assert done.returncode != 0
    manifest = Store(out).manifest("bad")
    assert manifest["status"] == "failed" and "process 1 of 2 failed" in manifest["error"]
    assert "scorer broke on rank 1" in manifest["error"]
    assert not list((out / "runs" / "bad").glob("*checkpoint*")) and not (out / "runs" / "bad" / "summary.json").exists()


# -- bad input: one line before any compute -----------------------------------------------------------------

def test_a_process_count_that_does_not_divide_the_batch_is_refused(tmp_path, monkeypatch):
    from harness import distributed
    from harness.run import run
    from methods import drpo
    from tests.conftest import tiny_run

    monkeypatch.setattr(distributed, "layout", lambda device="auto": distributed.Layout(0, 2, 0))
    with pytest.raises(ValueError, match="2 processes do not divide the effective batch of 3 micro-batches"):
        # M=2 of the tiny run's K=4, so the layout is the only thing wrong (checks.check_run tests K >= 2M first).
        run(tiny_run(tmp_path, grad_accum=3), drpo.Config(m=2), progress=False)
    assert not (tmp_path / "runs").exists()
    assert list(distributed.Layout(1, 2, 1).micro_batches(4)) == [2, 3]
    assert list(distributed.Layout(0, 1, 0).micro_batches(4)) == [0, 1, 2, 3]
