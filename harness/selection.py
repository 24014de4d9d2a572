"""Checkpoint selection on the evaluation split, and the test split read once after training.

The run keeps the weights of its best evaluation point by ``RunConfig.select_metric`` (ties keep the earlier
point; update 0, the base itself, is a candidate, so a method that never beats its base on validation is
reported as the base). After training, the test split is evaluated at the final weights and at the selected
ones; nothing during training reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from torch import Tensor

from harness.config import RunConfig
from harness.evaluation import headline_key
from harness.parts import Parts
from harness.registry import unknown


def check_select_metric(cfg: RunConfig, eval_rewards: dict[str, Any]) -> None:
    """``select_metric`` must name an evaluation reward (REWARD or REWARD/METRIC)."""
    if not cfg.select_metric:
        return
    reward = cfg.select_metric.split("/")[0]
    if reward not in eval_rewards:
        raise unknown("select_metric reward", reward, list(eval_rewards))


def eval_split_rewards(cfg: RunConfig, eval_rewards: dict[str, Any]) -> dict[str, Any]:
    """The built rewards the evaluation split scores: ``cfg.eval_split_rewards`` of ``eval_rewards`` (all when
    empty); a name that is not a built evaluation reward is a one-line error naming the valid ones."""
    if not cfg.eval_split_rewards:
        return eval_rewards
    for name in cfg.eval_split_rewards:
        if name not in eval_rewards:
            raise ValueError(f"--eval-split-rewards '{name}' is not an evaluation reward of this run; valid: "
                             f"{', '.join(eval_rewards)} (the training reward and --evals)")
    return {name: reward for name, reward in eval_rewards.items() if name in cfg.eval_split_rewards}


@dataclass
class Selection:
    """The best evaluation point so far by ``select_metric`` (ties keep the earlier point) and its weights."""

    metric: str = ""
    value: float = float("-inf")
    step: int = -1
    state: dict[str, Tensor] | None = None

    def offer(self, parts: "Parts", step: int, metrics: dict[str, float]) -> None:
        if not parts.cfg.select_metric:
            return
        key = _select_key(parts.cfg.select_metric, metrics)
        value = metrics[key]
        if np.isfinite(value) and value > self.value:
            self.metric, self.value, self.step = key, float(value), step
            self.state = {k: v.detach().clone() for k, v in parts.world.generator.trainable_state().items()}

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "step": self.step, "state": self.state}


def _select_key(select: str, metrics: dict[str, float]) -> str:
    reward, _, metric = select.partition("/")
    key = f"eval/{reward}/{metric}" if metric else headline_key(metrics, "eval", reward)
    if key not in metrics:
        raise KeyError(f"select_metric '{select}' is not among the evaluation metrics; valid: "
                       + ", ".join(sorted(k[5:] for k in metrics if k.startswith("eval/"))))
    return key


def evaluate_test(parts: "Parts", selection: Selection, final_step: int,
                  record: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The test split at the final weights ("test/...") and at the selected checkpoint ("test_selected/...");
    ``record(which)`` is called after each evaluation ("test", "test_selected") to store its per-image scores."""
    if parts.test is None:
        return {}
    record = record or (lambda which: None)
    gen = parts.world.generator
    final, _ = parts.test.evaluate(gen)
    record("test")
    out: dict[str, Any] = dict(final)
    if selection.state is None or selection.step == final_step:
        out.update({"test_selected/" + k[5:]: v for k, v in final.items()})
    else:
        current = {k: v.detach().clone() for k, v in gen.trainable_state().items()}
        gen.load_trainable_state(selection.state)
        chosen, _ = parts.test.evaluate(gen)
        record("test_selected")
        gen.load_trainable_state(current)
        out.update({"test_selected/" + k[5:]: v for k, v in chosen.items()})
    return out
