"""The Python API for many runs: ``from harness import table2, study`` (single runs: ``harness.library``).

    from harness import study, table2

    path = table2(profile="tiny", seeds=(0,), out="results-tiny")   # table2.md (and .csv beside it)
    best = study(name="drpo-lr", method="drpo", preset="tiny-jpeg", trials=4).best_trial

Each takes its command's config (``Table2Config``, ``StudyConfig``) or its fields as keywords, checks bounds and
choices as the command does (one-line ``ValueError``), and neither prints nor exits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from harness.reporting.reproduce import Table2Config, reproduce
from harness.studies.config import StudyConfig
from harness.studies.study import study as run_study
from harness.validate import check


def table2(cfg: Table2Config | None = None, **fields: Any) -> Path:
    """Run or resume the main comparison (``driftbench table2``); returns the written ``table2.md``."""
    cfg = dataclasses.replace(cfg, **fields) if cfg else Table2Config(**fields)
    check(cfg)
    return reproduce(cfg)


def study(cfg: StudyConfig | None = None, **fields: Any):
    """Run or resume an Optuna study of a method's hyperparameters (``driftbench study``); returns the
    ``optuna.Study``."""
    cfg = dataclasses.replace(cfg, **fields) if cfg else StudyConfig(**fields)
    check(cfg)
    return run_study(cfg, log=lambda line: None)
