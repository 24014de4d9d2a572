"""Intervals for a study's parameter importances (harness/reporting/importance.py)."""

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from harness.reporting.importance import importance_table


def _trials(n: int = 80, seed: int = 0):
    """Trials whose value is set by "a" alone (plus small noise); "b" and "c" do nothing. Each trial records two
    training seeds whose values straddle its mean, as ``driftbench study`` stores them."""
    rng = np.random.default_rng(seed)
    dists = {"a": FloatDistribution(0.0, 1.0), "b": FloatDistribution(0.0, 1.0),
             "c": CategoricalDistribution(["x", "y"])}
    out = []
    for _ in range(n):
        params = {"a": float(rng.random()), "b": float(rng.random()), "c": str(rng.choice(["x", "y"]))}
        value = params["a"] + 0.01 * float(rng.normal())
        noise = 0.05 * float(rng.normal())
        out.append(optuna.trial.create_trial(params=params, distributions=dists, value=value,
                                             user_attrs={"seed_runs": [{"seed": 100, "value": value + noise},
                                                                       {"seed": 101, "value": value - noise}]}))
    return out


def test_the_parameter_that_sets_the_value_is_important_and_beats_chance():
    rows = importance_table(_trials(), sign=-1.0, reps=200)
    by = {r["param"]: r for r in rows}
    assert rows[0]["param"] == "a" and by["a"]["importance"] > 0.8
    assert by["a"]["p_chance"] < 0.05 and by["b"]["p_chance"] > 0.05 and by["c"]["p_chance"] > 0.05
    assert by["a"]["low"] <= by["a"]["high"] and by["a"]["low"] > by["b"]["low"]
    assert by["a"]["seed_100"] > 0.8 and by["a"]["seed_101"] > 0.8
    assert abs(sum(r["importance"] for r in rows) - 1.0) < 1e-9


def test_the_table_is_the_same_on_every_redraw_and_depends_on_the_direction():
    trials = _trials()
    assert importance_table(trials, -1.0, reps=50) == importance_table(trials, -1.0, reps=50)
    # Minimising the same values puts the best trials at low a: "a" still decides, from the other end.
    assert importance_table(trials, 1.0, reps=50)[0]["param"] == "a"


def test_a_value_that_ignores_every_parameter_gives_no_parameter_beyond_chance():
    rng = np.random.default_rng(0)
    trials = [optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=float(rng.normal()))
              for t in _trials()]
    rows = importance_table(trials, -1.0, reps=200)
    assert all(r["p_chance"] > 0.05 for r in rows)
    assert not any(k.startswith("seed_") for k in rows[0])  # no seed records, no seed columns
