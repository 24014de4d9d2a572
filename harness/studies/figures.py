"""The study report's figures: Optuna's own matplotlib plots where they draw what the report needs, and
hand-drawn ones where they do not.

Single-objective studies get ``optuna.visualization.matplotlib``'s importance (PED-ANOVA), slice and contour
plots. Multi-objective studies keep the hand-drawn versions, which put the held-out objective and the pixel
drift side by side (Optuna plots one target per figure, and PED-ANOVA needs each maximised target negated),
and the Pareto front. Every figure is written as PNG and PDF.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import FuncFormatter, MaxNLocator

from harness.reporting.importance import importance_table, marginal_table, varied_params

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
"""Colour-blind-safe categorical palette (Okabe and Ito); continuous values use ``cividis``."""
CMAP = "cividis"
PARAM_UNITS = {"lr": "AdamW step size", "radius_scale": "x default kernel radii", "eta": "anchor weight",
               "lam": "reference weight, dimensionless", "m": "anchors per side", "k": "candidates per prompt",
               "kernel": "kernel family"}
"""Axis units of known search-space parameters; others are labelled "as suggested"."""
DRIFT_LABEL = "pixel RMS change from base (images in [0, 1])"


def draw(study: Any, complete: Sequence[Any], labels: list[str], out: Path, log=print):
    """importances.csv and every figure of ``study``; returns the importance table (sorted, most important first)."""
    table, notes = importances(study, complete, labels, out)
    _importance_bars(study, table, labels, notes, out)
    if len(labels) == 1 and not notes:
        _optuna_figures(study, complete, table, labels[0], out, log)
        return table
    _slices(complete, labels, out)
    if not _contours(complete, table, labels[0], out):
        log("no contour plot: fewer than two numeric parameters with more than one value")
    return table


def _optuna_figures(study: Any, complete: Sequence[Any], table: Any, label: str, out: Path, log) -> None:
    """Optuna's matplotlib slice and contour plots of a single-objective study (the importances are hand-drawn,
    with their intervals). A single pair gets the hand-drawn contour: Optuna's one-panel contour figure has a
    zero-height grid that matplotlib's constrained layout divides by."""
    import optuna
    from optuna.visualization import matplotlib as plots

    with warnings.catch_warnings():  # the matplotlib backend is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # a parameter held at one value (a fixed learning rate) has no slice to show
        _save_axes(plots.plot_slice(study, params=varied_params(complete), target_name=label), out / "slices")
        pair = _numeric(complete, table)
        if len(pair) < 2:
            log("no contour plot: fewer than two numeric parameters with more than one value")
            return
        if len(pair) == 2:
            _contours(complete, table, label, out)
            return
        _save_axes(plots.plot_contour(study, params=[name for name, _ in pair], target_name=label),
                   out / "contours")


def _save_axes(axes: Any, stem: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    fig = np.ravel(axes)[0].figure
    _readable(fig)
    fig.set_layout_engine("constrained")
    _save(fig, stem)
    plt.close(fig)


def importances(study: Any, complete: Sequence[Any], labels: list[str], out: Path):
    """PED-ANOVA importances per objective over the ``complete`` trials -> importances.csv; returns (table, notes on
    what could not be computed). A parameter held at one value has no importance to speak of and is left out."""
    import optuna
    import pandas as pd

    names = varied_params(complete)
    table = pd.DataFrame({"param": names})
    notes = []
    for i, label in enumerate(labels):
        column = "objective" if i == 0 else "pixel_drift"
        try:
            # PED-ANOVA ranks parameters by how they reach *low* targets: negate maximised objectives.
            sign = -1.0 if study.directions[i] == optuna.study.StudyDirection.MAXIMIZE else 1.0
            with warnings.catch_warnings():  # its reminder to negate maximised targets, done above
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                values = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                    target=lambda t, i=i, s=sign: s * t.values[i])
        except (ValueError, RuntimeError) as exc:  # too few trials, or no parameter that varies
            values, notes = {}, notes + [f"{column}: {exc}"]
        table[column] = [values.get(n, float("nan")) for n in names]
        if i == 0 and values:
            _intervals(complete, sign, table, out)
    table = table.sort_values("objective", ascending=False, na_position="last")
    table.to_csv(out / "importances.csv", index=False)
    return table, notes



def _intervals(complete: Sequence[Any], sign: float, table: Any, out: Path) -> None:
    """The objective's importance columns: 95% bootstrap interval, permutation p against chance and per-seed
    shares (``harness.reporting.importance``); each varied parameter's marginal effect -> marginals.csv."""
    import pandas as pd

    rows = {r["param"]: r for r in importance_table(complete, sign)}
    pd.DataFrame.from_records(marginal_table(complete)).to_csv(out / "marginals.csv", index=False)
    extra = [c for c in next(iter(rows.values()), {}) if c not in ("param", "importance")]
    for column in extra:
        table[f"objective_{column}" if column in ("low", "high") else column] = \
            [rows.get(n, {}).get(column, float("nan")) for n in table["param"]]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, stem: Path) -> None:
    for suffix in (".png", ".pdf"):
        fig.savefig(stem.with_suffix(suffix), dpi=150)


def _axis_label(name: str, dist: Any) -> str:
    log = getattr(dist, "log", False)
    return f"{name} ({PARAM_UNITS.get(name, 'as suggested')}{', log scale' if log else ''})"


def _importance_bars(study: Any, table: Any, labels: list[str], notes: list[str], out: Path) -> None:
    """Hand-drawn bars, one per objective (multi-objective studies, or where Optuna could not compute them)."""
    names = list(table["param"])
    fig = _figure(6, 0.5 + 0.45 * max(len(names), 1))
    ax = fig.add_subplot()
    height = 0.8 / len(labels)
    bounded = "objective_low" in table
    for i, column in enumerate(c for c in ("objective", "pixel_drift") if c in table):
        ax.barh([y + i * height for y in range(len(table))], table[column].fillna(0), height=height,
                color=OKABE_ITO[i], label=labels[i] + (" (95% bootstrap over trials)" if i == 0 and bounded else ""),
                xerr=_error_bars(table) if i == 0 and bounded else None, error_kw=dict(lw=0.8, capsize=2))
    ticks = [f"{n}\n(chance p {p:.2g})" if bounded and p == p else n
             for n, p in zip(table["param"], table["p_chance"] if bounded else table["param"])]
    ax.set_yticks([y + (len(labels) - 1) * height / 2 for y in range(len(table))], ticks, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("importance (PED-ANOVA, normalised to sum to 1)")
    ax.set_ylabel("parameter")
    note = f"\n({'; '.join(notes)})" if notes else ""
    ax.set_title(f"Parameter importances, study '{study.study_name}'{note}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")  # the shortest bars are at the bottom
    _save(fig, out / "importances")


def _error_bars(table: Any) -> Any:
    """(2, parameters) distances from each share to its bootstrap bounds, 0 where a bound is missing."""
    import numpy as np

    share = table["objective"].to_numpy(dtype=float)
    low = np.nan_to_num(share - table["objective_low"].to_numpy(dtype=float)).clip(min=0)
    high = np.nan_to_num(table["objective_high"].to_numpy(dtype=float) - share).clip(min=0)
    return np.vstack([low, high])


def _positions(values: list[Any], dist: Any) -> tuple[list[float], list[Any] | None]:
    """Plot positions of a parameter's values; categorical values map to their choice index."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        return [float(choices.index(v)) for v in values], choices
    return [float(v) for v in values], None


def _format_axis(axis: Any, dist: Any, choices: list[Any] | None) -> None:
    """Categorical ticks at choice indices, integer ticks for integer parameters, 1-2-5 ticks on log axes."""
    from matplotlib.ticker import LogLocator, NullLocator

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
            _no_offset(ax.yaxis)
            ax.tick_params(labelsize=7)
            ax.set_xlabel(_axis_label(name, dist), fontsize=8)
            if i % cols == 0:  # the rows share the objective; a label per panel overprints its left neighbour
                ax.set_ylabel(_wrap_label(label), fontsize=8)
        for i in range(len(names), rows * cols):
            axes[j * rows + i // cols][i % cols].set_visible(False)
    if names:
        bar = fig.colorbar(points, ax=axes.ravel().tolist(), label="trial number")
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Slice plots: each complete trial's value against one parameter", fontsize=10)
    _save(fig, out / "slices")


def _numeric(complete: Sequence[Any], importance: Any) -> list[tuple[str, Any]]:
    """The three most important numeric parameters that took more than one value, with their distributions."""
    from optuna.distributions import CategoricalDistribution

    numeric = []
    for name in list(importance["param"]):
        having = [t for t in complete if name in t.params]
        dist = having[-1].distributions[name] if having else None
        if dist is None or isinstance(dist, CategoricalDistribution) or len({t.params[name] for t in having}) < 2:
            continue
        numeric.append((name, dist))
    return numeric[:3]


def _contours(complete: Sequence[Any], importance: Any, label: str, out: Path) -> bool:
    """The objective over pairs of the three most important numeric parameters; False if there is no pair."""
    numeric = _numeric(complete, importance)
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
        for axis, dist in ((ax.xaxis, da), (ax.yaxis, db)):  # few ticks, no offset; log axes show the values
            axis.set_major_locator(MaxNLocator(nbins=4))
            if dist.log:
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{10 ** v:.2g}"))
            else:
                _no_offset(axis)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(_log10_label(a, da), fontsize=8)
        ax.set_ylabel(_log10_label(b, db), fontsize=8)
    fig.suptitle(f"Objective ({label}) over parameter pairs, interpolated; dots: trials", fontsize=10)
    _save(fig, out / "contours")
    return True


def _log10_label(name: str, dist: Any) -> str:
    """Contours interpolate log-scale parameters in log10 units; the ticks show the values themselves."""
    return _axis_label(name, dist).replace(", log scale", ", log spacing")


def _readable(fig: Any) -> None:
    """Optuna's plots, made legible: at most five ticks on linear axes, no offset, smaller tick labels."""
    from matplotlib.ticker import AutoLocator, LogLocator, NullFormatter

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "linear" and isinstance(axis.get_major_locator(), AutoLocator):
                axis.set_major_locator(MaxNLocator(nbins=5))
            elif axis.get_scale() == "log":  # plain numbers, no "3 x 10^-1" minor labels; 1-2-5 within a decade
                low, high = sorted(abs(v) for v in axis.get_view_interval())
                wide = low <= 0 or math.log10(high / low) > 1.5
                axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if wide else (1.0, 2.0, 5.0), numticks=6))
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(NullFormatter())
            _no_offset(axis)
            if len(axis.get_label_text()) > 30:
                axis.set_label_text(_wrap_label(axis.get_label_text()))
        ax.tick_params(labelsize=7)


def _no_offset(axis: Any) -> None:
    """Plain tick values: no shared offset ("-1.57" in the corner) or scientific multiplier on linear axes."""
    formatter = axis.get_major_formatter()
    if hasattr(formatter, "set_useOffset"):
        formatter.set_useOffset(False)


def _wrap_label(text: str, width: int = 28) -> str:
    """An objective label over lines short enough for one panel's height."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def pareto(complete: Sequence[Any], front: Sequence[Any], labels: list[str], out: Path) -> None:
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
