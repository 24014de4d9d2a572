"""The results store: one directory per run, an append-only metrics log, tables read only from here.

Layout under ``<root>/runs/<run_id>/``:

* ``manifest.json``: resolved configs, versions, git hash and dirty flag, package versions, device,
  per-update budget counts, and ``status`` (running, complete, failed, interrupted);
* ``metrics.jsonl``: one JSON object per line, appended and never rewritten (``kind`` is "train" or
  "eval"; a resumed run appends again from its checkpoint, and readers keep the last row per step);
* ``summary.json``: written once, when the run completes;
* ``checkpoint.pt``: the latest resumable state; ``samples.png``: evaluation samples; ``adapter/``.

Files are replaced atomically (write to a temporary name, then ``os.replace``), so a crash never leaves
a half-written JSON file; they get the mode any new file gets under the umask, like ``metrics.jsonl``
(``mkstemp`` alone would make them 0600, unreadable to a group sharing the results).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

PACKAGES = ("torch", "diffusers", "transformers", "peft", "optuna", "numpy", "pandas", "scipy", "tyro")


def write_json(path: Path, data: Any) -> None:
    """Atomically replace ``path`` with ``data`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    publish(tmp, path)


def publish(tmp: str | os.PathLike, path: Path) -> None:
    """Move the finished temporary file ``tmp`` over ``path`` with the mode of a newly created file."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _umask() -> int:
    try:  # Linux reports it without changing it (os.umask can only be read by setting it)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def git_state(root: Path | None = None) -> dict[str, Any]:
    """The repository's commit and whether the working tree differs from it (None outside git)."""
    cwd = str(root or Path(__file__).resolve().parent.parent)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        commit = head.stdout.strip() if head.returncode == 0 else None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty if commit else None}


REPORTING_ONLY = ("harness/cli.py", "harness/plots.py", "harness/tables.py", "harness/reproduce.py",
                  "harness/study_report.py", "harness/study_figures.py", "harness/reporting/", "harness/tune.py",
                  "harness/tuned/", "harness/run_time.py", "rewards/envcheck.py")
"""Modules that read stored results but never change what a run computes; the source hash leaves them out."""


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """A short sha256 of the code that decides what a run computes: every .py file of harness/ (but
    ``REPORTING_ONLY``), methods/, rewards/ and evals/, and the Shapes assets' checksums. Stored-run reuse is
    keyed on it, so a table never silently mixes runs of different code."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    files = sorted(p for pkg in ("harness", "methods", "rewards", "evals") for p in (root / pkg).rglob("*.py"))
    files.append(root / "harness" / "assets" / "shapes" / "checksums.json")
    for path in files:
        rel = path.relative_to(root).as_posix()
        if rel.startswith(REPORTING_ONLY) or not path.is_file():
            continue
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class Store:
    """Runs under ``<root>/runs``. Tables and plots read only what is here."""

    def __init__(self, root: str | os.PathLike = "results"):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def start(self, run_id: str, manifest: dict[str, Any]) -> Path:
        """Create the run directory and its manifest (status "running"); the id must be new."""
        path = self.run_dir(run_id)
        if path.exists():
            raise FileExistsError(f"run '{run_id}' already exists in {self.runs_dir}; resume it with --resume")
        path.mkdir(parents=True)
        write_json(path / "manifest.json", {**manifest, "run_id": run_id, "status": "running",
                                            "created": datetime.now(timezone.utc).isoformat()})
        return path

    def manifest(self, run_id: str) -> dict[str, Any]:
        path = self.run_dir(run_id) / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"no run '{run_id}' in {self.runs_dir}")
        return read_json(path)

    def set_status(self, run_id: str, status: str, **extra: Any) -> None:
        manifest = self.manifest(run_id)
        manifest.update(status=status, updated=datetime.now(timezone.utc).isoformat(), **extra)
        write_json(self.run_dir(run_id) / "manifest.json", manifest)

    def append(self, run_id: str, row: dict[str, Any]) -> None:
        """Append one metrics row; flushed to disk before returning."""
        with open(self.run_dir(run_id) / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        write_json(self.run_dir(run_id) / "summary.json", summary)
        self.set_status(run_id, "complete")

    # -- readers ------------------------------------------------------------------------------
    def run_ids(self, status: str | None = "complete") -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        out = []
        for path in sorted(self.runs_dir.iterdir()):
            manifest = path / "manifest.json"
            if manifest.is_file() and (status is None or read_json(manifest).get("status") == status):
                out.append(path.name)
        return out

    def rows(self, run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Metrics rows of a run, keeping the last row per (kind, step) after a resume."""
        path = self.run_dir(run_id) / "metrics.jsonl"
        if not path.is_file():
            return []
        latest: dict[tuple, dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                latest[(row.get("kind"), row.get("step"))] = row
        # At a given step the update's train row precedes the evaluation that follows it.
        rows = sorted(latest.values(), key=lambda r: (r.get("step", 0), r.get("kind") == "eval"))
        return [r for r in rows if kind is None or r.get("kind") == kind]

    def summaries(self, run_ids: Iterable[str] | None = None):
        """A DataFrame with one row per complete run: manifest fields, flattened, plus the summary."""
        import pandas as pd

        records = []
        for run_id in run_ids if run_ids is not None else self.run_ids():
            manifest = self.manifest(run_id)
            summary_path = self.run_dir(run_id) / "summary.json"
            summary = read_json(summary_path) if summary_path.is_file() else {}
            records.append({**_flatten({"run": manifest.get("run", {}), "method_config":
                                        manifest.get("method_config", {})}),
                            "run_id": run_id, "method": manifest.get("run", {}).get("method"),
                            "tag": manifest.get("run", {}).get("tag", ""), **_flatten(summary)})
        return pd.DataFrame.from_records(records)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def describe_environment() -> dict[str, Any]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"git": git_state(), "packages": package_versions(), "device": device, "host": platform.node(),
            "threads": torch.get_num_threads(), "argv": sys.argv}
