"""``--log-with tensorboard|wandb|mlflow|trackio``: mirror a run's record to experiment trackers.

The JSON record (``manifest.json``, ``metrics.jsonl``) stays the source of truth; a tracker receives a
copy through accelerate's tracker classes (``accelerate.tracking``), from process 0 only:

* the resolved run and method configs as hyperparameters (flattened ``run.k``, ``drpo.m``, ...);
* every train and eval row, each number under its ``metrics.jsonl`` key, at the row's ``step``;
* the final sample grid (``samples.png``) as an image (MLflow: as an artifact).

TensorBoard writes to ``<run_dir>/tensorboard/`` and needs no network; W&B, MLflow and trackio follow
their own settings (``WANDB_MODE=offline``, ``MLFLOW_TRACKING_URI``, ...), under project/experiment
"driftbench" and the run id as the run's name.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

from harness.registry import unknown

TRACKERS = {
    "tensorboard": ("tensorboard", "pip install 'driftbench[tensorboard]'  (or: pip install tensorboard)"),
    "wandb": ("wandb", "pip install 'driftbench[wandb]'  (or: pip install wandb)"),
    "mlflow": ("mlflow", "pip install 'driftbench[mlflow]'  (or: pip install mlflow)"),
    "trackio": ("trackio", "pip install 'driftbench[trackio]'  (or: pip install trackio)"),
}
"""Tracker name -> (the package it imports, the line that installs it)."""

PROJECT = "driftbench"


def check(names: Sequence[str]) -> None:
    """Raise before any compute for an unknown tracker or one whose package is missing."""

    for name in names:
        if name not in TRACKERS:
            raise unknown("tracker", name, list(TRACKERS))
        package, install = TRACKERS[name]
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"tracker '{name}' needs the '{package}' package, which is not installed: {install}")


def hyperparameters(manifest: dict[str, Any]) -> dict[str, Any]:
    """The resolved configs as flat scalar hyperparameters (tuples and None become strings)."""
    method = manifest["run"]["method"]
    out: dict[str, Any] = {}
    for prefix, data in (("run", manifest["run"]), (method, manifest["method_config"])):
        for key, value in data.items():
            ok = isinstance(value, (bool, int, float, str))
            out[f"{prefix}.{key}"] = value if ok else ("" if value is None else str(value))
    return out


class Mirrored:
    """A :class:`harness.store.Store` that also sends its rows to trackers (process 0 only)."""

    def __init__(self, store: Any, names: Sequence[str], run_id: str, manifest: dict[str, Any]):
        self._store, self.run_id = store, run_id
        self.trackers = [_open(name, store.run_dir(run_id), run_id) for name in names]
        hparams = hyperparameters(manifest)
        for tracker in self.trackers:
            tracker.store_init_configuration(hparams)
        self.last_step = 0

    def __getattr__(self, name: str) -> Any:  # reads and every other write go to the store itself
        return getattr(self._store, name)

    def append(self, run_id: str, row: dict[str, Any]) -> None:
        self._store.append(run_id, row)
        values = {k: float(v) for k, v in row.items()
                  if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.last_step = int(row.get("step", self.last_step))
        for tracker in self.trackers:
            tracker.log(values, step=self.last_step)

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        self._store.finish(run_id, summary)
        samples = self._store.run_dir(run_id) / "samples.png"
        for tracker in self.trackers:
            if samples.is_file():
                _log_image(tracker, samples, self.last_step)
        self.close()

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def _open(name: str, run_dir: Path, run_id: str) -> Any:
    from accelerate import tracking

    if name == "tensorboard":
        tracker = tracking.TensorBoardTracker("tensorboard", str(run_dir))
    elif name == "wandb":
        tracker = tracking.WandBTracker(PROJECT, name=run_id, dir=str(run_dir))
    elif name == "mlflow":
        tracker = tracking.MLflowTracker(experiment_name=PROJECT, run_name=run_id)
    else:
        tracker = tracking.TrackioTracker(PROJECT, name=run_id)
    tracker.start()
    return tracker


def _log_image(tracker: Any, path: Path, step: int) -> None:
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    if tracker.name == "tensorboard":
        tracker.writer.add_image("samples", image, global_step=step, dataformats="HWC")
        tracker.writer.flush()
    elif tracker.name == "wandb":
        tracker.log_images({"samples": [image]}, step=step)
    elif tracker.name == "mlflow":
        import mlflow

        mlflow.log_artifact(str(path))
    else:
        import trackio

        tracker.log({"samples": trackio.Image(str(path))}, step=step)
