"""``--log-with tensorboard|wandb|mlflow|trackio``: mirror a run's record to experiment trackers.

The JSON record (``manifest.json``, ``metrics.jsonl``) stays the source of truth; a tracker receives a
copy through accelerate's tracker classes (``accelerate.tracking``), from process 0 only:

* the resolved run and method configs as hyperparameters (flattened ``run.k``, ``drpo.m``, ...);
* every train and eval row, each number under its ``metrics.jsonl`` key, at the row's ``step``;
* the final sample grid (``samples.png``) as an image (MLflow: as an artifact);
* TensorBoard: the hyperparameters with the run's final metrics in the HParams tab (``tensorboard/hparams``).

TensorBoard writes to ``<run_dir>/tensorboard/`` and needs no network; W&B, MLflow and trackio follow
their own settings (``WANDB_MODE=offline``, ``MLFLOW_TRACKING_URI``, ``TRACKIO_DIR``, ...), under
project/experiment "driftbench" and the run id as the run's name.

Failures are one line each (:class:`TrackerError`): :func:`check` refuses a missing package or a backend that
will not accept a run (MLflow 3's refusal of a ``file:`` store, W&B online without a key) before anything is
built; a tracker that fails to start, to log or to finish stops the run, which is then marked failed, and
the trackers still open are closed as failed (MLflow ``FAILED``, W&B exit code 1).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.redact import redact
from harness.registry import unknown

TRACKERS = {
    "tensorboard": ("tensorboard", "pip install 'driftbench[tensorboard]'  (or: pip install tensorboard)"),
    "wandb": ("wandb", "pip install 'driftbench[wandb]'  (or: pip install wandb)"),
    "mlflow": ("mlflow", "pip install 'driftbench[mlflow]'  (or: pip install mlflow)"),
    "trackio": ("trackio", "pip install 'driftbench[trackio]'  (or: pip install trackio)"),
}
"""Tracker name -> (the package it imports, the line that installs it)."""

PROJECT = "driftbench"


class TrackerError(RuntimeError):
    """A tracker could not start, log or finish; the message is one line naming the tracker."""


def check(names: Sequence[str]) -> None:
    """Raise before any compute for an unknown tracker, one whose package is missing, or a backend that
    will refuse the run."""
    for name in names:
        if name not in TRACKERS:
            raise unknown("tracker", name, list(TRACKERS))
        package, install = TRACKERS[name]
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"tracker '{name}' needs the '{package}' package, which is not installed: {install}")
        PREFLIGHT.get(name, lambda: None)()


def _mlflow_preflight() -> None:
    """MLflow 3 refuses a ``file:`` tracking store unless MLFLOW_ALLOW_FILE_STORE=true; ask the store once."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    try:
        mlflow.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - MlflowException and the store's own errors
        hint = ("; use a database store, e.g. MLFLOW_TRACKING_URI=sqlite:///mlflow.db (or set "
                "MLFLOW_ALLOW_FILE_STORE=true)") if "file" in str(exc).lower() or uri.startswith("file:") or "://" not in uri else ""
        raise ValueError(f"tracker 'mlflow' cannot use tracking store '{uri}': {_first_line(exc)}{hint}") from None


def _wandb_preflight() -> None:
    """W&B online needs a key; offline (WANDB_MODE=offline) and disabled need none."""
    mode = os.environ.get("WANDB_MODE", "online").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return
    netrc = Path(os.path.expanduser(os.environ.get("NETRC") or "~/.netrc"))  # where `wandb login` keeps the key
    if not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or netrc.is_file()):
        raise ValueError("tracker 'wandb' is online (WANDB_MODE unset) but has no API key: set WANDB_API_KEY, "
                         "run `wandb login`, or set WANDB_MODE=offline")


PREFLIGHT: dict[str, Callable[[], None]] = {"mlflow": _mlflow_preflight, "wandb": _wandb_preflight}


def hyperparameters(manifest: dict[str, Any]) -> dict[str, Any]:
    """The resolved configs as flat scalar hyperparameters (tuples and None become strings)."""
    method = manifest["run"]["method"]
    out: dict[str, Any] = {}
    for prefix, data in (("run", manifest["run"]), (method, manifest["method_config"])):
        for key, value in data.items():
            ok = isinstance(value, (bool, int, float, str))
            out[f"{prefix}.{key}"] = value if ok else ("" if value is None else str(value))
    return out


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's top-level numbers (final eval, test, selection, budget) for TensorBoard's HParams tab."""
    return {k: float(v) for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "run_id"}


class Mirrored:
    """A :class:`harness.store.Store` that also sends its rows to trackers (process 0 only)."""

    def __init__(self, store: Any, names: Sequence[str], run_id: str, manifest: dict[str, Any]):
        self._store, self.run_id = store, run_id
        self.hparams = redact(hyperparameters(manifest))  # trackers are sinks too: hparams.yml, event files
        self.trackers: list[Any] = []
        self.last_step = 0
        try:
            for name in names:
                tracker = _guard(name, "start", lambda name=name: _open(name, store.run_dir(run_id), run_id))
                self.trackers.append(tracker)
                _guard(name, "store the configuration", lambda: _store_config(tracker, self.hparams))
        except TrackerError:
            self.close(failed=True)  # the trackers already started end as failed, not left running
            raise

    def __getattr__(self, name: str) -> Any:  # reads and every other write go to the store itself
        return getattr(self._store, name)

    def append(self, run_id: str, row: dict[str, Any]) -> None:
        self._store.append(run_id, row)
        values = {k: float(v) for k, v in row.items()
                  if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.last_step = int(row.get("step", self.last_step))
        for tracker in self.trackers:
            _guard(tracker.name, f"log update {self.last_step}", lambda: tracker.log(values, step=self.last_step))

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        """Send the sample grid (and TensorBoard's HParams), close every tracker, then mark the run complete:
        a tracker failing here leaves the run failed, not complete."""
        samples = self._store.run_dir(run_id) / "samples.png"
        for tracker in self.trackers:
            if samples.is_file():
                _guard(tracker.name, "log the samples", lambda: _log_image(tracker, samples, self.last_step))
            if tracker.name == "tensorboard":
                _guard(tracker.name, "write the HParams", lambda: _hparams(tracker, self.hparams, final_metrics(summary)))
        self.close(failed=False)
        self._store.finish(run_id, summary)

    def close(self, failed: bool = True) -> None:
        """Close every open tracker (a failed run's as failed); errors while closing a failed run are dropped."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            if failed:
                try:
                    _end(tracker, failed=True)
                except Exception:  # noqa: BLE001 - the run's own error is the one to report
                    pass
            else:
                _guard(tracker.name, "finish", lambda: _end(tracker, failed=False))


def _guard(name: str, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, with any failure as one :class:`TrackerError` line naming the tracker and what it was doing."""
    try:
        return fn()
    except TrackerError:
        raise
    except Exception as exc:  # noqa: BLE001 - every tracker package raises its own types
        raise TrackerError(f"tracker '{name}' failed to {what}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _open(name: str, run_dir: Path, run_id: str) -> Any:
    from accelerate import PartialState, tracking

    # accelerate's W&B and trackio classes log only "on the main process", which needs accelerate's state:
    # a single process (no launcher) has none until this, and it is cheap (no process group is created).
    PartialState()
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


def _store_config(tracker: Any, hparams: dict[str, Any]) -> None:
    if tracker.name == "tensorboard":  # written with the final metrics at the end (_hparams), one session
        return
    tracker.store_init_configuration(hparams)


def _hparams(tracker: Any, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
    """One HParams session holding the hyperparameters and the final metrics, in ``tensorboard/hparams``,
    with ``hparams.yml`` beside it."""
    import yaml

    directory = Path(tracker.writer.log_dir) / "hparams"
    tracker.writer.add_hparams(hparams, metrics, run_name="hparams")
    (directory / "hparams.yml").write_text(yaml.safe_dump(hparams, sort_keys=True))
    tracker.writer.flush()


def _end(tracker: Any, failed: bool) -> None:
    if tracker.name == "mlflow":
        import mlflow

        mlflow.end_run(status="FAILED" if failed else "FINISHED")
    elif tracker.name == "wandb":
        tracker.run.finish(exit_code=1 if failed else 0)
    else:
        tracker.finish()


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
