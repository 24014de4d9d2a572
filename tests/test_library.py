"""The Python API: ``from harness import train, load_run, table2, study`` (harness/__init__.py, library.py,
campaigns.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import harness

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.unit
def test_import_harness_is_light_and_names_its_api():
    code = "import sys, harness; print(sorted(m for m in ('torch', 'diffusers', 'optuna', 'harness.run') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    assert {"train", "load_run", "table2", "study", "Run", "RunConfig"} <= set(harness.__all__) <= set(dir(harness))
    with pytest.raises(AttributeError, match="has no attribute 'trian'; the API is"):
        harness.trian  # noqa: B018
    for name in ("train", "load_run", "table2", "study"):
        assert getattr(harness, name).__doc__.strip()


@pytest.mark.slow
def test_train_through_the_api_and_load_the_run_back(tmp_path, monkeypatch):
    import methods.drpo as drpo
    from harness import RunConfig, load_run, train

    # K=4 runs need DrPO's M=2: a method config given as a dict of its fields.
    run = train(RunConfig(profile="tiny", out=str(tmp_path)), method="drpo", reward="jpeg", evals=("jpeg",), k=4,
                prompts_per_step=1, updates=2, eval_at=(0.0, 1.0), eval_seeds=1, eval_prompt_limit=2,
                select_metric="jpeg", method_config={"m": 2})
    assert run.status == "complete" and run.manifest["method_config"]["m"] == 2
    assert run.summary["budget/updates"] == 2 and "eval/jpeg/mean" in run.summary
    again = load_run(run.run_id, out=str(tmp_path))
    assert again == run and again.config == run.config and again.config.updates == 2
    assert [r["step"] for r in again.rows("train")] == [1, 2] and [r["step"] for r in again.rows("eval")] == [0, 2]
    checkpoints = again.checkpoints()
    assert checkpoints["base"] == 0 and checkpoints["final"] == 2 and checkpoints["selected"] == run.summary["select/step"]
    stored = torch.load(again.dir / "checkpoint.pt", weights_only=False)["trainable"]
    final = again.generator("final").trainable_state()
    assert final.keys() == stored.keys() and all(torch.equal(final[k], stored[k]) for k in stored)
    # A method config object works too, and a field out of bounds is the command's one-line error, before any run.
    with pytest.raises(ValueError, match="--updates must be"):
        train(profile="tiny", out=str(tmp_path), run_id="bad", updates=-1, method_config=drpo.Config(m=2))
    assert not (tmp_path / "runs" / "bad").exists()
    with pytest.raises(FileNotFoundError):
        load_run("missing", out=str(tmp_path))
    assert dataclasses.is_dataclass(again)


@pytest.mark.unit
def test_table2_and_study_check_their_configs_like_the_commands(tmp_path):
    from harness import StudyConfig, study, table2

    with pytest.raises(ValueError, match="--jobs must be"):
        table2(profile="tiny", jobs=0, out=str(tmp_path))
    with pytest.raises(ValueError, match="--trials must be"):
        study(StudyConfig(name="s", out=str(tmp_path)), trials=0)
    assert not any(tmp_path.iterdir())
