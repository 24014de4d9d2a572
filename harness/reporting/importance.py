"""How sure a study's parameter importances are: bootstrap intervals, a permutation test against chance and the
importances each training seed gives on its own.

Optuna's PED-ANOVA importance of a parameter is the Pearson divergence between the parameter's distribution
among the best trials (the top 10%) and among all trials; ``get_param_importances`` normalises the divergences
to shares that sum to 1. With a few dozen trials the top 10% is three or four trials, so a single number says
little. Three checks go beside it, all from the stored trials (nothing is re-run):

* **bootstrap**: trials resampled with replacement, the share recomputed; the 2.5th and 97.5th percentiles;
* **chance**: the objective shuffled across trials, the (unnormalised) divergence recomputed; ``p_chance`` is
  the share of shuffles whose divergence reaches the observed one, Holm-adjusted over the parameters. Shares
  cannot be tested this way (under no effect every parameter still gets about 1 / parameters of the total);
* **seeds**: the shares when each trial is scored by one training seed's value alone (the trials of a study
  with ``--seeds 100 101`` give two columns), so a reader sees whether another seed would rank alike.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from harness.reporting.stats import holm
from harness.reporting.tables import t_interval

REPS = 1000
"""Bootstrap resamples and permutations."""
SEED = 0
"""Seed of both generators: a report is the same on every redraw."""


def importance_table(trials: Sequence[Any], sign: float, reps: int = REPS, seed: int = SEED) -> list[dict[str, Any]]:
    """One row per parameter of the complete, single-valued ``trials`` (most important first): ``param``,
    ``importance`` (share), ``low`` / ``high`` (95% bootstrap of the share), ``p_chance`` (permutation, Holm) and
    ``seed_<s>`` (the share on seed s's values). ``sign`` is -1 for a maximised objective (PED-ANOVA rewards low
    targets)."""
    values = np.array([sign * t.values[0] for t in trials], dtype=float)
    names = varied_params(trials)
    share = _shares(trials, values, normalize=True)
    raw = _shares(trials, values, normalize=False)
    rng = np.random.default_rng(seed)
    boot = np.array([_vector(_shares([trials[i] for i in idx], values[idx], True), names)
                     for idx in rng.integers(0, len(trials), size=(reps, len(trials)))])
    perm = np.array([_vector(_shares(trials, rng.permutation(values), False), names) for _ in range(reps)])
    observed = np.array(_vector(raw, names))
    exceed = (perm >= observed - 1e-12).sum(axis=0)
    p = holm([(1 + e) / (reps + 1) if math.isfinite(o) else math.nan for e, o in zip(exceed, observed)])
    rows = []
    for j, name in enumerate(names):
        low, high = (np.nanpercentile(boot[:, j], [2.5, 97.5]) if np.isfinite(boot[:, j]).any() else (math.nan,) * 2)
        rows.append({"param": name, "importance": share.get(name, math.nan), "low": float(low), "high": float(high),
                     "p_chance": float(p[j]), **_per_seed(trials, sign, name)})
    return sorted(rows, key=lambda r: -r["importance"] if math.isfinite(r["importance"]) else math.inf)


def varied_params(trials: Sequence[Any]) -> list[str]:
    """Parameters that take two or more values (a fixed one, like a held learning rate, has nothing to rank)."""
    names = sorted({p for t in trials for p in t.params})
    return [n for n in names if len({str(t.params[n]) for t in trials if n in t.params}) > 1]


def _per_seed(trials: Sequence[Any], sign: float, name: str) -> dict[str, float]:
    """``seed_<s>``: the parameter's share when every trial is scored by seed s's value alone."""
    seeds = sorted({r["seed"] for t in trials for r in t.user_attrs.get("seed_runs") or [] if "seed" in r})
    out = {}
    for s in seeds:
        having = [(t, r["value"]) for t in trials for r in t.user_attrs.get("seed_runs") or []
                  if r.get("seed") == s and r.get("value") is not None]
        shares = _shares([t for t, _ in having], np.array([sign * v for _, v in having]), True) if having else {}
        out[f"seed_{s}"] = shares.get(name, math.nan)
    return out


def _vector(shares: dict[str, float], names: list[str]) -> list[float]:
    return [shares.get(n, math.nan) for n in names]


def _shares(trials: Sequence[Any], values: np.ndarray, normalize: bool) -> dict[str, float]:
    """PED-ANOVA importances of ``trials`` rescored by ``values`` (lower is better); {} where it cannot compute
    them (too few distinct trials, or no parameter that varies)."""
    import optuna

    def compute() -> dict[str, float]:
        study = optuna.create_study(direction="minimize", storage=optuna.storages.InMemoryStorage())
        study.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=float(v))
                          for t, v in zip(trials, values)])
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), normalize=normalize)

    return _quiet(compute)


def _quiet(compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``compute()`` without Optuna's log lines and warnings; {} where it raises (too few trials, nothing varies)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            return dict(compute())
        except (ValueError, RuntimeError, ZeroDivisionError):
            return {}
        finally:
            optuna.logging.set_verbosity(verbosity)


def marginal_table(trials: Sequence[Any], reps: int = REPS, seed: int = SEED) -> list[dict[str, Any]]:
    """Each varied parameter's marginal effect over every complete trial (not only PED-ANOVA's top 10%): per choice
    of a categorical parameter the mean objective with its 95% t half-width (``level``, ``n``, ``mean``, ``half``);
    for a numeric one Spearman's rank correlation with the objective and its 95% bootstrap interval over trials
    (``level`` "rank correlation", ``mean`` rho, ``low`` / ``high``). Random trials make these marginals fair."""
    from optuna.distributions import CategoricalDistribution

    values = np.array([t.values[0] for t in trials], dtype=float)
    rng = np.random.default_rng(seed)
    rows = []
    for name in varied_params(trials):
        having = [i for i, t in enumerate(trials) if name in t.params]
        levels = [trials[i].params[name] for i in having]
        if isinstance(trials[having[0]].distributions[name], CategoricalDistribution):
            for level in sorted(set(levels), key=str):
                y = values[[i for i, v in zip(having, levels) if v == level]]
                mean, half = t_interval(y.tolist())
                rows.append({"param": name, "level": str(level), "n": len(y), "mean": mean, "half": half,
                             "low": math.nan, "high": math.nan})
            continue
        x, y = np.array(levels, dtype=float), values[having]
        boot = [_spearman(x[idx], y[idx]) for idx in rng.integers(0, len(x), size=(reps, len(x)))]
        low, high = np.nanpercentile(boot, [2.5, 97.5])
        rows.append({"param": name, "level": "rank correlation", "n": len(x), "mean": _spearman(x, y),
                     "half": math.nan, "low": float(low), "high": float(high)})
    return rows


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties); nan where either side is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])
