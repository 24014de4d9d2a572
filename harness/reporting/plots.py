"""Paper-style figures, regenerated from stored results only (``driftbench plots``, ``nox -s plots``).

One style for every figure: the Okabe-Ito colour-blind-safe palette, labelled axes with units, PNG and
PDF side by side, file names that say what they show, and an index (``<out>/plots/README.md``) with one
line per figure. A figure whose data are not in the store is skipped and the index says why.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from harness.budget import PHASES
from harness.evaluation import EVAL_SEED_BASE
from harness.reporting import missing
from harness.reporting.tables import headline, t_interval
from harness.store import DamagedRecord, Store, read_json, write_atomic

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
"""Okabe-Ito, colour-blind safe; methods keep their colour across figures."""

METHOD_ORDER = ("base", "drpo", "dpo1", "pso", "ngrpo", "draft", "vggflow")
X_AXES = {"updates": ("budget/updates", "optimizer updates"), "flops": ("budget/flops", "training compute (TFLOP)"),
          "seconds": ("budget/seconds", "metered training time (s)")}


@dataclass(frozen=True)
class PlotsConfig:
    """``driftbench plots``."""

    out: str = "results"
    """Results root; figures go to <out>/plots."""
    tags: tuple[str, ...] = ()
    """Run tags to plot (default: every tag with complete runs)."""


def color(method: str) -> str:
    order = list(METHOD_ORDER)
    return PALETTE[order.index(method) % len(PALETTE)] if method in order else PALETTE[-1]


def _style():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 120, "savefig.dpi": 150, "font.size": 9, "axes.grid": True,
                         "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def save(fig, directory: Path, stem: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}.png", directory / f"{stem}.pdf"]
    for path in paths:
        write_atomic(path, lambda tmp: fig.savefig(tmp, bbox_inches="tight", format=path.suffix[1:]))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


# -- data from the store ------------------------------------------------------------------------

def runs_by_tag(store: Store) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for run_id in store.run_ids():
        tag = store.manifest(run_id)["run"].get("tag") or "untagged"
        out.setdefault(tag, []).append(run_id)
    return out


def curves(store: Store, run_ids: Sequence[str], reward: str) -> dict[str, list[list[tuple[float, ...]]]]:
    """Per method, per run: [(updates, flops, seconds, value), ...] at every evaluation."""
    out: dict[str, list[list[tuple[float, ...]]]] = {}
    for run_id in run_ids:
        method = store.manifest(run_id)["run"]["method"]
        rows = [r for r in store.rows(run_id, "eval") if headline(r, reward) is not None]
        points = [(r["budget/updates"], r["budget/flops"], r["budget/seconds"], headline(r, reward)) for r in rows]
        if rows and rows[0]["budget/updates"] > 0:
            # Runs that skip the evaluation at 0 still know the base generator's value on the same images.
            points.insert(0, (0.0, 0.0, 0.0, headline(rows[0], reward, base=True)))
        out.setdefault(method, []).append(missing.finite_points(points, f"run {run_id}: {reward} curve"))
    return out


# -- figures ------------------------------------------------------------------------------------

def reward_curves(store: Store, tag: str, run_ids: Sequence[str], directory: Path) -> list[tuple[str, str]]:
    """Held-out reward against updates, FLOPs and seconds, mean with a 95% band over seeds."""
    plt = _style()
    manifest = store.manifest(run_ids[0])
    rewards = [manifest["reward"]] + sorted(r for r in manifest["versions"]["evals"] if r != manifest["reward"])
    scored = manifest["run"].get("eval_split_rewards") or rewards  # validation may score only the selection reward
    made = []
    for reward in [r for r in rewards if r in scored]:
        data = {m: [r for r in runs if r] for m, runs in curves(store, run_ids, reward).items()}
        data = {m: runs for m, runs in data.items() if runs}
        if not data:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
        for ax, (axis, (_, label)) in zip(axes, X_AXES.items()):
            col = list(X_AXES).index(axis)
            for method in sorted(data, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99):
                runs = data[method]
                n = min(len(r) for r in runs)
                xs = np.array([[p[col] for p in r[:n]] for r in runs]).mean(0) / (1e12 if axis == "flops" else 1)
                ys = np.array([[p[3] for p in r[:n]] for r in runs])
                stats = [t_interval(ys[:, j]) for j in range(n)]
                mean, half = np.array([s[0] for s in stats]), np.nan_to_num(np.array([s[1] for s in stats]))
                ax.plot(xs, mean, marker="o", ms=3, color=color(method), label=f"{method} (n={len(runs)})")
                ax.fill_between(xs, mean - half, mean + half, color=color(method), alpha=0.18, lw=0)
            ax.set_xlabel(label)
        axes[0].set_ylabel(f"held-out {reward} ({'GenEval overall' if 'geneval' in reward else 'mean score'})")
        axes[-1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{tag}: held-out {reward} during training (band: 95% t-interval over seeds)")
        stem = f"{_slug(tag)}__{_slug(reward)}__vs_updates_flops_seconds"
        save(fig, directory, stem)
        made.append((stem, f"{tag}: held-out {reward} against updates, training FLOPs and metered seconds, "
                           "mean and 95% band over seeds, one line per method."))
    return made


def sample_grid(store: Store, tag: str, run_ids: Sequence[str], directory: Path, prompts: int = 4) -> list[tuple[str, str]]:
    """The same prompts and noise for every method (seed-0 runs), with the base generator's row first."""
    plt = _style()
    by_method: dict[str, Path] = {}
    for run_id in run_ids:
        manifest = store.manifest(run_id)
        path = store.run_dir(run_id) / "samples.npz"
        if path.is_file() and manifest["run"]["seed"] == min(store.manifest(r)["run"]["seed"] for r in run_ids):
            by_method.setdefault(manifest["run"]["method"], path)
    if not by_method:
        return []
    methods = sorted(by_method, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)
    first = np.load(by_method[methods[0]], allow_pickle=False)  # a shared root: data, never code
    run = store.manifest(run_ids[0])["run"]
    noise_base = int(run.get("eval_seed_base", EVAL_SEED_BASE))
    training_seed = min(store.manifest(r)["run"]["seed"] for r in run_ids)
    seeds = int(first["seeds"])
    cols = min(prompts, len(first["prompts"]) // seeds) * min(seeds, 2)
    rows = [("base", first["base"])] + [(m, np.load(by_method[m], allow_pickle=False)["images"]) for m in methods]
    fig, axes = plt.subplots(len(rows), cols, figsize=(max(1.1 * cols, 3.5), 1.3 * len(rows) + 0.6), squeeze=False,
                             layout="constrained")  # titles, seed labels and the suptitle never overlap
    picks = [p * seeds + s for p in range(cols // min(seeds, 2)) for s in range(min(seeds, 2))]
    for i, (name, images) in enumerate(rows):
        for j, idx in enumerate(picks):
            ax = axes[i, j]
            ax.imshow(images[idx])
            ax.set_xticks([]), ax.set_yticks([])
            ax.grid(False)
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j == 0:
                ax.set_ylabel(name if name == "base" else f"{name}\ntraining seed {training_seed}", fontsize=7)
            if i == 0:  # image j of prompt p used noise seed base + 1000 p + j (harness.evaluation.noise_seeds)
                noise = noise_base + 1000 * (idx // seeds) + idx % seeds
                ax.set_title(_wrap(str(first["prompts"][idx])) + f"\nnoise seed {noise}", fontsize=6)
    fig.suptitle(f"{tag}: same prompt and noise for every method", fontsize=9)
    stem = f"{_slug(tag)}__samples_same_noise"
    save(fig, directory, stem)
    return [(stem, f"{tag}: samples of each method (rows, the training-seed-{training_seed} run) on the same "
                   "held-out prompts and noise (columns, each titled with its prompt and noise seed); first row is "
                   "the base generator.")]


def ablation_bars(store: Store, tag: str, run_ids: Sequence[str], directory: Path) -> list[tuple[str, str]]:
    """DrPO ablations: one bar per variant (its tag's value), mean ± 95% interval over seeds."""
    plt = _style()
    groups: dict[str, list[float]] = {}
    reward = store.manifest(run_ids[0])["reward"]
    for run_id in run_ids:
        variant = store.manifest(run_id)["run"].get("tag", "").split("=", 1)[-1]
        try:
            summary = read_json(store.run_dir(run_id) / "summary.json", dict)
        except DamagedRecord as exc:
            warnings.warn(f"{exc.args[0].split('; restore')[0]}; left out of the figure", stacklevel=2)
            continue
        trained, base = headline(summary, reward), headline(summary, reward, base=True)
        gain = missing.finite_points([(trained - base if trained is not None and base is not None else math.nan,)],
                                     f"run {run_id}: {reward} gain")
        groups.setdefault(variant, []).extend(g for g, in gain)
    names = sorted(groups, key=_variant_order)
    stats = [t_interval(groups[n]) for n in names]
    fig, ax = plt.subplots(figsize=(max(3.0, 0.9 * len(names)), 3.0))
    ax.bar(names, [m for m, _ in stats], yerr=[0 if np.isnan(h) else h for _, h in stats], color=PALETTE[0],
           capsize=3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(f"held-out {reward} gain over base")
    ax.set_xlabel(tag.split(":", 1)[-1])
    ax.set_title(f"DrPO ablation: {tag} (mean ± 95% interval over seeds)", fontsize=8)
    stem = f"{_slug(tag)}__ablation_bars"
    save(fig, directory, stem)
    return [(stem, f"DrPO ablation over {tag}: held-out {reward} gain over the base per variant, 95% interval over seeds.")]


def _variant_order(value: str) -> tuple:
    """Numeric variants (K, M, lambda, eta) in numeric order, then the rest alphabetically."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def compute_breakdown(root: Path, directory: Path) -> list[tuple[str, str]]:
    """Per-phase stacked bars for every method, from ``driftbench compute`` and ``profile-step`` tables."""
    import pandas as pd

    plt = _style()
    made = []
    for csv in sorted((root / "compute").glob("*.csv")):
        frame = pd.read_csv(csv)
        measured = csv.name.startswith("profile__")
        cols = [f"{p}/seconds" if measured else p for p in PHASES]
        cols = [c for c in cols if c in frame and frame[c].sum() > 0]
        scale = 1.0 if measured else 1e12
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        bottom = np.zeros(len(frame))
        for i, col in enumerate(cols):
            values = frame[col].to_numpy() / scale
            ax.bar(frame["method"], values, bottom=bottom, color=PALETTE[i % len(PALETTE)],
                   hatch="//" if i >= len(PALETTE) else None, label=col.split("/")[0])
            bottom += values
        ax.set_ylabel("measured seconds per update" if measured else "TFLOP per update")
        ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
        kind = "measured seconds" if measured else "counted FLOPs"
        ax.set_title(f"{csv.stem}: {kind} per update by phase", fontsize=8)
        stem = f"compute__{csv.stem}__phases_stacked"
        save(fig, directory, stem)
        made.append((stem, f"{kind.capitalize()} per update split by phase for every method ({csv.name})."))
    return made


def study_figures(root: Path) -> list[tuple[str, str]]:
    """Figures that ``driftbench study-report`` wrote, listed in the index (they live beside their study)."""
    made = []
    for png in sorted((root / "studies").glob("*/*.png")):
        made.append((f"../studies/{png.parent.name}/{png.stem}", f"Study {png.parent.name}: {png.stem.replace('_', ' ')} "
                                                                  "(written by driftbench study-report)."))
    return made


LIMITATION_FIGURES = {
    "sweeps": "DrPO's one-factor sweeps (bandwidth, K two ways, M, lambda, reference objective, feature space): test "
              "gold per point, mean and 95% t over 5 seeds; filled: the base point; dashed: the base generator.",
    "per_prompt": "DrPO minus the base generator and minus the best baseline, per test prompt (mean over seeds), "
                  "sorted, coloured by tag.",
    "best_of_k": "Test gold against inference GFLOP per delivered image: best-of-K reranking of the base generator "
                 "beside the trained methods (mean and 95% t over seeds).",
    "offline_online": "Offline DrPO continued online, online from scratch, and the longer online control, on one axis "
                      "of total updates: test-curve gold, mean and 95% band over seeds.",
}
"""Figures ``driftbench limitations`` draws into ``<out>/limitations[-smoke]/``, by file stem."""


def limitation_figures(root: Path) -> list[tuple[str, str]]:
    """Figures that ``driftbench limitations --scale full`` wrote, listed in the index (they live beside its report)."""
    return [(f"../limitations/{png.stem}", f"Limitations: {LIMITATION_FIGURES.get(png.stem, png.stem)} Written by "
                                            "`driftbench limitations --scale full` (results/limitations.md).")
            for png in sorted((root / "limitations").glob("*.png"))]


TABLE_FIGURES = {
    "__overoptimisation": "{section} ({kind} configurations): over-optimisation, one column per method; rows: "
                          "gold, proxy and distance from the base on the runs' curve split (test prompts and noise, "
                          "the first images of the test split; validation for runs without one), each against the update "
                          "(seed mean ± 1 SD; grey: the other methods). Written by `driftbench table2`.",
    "__tuning_best_so_far": "{section}: equal-effort tuning, the best validation value so far against the updates "
                            "its trials metered (in full runs), one line per method's study. Written by `driftbench table2` from the studies.",
}
"""Figures ``driftbench table2`` draws beside its table (not from the runs of one tag), by file-name suffix."""


def table_figures(directory: Path) -> list[tuple[str, str]]:
    """Index entries of the figures that table2 wrote into the plots folder."""
    made = []
    for png in sorted(directory.glob("*.png")):
        for suffix, text in TABLE_FIGURES.items():
            if png.stem.endswith(suffix):
                parts = png.stem[: -len(suffix)].split("__")
                kind = parts[1] if len(parts) > 1 else ""
                made.append((png.stem, text.format(section=parts[0], kind=kind)))
    return made


def plots(cfg: PlotsConfig) -> Path:
    """Draw every figure the store has data for and write the index; returns the index path."""
    root = Path(cfg.out)
    store, directory = Store(root), root / "plots"
    with missing.collect() as dropped:  # every record or point left out is named in the index
        entries = _draw(cfg, store, root, directory)
    lines = ["# Figures", "", "Regenerated from stored results by `driftbench plots` (or `nox -s plots`). "
             "Each figure exists as PNG and PDF.", ""]
    lines += [f"- [`{stem}.png`]({stem}.png): {text}" for stem, text in entries]
    if not entries:
        lines.append("No stored results to plot yet: run `nox -s reproduce_table2` first.")
    drawn = {stem for stem, _ in entries}
    kept = sorted(p.stem for p in directory.glob("*.png") if p.stem not in drawn) if directory.is_dir() else []
    if kept:  # a figure whose runs are not in this results root stays, and stays listed, marked as such
        lines += ["", "## Kept from earlier runs", "", "Not redrawn: their stored results are not in this results "
                  "root (the commit that drew each is in the git history).", ""]
        lines += [f"- [`{stem}.png`]({stem}.png)" for stem in kept]
    if dropped:
        lines += ["", "## Left out", "", *[f"- {note}" for note in dropped]]
    directory.mkdir(parents=True, exist_ok=True)
    index = directory / "README.md"
    write_atomic(index, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    return index


def _draw(cfg: PlotsConfig, store: Store, root: Path, directory: Path) -> list[tuple[str, str]]:
    entries: list[tuple[str, str]] = []
    ablations: dict[str, list[str]] = {}
    for tag, run_ids in runs_by_tag(store).items():
        if (cfg.tags and tag not in cfg.tags) or tag.startswith("study:"):
            continue  # a study's runs vary every hyperparameter at once; its own figures come from the report
        if tag.startswith("ablation:"):
            # One figure per axis: the tags ablation:<axis>=<value> of all its variants share it.
            ablations.setdefault(tag.split("=", 1)[0], []).extend(run_ids)
            continue
        entries += reward_curves(store, tag, run_ids, directory)
        entries += sample_grid(store, tag, run_ids, directory)
    for axis, run_ids in sorted(ablations.items()):
        entries += ablation_bars(store, axis, run_ids, directory)
    entries += compute_breakdown(root, directory)
    entries += table_figures(directory)
    entries += study_figures(root)
    entries += limitation_figures(root)
    return entries


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-")


def _wrap(text: str, width: int = 22) -> str:
    words, lines, line = text.replace("a photo of ", "").split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(lines + [line])
