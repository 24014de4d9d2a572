"""The results store: one directory per run, an append-only metrics log, tables read only from here.

Layout under ``<root>/runs/<run_id>/``:

* ``manifest.json``: resolved configs, versions, git hash and dirty flag, package versions, device,
  per-update budget counts, and ``status`` (running, complete, failed, interrupted);
* ``metrics.jsonl``: one JSON object per line, appended and never rewritten (``kind`` is "train" or
  "eval"; a resumed run appends again from its checkpoint, and readers keep the last row per step);
* ``scores.jsonl``: per-image scores, one JSON object per evaluation, appended (power, intervals, limitations);
* ``summary.json``: written once, when the run completes;
* ``checkpoint.pt``: the latest resumable state; ``samples.png``: evaluation samples; ``adapter/``.

Files are replaced atomically (write to a temporary name, then ``os.replace``), so a crash never leaves
a half-written JSON file; they get the mode any new file gets under the umask, like ``metrics.jsonl``
(``mkstemp`` alone would make them 0600, unreadable to a group sharing the results). A write that fails
removes its temporary file. A run directory appears complete with its manifest (it is built under a
temporary name and renamed into place).

One writer per run: the writer holds an exclusive ``flock`` on ``<run_id>/.lock`` (which names its pid and
host) for the run's lifetime; a second writer is refused with one line, and the kernel drops the lock when
the writer dies, however it dies. A run recorded ``running`` whose lock nobody holds therefore counts as
``interrupted`` (:meth:`Store.status`). A ``complete`` status is never overwritten. Secrets are masked
(``harness.redact``) in everything written here.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from harness import faults
from harness.redact import redact

LOCK = ".lock"
"""The run lock's file name inside a run directory."""

PACKAGES = ("torch", "diffusers", "transformers", "peft", "optuna", "numpy", "pandas", "scipy", "tyro")


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then move it over ``path`` with the mode of a new
    file: a failed write (full disk) leaves neither a torn file nor its temporary."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        faults.point("write", path)
        publish(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def write_json(path: Path, data: Any) -> None:
    """Atomically replace ``path`` with ``data`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def publish(tmp: str | os.PathLike, path: Path) -> None:
    """Move the finished temporary file ``tmp`` over ``path`` with the mode of a newly created file."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class RunLocked(RuntimeError):
    """Another live process is writing this run."""


class RunLock:
    """An exclusive ``flock`` on a run's lock file, holding "pid PID on HOST"; the kernel releases it when
    the holder exits, however it exits."""

    def __init__(self, path: Path, what: str, hint: str = "wait for it to finish or stop that process"):
        self.path, self.what, self.hint, self.fd = path, what, hint, None

    def acquire(self, wait: bool = False) -> "RunLock":
        """Take the lock, or raise :class:`RunLocked` naming its holder (``wait``: block until it is free)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(f"{self.what} is being written by {holder} (lock {self.path}); {self.hint}") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def lock_holder(path: Path) -> str | None:
    """Who holds the lock at ``path`` ("pid N on HOST"), or None when nobody does (or there is no file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
    finally:
        os.close(fd)  # closing drops a shared lock we may have taken
    return None


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


class DamagedRecord(ValueError):
    """A stored record (manifest, summary, metrics) that does not parse; its one-line message names the file."""


def read_json(path: Path, kind: type | None = None) -> Any:
    """The JSON in ``path``; a file that is not JSON (or, with ``kind``, not of that type) raises
    :class:`DamagedRecord` naming it, where ``json`` would name no file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedRecord(f"{path}: damaged record, not valid JSON ({exc}); restore it or move its run "
                            "directory away") from None
    if kind is not None and not isinstance(data, kind):
        raise DamagedRecord(f"{path}: damaged record, a JSON {type(data).__name__} where a {kind.__name__} was "
                            "expected; restore it or move its run directory away")
    return data


def damaged(exc: DamagedRecord, what: str) -> None:
    """Warn (one line, naming the file) that a damaged record is left out of ``what``."""
    warnings.warn(f"{exc.args[0].split('; restore')[0]}; left out of {what}", stacklevel=3)


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


REPORTING_ONLY = ("harness/cli.py", "harness/reporting/", "harness/sections.py", "harness/studies/report.py",
                  "harness/studies/figures.py", "harness/studies/tune.py", "harness/studies/tuned.py", "harness/tuned/",
                  "harness/compute/run_time.py", "harness/compute/controlled.py", "rewards/envcheck.py")
"""Modules that read stored results but never change what a run computes; the source hash leaves them out."""


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """A short sha256 of the code that decides what a run computes: every .py file of harness/ (but
    ``REPORTING_ONLY``), methods/, rewards/ and evals/, and the Shapes assets' checksums. Stored-run reuse is
    keyed on it, so a table never silently mixes runs of different code."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    files = sorted(p for pkg in ("harness", "methods", "rewards", "evals") for p in (root / pkg).rglob("*.py"))
    files += [root / "harness" / "assets" / folder / "checksums.json" for folder in ("shapes", "shapes2")]
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


ORPHAN_AGE = 60.0
"""Seconds after which an unlocked temporary run directory is a dead writer's (a live one locks it at once)."""


class Store:
    """Runs under ``<root>/runs``. Tables and plots read only what is here."""

    def __init__(self, root: str | os.PathLike = "results"):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self._locks: dict[str, RunLock] = {}

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def start(self, run_id: str, manifest: dict[str, Any]) -> Path:
        """Create the run directory with its manifest (status "running") and take its lock; the id must be new.

        The directory is built under a temporary name and renamed into place, so no run directory ever
        lacks its manifest."""
        path = self.run_dir(run_id)
        if path.exists():
            raise FileExistsError(f"run '{run_id}' already exists in {self.runs_dir}; continue it with "
                                  f"--resume {run_id}, or pick another --run-id")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._clean_orphans()
        tmp = Path(tempfile.mkdtemp(dir=self.runs_dir, prefix=f".{run_id}.", suffix=".tmp"))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a run directory is as readable as any other
        lock = RunLock(tmp / LOCK, f"run '{run_id}'").acquire()
        try:
            write_json(tmp / "manifest.json", redact({**manifest, "run_id": run_id, "status": "running",
                                                      "created": datetime.now(timezone.utc).isoformat()}))
            if path.exists():
                raise FileExistsError(f"run '{run_id}' already exists in {self.runs_dir}; pick another --run-id")
            os.rename(tmp, path)
        except BaseException:
            lock.release()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        lock.path = path / LOCK
        self._locks[run_id] = lock
        return path

    def claim(self, run_id: str) -> None:
        """Take the lock of an existing run (to resume it) and remove what a dead writer left half-done:
        temporary files and a torn last metrics line."""
        self.manifest(run_id)  # a clear error for an unknown run
        path = self.run_dir(run_id)
        self._locks[run_id] = RunLock(path / LOCK, f"run '{run_id}'").acquire()
        for tmp in path.glob(".*.tmp"):
            _unlink(tmp)
        _drop_torn_tail(path / "metrics.jsonl")
        _drop_torn_tail(path / "scores.jsonl")

    def release(self, run_id: str) -> None:
        lock = self._locks.pop(run_id, None)
        if lock is not None:
            lock.release()

    def _clean_orphans(self) -> None:
        """Remove run directories a writer died building: unlocked and older than ``ORPHAN_AGE`` (a younger one
        may be another process's, made a moment before it locks it)."""
        for tmp in self.runs_dir.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):  # renamed into place or removed meanwhile
                old = time.time() - tmp.stat().st_mtime > ORPHAN_AGE
                if old and tmp.is_dir() and lock_holder(tmp / LOCK) is None:
                    shutil.rmtree(tmp, ignore_errors=True)

    def manifest(self, run_id: str) -> dict[str, Any]:
        path = self.run_dir(run_id) / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"no run '{run_id}' in {self.runs_dir}")
        return read_json(path, dict)

    def status(self, run_id: str, manifest: dict[str, Any] | None = None) -> str:
        """The run's status, where "running" means a live writer holds its lock (else "interrupted")."""
        status = (manifest or self.manifest(run_id)).get("status")
        if status == "running" and run_id not in self._locks and self.holder(run_id) is None:
            return "interrupted"
        return status

    def holder(self, run_id: str) -> str | None:
        """Who writes the run now ("pid N on HOST"), or None."""
        return lock_holder(self.run_dir(run_id) / LOCK)

    def set_status(self, run_id: str, status: str, **extra: Any) -> None:
        """Record the run's status; a complete run stays complete."""
        manifest = self.manifest(run_id)
        if manifest.get("status") == "complete" and status != "complete":
            return
        manifest.update(status=status, updated=datetime.now(timezone.utc).isoformat(), **extra)
        write_json(self.run_dir(run_id) / "manifest.json", redact(manifest))

    def append(self, run_id: str, row: dict[str, Any]) -> None:
        """Append one metrics row; flushed to disk before returning."""
        self._append_line(self.run_dir(run_id) / "metrics.jsonl", row)

    def append_scores(self, run_id: str, record: dict[str, Any]) -> None:
        """Append one evaluation's per-image scores to ``scores.jsonl`` (a tracker mirrors none of it)."""
        self._append_line(self.run_dir(run_id) / "scores.jsonl", record)

    @staticmethod
    def _append_line(path: Path, row: dict[str, Any]) -> None:
        line = json.dumps(row, sort_keys=True, default=float) + "\n"
        faults.point("write", path)
        with open(path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        path = self.run_dir(run_id) / "summary.json"
        faults.point("summary", path)
        write_json(path, redact(summary))
        self.set_status(run_id, "complete")

    # -- readers ------------------------------------------------------------------------------
    def run_ids(self, status: str | None = "complete") -> list[str]:
        """Run ids with this status (None: every run); "interrupted" includes runs whose writer died."""
        if not self.runs_dir.is_dir():
            return []
        out = []
        for path in sorted(self.runs_dir.iterdir()):
            manifest = path / "manifest.json"
            if path.name.startswith(".") or not manifest.is_file():
                continue
            try:
                record = read_json(manifest, dict)
            except DamagedRecord as exc:  # the other runs still make a table, a plot, a resume
                damaged(exc, "the runs read")
                continue
            if status is None or self.status(path.name, record) == status:
                out.append(path.name)
        return out

    def scores(self, run_id: str) -> list[dict[str, Any]]:
        """The per-image score records of a run (``scores.jsonl``), the last per (which, step) after a resume;
        [] for a run made before they were stored."""
        path = self.run_dir(run_id) / "scores.jsonl"
        if not path.is_file():
            return []
        latest: dict[tuple, dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line a crash tore
                continue
            latest[(row.get("which"), row.get("step"))] = row
        return list(latest.values())

    def rows(self, run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Metrics rows of a run, keeping the last row per (kind, step) after a resume; a line a crash
        tore is skipped with a warning naming the file."""
        path = self.run_dir(run_id) / "metrics.jsonl"
        if not path.is_file():
            return []
        latest: dict[tuple, dict[str, Any]] = {}
        for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            if not isinstance(row, dict):  # torn by a crash, or damaged: named, and the other rows stand
                warnings.warn(f"{path}:{lineno}: skipped a torn metrics line (not a JSON object)", stacklevel=2)
                continue
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
            try:
                summary = read_json(summary_path, dict) if summary_path.is_file() else {}
            except DamagedRecord as exc:
                damaged(exc, "the summaries")
                continue
            records.append({**_flatten({"run": manifest.get("run", {}), "method_config":
                                        manifest.get("method_config", {})}),
                            "run_id": run_id, "method": manifest.get("run", {}).get("method"),
                            "tag": manifest.get("run", {}).get("tag", ""), **_flatten(summary)})
        return pd.DataFrame.from_records(records)


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline (the row it held was never complete)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
    warnings.warn(f"{path}: removed a torn last line ({len(data) - keep} bytes) left by a crash", stacklevel=2)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def describe_environment() -> dict[str, Any]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"git": git_state(), "packages": package_versions(), "device": device, "host": platform.node(),
            "threads": torch.get_num_threads(), "argv": sys.argv}
