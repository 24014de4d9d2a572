"""The table's cost columns: counted FLOPs from the runs, and seconds from the controlled measurement.

A run's metered seconds depend on when it ran and beside what, so the table's seconds column and its wall-clock
ratio come from ``<out>/compute/controlled_seconds.json`` (``harness/compute/controlled.py``: the section's
methods timed in one process, interleaved), never from the runs. The runs' metered seconds stay in the CSV
(``metered_seconds_per_update``) and beside the controlled ratio, labelled. A measurement is used only for the
configurations and code of the table's runs; otherwise the seconds cells are empty and a note says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness.compute import controlled
from harness.sections import Section
from harness.store import DamagedRecord, Store


@dataclass
class SectionTiming:
    """The controlled measurement of one section, as the table uses it."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per method: ``controlled.summarise``'s median, interval and ratio to DrPO."""
    entry: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Why a method (or the section) has no controlled seconds."""


def for_section(out: str | Path, section: Section, store: Store, run_ids: Sequence[str]) -> SectionTiming:
    """The stored measurement of ``section``, restricted to the methods whose runs it matches."""
    try:
        entry = controlled.stored(out).get(controlled.section_key(section))
    except DamagedRecord as exc:
        return SectionTiming(notes=[f"Controlled timing unreadable: {exc.args[0].split('; restore')[0]}."])
    if not entry:
        return SectionTiming(notes=[f"No controlled timing stored for this section in "
                                    f"`{controlled.FILE.as_posix()}` (`driftbench table2` measures it); the seconds "
                                    "columns are empty."])
    runs: dict[str, list[dict[str, Any]]] = {}
    for run_id in run_ids:
        try:
            manifest = store.manifest(run_id)
        except (OSError, DamagedRecord):
            continue
        runs.setdefault(manifest.get("run", {}).get("method", ""), []).append(manifest)
    rows, stale = {}, []
    summary = controlled.summarise(entry)
    for method, manifests in runs.items():
        if method in summary and all(_matches(entry, method, m) for m in manifests):
            rows[method] = summary[method]
        else:
            stale.append(method)
    notes = [f"No controlled timing of this section's configuration and code for {', '.join(stale)} (stored "
             f"measurement {entry.get('measured_at', '?')}, code {entry.get('code', '?')}); its seconds cells are "
             "empty."] if stale else []
    return SectionTiming(rows, entry, notes)


def _matches(entry: dict[str, Any], method: str, manifest: dict[str, Any]) -> bool:
    """The measurement timed this run's method configuration and code (and, for its seed, this exact run)."""
    timed = entry["methods"][method]
    if manifest.get("versions", {}).get("code") != entry.get("code"):
        return False
    if manifest.get("method_config", timed["config"]) != timed["config"]:
        return False
    same_seed = manifest.get("run", {}).get("seed") == entry.get("seed")
    return not same_seed or manifest.get("key", timed["key"]) == timed["key"]


def cells(timing: SectionTiming | None, method: str) -> list[str]:
    """The two table cells of a method: controlled seconds per update and its ratio to DrPO."""
    row = (timing.rows if timing else {}).get(method)
    if row is None:
        return ["–", "–"]
    seconds = f"{row['median']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"
    r = row.get("ratio")
    ratio = f"{r['median']:.2f}x [{r['low']:.2f}, {r['high']:.2f}]" if r else "–"
    return [seconds, ratio]


HEADER = ("s/update (controlled)", f"time / {controlled.REFERENCE} (controlled)")
"""The seconds columns' headers."""


def records(timing: SectionTiming | None, method: str, metered: float) -> list[dict[str, Any]]:
    """The CSV rows of a method's seconds: controlled (median, interval) and its ratio; the runs' metered seconds."""
    out = [{"metric": "metered_seconds_per_update", "value": metered}]
    row = (timing.rows if timing else {}).get(method)
    if row is not None:
        out.append({"metric": "seconds_per_update", "value": row["median"], "ci_low": row["low"],
                    "ci_high": row["high"], "seeds": len(timing.entry["methods"][method]["seconds"])})
        if "ratio" in row:
            r = row["ratio"]
            out.append({"metric": f"time_ratio_to_{controlled.REFERENCE}", "value": r["median"], "ci_low": r["low"],
                        "ci_high": r["high"], "seeds": len(timing.entry["methods"][method]["seconds"])})
    return out


def note(timing: SectionTiming | None) -> list[str]:
    """What the seconds columns are: how, where and when they were measured."""
    if timing is None:
        return []
    lines = list(timing.notes)
    entry = timing.entry
    if timing.rows:
        machine = entry.get("machine", {})
        coverage = next(iter(timing.rows.values()))["coverage"]
        rounds, warm = entry["repeats"], entry["warmup"]
        lines.insert(0, f"Seconds (controlled): the section's methods timed in one process, interleaved (one update of "
                     f"each per round, round-robin, the order rotating each round, every method on the same prompts "
                     f"and noise), {rounds} rounds after {warm} warm-up update(s), at the configurations above (seed "
                     f"{entry['seed']}); on {machine.get('device', '?')} ({machine.get('processor') or 'cpu'}, "
                     f"{machine.get('cpus', '?')} CPUs, {entry['threads']} torch thread(s), load average "
                     f"{_load(machine.get('load_before'))} before) at {entry['measured_at']}, "
                     f"{entry['wall_seconds']:.0f} s in all. Median metered seconds per update [distribution-free "
                     f"interval of the median, coverage {100 * coverage:.0f}%]; the ratio to "
                     f"{controlled.REFERENCE} is taken within each round. GFLOP/update: counted over every phase, the "
                     "drift field's analytic count included.")
    return ["", *lines] if lines else []


def cost_line(cost: dict[str, dict[str, float]], timing: SectionTiming | None, numerator: str = "draft",
              denominator: str = "drpo") -> list[str]:
    """The reward-backprop cost claim, measured: DRaFT over DrPO per update in counted FLOPs, in controlled
    seconds (the same interleaved measurement) and, labelled, in the runs' metered seconds."""
    if numerator not in cost or denominator not in cost:
        return []
    a, b = cost[numerator], cost[denominator]
    flops = (a["flops"] / a["updates"]) / (b["flops"] / b["updates"])
    metered = (a["seconds"] / a["updates"]) / (b["seconds"] / b["updates"])
    row = (timing.rows if timing else {}).get(numerator)
    clock = "wall-clock ratio not measured under control"
    if row is not None and "ratio" in row and denominator == controlled.REFERENCE:
        r = row["ratio"]
        clock = (f"wall-clock ratio {r['median']:.2f}x [{r['low']:.2f}, {r['high']:.2f}] (controlled: median over "
                 f"{len(timing.entry['methods'][numerator]['seconds'])} interleaved rounds in one process)")
    return ["", f"{numerator} / {denominator} per update: FLOP ratio {flops:.2f}x (counted, every phase), {clock}; "
                f"the runs' metered seconds give {metered:.2f}x (runs made at different times, under different load; "
                f"not comparable across rows)."]


def _load(values: Any) -> str:
    return ", ".join(f"{v:.2f}" for v in values) if values and all(math.isfinite(v) for v in values) else "?"
