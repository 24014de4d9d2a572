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
    rows = importance_table(_trials(), sign=-1.0, reps=100)
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
    rows = importance_table(trials, -1.0, reps=100)
    assert all(r["p_chance"] > 0.05 for r in rows)
    assert not any(k.startswith("seed_") for k in rows[0])  # no seed records, no seed columns


def test_marginals_give_each_choice_its_mean_and_each_number_its_rank_correlation():
    from harness.reporting.importance import marginal_table

    trials = _trials()
    rows = marginal_table(trials, reps=100)
    by = {(r["param"], r["level"]): r for r in rows}
    a = by[("a", "rank correlation")]
    assert a["mean"] > 0.95 and a["low"] <= a["mean"] <= a["high"] and a["n"] == len(trials)
    assert by[("b", "rank correlation")]["low"] < 0 < by[("b", "rank correlation")]["high"]
    x = [t.values[0] for t in trials if t.params["c"] == "x"]
    assert by[("c", "x")]["n"] == len(x) and abs(by[("c", "x")]["mean"] - float(np.mean(x))) < 1e-12
    # A parameter held at one value has no row in either table.
    fixed = [optuna.trial.create_trial(params={**t.params, "lr": 0.1},
                                       distributions={**t.distributions, "lr": FloatDistribution(0.1, 0.1)},
                                       value=t.values[0]) for t in trials]
    assert "lr" not in {r["param"] for r in marginal_table(fixed, reps=10)}
    assert "lr" not in {r["param"] for r in importance_table(fixed, -1.0, reps=10)}
