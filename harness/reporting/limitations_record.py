"""The record of ``driftbench limitations``: everything its report reads, small enough to commit.

The full plan is 145 runs whose stores (checkpoints, samples, every training row) come to about 0.2 MB each
and stay out of git, and re-running them takes about 2 h on two cores. The record keeps only what the report
reads, as one deterministic ``record.tar.xz`` beside the report's figures (about 1 MB for the full plan):

* per run: ``manifest.json``, ``summary.json``, the evaluation rows of ``metrics.jsonl`` (the curves) and
  ``scores.jsonl`` with the per-image scores of the test evaluations; the other evaluations keep their layout
  (prompts, images per prompt) without scores, which is all the time model counts of them;
* per best-of-K reference: its manifest, summary and per-image scores;
* ``record.json``: the plan's index, {point label: {seed: run id}} and {K: reference id}.

``driftbench limitations --source record`` unpacks it into a temporary store and writes the report from there
without training (a fresh clone's ``nox -s limitations``); ``limitations.py`` checks the index against this
code's plan before a number is read. Members are written in sorted order with fixed times and owners, so a plan
whose results did not change rewrites the same bytes.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Iterable

from harness.store import write_atomic

RECORD = "record.tar.xz"
INDEX = "record.json"
FORMAT = 1
SCORED = ("test", "test_selected")
"""The evaluations whose per-image scores the report reads; the record keeps only their scores."""


def _lines(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    """(line, parsed) of a JSON-lines file; a line a crash tore is left out, as the store's readers do."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            yield line, row


def _run_members(run_dir: Path, prefix: str) -> dict[str, bytes]:
    """One run's (or reference's) files as the record keeps them, named ``<prefix>/<file>``."""
    members = {f"{prefix}/{name}": (run_dir / name).read_bytes() for name in ("manifest.json", "summary.json")}
    evals = [line for line, row in _lines(run_dir / "metrics.jsonl") if row.get("kind") == "eval"]
    if evals:
        members[f"{prefix}/metrics.jsonl"] = ("\n".join(evals) + "\n").encode()
    scores = [line if row.get("which") in SCORED else json.dumps({**row, "scores": {}})
              for line, row in _lines(run_dir / "scores.jsonl")]
    if scores:
        members[f"{prefix}/scores.jsonl"] = ("\n".join(scores) + "\n").encode()
    return members


def write_record(path: Path, root: Path, runs: dict[str, dict[int, str]], refs: dict[int, str]) -> int:
    """Write the record of a plan whose runs and references are stored under ``root`` (``runs/``,
    ``references/runs/``): ``runs`` {point label: {seed: run id}}, ``refs`` {K: reference id}. Returns its size in
    bytes."""
    members: dict[str, bytes] = {}
    for run_id in sorted({r for ids in runs.values() for r in ids.values()}):
        members.update(_run_members(root / "runs" / run_id, f"runs/{run_id}"))
    for ref_id in sorted(set(refs.values())):
        members.update(_run_members(root / "references" / "runs" / ref_id, f"references/runs/{ref_id}"))
    index = {"format": FORMAT, "runs": {label: {str(s): r for s, r in sorted(ids.items())}
                                        for label, ids in sorted(runs.items())},
             "refs": {str(k): r for k, r in sorted(refs.items())}}
    members[INDEX] = (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:xz", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(members):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(members[name]), 0, 0o644
                tar.addfile(info, io.BytesIO(members[name]))
    write_atomic(path, write)
    return path.stat().st_size


def read_record(path: Path, into: Path) -> dict[str, Any]:
    """Unpack the record at ``path`` into the store root ``into`` and return its index; a missing or foreign file
    is refused in one line."""
    if not path.is_file():
        raise FileNotFoundError(f"no limitations record at {path}; `driftbench limitations --source runs` writes it")
    try:
        with tarfile.open(path, "r:xz") as tar:
            names = tar.getnames()
            if INDEX not in names:
                raise ValueError(f"{path} is not a limitations record (no {INDEX} in it)")
            for member in tar.getmembers():
                inside = member.name == INDEX or member.name.startswith(("runs/", "references/runs/"))
                if not member.isfile() or not inside or ".." in Path(member.name).parts:
                    raise ValueError(f"{path} is not a limitations record (member '{member.name}')")
            tar.extractall(into)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"{path} cannot be read as a limitations record: {exc}") from None
    index = json.loads((into / INDEX).read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{path} has record format {index.get('format')!r}; this code reads format {FORMAT}")
    return index
