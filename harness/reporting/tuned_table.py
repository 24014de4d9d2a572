"""The tuned comparison's table: every method at its tuned configuration and its validation-selected
checkpoint, on the test split, with paired-by-seed differences against DrPO.

Every method of a section shares the training seeds and the evaluation noise, so method A and DrPO on seed s
are a pair; the interval of a difference is a Student-t 95% interval over the per-seed differences (paired),
which is what the shared noise buys. Values are mean ± half-width over seeds.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from harness.reporting.tables import cost_ratios, fmt, headline, t_interval
from harness.store import Store
from methods import METHODS

GOLD = "shapes-geneval"


def _summaries(store: Store, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for run_id in run_ids:
        manifest = store.manifest(run_id)
        summary = json.loads((store.run_dir(run_id) / "summary.json").read_text())
        out.append({**summary, "method": manifest["run"]["method"], "seed": manifest["run"]["seed"],
                    "code": manifest["versions"].get("code"), "reward": manifest["reward"]})
    return out


def _by_method(summaries: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for s in summaries:
        out.setdefault(s["method"], {})[s["seed"]] = s
    return out


def gold_of(summary: dict[str, Any], proxy: str) -> str:
    """The gold reward of a table: shapes-GenEval where the runs evaluated it, else the training reward."""
    return GOLD if any(k.startswith(f"test_selected/{GOLD}/") for k in summary) else proxy


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float]:
    """Mean and 95% half-width of a - b over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    return t_interval([a[s] - b[s] for s in seeds])


def section_table(title: str, store: Store, run_ids: Sequence[str], tuned: dict[str, dict[str, Any]],
                  unequal: Sequence[str] = ()) -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown lines and CSV records of one tuned section."""

    summaries = _summaries(store, run_ids)
    proxy = summaries[0]["reward"]
    gold_name = gold_of(summaries[0], proxy)
    rewards = [proxy] + ([gold_name] if proxy != gold_name else [])
    runs = _by_method(summaries)

    def values(method: str, reward: str, prefix: str = "test_selected", base: bool = False) -> dict[int, float]:
        return {seed: headline(s, reward, base=base, prefix=prefix) for seed, s in runs[method].items()}

    ref = "drpo" if "drpo" in runs else next(iter(runs))
    header = ["method", "reward grad.", "tuned: trial (validation)", *[f"test {r}" for r in rewards],
              f"gain ({gold_name})", f"paired Δ vs {ref} ({gold_name})", *([f"paired Δ vs {ref} ({proxy})"] if proxy != gold_name else []),
              f"test {gold_name} at end", "selected update", "GFLOP/update", "s/update", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = {r: t_interval(list(values(ref, r, base=True).values())) for r in rewards}
    lines.append("| " + " | ".join(["base", "–", "–", *[fmt(*base[r]) for r in rewards]] + ["–"] * (len(header) - 3 - len(rewards))) + " |")
    records = [{"section": title, "method": "base", **{f"test_{r}": base[r][0] for r in rewards}}]
    per_method_cost = {}
    for method, seeds in runs.items():
        gold = values(method, gold_name)
        gain = t_interval([gold[s] - values(method, gold_name, base=True)[s] for s in gold])
        delta = paired(gold, values(ref, gold_name))
        delta_proxy = paired(values(method, proxy), values(ref, proxy))
        end = t_interval(list(values(method, gold_name, prefix="test").values()))
        chosen = t_interval([s.get("select/step", math.nan) for s in seeds.values()])
        upd = [s["budget/updates"] for s in seeds.values()]
        flops = sum(s["budget/flops"] for s in seeds.values()) / sum(upd)
        secs = sum(s["budget/seconds"] for s in seeds.values()) / sum(upd)
        per_method_cost[method] = {"flops": flops, "seconds": secs, "updates": 1.0}
        entry = tuned.get(method, {})
        trial = f"{entry['trial']} ({entry['value']:.3f})" if entry else "untuned"
        cells = [method, "Yes" if METHODS.get(method).REWARD_GRADIENT else "No", trial,
                 *[fmt(*t_interval(list(values(method, r).values()))) for r in rewards], fmt(*gain),
                 "–" if method == ref else fmt(*delta),
                 *(["–" if method == ref else fmt(*delta_proxy)] if proxy != gold_name else []),
                 fmt(*end), f"{chosen[0]:.0f}", f"{flops / 1e9:.1f}", f"{secs:.2f}", str(len(seeds))]
        lines.append("| " + " | ".join(cells) + " |")
        records.append({"section": title, "method": method, "seeds": len(seeds), "gain": gain[0], "gain_ci": gain[1],
                        "delta_vs_ref": delta[0], "delta_vs_ref_ci": delta[1], "delta_proxy": delta_proxy[0],
                        "delta_proxy_ci": delta_proxy[1], "test_gold_end": end[0], "selected_update": chosen[0],
                        "flops_per_update": flops, "seconds_per_update": secs,
                        **{f"test_{r}": t_interval(list(values(method, r).values()))[0] for r in rewards}})
    lines += cost_ratios(per_method_cost)
    lines += _notes(summaries, unequal)
    return lines, records


def _notes(summaries: list[dict[str, Any]], unequal: Sequence[str]) -> list[str]:
    """Say when the runs of a section ran different code, or its methods were tuned unequally."""
    notes = []
    codes = sorted({str(s["code"]) for s in summaries})
    if len(codes) > 1:
        notes.append(f"**Note: these runs ran different code** (source hashes {', '.join(codes)}).")
    if unequal:
        notes.append(f"**UNEQUAL tuning effort** across this section's studies: {', '.join(unequal)} differ.")
    return [""] + notes if notes else []
