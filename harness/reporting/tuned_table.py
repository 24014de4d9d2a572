"""The tuned comparison's table: every method at its tuned configuration and its validation-selected
checkpoint, on the test split, with paired-by-seed differences against DrPO.

Every method of a section shares the training seeds and the evaluation noise, so method A and DrPO on seed s
are a pair; the interval of a difference is a Student-t 95% interval over the per-seed differences (paired),
which is what the shared noise buys. Values are mean ± half-width over seeds.

A section is computed first (:func:`compute`) and written after (:func:`render`), because the Holm correction
runs over the paired tests of every section of the table: ``harness.reporting.table2`` adjusts the p-values
of all sections together and then renders each one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from harness.reporting import missing, timing
from harness.reporting.stats import Paired, seeds_for_half_width
from harness.reporting.stats import paired as paired_test
from harness.reporting.tables import fmt, headline, t_interval
from harness.store import Store
from methods import METHODS

HALF_WIDTH_TARGET = 0.015
"""The 95% half-width every paired gold Δ of a tuned table should reach (issue 18: a table that separates methods
that differ by 0.02 in gold); the table says which Δs miss it and how many seeds their observed SD would need."""
GOLDS = ("shapes-geneval", "shapes2-geneval")
"""The gold verifiers: shapes-GenEval of the Shapes world's edition 1 or 2."""


def _summaries(store: Store, run_ids: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The readable runs' summaries, and a note naming each run left out (``harness.reporting.missing``)."""
    out, notes = missing.load(store, run_ids)
    for s in out:
        s.update(code=s["_manifest"]["versions"].get("code"), reward=s["_manifest"]["reward"])
    return out, notes


def _by_method(summaries: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for s in summaries:
        out.setdefault(s["method"], {})[s["seed"]] = s
    return out


def gold_of(summary: dict[str, Any], proxy: str) -> str:
    """The gold reward of a table: shapes-GenEval (of the runs' edition) where the runs evaluated it, else the
    training reward."""
    return next((g for g in GOLDS if any(k.startswith(f"test_selected/{g}/") for k in summary)), proxy)


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float]:
    """Mean and 95% half-width of a - b over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    return t_interval([a[s] - b[s] for s in seeds])


def paired_by_seed(a: dict[int, float], b: dict[int, float]) -> Paired:
    """The paired test of a - b over the seeds both have."""
    return paired_test([a[s] - b[s] for s in sorted(set(a) & set(b))])


def tags_of(summary: dict[str, Any], reward: str, prefix: str = "test_selected") -> list[str]:
    """The per-tag scores a GenEval-style reward stored (``<prefix>/<reward>/<tag>``), in stored order."""
    skip = {"mean", "base_mean", "base_std", "sem", "win_rate", "n", "overall", "overall_disjoint", "correct_images",
            "correct_prompts"}  # GenEval's summary counts, not tags
    head = f"{prefix}/{reward}/"
    return [k[len(head):] for k in summary if k.startswith(head) and "/" not in k[len(head):]
            and k[len(head):] not in skip and not k[len(head):].startswith("base_")]


@dataclass
class Comparison:
    """One paired test of the table's family (method - reference on one reward); ``p_holm`` is set by the
    table once every section's tests are known."""

    method: str
    reward: str
    test: Paired
    p_holm: float = math.nan


@dataclass
class SectionResult:
    title: str
    proxy: str
    gold: str
    ref: str
    rewards: list[str]
    tags: list[str]
    rows: list[dict[str, Any]]
    """Per method: the cells' statistics (see :func:`compute`)."""
    comparisons: list[Comparison]
    seeds: list[dict[str, Any]]
    """Per-seed values (section, method, seed, metric, reward, checkpoint, value): the aggregate's input."""
    notes: list[str] = field(default_factory=list)
    cost: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per method: counted FLOPs and the runs' metered seconds per update."""
    clock: timing.SectionTiming | None = None
    """The controlled measurement the seconds columns show (``harness.reporting.timing``)."""


def compute(title: str, store: Store, run_ids: Sequence[str], tuned: dict[str, dict[str, Any]],
            unequal: Sequence[str] = (), clock: timing.SectionTiming | None = None) -> SectionResult:
    """Every statistic of one tuned section, from the stored summaries."""
    summaries, left_out = _summaries(store, run_ids)
    if not summaries:
        raise ValueError(f"section '{title}': none of its runs has a readable summary: " + "; ".join(left_out))
    proxy = summaries[0]["reward"]
    gold_name = gold_of(summaries[0], proxy)
    rewards = [proxy] + ([gold_name] if proxy != gold_name else [])
    summaries, bad = missing.screen(summaries, rewards, prefix="test_selected")  # named below, never averaged away
    left_out += bad
    if not summaries:
        raise ValueError(f"section '{title}': every run was left out: " + "; ".join(left_out))
    asked = missing.asked(store, run_ids)
    runs = _by_method(summaries)
    ref = "drpo" if "drpo" in runs else next(iter(runs))
    tags = tags_of(summaries[0], gold_name)

    def values(method: str, reward: str, prefix: str = "test_selected", base: bool = False,
               metric: str = "") -> dict[int, float]:
        if metric:
            key = f"{prefix}/{reward}/{'base_' if base else ''}{metric}"
            return {seed: s[key] for seed, s in runs[method].items() if key in s}
        return {seed: headline(s, reward, base=base, prefix=prefix) for seed, s in runs[method].items()}

    rows, comparisons, seeds_out = [], [], []
    base_gold = values(ref, gold_name, base=True)
    for method, seeds in runs.items():
        gold, end = values(method, gold_name), values(method, gold_name, prefix="test")
        upd = [s["budget/updates"] for s in seeds.values()]
        row: dict[str, Any] = {
            "method": method, "seeds": len(seeds), "asked": max(asked.get(method, 0), len(seeds)),
            "trial": tuned.get(method),
            "test": {r: t_interval(list(values(method, r).values())) for r in rewards},
            "gain": paired_by_seed(gold, values(method, gold_name, base=True)),
            "end": t_interval(list(end.values())),
            "selected_minus_end": paired_by_seed(gold, end),
            "selected_update": t_interval([s.get("select/step", math.nan) for s in seeds.values()]),
            "flops_per_update": sum(s["budget/flops"] for s in seeds.values()) / sum(upd),
            "seconds_per_update": sum(s["budget/seconds"] for s in seeds.values()) / sum(upd),
            "tags": {t: t_interval(list(values(method, gold_name, metric=t).values())) for t in tags},
            "tags_end": {t: t_interval(list(values(method, gold_name, prefix="test", metric=t).values())) for t in tags},
        }
        if method != ref:
            for reward in rewards:
                comparisons.append(Comparison(method, reward, paired_by_seed(values(method, reward), values(ref, reward))))
        rows.append(row)
        for seed in seeds:
            for checkpoint, prefix in (("selected", "test_selected"), ("end", "test")):
                for reward in rewards:
                    seeds_out.append({"section": title, "method": method, "seed": int(seed), "metric": "score",
                                      "reward": reward, "checkpoint": checkpoint,
                                      "value": float(values(method, reward, prefix=prefix)[seed])})
                for t in tags:
                    v = values(method, gold_name, prefix=prefix, metric=t).get(seed)
                    if v is not None:
                        seeds_out.append({"section": title, "method": method, "seed": int(seed), "metric": t,
                                          "reward": gold_name, "checkpoint": checkpoint, "value": float(v)})
            seeds_out.append({"section": title, "method": method, "seed": int(seed), "metric": "gain",
                              "reward": gold_name, "checkpoint": "selected",
                              "value": float(gold[seed] - base_gold.get(seed, math.nan))})
    base = {r: t_interval(list(values(ref, r, base=True).values())) for r in rewards}
    base_tags = {t: t_interval(list(values(ref, gold_name, base=True, metric=t).values())) for t in tags}
    rows.insert(0, {"method": "base", "test": base, "tags": base_tags})
    cost = {r["method"]: {"flops": r["flops_per_update"], "seconds": r["seconds_per_update"], "updates": 1.0}
            for r in rows[1:]}
    return SectionResult(title, proxy, gold_name, ref, rewards, tags, rows, comparisons, seeds_out,
                         _notes(summaries, unequal) + missing.note_lines(left_out), cost, clock)


def _delta_cell(c: Comparison | None) -> str:
    """A paired Δ with its Holm-adjusted p, and where the interval spans zero the minimum detectable
    difference: "no difference" is only as strong as what the table could have detected."""
    if c is None:
        return "–"
    t = c.test
    cell = f"{fmt(t.mean, t.half)} (p_Holm {c.p_holm:.2f}"
    return cell + (f"; MDD {t.mdd:.3f})" if t.spans_zero else ")")


def _trial(entry: dict[str, Any] | None) -> str:
    return f"{entry['trial']} ({entry['value']:.3f})" if entry else "untuned"


def render(res: SectionResult) -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown lines and tidy CSV records (one per section x method x metric) of a computed section."""
    proxy, gold, ref = res.proxy, res.gold, res.ref
    by = {(c.method, c.reward): c for c in res.comparisons}
    header = ["method", "reward grad.", "tuned: trial (validation)", *[f"test {r}" for r in res.rewards],
              f"gain ({gold})", f"paired Δ vs {ref} ({gold})", *([f"paired Δ vs {ref} ({proxy})"] if proxy != gold else []),
              f"test {gold} at end", f"selected − end ({gold}, paired)", "selected update", "GFLOP/update",
              *timing.HEADER, "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = res.rows[0]
    lines.append("| " + " | ".join(["base", "–", "–", *[fmt(*base["test"][r]) for r in res.rewards]]
                                   + ["–"] * (len(header) - 3 - len(res.rewards))) + " |")
    records: list[dict[str, Any]] = []

    def record(method: str, metric: str, reward: str, checkpoint: str, mean: float, half: float = math.nan,
               seeds: int = 0, **extra: float) -> None:
        records.append({"section": res.title, "table": "main", "method": method, "metric": metric, "reward": reward,
                        "split": "test", "checkpoint": checkpoint, "value": float(mean), "half_width": float(half),
                        "seeds": int(seeds), "p": extra.get("p", math.nan), "p_holm": extra.get("p_holm", math.nan),
                        "mdd": extra.get("mdd", math.nan)})
    for r in res.rewards:
        record("base", "score", r, "base", *base["test"][r])
    for row in res.rows[1:]:
        m, n = row["method"], row["seeds"]
        cells = [m, "Yes" if METHODS.get(m).REWARD_GRADIENT else "No", _trial(row["trial"]),
                 *[fmt(*row["test"][r]) for r in res.rewards], fmt(row["gain"].mean, row["gain"].half),
                 _delta_cell(by.get((m, gold))), *([_delta_cell(by.get((m, proxy)))] if proxy != gold else []),
                 fmt(*row["end"]), fmt(row["selected_minus_end"].mean, row["selected_minus_end"].half),
                 f"{row['selected_update'][0]:.0f}", f"{row['flops_per_update'] / 1e9:.1f}",
                 *timing.cells(res.clock, m), missing.beside(str(n), n, row.get("asked", n))]
        lines.append("| " + " | ".join(cells) + " |")
        for r in res.rewards:
            record(m, "score", r, "selected", *row["test"][r], seeds=n)
        g, d = row["gain"], row["selected_minus_end"]
        record(m, "gain", gold, "selected", g.mean, g.half, n, p=g.p, mdd=g.mdd)
        record(m, "score", gold, "end", *row["end"], seeds=n)
        record(m, "selected_minus_end", gold, "selected", d.mean, d.half, n, p=d.p, mdd=d.mdd)
        for r in res.rewards:
            c = by.get((m, r))
            if c is not None:
                record(m, f"delta_vs_{ref}", r, "selected", c.test.mean, c.test.half, n, p=c.test.p,
                       p_holm=c.p_holm, mdd=c.test.mdd)
        record(m, "selected_update", "", "selected", *row["selected_update"], seeds=n)
        record(m, "flops_per_update", "", "", row["flops_per_update"], seeds=n)
        for r in timing.records(res.clock, m, row["seconds_per_update"]):
            record(m, r["metric"], "", "", r["value"], seeds=r.get("seeds", n))
            records[-1].update(ci_low=r.get("ci_low", math.nan), ci_high=r.get("ci_high", math.nan))
    lines += ["", f"Paired Δ: mean ± 95% t half-width over seeds; p_Holm: the two-sided paired t-test's p-value "
              f"adjusted by Holm's step-down correction over the family of every paired Δ vs {ref} in this table "
              f"(all sections); MDD: the minimum paired difference this table detects with 80% power at α = 0.05 "
              f"from the observed SD of the differences, shown wherever the interval spans zero."]
    lines += power_target(res)
    lines += carried_over(res)
    lines += tag_table(res, records)
    lines += timing.cost_line(res.cost, res.clock)
    lines += timing.note(res.clock)
    lines += res.notes
    return lines, records


def power_target(res: SectionResult, target: float = HALF_WIDTH_TARGET) -> list[str]:
    """Which paired gold Δs reach the half-width target, and for each that does not, its half-width, the observed
    SD of its differences and the seeds that SD would need."""
    gold = [c for c in res.comparisons if c.reward == res.gold]
    if not gold:
        return []
    met = [c.method for c in gold if math.isfinite(c.test.half) and c.test.half <= target]
    missed = [f"{c.method} ({c.test.half:.4f}; SD of the differences {c.test.sd:.4f} over {c.test.n} seeds, which "
              f"{seeds_for_half_width(c.test.sd, target) or 'more than 1000'} seeds would need)"
              for c in gold if c.method not in met]
    return ["", f"Power target: a 95% half-width of at most {target} on every paired Δ vs {res.ref} ({res.gold}); met "
                f"by {len(met)} of {len(gold)}" + (f" ({', '.join(met)})" if met else "")
            + (f"; missed by {', '.join(missed)}." if missed else ".")]


def carried_over(res: SectionResult) -> list[str]:
    """Which checkpoint rule carried over to test: the validation-selected or the end checkpoint."""
    rows = res.rows[1:]
    better = [r["method"] for r in rows if r["selected_minus_end"].mean > 0]
    worse = [r["method"] for r in rows if r["selected_minus_end"].mean < 0]
    sure = [f"{r['method']} ({'selected' if r['selected_minus_end'].mean > 0 else 'end'})" for r in rows
            if not r["selected_minus_end"].spans_zero]
    return ["", f"Selection on validation against the end checkpoint, on test {res.gold}: the selected checkpoint "
                f"scored higher for {len(better)} of {len(rows)} methods ({', '.join(better) or 'none'}), the end for "
                f"{len(worse)} ({', '.join(worse) or 'none'}); the paired interval excludes zero for "
                f"{', '.join(sure) or 'none'}."]


def tag_table(res: SectionResult, records: list[dict[str, Any]]) -> list[str]:
    """Per-tag test gold at the selected checkpoint beside the overall, and its tidy records."""
    if not res.tags:
        return []
    header = ["method", f"{res.gold} overall (headline)", *res.tags]
    lines = ["", f"Per-tag test {res.gold} at the selected checkpoint (mean ± 95% half-width over seeds):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in res.rows:
        overall = row["test"][res.gold]
        lines.append("| " + " | ".join([row["method"], fmt(*overall), *[fmt(*row["tags"][t]) for t in res.tags]]) + " |")
        for t in res.tags:
            mean, half = row["tags"][t]
            records.append({"section": res.title, "table": "per_tag", "method": row["method"], "metric": t,
                            "reward": res.gold, "split": "test",
                            "checkpoint": "base" if row["method"] == "base" else "selected", "value": float(mean),
                            "half_width": float(half), "seeds": int(row.get("seeds", 0)), "p": math.nan,
                            "p_holm": math.nan, "mdd": math.nan})
    return lines


def _notes(summaries: list[dict[str, Any]], unequal: Sequence[str]) -> list[str]:
    """Say when the runs of a section ran different code, or its methods were tuned unequally."""
    notes = []
    codes = sorted({str(s["code"]) for s in summaries})
    if len(codes) > 1:
        notes.append(f"**Note: these runs ran different code** (source hashes {', '.join(codes)}).")
    if unequal:
        notes.append(f"**UNEQUAL tuning effort** across this section's studies: {', '.join(unequal)} differ.")
    return [""] + notes if notes else []
