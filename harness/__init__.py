"""driftbench's harness. The Python API, for notebooks and scripts (the same as the commands, without argv)::

    from harness import train, load_run, table2, study, RunConfig, Table2Config, StudyConfig

    run = train(method="drpo", profile="tiny", reward="jpeg", updates=2, method_config={"m": 2})
    run.summary["eval/jpeg/mean"]; run.rows("eval"); run.generator("selected")
    load_run(run.run_id, out=run.out)       # read a stored run back
    table2(profile="tiny", seeds=(0,))      # the main comparison; returns table2.md's path
    study(name="s", method="drpo", trials=4)  # an Optuna study; returns the optuna.Study

* :func:`train` -> :class:`~harness.library.Run` (``driftbench train``)
* :func:`load_run` -> :class:`~harness.library.Run`: manifest, summary, status, rows, stored checkpoints, generator
* :func:`table2` -> ``Path`` (``driftbench table2``); :func:`study` -> ``optuna.Study`` (``driftbench study``), in
  :mod:`harness.campaigns`
* the configs: :class:`RunConfig`, :class:`Table2Config`, :class:`StudyConfig`

Names load on first use, so ``import harness`` itself imports nothing heavy (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "train": "harness.library:train",
    "load_run": "harness.library:load_run",
    "Run": "harness.library:Run",
    "table2": "harness.campaigns:table2",
    "study": "harness.campaigns:study",
    "RunConfig": "harness.config:RunConfig",
    "Table2Config": "harness.reporting.reproduce:Table2Config",
    "StudyConfig": "harness.studies.config:StudyConfig",
}
"""Public name -> ``module:attribute``, imported on first access (PEP 562)."""

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'harness' has no attribute '{name}'; the API is {', '.join(__all__)}")
    module, _, attribute = _API[name].partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
