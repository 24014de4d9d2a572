"""``driftbench study-report NAME``: what a study found, from stored trials and stored runs only.

Writes into ``<out>/studies/<name>/``:

* ``trials.csv``: every trial (number, state, values, parameters, seconds, its seeds, each seed's value, the
  updates its runs metered, why it was stopped, error: the exception, a stopped worker, a missed heartbeat, or
  a surplus trial that found the study full);
* ``importances.csv`` / ``.png`` / ``.pdf``: Optuna's parameter importances (PED-ANOVA), per objective;
* ``slices.png`` / ``.pdf``: the objective against each parameter; ``contours.png`` / ``.pdf``: the objective
  over pairs of the most important numeric parameters;
* ``pareto.csv`` / ``.png`` / ``.pdf`` (multi-objective studies): held-out reward against pixel drift from
  the base generator, with the Pareto-optimal trials marked;
* ``best.json``: the best configuration (for a multi-objective study, the Pareto trial with the highest
  held-out reward) and its value;
* ``robustness.md`` / ``.csv`` (and ``robustness_runs.csv``): the best and the default configuration re-run
  on fresh seeds, with the study's prompt split and with a resampled one, as mean ± 95% t-interval of the
  objective, its gain over the base generator and the best-minus-default difference per seed. The
  re-runs go through ``run()`` into the run store (tag ``study:<name>:robustness``); a repeated report
  reuses them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import tyro

from harness.config import RunConfig, from_dict, json_ready, run_key
from harness.registry import load
from harness.run import run
from harness.store import Store, read_json, utc_stamp, write_json
from harness.studies.figures import DRIFT_LABEL, draw, pareto
from harness.studies.objective import DRIFT_KEY, objective_value
from harness.studies.spend import seed_runs
from harness.studies.storage import trial_error
from harness.studies.study import load_study
from harness.validate import Bound, at_least, nonnegative
from methods import METHODS
from rewards import REWARDS


@dataclass(frozen=True)
class StudyReportConfig:
    """``driftbench study-report NAME``: figures, best configuration and a robustness check of a study."""

    name: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="NAME")]]
    """Study name (as given to ``driftbench study --name``)."""
    out: str = "results"
    """Results root holding ``runs/`` and ``studies/``; the report goes to ``<out>/studies/<name>/``."""
    storage: str = ""
    """The study's storage if it is not the default journal file (a journal path or an RDB URL)."""
    fresh_seeds: int = 3
    """Robustness: how many fresh training seeds (the smallest ones above the study's seeds)."""
    seeds: tuple[int, ...] = ()
    """Robustness: explicit fresh seeds instead (must not overlap the study's)."""
    split_seed: int = -1
    """Robustness: the resampled held-out prompt split (-1: the study's split seed + 1)."""
    robustness: bool = True
    """Run (or reuse) the robustness re-runs; --no-robustness writes the rest only."""
    progress: bool = False
    """Progress bars for the robustness runs."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"fresh_seeds": at_least(1), "seeds": nonnegative(), "split_seed": at_least(-1)}
    """Valid range of every numeric field (``harness.validate``)."""


def report(cfg: StudyReportConfig, log: Callable[[str], None] = print) -> Path:
    """Write every report file for study ``cfg.name``; returns the report directory."""
    from optuna.trial import TrialState

    study = load_study(cfg.name, cfg.out, cfg.storage)
    setup = study.user_attrs.get("setup")
    if setup is None:
        raise ValueError(f"study '{cfg.name}' was not created by driftbench study (it has no stored setup)")
    out = Path(cfg.out) / "studies" / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    _trials_csv(trials, out / "trials.csv", study.user_attrs)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        states = ", ".join(f"{t.number}: {t.state.name.lower()}" for t in trials) or "none"
        raise ValueError(f"study '{cfg.name}' has no complete trial yet (trials {states})")
    multi = len(study.directions) > 1
    labels = _labels(complete[0].user_attrs.get("objective", "?"), multi)
    draw(study, complete, labels, out, log)
    best = _best(study, multi)
    if multi:
        pareto(complete, study.best_trials, labels, out)
    write_json(out / "best.json", json_ready(_best_record(best, study, multi, setup), finite=True))
    if cfg.robustness:
        robustness(cfg, setup, best, out, log)
    log(f"wrote the report of study '{cfg.name}' to {out}")
    return out


# ---------------------------------------------------------------------------------------------------
# Tables and selection
# ---------------------------------------------------------------------------------------------------

def _labels(reward: str, multi: bool) -> list[str]:
    unit = _reward_unit(reward)
    first = f"held-out {reward} ({unit}, higher is better)"
    return [first, DRIFT_LABEL] if multi else [first]


def _reward_unit(reward: str) -> str:
    try:
        return getattr(load(REWARDS.target(reward)), "unit", "reward units")
    except (ValueError, ImportError, AttributeError):
        return "reward units"


def _trials_csv(trials: Sequence[Any], path: Path, study_attrs: dict[str, Any]) -> None:
    import pandas as pd

    records = []
    for t in trials:
        values = list(t.values or [])
        records.append({"number": t.number, "state": t.state.name.lower(),
                        "value": values[0] if values else None, "drift": values[1] if len(values) > 1 else None,
                        "seconds": t.duration.total_seconds() if t.duration else None,
                        **{f"param:{k}": v for k, v in t.params.items()},
                        "seeds": ";".join(str(r.get("seed")) for r in seed_runs(t)),
                        "seed_values": ";".join(f"{r['value']:.6g}" for r in seed_runs(t)
                                                if r.get("value") is not None),
                        "updates": sum(int(r.get("updates") or 0) for r in seed_runs(t)) if seed_runs(t) else None,
                        "stopped": t.user_attrs.get("stopped", ""),
                        "runs": ";".join(t.user_attrs.get("run_ids", [])), "error": trial_error(t, study_attrs)})
    pd.DataFrame.from_records(records).to_csv(path, index=False)


def _best(study: Any, multi: bool) -> Any:
    if not multi:
        return study.best_trial
    return max(study.best_trials, key=lambda t: t.values[0])


def _best_record(best: Any, study: Any, multi: bool, setup: dict[str, Any]) -> dict[str, Any]:
    record = {"study": study.study_name, "trial": best.number, "value": best.values[0],
              "objective": best.user_attrs.get("objective"), "params": best.params,
              "k": best.user_attrs.get("k"), "method": setup["run"]["method"],
              "method_config": best.user_attrs.get("method_config"), "seeds": setup["study"]["seeds"],
              "seed_values": best.user_attrs.get("seed_values"), "runs": best.user_attrs.get("run_ids"),
              "default_method_config": setup["method_config"], "default_k": setup["run"]["k"]}
    if multi:
        front = [{"trial": t.number, "values": t.values, "params": t.params} for t in study.best_trials]
        record |= {"pixel_drift": best.values[1], "pareto": front,
                   "selection": "the Pareto-optimal trial with the highest objective"}
    return record


# ---------------------------------------------------------------------------------------------------
# Robustness
# ---------------------------------------------------------------------------------------------------

def fresh_seeds(cfg: StudyReportConfig, study_seeds: Sequence[int]) -> list[int]:
    """Seeds the study did not use: ``cfg.seeds`` if given, else the smallest ones above the study's."""
    if cfg.seeds:
        overlap = sorted(set(cfg.seeds) & set(study_seeds))
        if overlap:
            raise ValueError(f"robustness seeds {overlap} were used by the study (seeds "
                             f"{list(study_seeds)}); give fresh ones")
        return list(dict.fromkeys(cfg.seeds))
    if cfg.fresh_seeds < 1:
        raise ValueError(f"fresh_seeds must be >= 1, got {cfg.fresh_seeds}")
    start = max(study_seeds) + 1
    return list(range(start, start + cfg.fresh_seeds))


def _ensure_run(store: Any, run_cfg: Any, method_cfg: Any, progress: bool) -> str:
    """Run ``run_cfg`` unless a complete run with the same id and configuration is stored; returns the id."""

    run_id = run_cfg.run_id
    if store.run_dir(run_id).exists():
        manifest = store.manifest(run_id)
        if manifest.get("status") == "complete" and manifest.get("key") == run_key(run_cfg, method_cfg):
            return run_id
        run_id = f"{run_id}__{utc_stamp()}"
    return run(run_cfg.replace(run_id=run_id), method_cfg, store=store, progress=progress)["run_id"]


def robustness(cfg: StudyReportConfig, setup: dict[str, Any], best: Any, out: Path,
               log: Callable[[str], None] = print) -> Path:
    """Re-run the best and the default configuration on fresh seeds, with the study's prompt split and a
    resampled one, and write robustness.md / .csv from the stored summaries."""

    store = Store(cfg.out)
    seeds = fresh_seeds(cfg, setup["study"]["seeds"])
    base_run = from_dict(RunConfig, setup["run"]).replace(out=cfg.out, tag=f"study:{cfg.name}:robustness")
    split = cfg.split_seed if cfg.split_seed >= 0 else base_run.split_seed + 1
    if split == base_run.split_seed:
        raise ValueError(f"split_seed {split} is the study's own; give another to resample the prompts")
    config = METHODS.get(base_run.method).Config
    candidates = {"default": (from_dict(config, setup["method_config"]), base_run.k),
                  "best": (from_dict(config, best.user_attrs["method_config"]), int(best.user_attrs["k"]))}
    conditions = {"fresh seeds": base_run.split_seed, "resampled prompts": split}
    runs: list[dict[str, Any]] = []
    for condition, split_seed in conditions.items():
        for label, (method_cfg, k) in candidates.items():
            for seed in seeds:
                run_cfg = base_run.replace(seed=seed, k=k, split_seed=split_seed,
                                           run_id=f"study-{cfg.name}__robust__{label}__split{split_seed}__s{seed}")
                log(f"robustness: {label} configuration, {condition} (split seed {split_seed}), seed {seed}")
                run_id = _ensure_run(store, run_cfg, method_cfg, cfg.progress)
                runs.append({"condition": condition, "split_seed": split_seed, "configuration": label,
                             "seed": seed, "run_id": run_id})
    reward = best.user_attrs["objective"]
    return _robustness_tables(store, runs, reward, best, cfg.name, setup, out)


def _robustness_tables(store: Any, runs: list[dict[str, Any]], reward: str, best: Any, name: str,
                       setup: dict[str, Any], out: Path) -> Path:
    import pandas as pd

    from harness.reporting.tables import fmt, headline, t_interval

    for r in runs:  # read back from the store only
        summary = read_json(store.run_dir(r["run_id"]) / "summary.json")
        r |= {"objective": objective_value(summary, reward), "base": headline(summary, reward, base=True),
              "pixel_drift": summary[DRIFT_KEY], "eval_images": summary.get(f"eval/{reward}/n")}
        r["gain"] = r["objective"] - r["base"] if r["base"] is not None else float("nan")
    pd.DataFrame.from_records(runs).to_csv(out / "robustness_runs.csv", index=False)
    records, verdicts = [], []
    for condition in dict.fromkeys(r["condition"] for r in runs):
        rows = {c: {r["seed"]: r for r in runs if r["condition"] == condition and r["configuration"] == c}
                for c in ("default", "best")}
        paired = [rows["best"][s]["objective"] - rows["default"][s]["objective"] for s in rows["best"]]
        for label, by_seed in rows.items():
            rs = list(by_seed.values())
            rec = {"condition": condition, "split_seed": rs[0]["split_seed"], "configuration": label,
                   "seeds": len(rs), "eval_images": rs[0]["eval_images"]}
            for key in ("objective", "gain", "pixel_drift"):
                rec[key], rec[f"{key}_ci"] = t_interval([r[key] for r in rs])
            rec["best_minus_default"], rec["best_minus_default_ci"] = (t_interval(paired) if label == "best"
                                                                       else (float("nan"), float("nan")))
            rec["runs"] = ";".join(r["run_id"] for r in rs)
            records.append(rec)
        best_row = records[-1]
        verdicts.append((condition, *t_interval(paired), best_row["gain"], best_row["gain_ci"]))
    pd.DataFrame.from_records(records).to_csv(out / "robustness.csv", index=False)
    lines = _robustness_md(records, verdicts, reward, best, name, setup, fmt)
    path = out / "robustness.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _verdict(mean: float, half: float) -> str:
    if not math.isfinite(mean):
        return "no data"
    if not math.isfinite(half):
        return "undetermined (one seed, no interval)"
    if mean - half > 0:
        return "yes (the interval excludes 0)"
    return "no (the interval includes 0)" if mean + half >= 0 else "no, reversed (the interval lies below 0)"


def _robustness_md(records, verdicts, reward, best, name, setup, fmt) -> list[str]:
    intro = (f"Objective: held-out `{reward}` headline (higher is better). Best configuration: trial "
             f"{best.number} (value {best.values[0]:.4g} in the study over seeds {setup['study']['seeds']}; "
             f"params {best.params}, K={best.user_attrs.get('k')}). Default: the preset's configuration "
             f"(K={setup['run']['k']}).")
    method = (f"Both are re-run on {records[0]['seeds']} fresh seed(s), with the study's held-out prompt split "
              "and with a resampled one. Values are mean ± 95% t-interval half-width over seeds; *gain* is "
              "trained minus base generator on the same prompts and noise; *best − default* is paired by seed.")
    header = ("| condition | split seed | configuration | objective | gain over base | best − default "
              "| pixel drift | seeds | eval images/run |")
    lines = [f"# Robustness of study '{name}'", "", intro, "", method, "", header, "|" + "---|" * 9]
    for r in records:
        best_row = r["configuration"] == "best"
        cells = [r["condition"], str(r["split_seed"]), r["configuration"],
                 fmt(r["objective"], r["objective_ci"], 4), fmt(r["gain"], r["gain_ci"], 4),
                 fmt(r["best_minus_default"], r["best_minus_default_ci"], 4) if best_row else "–",
                 fmt(r["pixel_drift"], r["pixel_drift_ci"], 4), str(r["seeds"]), f"{r['eval_images']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "**Does the gain survive a different prompt selection and sample size?**", ""]
    for condition, diff, diff_ci, gain, gain_ci in verdicts:
        lines.append(f"- {condition}: best beats default: {_verdict(diff, diff_ci)}; "
                     f"best beats the base generator: {_verdict(gain, gain_ci)}.")
    return lines
