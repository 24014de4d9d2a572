"""Every tracker of ``--log-with``, in a single process, read back with the tracker's own API.

Each run is ``driftbench train`` in a subprocess (no launcher: the single-process case that used to fail for
W&B and trackio), under the tracker's offline/local settings; the record is then read with the tracker's own
reader (W&B: ``wandb leet inspect --json`` on the offline run; MLflow: ``MlflowClient`` on a sqlite store;
trackio: ``trackio.Api`` and its SQLite storage; TensorBoard: ``EventAccumulator``, HParams included) and
compared with ``metrics.jsonl``. A test skips, naming the package, where it is not installed (``nox -s tests``
installs only tensorboard); ``nox -s trackers`` installs every tracker and runs this file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.store import Store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--method", "drpo", "--drpo.m", "2", "--profile", "tiny", "--reward", "jpeg", "--evals", "jpeg",
         "--k", "4", "--prompts-per-step", "1", "--updates", "2", "--eval-at", "0", "1", "--eval-seeds", "1",
         "--eval-prompt-limit", "2", "--run-id", "r", "--quiet"]


def train(tmp_path: Path, tracker: str, **env: str) -> subprocess.CompletedProcess:
    """``driftbench train ... --log-with TRACKER`` in one process, run from ``tmp_path``."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true", **env}
    for key in ("WORLD_SIZE", "ACCELERATE_NUM_PROCESSES", "ACCELERATE_MIXED_PRECISION"):
        full.pop(key, None)
    return subprocess.run([sys.executable, "-m", "harness", *TRAIN, "--out", str(tmp_path / "out"),
                           "--log-with", tracker], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=600)


def record(tmp_path: Path) -> tuple[list[dict], dict]:
    store = Store(tmp_path / "out")
    assert store.status("r") == "complete"
    return store.rows("r"), store.manifest("r")


def numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_wandb_offline_single_process(tmp_path):
    pytest.importorskip("wandb")
    done = train(tmp_path, "wandb", WANDB_MODE="offline")
    assert done.returncode == 0, done.stderr[-2000:]
    rows, _ = record(tmp_path)
    [run_dir] = (tmp_path / "out" / "runs" / "r" / "wandb").glob("offline-run-*")
    inspect = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(run_dir)],
                             capture_output=True, text=True, timeout=120)
    assert inspect.returncode == 0, inspect.stderr
    records = [json.loads(line) for line in inspect.stdout.splitlines() if line.strip()]
    config = {k: v for r in records if r.get("type") == "config" for k, v in r["config"].get("update", {}).items()}
    history = {r["history"]["step"]["num"]: r["history"]["item"] for r in records if r.get("type") == "history"}
    assert config["run.k"] == 4 and config["drpo.m"] == 2 and config["run.run_id"] == "r"
    checked = 0
    for row in rows:
        for key, value in numbers(row).items():
            assert history[row["step"]][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
            checked += 1
    assert checked > 20
    assert history[2]["samples._type"] == "images/separated"
    assert list(run_dir.glob("files/media/images/samples_*.png"))


def test_mlflow_sqlite_store(tmp_path):
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = train(tmp_path, "mlflow", MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 0, done.stderr[-2000:]
    rows, _ = record(tmp_path)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("driftbench")
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "r"
    assert found.data.params["run.k"] == "4" and found.data.params["drpo.m"] == "2"
    checked = 0
    for row in rows:
        for key, value in numbers(row).items():
            history = {m.step: m.value for m in client.get_metric_history(found.info.run_id, key)}
            assert history[row["step"]] == pytest.approx(value, rel=1e-6, abs=1e-9), key
            checked += 1
    assert checked > 20
    local = client.download_artifacts(found.info.run_id, "samples.png", str(tmp_path / "artifacts"))
    assert Path(local).read_bytes() == (tmp_path / "out" / "runs" / "r" / "samples.png").read_bytes()


def test_mlflow_file_store_is_one_line_before_anything_is_written(tmp_path):
    pytest.importorskip("mlflow")
    import mlflow

    if int(mlflow.__version__.split(".")[0]) < 3:
        pytest.skip(f"mlflow {mlflow.__version__} accepts a file: store")
    done = train(tmp_path, "mlflow", MLFLOW_TRACKING_URI=f"file://{tmp_path / 'mlruns'}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("driftbench: error: tracker 'mlflow' cannot use tracking store") and "sqlite" in lines[-1]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "runs").exists()


def test_trackio_local(tmp_path):
    pytest.importorskip("trackio")
    done = train(tmp_path, "trackio", TRACKIO_DIR=str(tmp_path / "trackio"))
    assert done.returncode == 0, done.stderr[-2000:]
    rows, _ = record(tmp_path)
    # trackio fixes its directory at import, so its reader runs in a process of its own with TRACKIO_DIR set.
    reader = ("import json, trackio; from trackio.sqlite_storage import SQLiteStorage; "
              "runs = list(trackio.Api().runs('driftbench')); "
              "print(json.dumps({'runs': [r.name for r in runs], 'config': runs[0].config, "
              "'logs': SQLiteStorage.get_logs('driftbench', 'r')}, default=str))")
    out = subprocess.run([sys.executable, "-c", reader], env={**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["runs"] == ["r"] and data["config"]["run.k"] == 4 and data["config"]["drpo.m"] == 2
    logged: dict[int, dict] = {}
    for entry in data["logs"]:
        logged.setdefault(entry["step"], {}).update(entry)
    checked = 0
    for row in rows:
        for key, value in numbers(row).items():
            assert logged[row["step"]][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
            checked += 1
    assert checked > 20
    assert logged[2]["samples"]["_type"] == "trackio.image"


def test_tensorboard_hparams_tab_holds_the_final_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    done = train(tmp_path, "tensorboard")
    assert done.returncode == 0, done.stderr[-2000:]
    _, _ = record(tmp_path)
    summary = json.loads((tmp_path / "out" / "runs" / "r" / "summary.json").read_text())
    events = EventAccumulator(str(tmp_path / "out" / "runs" / "r" / "tensorboard" / "hparams"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["run.k"].number_value == 4 and session.hparams["run.method"].string_value == "drpo"
    declared = {m.name.tag for m in experiment.metric_infos}
    assert "eval/jpeg/mean" in declared and "budget/updates" in declared
    for tag in ("eval/jpeg/mean", "eval/jpeg/win_rate", "budget/updates"):
        [point] = events.Scalars(tag)
        assert point.value == pytest.approx(summary[tag], rel=1e-6, abs=1e-7), tag


def test_a_tracker_failing_mid_run_fails_the_run_in_one_line(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from accelerate import tracking

    import methods.drpo as drpo
    from harness.run import run
    from harness.trackers import TrackerError
    from tests.conftest import tiny_run

    original = tracking.TensorBoardTracker.log

    def log(self, values, step=None, **kwargs):
        if step == 2:
            raise OSError(28, "No space left on device")
        return original(self, values, step=step, **kwargs)

    monkeypatch.setattr(tracking.TensorBoardTracker, "log", log)
    with pytest.raises(TrackerError, match=r"^tracker 'tensorboard' failed to log update 2: OSError: .*No space left"):
        run(tiny_run(tmp_path, run_id="mid", log_with=("tensorboard",)), drpo.Config(m=2), progress=False)
    assert Store(tmp_path).status("mid") == "failed"
    assert "failed to log update 2" in Store(tmp_path).manifest("mid")["error"]


def test_a_tracker_that_cannot_start_fails_before_any_update(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from accelerate import tracking

    import methods.drpo as drpo
    from harness.run import run
    from harness.trackers import TrackerError
    from tests.conftest import tiny_run

    def start(self):
        raise PermissionError(13, "Permission denied", "/somewhere/tensorboard")

    monkeypatch.setattr(tracking.TensorBoardTracker, "start", start)
    with pytest.raises(TrackerError, match=r"^tracker 'tensorboard' failed to start: PermissionError"):
        run(tiny_run(tmp_path, run_id="nostart", log_with=("tensorboard",)), drpo.Config(m=2), progress=False)
    store = Store(tmp_path)
    assert store.status("nostart") == "failed"
    assert store.rows("nostart", "train") == []


def test_wandb_online_without_a_key_is_one_line_before_anything_is_built(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from harness import trackers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    for key in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ValueError, match="tracker 'wandb' is online .* WANDB_MODE=offline"):
        trackers.check(["wandb"])
