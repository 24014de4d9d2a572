"""Resumable checkpoints: trainable weights, optimizer, method state, spend and meter, at an update boundary.

Everything else a run needs is a function of (seed, update): prompts, noise and the method's random
stream are re-derived, so a resumed run continues exactly where the checkpoint left it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from harness.budget import PhaseStat, Spend
from harness.config import config_dict
from harness.store import publish

if TYPE_CHECKING:
    from harness.run import Parts, Selection
    from harness.store import Store

IGNORED = {"run_id", "out"}
"""Run-config fields that may differ between the interrupted and the resuming command."""


@dataclass
class Resume:
    spend: Spend = field(default_factory=Spend)
    evaluated_upto: float = -1.0
    """The largest budget fraction already evaluated (-1: none yet)."""
    selection: "Selection" = field(default_factory=lambda: _selection())
    """The best evaluation point so far and its weights (checkpoint selection)."""


def _selection(data: dict | None = None):
    from harness.run import Selection

    return Selection(**(data or {}))


def save(store: "Store", run_id: str, parts: "Parts", spend: Spend, evaluated_upto: float,
         selection: "Selection | None" = None) -> None:
    """Atomically write ``checkpoint.pt`` in the run directory."""
    path = store.run_dir(run_id) / "checkpoint.pt"
    data = {"spend": spend.as_dict(), "evaluated_upto": evaluated_upto,
            "selection": selection.as_dict() if selection is not None else None,
            "trainable": parts.world.generator.trainable_state(), "optimizer": parts.optimizer.state_dict(),
            "method_state": parts.state, "meter": parts.meter.snapshot()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint.", suffix=".tmp")
    os.close(fd)
    torch.save(data, tmp)
    publish(tmp, path)


def load(store: "Store", run_id: str, parts: "Parts") -> Resume:
    """Restore ``parts`` from run ``run_id``'s checkpoint after checking the configs match."""
    manifest = store.manifest(run_id)
    if manifest.get("status") == "complete":
        raise ValueError(f"run '{run_id}' is already complete; nothing to resume")
    _check_same(manifest, parts)
    path = store.run_dir(run_id) / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"run '{run_id}' has no checkpoint.pt to resume from "
                                "(set --checkpoint-every to checkpoint during training)")
    data = torch.load(path, map_location="cpu", weights_only=False)
    parts.world.generator.load_trainable_state(data["trainable"])
    parts.optimizer.load_state_dict(data["optimizer"])
    if isinstance(parts.state, dict) and isinstance(data["method_state"], dict):
        parts.state.update(data["method_state"])
    parts.meter.stats = {name: PhaseStat(**stat) for name, stat in data["meter"].items()}
    store.set_status(run_id, "running", resumed_from=data["spend"]["updates"])
    return Resume(spend=Spend(**data["spend"]), evaluated_upto=data["evaluated_upto"],
                  selection=_selection(data.get("selection")))


def _check_same(manifest: dict, parts: "Parts") -> None:
    stored, current = dict(manifest["run"]), config_dict(parts.cfg)
    diffs = [k for k in set(stored) | set(current) if k not in IGNORED and stored.get(k) != current.get(k)]
    if manifest.get("method_config") != config_dict(parts.method_cfg):
        diffs.append("method config")
    if diffs:
        raise ValueError(f"cannot resume run '{manifest['run_id']}': its config differs in {sorted(diffs)}")
