"""The comparisons of ``results/limitations.md``: prompt selection (per tag and per prompt), best-of-K at
inference beside the trained methods with their compute, and offline -> online. Each section reads the stored
runs named by the plan and returns its Markdown lines; every difference is DrPO minus the other side, with its
seed interval and its prompt-bootstrap interval (``limitations_data``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.best_of_k import references
from harness.reporting import limitations_figures as figures
from harness.reporting.limitations_data import (
    Side,
    compare,
    paired_gold,
    prompt_claim,
    seed_claim,
    seed_ids,
    side,
    spread,
    summary,
)
from harness.reporting.limitations_plan import Plan
from harness.reporting.stats import paired
from harness.reporting.tables import headline, t_interval
from harness.store import Store


def best_baseline(plan: Plan, store: Store) -> tuple[str | None, str]:
    """The baseline with the highest mean validation gold at its selected checkpoint (``select/value``): chosen on
    validation, so the test comparison makes no choice on test. Returns (method, how it was chosen)."""
    values = {}
    for i, point in enumerate(plan.points):
        if point.part == "baseline" and i in plan.runs:
            values[point.method] = float(np.mean([summary(store, r).get("select/value", float("nan"))
                                                   for r in plan.runs[i].values()]))
    if not values:
        return None, "no baseline runs"
    best = max(values, key=lambda m: (values[m], m))
    shown = ", ".join(f"{m} {v:.3f}" for m, v in sorted(values.items(), key=lambda kv: -kv[1]))
    return best, f"highest mean validation {plan.gold} at the selected checkpoint ({shown})"


def _sides(plan: Plan, store: Store) -> tuple[Side, Side | None, Side | None, str | None]:
    """DrPO (base point), the base generator (best-of-1), the best baseline: their test scores (``plan.at``)."""
    drpo = side(store, seed_ids(plan.runs[plan.index("base")]), plan.scale.split, plan.gold)
    base = side(references(plan.store_root), [plan.refs[1]], "test", plan.gold) if 1 in plan.refs else None
    method, _ = best_baseline(plan, store)
    other = side(store, seed_ids(plan.runs[plan.index("baseline", method)]), plan.scale.split, plan.gold) if method \
        else None
    return drpo, base, other, method


def prompts_section(plan: Plan, store: Store, directory: Path | None) -> list[str]:
    drpo, base, other, method = _sides(plan, store)
    _, how = best_baseline(plan, store)
    reps = plan.scale.reps
    lines = [f"### Prompt selection: per-tag and per-prompt effects (test, {plan.at})", "",
             f"Best baseline: **{method}** ({how}). Every difference is DrPO minus the other side: the seed interval "
             f"(prompts fixed, t over seed-paired differences) beside the prompt-bootstrap interval (seeds fixed, "
             f"prompts resampled within their tag, {reps} replicates); the wider one is the dominant uncertainty.", ""]
    versus = [("base generator", base), (f"best baseline ({method})", other)]
    versus = [(name, s) for name, s in versus if s is not None]
    lines += ["| DrPO − | Δ | seed interval | prompt interval | dominant |", "|---|---|---|---|---|"]
    for name, s in versus:
        iv = compare(drpo, s, reps)
        lines.append(f"| {name} | {iv.point:+.3f} | {seed_claim(iv.seed)} | {prompt_claim(iv)} | {iv.dominant or '–'} |")
    tags = list(dict.fromkeys(drpo.strata))
    lines += ["", f"Per tag ({plan.gold} of the tag's prompts; shared tags carry no weight in the headline):", "",
              "| tag | prompts | " + " | ".join(f"DrPO − {n}: seeds | prompts" for n, _ in versus) + " |",
              "|---|---|" + "---|---|" * len(versus)]
    for tag in tags:
        idx = [i for i, t in enumerate(drpo.strata) if t == tag]
        cells = []
        for _, s in versus:
            iv = compare(drpo, s, reps, idx)
            cells += [seed_claim(iv.seed), prompt_claim(iv)]
        lines.append(f"| {tag} | {len(idx)} | " + " | ".join(cells) + " |")
    lines += ["", "Per prompt (Δ averaged over seeds; a prompt's own interval is a t over its seed-paired differences, "
              "uncorrected for the number of prompts):", ""]
    panels = {}
    for name, s in versus:
        pa, pb = drpo.y.mean(axis=2), s.y.mean(axis=2)
        common = [drpo.seeds.index(x) for x in drpo.seeds if len(s.seeds) == 1 or x in s.seeds]
        rows = pb[[0] * len(common)] if len(s.seeds) == 1 else pb[[s.seeds.index(drpo.seeds[c]) for c in common]]
        d = pa[common] - rows                                   # (seeds, prompts)
        mean = d.mean(axis=0)
        tests = [paired(d[:, p].tolist()) for p in range(d.shape[1])]
        up = sum(1 for t in tests if not t.spans_zero and t.mean > 0)
        down = sum(1 for t in tests if not t.spans_zero and t.mean < 0)
        order = np.argsort(mean, kind="stable")
        worst = "; ".join(f"'{drpo.prompts[p]}' {mean[p]:+.2f}" for p in order[:3])
        best = "; ".join(f"'{drpo.prompts[p]}' {mean[p]:+.2f}" for p in order[::-1][:3])
        lines.append(f"- DrPO − {name}: {int((mean > 0).sum())} prompts up, {int((mean < 0).sum())} down, "
                     f"{int((mean == 0).sum())} unchanged of {len(mean)}; the interval excludes zero upward for {up}, "
                     f"downward for {down}. Largest gains: {best}. Largest losses: {worst}.")
        panels[f"DrPO − {name}"] = (mean.tolist(), list(drpo.strata))
    if directory is not None and panels:
        lines += ["", f"![per-prompt differences]({directory.name}/{figures.per_prompt(directory, panels, plan.gold)})"]
    return lines + [""]


def _gen_gflop(ref: dict[str, Any]) -> float:
    """GFLOP of one delivered image without reranking (text, one-step generation, decode), from best-of-K's meter."""
    compute = ref["compute"]
    flops = sum(compute["phases"].get(p, {}).get("flops", 0.0) for p in ("text", "generate", "decode"))
    return flops / max(1, compute["k"] * compute["images"]) / 1e9


def best_of_k_section(plan: Plan, store: Store, directory: Path | None) -> list[str]:
    refs = references(plan.store_root)
    reps = plan.scale.reps
    drpo_ids = seed_ids(plan.runs[plan.index("base")])
    drpo = side(store, drpo_ids, plan.scale.split, plan.gold)
    ref_summary = {k: summary(refs, r) for k, r in plan.refs.items()}
    gen = _gen_gflop(ref_summary[min(plan.refs)])
    drpo_train = float(np.mean([summary(store, r)["budget/flops"] for r in drpo_ids]))
    k_train = plan.resolved.runs["drpo"].k
    lines = ["## Limitation 2: a stronger reference — best-of-K at inference beside the trained methods", "",
             f"Best-of-K samples K images from the base generator per delivered image and keeps the {plan.proxy} "
             f"(the training reward) best; at K = {k_train} it spends the reward calls per image that training spends "
             f"per prompt visit (K = {k_train} candidates ranked). Δ is DrPO minus the row. Compute: training spend "
             "(metered, mean over seeds) and inference spend per delivered image; break-even: images after which "
             "DrPO's training plus one-step inference costs fewer FLOPs than the row's reranking.", "",
             f"| row | test {plan.gold} | DrPO − row: seeds | DrPO − row: prompts | training reward calls | "
             "training TFLOP | inference reward calls / image | inference GFLOP / image | DrPO break-even (images) |",
             "|---|---|---|---|---|---|---|---|---|"]
    fig_rows = []
    for k, ref_id in sorted(plan.refs.items()):
        s = side(refs, [ref_id], "test", plan.gold)
        iv = compare(drpo, s, reps)
        # K = 1 is the base generator itself: its one reward call only scored it, so it costs a plain sample.
        per_image = ref_summary[k]["compute"]["flops_per_image"] / 1e9 if k > 1 else gen
        even = f"{drpo_train / ((per_image - gen) * 1e9):,.0f}" if per_image > gen else "–"
        label = "base generator (K = 1)" if k == 1 else f"best-of-{k}" + (" (matched reward calls)" if k == k_train else "")
        gold = list(s.gold().values())[0]
        lines.append(f"| {label} | {gold:.3f} | {seed_claim(iv.seed)} | {prompt_claim(iv)} | 0 | 0 | "
                     f"{k if k > 1 else 0} | {per_image:.3f} | {even} |")
        fig_rows.append((f"K={k}", per_image, gold, float("nan"), True))
    for i, point in enumerate(plan.points):
        if point.part not in ("base", "baseline") or i not in plan.runs:
            continue
        ids = seed_ids(plan.runs[i])
        s = side(store, ids, plan.scale.split, plan.gold)
        golds = list(s.gold().values())
        sums = [summary(store, r) for r in ids]
        calls = np.mean([x["budget/reward_calls"] for x in sums])
        tflop = np.mean([x["budget/flops"] for x in sums]) / 1e12
        cells = "– | –"
        if point.method != "drpo":
            iv = compare(drpo, s, reps)
            cells = f"{seed_claim(iv.seed)} | {prompt_claim(iv)}"
        lines.append(f"| {point.method} (trained) | {spread(golds)} | {cells} | {calls:,.0f} | {tflop:.3f} | 0 | "
                     f"{gen:.3f} | – |")
        fig_rows.append((point.method, gen, *t_interval(golds), False))
    if directory is not None:
        lines += ["", f"![gold against inference compute]({directory.name}/{figures.best_of_k(directory, fig_rows, plan.gold)})"]
    return lines + [""]


def _curve(store: Store, ids: dict[int, str], gold: str, prefix: str) -> dict[int, dict[int, float]]:
    """{update: {seed: gold}} from the runs' evaluation rows: ``prefix`` "curve" (the test curve split) or "eval"
    (validation)."""
    out: dict[int, dict[int, float]] = {}
    for seed, run_id in ids.items():
        for row in store.rows(run_id, kind="eval"):
            value = headline(row, gold, prefix=prefix)
            if value is not None:
                out.setdefault(int(row["budget/updates"]), {})[seed] = value
    return out


def offline_section(plan: Plan, store: Store, directory: Path | None) -> list[str]:
    scratch, online, offline = (plan.runs[plan.index(p)] for p in ("base", "online", "offline"))
    reps = plan.scale.reps
    run0 = plan.resolved.runs["drpo"]
    prefix, where = ("curve", f"test-curve {plan.gold} ({run0.curve_split} split, {run0.curve_seeds} images per "
                              "prompt, on the test noise)") if run0.curve_split else ("eval", f"validation {plan.gold}")
    lines = ["## Limitation 3: offline to online", "",
             f"DrPO trained offline ({plan.scale.offline_updates} updates, anchors from the profile's preference data "
             f"set: `--drpo.anchors offline --offline-data`), then continued online from its final weights "
             f"(`--init-from`), against online from scratch at the same online budget ({run0.updates} updates, the "
             f"base point's runs); seeds paired. The {where} at matched online updates:", "",
             "| online update | from scratch | from offline | offline − scratch (seeds) |", "|---|---|---|---|"]
    a, b = _curve(store, scratch, plan.gold, prefix), _curve(store, online, plan.gold, prefix)
    shared = sorted(set(a) & set(b))
    curves = {"from scratch": _band(a, shared), "from offline": _band(b, shared)}
    early = []
    for u in shared:
        test = paired_gold(b[u], a[u])
        lines.append(f"| {u} | {spread(list(a[u].values()))} | {spread(list(b[u].values()))} | {seed_claim(test)} |")
        early.append((u, test))
    end_a = side(store, seed_ids(online), "test", plan.gold)
    end_b = side(store, seed_ids(scratch), "test", plan.gold)
    iv = compare(end_a, end_b, reps)
    off = side(store, seed_ids(offline), "test", plan.gold).gold()
    longer = _longer_curve(plan, store, prefix)
    lines += _longer(plan, longer, b)
    lines += ["", f"Test {plan.gold} at the end (both arms at update {run0.updates}): from offline "
              f"{spread(list(end_a.gold().values()))}, from scratch {spread(list(end_b.gold().values()))}; "
              f"offline − scratch {seed_claim(iv.seed)}, {prompt_claim(iv)}. The offline run alone (before any online "
              f"update): {spread(list(off.values()))}.", "", f"**Verdict: {_verdict(iv, early)}**"]
    if directory is not None and early:
        curves, xlabel = _total_axis(plan, longer, curves)
        figure = figures.offline_online(directory, curves, where.split(" (")[0], xlabel)
        lines += ["", f"![offline to online]({directory.name}/{figure})"]
    return lines + [""]


def _band(curve: dict[int, dict[int, float]], updates: list[int]) -> tuple[list, list, list]:
    """(updates, mean, 95% t half-width over seeds) of a {update: {seed: gold}} curve at ``updates``."""
    bands = [t_interval(list(curve[u].values())) for u in updates]
    return list(updates), [m for m, _ in bands], [h for _, h in bands]


def _longer_curve(plan: Plan, store: Store, prefix: str) -> dict[int, dict[int, float]] | None:
    """{update: {seed: gold}} of the control (online from scratch for the offline plus the online updates), or
    None when the plan has no stored control."""
    i = plan.index("long")
    return _curve(store, plan.runs[i], plan.gold, prefix) if i is not None and i in plan.runs else None


def _longer(plan: Plan, longer: dict[int, dict[int, float]] | None, online: dict[int, dict[int, float]]) -> list[str]:
    """The control beside the offline start at the same total updates (offline updates + online update), so a
    difference is the start's and not the count's."""
    if longer is None:
        return []
    shift = plan.scale.offline_updates
    shared = sorted(u for u in online if u + shift in longer)
    lines = ["", f"Control at matched total updates (the offline run's {shift} plus the online run's): online from "
             f"scratch for {shift + plan.resolved.runs['drpo'].updates} updates, same seeds.", "",
             "| total updates | from scratch, longer | offline then online | offline start − longer (seeds) |",
             "|---|---|---|---|"]
    for u in shared:
        lines.append(f"| {u + shift} | {spread(list(longer[u + shift].values()))} | {spread(list(online[u].values()))} "
                     f"| {seed_claim(paired_gold(online[u], longer[u + shift]))} |")
    if shared:
        end = paired_gold(online[shared[-1]], longer[shared[-1] + shift])
        where = "no different from" if end.spans_zero else ("above" if end.mean > 0 else "below")
        lines += ["", f"At {shared[-1] + shift} total updates the offline start is {where} as many updates online from "
                  f"scratch ({seed_claim(end)})."]
    return lines


def _total_axis(plan: Plan, longer: dict[int, dict[int, float]] | None, curves: dict[str, tuple[list, list, list]]):
    """With the longer control stored: every arm on one axis of total updates (the offline start's curve shifted
    by the offline updates) and the control as a third arm; else the curves as they are, on online updates."""
    if longer is None:
        return curves, "online updates"
    shift = plan.scale.offline_updates
    x, mean, half = curves["from offline"]
    return {"online from scratch": curves["from scratch"],
            f"offline ({shift} updates), then online": ([u + shift for u in x], mean, half),
            "online from scratch, longer (control)": _band(longer, sorted(longer))}, "updates (offline + online)"


def _verdict(iv: Any, early: list[tuple[int, Any]]) -> str:
    """Helps or hurts when the end's seed interval excludes zero; washes out when an earlier matched update's did
    and the end's does not; else no detectable effect (with the end's MDD)."""
    end = iv.seed
    if not end.spans_zero:
        return (f"the offline start {'helps' if end.mean > 0 else 'hurts'} at the end of the online budget "
                f"({seed_claim(end)}).")
    shown = [(u, t) for u, t in early if not t.spans_zero]
    if shown:
        u, t = shown[0]
        return (f"washes out: offline − scratch was {seed_claim(t)} at online update {u}, and at the end "
                f"{seed_claim(end)}.")
    return f"no detectable effect at any matched update; at the end {seed_claim(end)}."
