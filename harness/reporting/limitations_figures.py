"""The figures of ``results/limitations.md``, drawn from numbers the report read from the store (the house style
of ``harness.reporting.plots``: Okabe-Ito colours, labelled axes, PNG and PDF side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from harness.reporting.plots import PALETTE, _style, color, save


def sweeps(directory: Path, factors: dict[str, list[tuple[str, float, float, bool]]], base_generator: float,
           gold: str, at: str) -> str:
    """One panel per factor: test gold (mean ± 95% t half-width over seeds) at each value; the base point's value
    filled, the base generator dashed. ``factors``: {factor: [(value, mean, half, is_base)]}."""
    plt = _style()
    n = max(1, len(factors))
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.6), sharey=True, squeeze=False)
    for ax, (factor, rows) in zip(axes[0], factors.items()):
        x = np.arange(len(rows))
        means = np.array([r[1] for r in rows])
        halves = np.nan_to_num(np.array([r[2] for r in rows]))
        ax.errorbar(x, means, yerr=halves, fmt="o-", color=color("drpo"), capsize=3, mfc="white")
        for xi, row in zip(x, rows):
            if row[3]:
                ax.plot([xi], [row[1]], "o", color=color("drpo"))
        ax.axhline(base_generator, color=color("base"), ls="--", lw=1)
        ax.set_xticks(x, [r[0] for r in rows], rotation=30)
        ax.set_xlabel(factor)
    axes[0][0].set_ylabel(f"test {gold} ({at})")
    fig.suptitle("DrPO one-factor sweeps (filled: the base point; dashed: base generator)", fontsize=9)
    save(fig, directory, "sweeps")
    return "sweeps.png"


def per_prompt(directory: Path, panels: dict[str, tuple[Sequence[float], Sequence[str]]], gold: str) -> str:
    """Per-prompt differences (mean over seeds), sorted, coloured by tag: one panel per comparison."""
    plt = _style()
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 2.8), squeeze=False)
    for ax, (title, (diffs, tags)) in zip(axes[0], panels.items()):
        order = np.argsort(diffs, kind="stable")
        names = sorted(set(tags))
        for j, tag in enumerate(names):
            xs = [i for i, o in enumerate(order) if tags[o] == tag]
            ax.bar(xs, [diffs[order[i]] for i in xs], color=PALETTE[j % len(PALETTE)], label=tag, width=1.0)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("test prompt (sorted)")
        ax.set_ylabel(f"Δ {gold} (mean over seeds)")
    axes[0][0].legend(fontsize=7, ncol=2)
    save(fig, directory, "per_prompt")
    return "per_prompt.png"


def best_of_k(directory: Path, rows: list[tuple[str, float, float, float, bool]], gold: str) -> str:
    """Test gold against inference GFLOP per image: trained methods (error bars over seeds) and best-of-K.
    ``rows``: (label, GFLOP per image, mean, half, is_reference)."""
    plt = _style()
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    refs = sorted([r for r in rows if r[4]], key=lambda r: r[1])
    if refs:
        ax.plot([r[1] for r in refs], [r[2] for r in refs], "s--", color=color("base"), label="best-of-K (base)")
        for r in refs:
            ax.annotate(r[0], (r[1], r[2]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    trained = [r for r in rows if not r[4]]
    for j, r in enumerate(trained):  # spread along x a little: every trained method costs one sample per image
        x = r[1] * (1 + 0.06 * (j - (len(trained) - 1) / 2))
        ax.errorbar([x], [r[2]], yerr=[np.nan_to_num(r[3])], fmt="o", color=color(r[0]), capsize=3, label=r[0])
    ax.set_xscale("log")
    ax.set_xlabel("inference compute per delivered image (GFLOP)")
    ax.set_ylabel(f"test {gold}")
    ax.legend(fontsize=7)
    save(fig, directory, "best_of_k")
    return "best_of_k.png"


def offline_online(directory: Path, curves: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
                   gold: str, xlabel: str = "online updates") -> str:
    """Gold against updates, mean and 95% band over seeds, per arm."""
    plt = _style()
    fig, ax = plt.subplots(figsize=(4.4, 3.0))
    for j, (arm, (x, mean, half)) in enumerate(curves.items()):
        x, mean, half = np.asarray(x, float), np.asarray(mean, float), np.nan_to_num(np.asarray(half, float))
        ax.plot(x, mean, "o-", color=PALETTE[j], label=arm)
        ax.fill_between(x, mean - half, mean + half, color=PALETTE[j], alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(gold)
    ax.legend(fontsize=7)
    save(fig, directory, "offline_online")
    return "offline_online.png"
