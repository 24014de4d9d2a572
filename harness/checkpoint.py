"""Resumable checkpoints: trainable weights, optimizer, method state, spend and meter, at an update boundary.

Everything else a run needs is a function of (seed, update): prompts, noise and the method's random
stream are re-derived, so a resumed run continues exactly where the checkpoint left it.

In a data-parallel run every process's meter and method state are gathered to process 0, which writes
the one file; on resume process 0 reads it and hands each process its own part. A resume must use the
same process count: the count fixes which process sums which micro-batches' gradients (and a method's
running state per process), so another count would not continue the same run.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness import distributed, faults
from harness.budget import PhaseStat, Spend
from harness.config import NOT_IN_KEY, config_dict, stored_run
from harness.parts import Parts
from harness.redact import redact
from harness.safe_load import torch_file
from harness.selection import Selection
from harness.store import Store, write_atomic

IGNORED = frozenset(NOT_IN_KEY)
"""Run-config fields that may differ between the interrupted and the resuming command: those outside the
run key, which do not change what a run computes."""


@dataclass
class Resume:
    spend: Spend = field(default_factory=Spend)
    evaluated_upto: float = -1.0
    """The largest budget fraction already evaluated (-1: none yet)."""
    selection: "Selection" = field(default_factory=lambda: _selection())
    """The best evaluation point so far and its weights (checkpoint selection)."""


def _selection(data: dict | None = None):
    return Selection(**(data or {}))


def save(store: "Store", run_id: str, parts: "Parts", spend: Spend, evaluated_upto: float,
         selection: "Selection | None" = None) -> None:
    """Atomically write ``checkpoint.pt`` in the run directory (every process calls this; process 0 writes); a
    failed write leaves no temporary file."""
    ranks = distributed.gather({"method_state": parts.state, "meter": parts.meter.snapshot()})
    if not distributed.current().main:
        return
    path = store.run_dir(run_id) / "checkpoint.pt"
    data = {"spend": spend.as_dict(), "evaluated_upto": evaluated_upto,
            "selection": selection.as_dict() if selection is not None else None,
            "trainable": parts.world.generator.trainable_state(), "optimizer": parts.optimizer.state_dict(),
            "method_state": parts.state, "meter": parts.meter.snapshot(), "processes": len(ranks),
            "ranks": ranks[1:]}

    def dump(tmp: Path) -> None:
        try:  # through a Python file: a failed write is then the OSError itself (ENOSPC, EFBIG), where torch's
            # own writer reports a full disk as "unexpected pos N vs M"
            with open(tmp, "wb") as f:
                torch.save(data, f)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write the checkpoint ({exc.strerror or exc})", str(path)) from None
        except RuntimeError as exc:  # any other failure torch reports for a write
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "write failed"
            raise OSError(errno.EIO, f"cannot write the checkpoint ({reason})", str(path)) from None
        faults.point("checkpoint", path)

    write_atomic(path, dump)


def load(store: "Store", run_id: str, parts: "Parts") -> Resume | None:
    """Restore ``parts`` from run ``run_id``'s checkpoint after checking the configs and layout match; None
    when the run has no checkpoint yet (it then restarts from the beginning)."""
    data = distributed.on_main(lambda: _read(store, run_id, parts))
    if data is None:
        return None
    layout = distributed.current()
    mine = data if layout.rank == 0 else data["ranks"][layout.rank - 1]
    parts.world.generator.load_trainable_state(data["trainable"])
    parts.optimizer.load_state_dict(data["optimizer"])
    if isinstance(parts.state, dict) and isinstance(mine["method_state"], dict):
        parts.state.update(mine["method_state"])
    parts.meter.stats = {name: PhaseStat(**stat) for name, stat in mine["meter"].items()}
    return Resume(spend=Spend(**data["spend"]), evaluated_upto=data["evaluated_upto"],
                  selection=_selection(data.get("selection")))


def _read(store: "Store", run_id: str, parts: "Parts") -> dict | None:
    manifest = store.manifest(run_id)
    _check_same(manifest, parts)
    path = store.run_dir(run_id) / "checkpoint.pt"
    if not path.is_file():
        return None
    data = read_file(path)
    stored, now = data.get("processes", 1), distributed.current().world
    if stored != now:
        raise ValueError(f"cannot resume run '{run_id}' with {now} process(es): it was trained with {stored} "
                         f"(relaunch with `accelerate launch --num_processes {stored}`; the machines may differ)")
    return data


def read_file(path: Path) -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True``: tensors and plain containers only (all a
    checkpoint holds, for every method), so a planted pickle is refused before any of it runs. Results roots
    are shared by a group; one member's file must not run code in another's process."""
    data = torch_file(path, "checkpoint", "delete it to restart the run from the beginning")
    if not isinstance(data, dict):
        raise ValueError(f"checkpoint {path} is unreadable (holds a {type(data).__name__}, not a checkpoint); "
                         "delete it to restart the run from the beginning")
    return data


def _check_same(manifest: dict, parts: "Parts") -> None:
    stored, current = stored_run(manifest["run"]), redact(config_dict(parts.cfg))
    diffs = [k for k in set(stored) | set(current) if k not in IGNORED and stored.get(k) != current.get(k)]
    if manifest.get("method_config") != redact(config_dict(parts.method_cfg)):
        diffs.append("method config")
    if diffs:
        raise ValueError(f"cannot resume run '{manifest['run_id']}': its config differs in {sorted(diffs)}")
