"""``driftbench power``: the variance components of the gold and the minimum detectable paired difference.

Reads the per-image scores that runs store (``scores.jsonl``, see ``harness.evaluation.scores_record``) for
several training seeds of ONE configuration (same code, same run and method config but the seed) and splits
the variance of a per-image score y (0/1 for the shapes-GenEval verifier) with a crossed random-effects model:

    y[s, p, k] = mu + a[s] + b[p] + ab[s, p] + c[p, k] + e[s, p, k]

s: training seed (n levels), p: evaluation prompt (m), k: evaluation image of that prompt (K noise seeds; image
k of prompt p uses the same noise for every run, so noise is crossed with seeds and nested in prompts).
Components, from the balanced ANOVA mean squares and their expectations (method of moments; negatives are set
to 0, as usual):

    MS_E   = sum (y - ybar[s,p] - ybar[p,k] + ybar[p])^2 / ((n-1) m (K-1))   E = s2_e
    MS_SP  = K sum (ybar[s,p] - ybar[s] - ybar[p] + ybar)^2 / ((n-1)(m-1))  E = s2_e + K s2_sp
    MS_KP  = n sum (ybar[p,k] - ybar[p])^2 / (m (K-1))                      E = s2_e + n s2_c
    MS_S   = m K sum (ybar[s] - ybar)^2 / (n-1)                             E = s2_e + K s2_sp + m K s2_s
    MS_P   = n K sum (ybar[p] - ybar)^2 / (m-1)                             E = s2_e + K s2_sp + n s2_c + n K s2_p

    s2_e = MS_E;  s2_sp = (MS_SP - MS_E) / K;  s2_c = (MS_KP - MS_E) / n;  s2_s = (MS_S - MS_SP) / (m K);
    s2_p = (MS_P - MS_SP - MS_KP + MS_E) / (n K)

s2_s: training seed; s2_sp: training seed x prompt; s2_c: evaluation noise (the image a noise seed gives,
shared by every run); s2_e: the rest (seed x image); s2_p: prompt. The prompt-level components pool every
prompt, so s2_p also holds the differences between tags; it does not enter a comparison on fixed prompts.

The gold is a weighted mean of prompt means, G = sum_p w_p ybar[s, p] (shapes-GenEval's ``overall_disjoint``:
w_p = 1 / (T m_t) for the m_t prompts of each of the T disjoint tags, 0 for shared tags; other rewards: 1/m).
Over training seeds, with prompts and noise fixed (the table's design), its variance is

    V = s2_s + W (s2_sp + s2_e / K),   W = sum_p w_p^2  (1 / (T M) with M prompts in each of T tags)

(a[s] moves every prompt alike; ab and e average over prompts and images; b and c are the same for every run
and cancel in a paired difference). A paired difference d between two configurations of independently seeded
runs on the same prompts and noise has Var(d) = V_A + V_B (2 V when only one configuration was measured), and
the minimum detectable paired difference over n training seeds (two-sided alpha, power 1 - beta;
``harness.reporting.stats.mdd``) is

    MDD = (t(1 - alpha/2, n-1) + t(1 - beta, n-1)) * sqrt(Var(d) / n).

That ab and e average independently over prompts and images, with one variance for every prompt, is the model's
assumption: a seed effect concentrated on a heavily weighted prompt (a tag with one prompt has weight 1/T) is
averaged out by the pooled components, and the modelled V is then too small. With a second configuration
(``--versus``) the observed sd of the seed-paired differences, and the MDD it implies, are printed beside the
modelled ones (rough with few seeds: n - 1 degrees of freedom).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import numpy as np

from harness.config import NOT_IN_KEY
from harness.reporting.stats import mdd
from harness.shapes.editions import geneval_edition
from harness.shapes.prompts import DISJOINT_TAGS, parse_prompt
from harness.store import Store, read_json, write_atomic
from harness.validate import Bound, at_least, check, within

COMPONENTS = ("seed", "seed_x_prompt", "noise", "residual", "prompt")
"""Variance components, in the order reported: s2_s, s2_sp, s2_c, s2_e, s2_p."""


@dataclass(frozen=True)
class PowerConfig:
    """``driftbench power``."""

    runs: tuple[str, ...] = ()
    """Run ids (shell-style patterns allowed, e.g. 'drpo-s*') of one configuration at two or more seeds."""
    versus: tuple[str, ...] = ()
    """Optional runs of a second configuration (same prompts and noise): the paired difference's variance is
    then V_A + V_B, and the observed sd of seed-paired differences is reported beside the modelled one."""
    split: Literal["test", "test_selected", "eval"] = "test"
    """Which stored evaluation: the test split at the end, at the selected checkpoint, or the last validation."""
    reward: str = "shapes-geneval"
    """The gold reward whose per-image scores are decomposed."""
    seeds: tuple[int, ...] = (5, 10, 20, 40)
    """Training seeds at which to report the minimum detectable difference."""
    prompts_per_tag: tuple[int, ...] = (0, 8, 24)
    """Prompts per tag for the projection (0: the measured prompts and tag weights)."""
    images: tuple[int, ...] = (0, 16, 32)
    """Images per prompt for the projection (0: the measured number)."""
    alpha: float = 0.05
    """Two-sided significance level."""
    power: float = 0.8
    """Power 1 - beta."""
    out: str = "results"
    """Results root: runs are read from <out>/runs; the report goes to <out>/power.md and .csv (power-<split>.md and
    .csv for a split other than test, so the two reports sit side by side)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "seeds": at_least(2), "prompts_per_tag": at_least(1, zero=True), "images": at_least(1, zero=True),
        "alpha": within(0, 1, strict_low=True, strict_high=True),
        "power": within(0, 1, strict_low=True, strict_high=True)}
    """Valid range of every numeric field (``harness.validate``)."""


# -- the statistics (pure functions) -------------------------------------------------------------------------


def components(y: np.ndarray) -> dict[str, float]:
    """Variance components of a balanced (n seeds, m prompts, K images) score array (module docstring), each
    truncated at 0. Needs n >= 2, m >= 2 and K >= 2."""
    y = np.asarray(y, dtype=np.float64)
    n, m, k = y.shape
    if min(n, m, k) < 2:
        raise ValueError(f"variance components need at least 2 seeds, 2 prompts and 2 images per prompt, "
                         f"got {n}, {m} and {k}")
    grand = y.mean()
    ys, yp = y.mean(axis=(1, 2)), y.mean(axis=(0, 2))
    ysp, ypk = y.mean(axis=2), y.mean(axis=0)
    ms_s = m * k * ((ys - grand) ** 2).sum() / (n - 1)
    ms_p = n * k * ((yp - grand) ** 2).sum() / (m - 1)
    ms_kp = n * ((ypk - yp[:, None]) ** 2).sum() / (m * (k - 1))
    ms_sp = k * ((ysp - ys[:, None] - yp[None, :] + grand) ** 2).sum() / ((n - 1) * (m - 1))
    ms_e = ((y - ysp[:, :, None] - ypk[None] + yp[None, :, None]) ** 2).sum() / ((n - 1) * m * (k - 1))
    return {"seed": max((ms_s - ms_sp) / (m * k), 0.0), "seed_x_prompt": max((ms_sp - ms_e) / k, 0.0),
            "noise": max((ms_kp - ms_e) / n, 0.0), "residual": float(ms_e),
            "prompt": max((ms_p - ms_sp - ms_kp + ms_e) / (n * k), 0.0)}


def seed_variance(comp: dict[str, float], weight_sq: float, images: int) -> float:
    """V: the variance over training seeds of the weighted gold on fixed prompts and noise."""
    return comp["seed"] + weight_sq * (comp["seed_x_prompt"] + comp["residual"] / images)


def gold_weights(prompts: list[str], reward: str) -> tuple[np.ndarray, int]:
    """Per-prompt weights of the gold and T, the number of weighted tags: shapes-GenEval's ``overall_disjoint``
    (equal per disjoint tag, equal within a tag, shared tags 0); any other reward, the plain mean (T = 1)."""
    ed = geneval_edition(reward)
    if ed is None:
        return np.full(len(prompts), 1.0 / len(prompts)), 1
    tags = [parse_prompt(p, ed)["tag"] for p in prompts]
    present = [t for t in DISJOINT_TAGS if t in tags]
    return np.array([1.0 / (len(present) * tags.count(t)) if t in present else 0.0 for t in tags]), len(present)


# -- reading the runs ------------------------------------------------------------------------------------------


@dataclass
class Group:
    """One configuration's per-image scores: ``y`` (n seeds, m prompts, K images), in seed order."""

    run_ids: list[str]
    seeds: list[int]
    prompts: list[str]
    y: np.ndarray
    weights: np.ndarray
    tags: int
    """T, the number of tags the gold averages."""
    stored_gold: list[float]
    """The headline each run stored (``<split>/<reward>/overall_disjoint``, else ``mean``), to check against."""

    def gold(self) -> np.ndarray:
        return self.y.mean(axis=2) @ self.weights


def match_runs(store: Store, patterns: Sequence[str], status: str | None = None) -> list[str]:
    """The run ids (with ``status``; None: any) matching any of the shell patterns, in first-match order; a pattern
    that matches none is a one-line ValueError."""
    ids = store.run_ids(status=status)
    out: list[str] = []
    for pattern in patterns:
        hits = [r for r in ids if fnmatch.fnmatchcase(r, pattern)]
        if not hits:
            raise ValueError(f"no {status + ' ' if status else ''}run matches '{pattern}' in {store.runs_dir}")
        out += [h for h in hits if h not in out]
    return out


def _config(manifest: dict) -> dict:
    run = {k: v for k, v in manifest.get("run", {}).items() if k not in (*NOT_IN_KEY, "seed")}
    return {"run": run, "method": manifest.get("method_config", {})}


def _differ(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _differ(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{key} ({va!r} vs {vb!r})"
    return ""


def load_group(store: Store, patterns: tuple[str, ...], split: str, reward: str) -> Group:
    """The matched runs' per-image scores of ``split``, checked to be one configuration at >= 2 seeds."""
    run_ids = match_runs(store, patterns)
    first = store.manifest(run_ids[0])
    seeds: dict[int, str] = {}
    for run_id in run_ids:
        manifest = store.manifest(run_id)
        if store.status(run_id, manifest) != "complete":
            raise ValueError(f"run '{run_id}' is {store.status(run_id, manifest)}, not complete")
        code = (manifest.get("versions", {}).get("code"), first.get("versions", {}).get("code"))
        if code[0] != code[1]:
            raise ValueError(f"runs '{run_ids[0]}' and '{run_id}' ran different code ({code[1]} vs {code[0]})")
        diff = _differ(_config(first), _config(manifest))
        if diff:
            raise ValueError(f"runs '{run_ids[0]}' and '{run_id}' differ in configuration: {diff}")
        seed = manifest["run"]["seed"]
        if seed in seeds:
            raise ValueError(f"runs '{seeds[seed]}' and '{run_id}' have the same training seed {seed}")
        seeds[seed] = run_id
    if len(seeds) < 2:
        raise ValueError(f"power needs runs at two or more training seeds; {', '.join(run_ids)} "
                         f"{'has' if len(run_ids) == 1 else 'have'} only seed {next(iter(seeds))}")
    order = sorted(seeds)
    records = [_record(store, seeds[s], split, reward) for s in order]
    prompts, k = records[0]["prompts"], records[0]["seeds"]
    for s, rec in zip(order, records):
        if rec["prompts"] != prompts or rec["seeds"] != k or rec["seed_base"] != records[0]["seed_base"]:
            raise ValueError(f"runs '{seeds[order[0]]}' and '{seeds[s]}' were evaluated on different prompts "
                             f"or noise")
    y = np.array([rec["scores"][reward] for rec in records], dtype=np.float64).reshape(len(order), len(prompts), k)
    stored = []
    for s in order:
        summary = store.run_dir(seeds[s]) / "summary.json"
        values = read_json(summary, dict) if summary.is_file() else {}  # a damaged summary is named
        stored.append(values.get(f"{split}/{reward}/overall_disjoint", values.get(f"{split}/{reward}/mean",
                                                                                    float("nan"))))
    return Group([seeds[s] for s in order], order, prompts, y, *gold_weights(prompts, reward), stored)


def _record(store: Store, run_id: str, split: str, reward: str) -> dict:
    records = store.scores(run_id)
    if not records:
        raise ValueError(f"run '{run_id}' stores no per-image scores (it predates scores.jsonl); re-run it")
    which = [r for r in records if r["which"] == split]
    if not which and split == "test_selected":  # the selected checkpoint was the final one: stored once
        which = [r for r in records if r["which"] == "test"]
    if not which:
        valid = sorted({r["which"] for r in records})
        raise ValueError(f"run '{run_id}' has no '{split}' scores; stored: {', '.join(valid)}")
    rec = max(which, key=lambda r: r["step"])
    if reward not in rec["scores"]:
        raise ValueError(f"run '{run_id}' stores no scores of reward '{reward}'; stored: "
                         f"{', '.join(sorted(rec['scores']))}")
    return rec


# -- the report ------------------------------------------------------------------------------------------------


def _design(group: Group, prompts_per_tag: int, images: int) -> tuple[str, float, int]:
    """(label, W, K) of one projected design; 0 keeps the measured prompts (and tag weights) or images."""
    weight_sq = float((group.weights ** 2).sum()) if prompts_per_tag == 0 else 1.0 / (group.tags * prompts_per_tag)
    k = images or group.y.shape[2]
    where = "measured prompts" if prompts_per_tag == 0 else f"{prompts_per_tag} prompts x {group.tags} tags"
    return f"{where}, {k} images", weight_sq, k


def analyse(cfg: PowerConfig, group: Group, versus: Group | None = None) -> tuple[list[str], list[dict]]:
    """The report's markdown lines and CSV rows for one configuration (and optionally a second one)."""
    comp = components(group.y)
    other = components(versus.y) if versus is not None else comp
    gold = group.gold()
    lines = ["# Variance components of the gold and the minimum detectable paired difference", "",
             f"Runs: {', '.join(group.run_ids)} (training seeds {', '.join(map(str, group.seeds))}); split "
             f"'{cfg.split}', reward '{cfg.reward}': {group.y.shape[1]} prompts x {group.y.shape[2]} images, "
             f"gold averaged over {group.tags} tag(s).", "",
             f"Gold per seed from the per-image scores: {', '.join(f'{g:.4f}' for g in gold)} (stored headline: "
             f"{', '.join(f'{g:.4f}' for g in group.stored_gold)}); sd over seeds {gold.std(ddof=1):.4f}.", "",
             "| component | variance (per image) | share of V at the measured design |", "|---|---|---|"]
    weight_sq, k = float((group.weights ** 2).sum()), group.y.shape[2]
    v = seed_variance(comp, weight_sq, k)
    share = {"seed": comp["seed"], "seed_x_prompt": weight_sq * comp["seed_x_prompt"],
             "residual": weight_sq * comp["residual"] / k}
    rows = []
    for name in COMPONENTS:
        part = f"{share[name] / v:.0%}" if name in share and v > 0 else "(cancels in a paired Δ)"
        lines.append(f"| {name} | {comp[name]:.5f} | {part} |")
        rows.append({"kind": "component", "name": name, "value": comp[name], "versus": other[name]})
    n, m = group.y.shape[:2]
    lines += ["", f"Modelled sd of the gold over seeds: {math.sqrt(v):.4f} (observed {gold.std(ddof=1):.4f}). Degrees of "
              f"freedom: seed {n - 1}, seed x prompt {(n - 1) * (m - 1)}, residual {(n - 1) * m * (k - 1)}; with few "
              f"seeds the seed component is a rough estimate."]
    if versus is not None:
        d = _paired(group, versus)
        v_other = seed_variance(other, float((versus.weights ** 2).sum()), versus.y.shape[2])
        lines.append(f"Versus {', '.join(versus.run_ids)}: modelled sd(d) {math.sqrt(v + v_other):.4f}, observed "
                     f"{d.std(ddof=1):.4f} over {d.size} seed-paired differences (mean {d.mean():+.4f}).")
    lines += ["", f"Minimum detectable paired gold difference (two-sided alpha {cfg.alpha:g}, power {cfg.power:g}); "
              f"Var(d) = V_A + V_B{' (V_B = V_A: one configuration measured)' if versus is None else ''}:", "",
              "| design | " + " | ".join(f"n = {n}" for n in cfg.seeds) + " |", "|---" * (len(cfg.seeds) + 1) + "|"]
    designs = {}
    for per_tag in cfg.prompts_per_tag:
        for images in cfg.images:
            label, w2, kk = _design(group, per_tag, images)
            designs.setdefault(label, (per_tag, w2, kk))
    for label, (per_tag, w2, kk) in designs.items():
        w2_other = w2 if versus is None or per_tag else float((versus.weights ** 2).sum())
        var_d = seed_variance(comp, w2, kk) + seed_variance(other, w2_other, kk)
        cells = [mdd(math.sqrt(var_d), n, cfg.alpha, cfg.power) for n in cfg.seeds]
        lines.append(f"| {label} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
        rows += [{"kind": "mdd", "name": label, "prompts_per_tag": per_tag, "images": kk, "seeds": n,
                  "value": c} for n, c in zip(cfg.seeds, cells)]
    if versus is not None:  # the direct measure, without the model (rough: n - 1 degrees of freedom)
        observed = _paired(group, versus)
        cells = [mdd(float(observed.std(ddof=1)), n, cfg.alpha, cfg.power) for n in cfg.seeds]
        lines.append("| measured design, observed sd(d) | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
        rows += [{"kind": "mdd_observed", "name": "measured design, observed sd(d)", "seeds": n, "value": c}
                 for n, c in zip(cfg.seeds, cells)]
    lines += ["", "Model and formulas: `harness/reporting/power.py` (module docstring)."]
    return lines, rows


def _paired(a: Group, b: Group) -> np.ndarray:
    if a.prompts != b.prompts or a.y.shape[2] != b.y.shape[2]:
        raise ValueError(f"runs '{a.run_ids[0]}' and '{b.run_ids[0]}' were evaluated on different prompts or noise")
    common = [s for s in a.seeds if s in b.seeds]
    if len(common) < 2:
        raise ValueError(f"--versus runs share fewer than two training seeds with --runs ({common or 'none'})")
    ga, gb = a.gold(), b.gold()
    return np.array([ga[a.seeds.index(s)] - gb[b.seeds.index(s)] for s in common])


def power(cfg: PowerConfig) -> Path:
    """Write ``<out>/power.md`` and ``power.csv`` (``power-<split>`` for a split other than test); returns the
    markdown's path."""
    import pandas as pd

    check(cfg)
    if not cfg.runs:
        raise ValueError("power needs --runs: the run ids (or patterns) of one configuration at two or more seeds")
    store = Store(cfg.out)
    group = load_group(store, cfg.runs, cfg.split, cfg.reward)
    versus = load_group(store, cfg.versus, cfg.split, cfg.reward) if cfg.versus else None
    lines, rows = analyse(cfg, group, versus)
    path = Path(cfg.out) / ("power.md" if cfg.split == "test" else f"power-{cfg.split}.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    write_atomic(path.with_suffix(".csv"), lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
    write_atomic(path, lambda tmp: tmp.write_text(text))
    return path
