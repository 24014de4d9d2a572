"""The Python API for single runs: ``from harness import train, load_run`` (``harness.campaigns`` holds
``table2`` and ``study``).

    from harness import RunConfig, load_run, train

    run = train(method="drpo", profile="tiny", reward="jpeg", updates=2, method_config={"m": 2, "lr": 1e-3})
    run.summary["eval/jpeg/mean"], run.status        # the summary.json numbers, "complete"
    run.rows("eval")                                 # metrics.jsonl rows
    again = load_run(run.run_id, out=run.out)        # the same run, read back from disk
    gen = again.generator("selected")                # the generator at a stored update, weights loaded

Every function takes the same config dataclass as its command (``RunConfig`` and the method's ``Config``),
or its fields as keywords, and checks bounds and choices as the command
does, so bad input raises the same one-line ``ValueError``. Nothing here prints, parses argv or exits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import RunConfig, from_dict, plain_name, stored_run
from harness.export import pick, stored
from harness.profiles import PROFILES
from harness.run import run as run_loop
from harness.store import Store, read_json
from harness.validate import check
from methods import METHODS


@dataclass(frozen=True)
class Run:
    """A stored run, read from ``OUT/runs/RUN_ID`` (:func:`load_run`)."""

    run_id: str
    out: str
    """The results root the run lives under."""
    manifest: dict[str, Any]
    """``manifest.json``: the resolved configs, status, code and environment."""
    summary: dict[str, Any]
    """``summary.json`` (final and test metrics, selection, budget); empty until the run is complete."""

    @property
    def dir(self) -> Path:
        return Store(self.out).run_dir(self.run_id)

    @property
    def status(self) -> str:
        """complete, running, interrupted, failed or pruned."""
        return Store(self.out).status(self.run_id)

    @property
    def config(self) -> RunConfig:
        return from_dict(RunConfig, stored_run(self.manifest["run"]))

    def rows(self, kind: str | None = None) -> list[dict[str, Any]]:
        """``metrics.jsonl`` rows ("train", "eval" or all), the last per step."""
        return Store(self.out).rows(self.run_id, kind)

    def checkpoints(self) -> dict[str, int]:
        """The weight sets the run stores, name -> update (base 0, selected, final or latest)."""
        return {s.name: s.update for s in stored(self.out, self.run_id)}

    def generator(self, at: str = "selected", device: str = ""):
        """The run's generator rebuilt from its config with the weights of ``at`` (selected, final, base or a
        stored update number) loaded; the same weights ``driftbench export`` writes."""
        chosen = pick(stored(self.out, self.run_id), str(at), self.run_id)
        cfg = self.config.replace(device=device) if device else self.config
        gen = PROFILES.get(cfg.profile)(cfg).generator
        if chosen.state is not None:
            gen.load_trainable_state(chosen.state)
        return gen


def load_run(run_id: str, out: str = "results") -> Run:
    """Read stored run ``run_id`` under ``out`` (one line naming the run when it is missing)."""
    plain_name("run", run_id)
    store = Store(out)
    manifest = store.manifest(run_id)
    path = store.run_dir(run_id) / "summary.json"
    return Run(run_id=run_id, out=str(out), manifest=manifest, summary=read_json(path) if path.is_file() else {})


def train(cfg: RunConfig | None = None, *, method_config: Any = None, resume: str = "", progress: bool = False,
          **fields: Any) -> Run:
    """Train one method (``driftbench train``) and return the stored run.

    ``cfg`` (default ``RunConfig()``) with ``fields`` replacing its fields (``method="drpo", updates=2, ...``);
    ``method_config`` is the method's ``Config`` or a dict of its fields (default: its defaults). ``resume``
    continues a stored run from its checkpoint.
    """
    cfg = (cfg or RunConfig()).replace(**fields) if fields else (cfg or RunConfig())
    check(cfg)
    method = METHODS.get(METHODS.check(cfg.method))
    if method_config is None or isinstance(method_config, dict):
        method_config = method.Config(**(method_config or {}))
    check(method_config, f"{cfg.method}.")
    summary = run_loop(cfg, method_config, resume=resume, progress=progress)
    return load_run(summary["run_id"], cfg.out)
