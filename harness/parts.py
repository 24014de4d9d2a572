"""``Parts``: everything a run needs, built by ``harness.run.prepare`` before anything is written to disk.

A module of its own so that the loop's helpers (checkpoint, lifecycle, selection) can name the type without
importing the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.api import Context, Needs
from harness.budget import Budget, Meter
from harness.config import RunConfig
from harness.evaluation import EvalSet
from harness.world import World


@dataclass
class Parts:
    """Everything a run needs, built and validated before anything is written to disk."""

    cfg: RunConfig
    method: Any
    method_cfg: Any
    world: World
    reward: Any
    eval_rewards: dict[str, Any]
    needs: Needs
    train_prompts: list[str]
    evals: EvalSet
    """The evaluation split (curves, selection); its base side is computed once per run."""
    test: EvalSet | None
    """The test split, evaluated once at the selected checkpoint and once at the end (None: not asked)."""
    budget: Budget
    meter: Meter
    ctx: Context
    state: Any
    optimizer: torch.optim.Optimizer
    curve: EvalSet | None = None
    """The curve split (``RunConfig.curve_split``), evaluated at every evaluation point beside ``evals``; never
    selected on."""
    init: dict[str, Any] | None = None
    """The stored run the trainable weights started from (``RunConfig.init_from``), as the manifest records it."""
