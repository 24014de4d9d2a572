"""``driftbench study-report NAME``: what a study found, from stored trials and stored runs only.

Writes into ``<out>/studies/<name>/``:

* ``trials.csv``: every trial (number, state, values, parameters, seconds, error: the exception, a stopped
  worker, a missed heartbeat, or a surplus trial that found the study full);
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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro
from matplotlib.ticker import MaxNLocator

from harness.study import DRIFT_KEY, dumps, load_study, objective_value
from harness.study_storage import trial_error

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
"""Colour-blind-safe categorical palette (Okabe and Ito); continuous values use ``cividis``."""
CMAP = "cividis"
PARAM_UNITS = {"lr": "AdamW step size", "radius_scale": "x default kernel radii", "eta": "anchor weight",
               "lam": "reference weight, dimensionless", "m": "anchors per side", "k": "candidates per prompt",
               "kernel": "kernel family"}
"""Axis units of known search-space parameters; others are labelled "as suggested"."""
DRIFT_LABEL = "pixel RMS change from base (images in [0, 1])"


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
    importance = _importances(study, labels, out)
    _slices(complete, labels, out)
    if not _contours(complete, importance, labels[0], out):
        log("no contour plot: fewer than two numeric parameters with more than one value")
    best = _best(study, multi)
    if multi:
        _pareto(complete, study.best_trials, labels, out)
    (out / "best.json").write_text(dumps(_best_record(best, study, multi, setup)) + "\n")
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
    from harness.registry import load
    from rewards import REWARDS

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
# Figures
# ---------------------------------------------------------------------------------------------------

def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, stem: Path) -> None:
    for suffix in (".png", ".pdf"):
        fig.savefig(stem.with_suffix(suffix), dpi=150)


def _axis_label(name: str, dist: Any) -> str:
    log = getattr(dist, "log", False)
    return f"{name} ({PARAM_UNITS.get(name, 'as suggested')}{', log scale' if log else ''})"


def _importances(study: Any, labels: list[str], out: Path):
    """PED-ANOVA importances per objective -> importances.csv and a bar chart; returns the DataFrame."""
    import optuna
    import pandas as pd

    names = sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})
    table = pd.DataFrame({"param": names})
    notes = []
    for i, label in enumerate(labels):
        column = "objective" if i == 0 else "pixel_drift"
        try:
            # PED-ANOVA ranks parameters by how they reach *low* targets: negate maximised objectives.
            sign = -1.0 if study.directions[i] == optuna.study.StudyDirection.MAXIMIZE else 1.0
            with warnings.catch_warnings():  # its reminder to negate maximised targets, done above
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
                values = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i, s=sign: s * t.values[i])
        except (ValueError, RuntimeError) as exc:  # too few trials, or no parameter that varies
            values, notes = {}, notes + [f"{column}: {exc}"]
        table[column] = [values.get(n, float("nan")) for n in names]
    table = table.sort_values("objective", ascending=False, na_position="last")
    table.to_csv(out / "importances.csv", index=False)
    fig = _figure(6, 0.5 + 0.45 * max(len(names), 1))
    ax = fig.add_subplot()
    height = 0.8 / len(labels)
    for i, column in enumerate(table.columns[1:]):
        ax.barh([y + i * height for y in range(len(table))], table[column].fillna(0), height=height,
                color=OKABE_ITO[i], label=labels[i])
    ax.set_yticks([y + (len(labels) - 1) * height / 2 for y in range(len(table))], table["param"])
    ax.invert_yaxis()
    ax.set_xlabel("importance (PED-ANOVA, normalised to sum to 1)")
    ax.set_ylabel("parameter")
    note = f"\n({'; '.join(notes)})" if notes else ""
    ax.set_title(f"Parameter importances, study '{study.study_name}'{note}", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, out / "importances")
    return table


def _positions(values: list[Any], dist: Any) -> tuple[list[float], list[Any] | None]:
    """Plot positions of a parameter's values; categorical values map to their choice index."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        return [float(choices.index(v)) for v in values], choices
    return [float(v) for v in values], None


def _format_axis(axis: Any, dist: Any, choices: list[Any] | None) -> None:
    """Categorical ticks at choice indices, integer ticks for integer parameters, 1-2-5 ticks on log axes."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    if choices is not None:
        axis.set_ticks(range(len(choices)), [str(c) for c in choices])
        axis.axes.set_xlim(-0.5, len(choices) - 0.5)
    elif getattr(dist, "log", False):
        axis.axes.set_xscale("log")
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_locator(NullLocator())
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    elif type(dist).__name__ == "IntDistribution":
        axis.set_major_locator(MaxNLocator(integer=True))


def _slices(complete: Sequence[Any], labels: list[str], out: Path) -> None:
    """One panel per parameter (and per objective): value against parameter, coloured by trial number."""
    names = sorted({p for t in complete for p in t.params})
    cols = max(1, min(3, len(names)))
    rows = math.ceil(max(len(names), 1) / cols)
    fig = _figure(4 * cols, 3.2 * rows * len(labels))
    axes = fig.subplots(rows * len(labels), cols, squeeze=False)
    numbers = [t.number for t in complete]
    for j, label in enumerate(labels):
        for i, name in enumerate(names):
            ax = axes[j * rows + i // cols][i % cols]
            having = [t for t in complete if name in t.params]
            dist = having[-1].distributions[name]
            x, choices = _positions([t.params[name] for t in having], dist)
            points = ax.scatter(x, [t.values[j] for t in having], c=[t.number for t in having], cmap=CMAP,
                                vmin=min(numbers), vmax=max(numbers), edgecolors="black", linewidths=0.4)
            _format_axis(ax.xaxis, dist, choices)
            ax.set_xlabel(_axis_label(name, dist), fontsize=8)
            if i % cols == 0:  # the rows share the objective; a label per panel overprints its left neighbour
                ax.set_ylabel(label, fontsize=8)
        for i in range(len(names), rows * cols):
            axes[j * rows + i // cols][i % cols].set_visible(False)
    if names:
        bar = fig.colorbar(points, ax=axes.ravel().tolist(), label="trial number")
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Slice plots: each complete trial's value against one parameter", fontsize=10)
    _save(fig, out / "slices")


def _contours(complete: Sequence[Any], importance: Any, label: str, out: Path) -> bool:
    """The objective over pairs of the three most important numeric parameters; False if there is no pair."""
    from optuna.distributions import CategoricalDistribution

    numeric = []
    for name in list(importance["param"]):
        having = [t for t in complete if name in t.params]
        dist = having[-1].distributions[name] if having else None
        if dist is None or isinstance(dist, CategoricalDistribution) or len({t.params[name] for t in having}) < 2:
            continue
        numeric.append((name, dist))
    numeric = numeric[:3]
    pairs = [(a, b) for i, a in enumerate(numeric) for b in numeric[i + 1:]]
    if not pairs:
        return False
    fig = _figure(4.2 * len(pairs), 3.6)
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    for ax, ((a, da), (b, db)) in zip(axes, pairs):
        having = [t for t in complete if a in t.params and b in t.params]
        x = [math.log10(t.params[a]) if da.log else float(t.params[a]) for t in having]
        y = [math.log10(t.params[b]) if db.log else float(t.params[b]) for t in having]
        z = [t.values[0] for t in having]
        try:  # interpolation needs three points that are not on one line
            filled = ax.tricontourf(x, y, z, levels=12, cmap=CMAP)
            fig.colorbar(filled, ax=ax, label=label.split(" (")[0])
        except (ValueError, RuntimeError):
            pass
        ax.scatter(x, y, c=OKABE_ITO[3], s=18, edgecolors="white", linewidths=0.5)
        ax.margins(0.06)
        ax.set_xlabel(_log10_label(a, da), fontsize=8)
        ax.set_ylabel(_log10_label(b, db), fontsize=8)
    fig.suptitle(f"Objective ({label}) over parameter pairs, interpolated; dots: trials", fontsize=10)
    _save(fig, out / "contours")
    return True


def _log10_label(name: str, dist: Any) -> str:
    """Contours interpolate log-scale parameters in log10 units."""
    return ("log10 " if dist.log else "") + _axis_label(name, dist).replace(", log scale", "")


def _pareto(complete: Sequence[Any], front: Sequence[Any], labels: list[str], out: Path) -> None:
    import pandas as pd

    on_front = {t.number for t in front}
    ordered = sorted(front, key=lambda t: t.values[1])
    pd.DataFrame.from_records([{"number": t.number, "objective": t.values[0], "pixel_drift": t.values[1],
                                **{f"param:{k}": v for k, v in t.params.items()}}
                               for t in ordered]).to_csv(out / "pareto.csv", index=False)
    fig = _figure(5.5, 4.2)
    ax = fig.add_subplot()
    others = [t for t in complete if t.number not in on_front]
    ax.scatter([t.values[1] for t in others], [t.values[0] for t in others], color=OKABE_ITO[0], alpha=0.6,
               label="trials")
    ax.step([t.values[1] for t in ordered], [t.values[0] for t in ordered], where="post", color=OKABE_ITO[3],
            linewidth=1)
    ax.scatter([t.values[1] for t in ordered], [t.values[0] for t in ordered], color=OKABE_ITO[3], marker="D",
               label="Pareto front")
    for t in ordered:
        ax.annotate(str(t.number), (t.values[1], t.values[0]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel(labels[1] + ", lower is better")
    ax.set_ylabel(labels[0])
    ax.set_title("Held-out reward against drift from the base generator", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, out / "pareto")


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
    from harness.config import run_key
    from harness.run import run
    from harness.store import utc_stamp

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
    from harness.config import RunConfig, from_dict
    from harness.store import Store
    from methods import METHODS

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

    from harness.store import read_json
    from harness.tables import fmt, headline, t_interval

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
