"""``RunConfig.init_from``: a run that starts from another stored run's final weights.

The paper's third limitation asks whether an offline drift field transfers online. The experiment is two
runs: DrPO trained offline (``--drpo.anchors offline --offline-data``: anchors from the profile's preference
data set), then an online run started from its final weights (``--init-from OFFLINE_RUN_ID``), compared with
online from scratch at the same online budget.

What carries over is the trainable weights alone, from the source run's ``checkpoint.pt`` (its latest weights,
the final ones of a complete run; ``harness.export.stored``). The optimizer's moments and the method's state
start fresh (a new run under its own budget), and the frozen reference and the evaluation's base stay the
profile's base generator, so distances and win rates are measured from the same base as every other run.
The manifest records the source (run id, update, run key, code hash) under ``init_from``.

Checked before anything is built (``harness.checks.check_run``): the source exists, is complete, has a
checkpoint, and has this run's profile and model and (where both name one) LoRA rank; a rank left at the
profile's default is compared by the weights' shapes when they are loaded. Each failure is one line.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.config import RunConfig, plain_name, stored_run
from harness.export import pick, stored
from harness.store import Store


def check(cfg: RunConfig) -> None:
    """The source run's static checks (module docstring); nothing when ``init_from`` is empty."""
    if not cfg.init_from:
        return
    source_id = plain_name("--init-from", cfg.init_from)
    store = Store(cfg.out)
    if not (store.run_dir(source_id) / "manifest.json").is_file():
        raise FileNotFoundError(f"--init-from: no run '{source_id}' in {store.runs_dir}")
    manifest = store.manifest(source_id)
    status = store.status(source_id, manifest)
    if status != "complete":
        raise ValueError(f"--init-from run '{source_id}' is {status}, not complete; finish it first "
                         f"(driftbench train --resume {source_id})")
    source = stored_run(manifest.get("run", {}))
    for name in ("profile", "model"):
        if source.get(name) != getattr(cfg, name):
            raise ValueError(f"--init-from run '{source_id}' has {name} {source.get(name)!r}, this run "
                             f"{getattr(cfg, name)!r}; a run starts only from weights of its own generator")
    if source.get("lora_rank") and cfg.lora_rank and source["lora_rank"] != cfg.lora_rank:
        raise ValueError(f"--init-from run '{source_id}' has LoRA rank {source['lora_rank']}, this run "
                         f"{cfg.lora_rank}; give --lora-rank {source['lora_rank']}")
    if not (store.run_dir(source_id) / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"--init-from run '{source_id}' has no checkpoint.pt in {store.run_dir(source_id)}")


def load(cfg: RunConfig, generator: Any) -> dict[str, Any] | None:
    """Load the source run's final weights into ``generator``; returns what the manifest records (None when
    ``init_from`` is empty)."""
    if not cfg.init_from:
        return None
    final = pick(stored(cfg.out, cfg.init_from), "final", cfg.init_from)
    own = generator.trainable_state()
    shapes = {k: tuple(v.shape) for k, v in final.state.items()}
    if shapes != {k: tuple(v.shape) for k, v in own.items()}:
        differ = sorted(k for k in set(shapes) | set(own) if shapes.get(k) != (tuple(own[k].shape) if k in own else None))
        raise ValueError(f"--init-from run '{cfg.init_from}' holds weights of another shape (first: {differ[0]}: "
                         f"{shapes.get(differ[0])} vs {tuple(own[differ[0]].shape) if differ[0] in own else None}); "
                         "it was trained with another LoRA rank: give its --lora-rank")
    with torch.no_grad():
        generator.load_trainable_state(final.state)
    manifest = Store(cfg.out).manifest(cfg.init_from)
    return {"run": cfg.init_from, "update": final.update, "key": manifest.get("key"),
            "code": manifest.get("versions", {}).get("code")}
