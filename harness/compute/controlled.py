"""Controlled seconds: a table section's methods timed in one process, interleaved, on one machine state.

The metered seconds of a table's runs come from runs made at different times under different load (a table
that reused stored DrPO runs beside DRaFT runs made later, on a quieter machine, once printed a DRaFT/DrPO
wall-clock ratio of 0.73x against 1.61x). So ``driftbench table2`` times each section again, as
``driftbench profile-step`` does but interleaved: every method of the section is built in this one process at
the configuration the table's runs use (its first seed), takes ``warmup`` untimed updates (allocator, kernels,
the meter's FLOP-counting passes), and then ``repeats`` rounds follow, each one update of every method in a
round-robin order that rotates by one per round, every method of a round on the same update index (the same
prompts and noise). An update's seconds are the meter's: the same phases as a run's ``budget/seconds``.

Per method the table shows the median over rounds with a distribution-free interval (order statistics of the
median; with fewer than 6 rounds no 95% one exists and the interval is the range, with its coverage stated),
and the ratio to DrPO taken round by round, so both times of a ratio share the machine's state.

Stored, one entry per section, in ``<out>/compute/controlled_seconds.json`` with its manifest (configs, code
hash, repeats, machine); an entry measured for the same configurations, code and settings is reused, so an
interrupted table re-measures only the sections it had not stored. Tables read only this file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

from harness import distributed
from harness.budget import Spend
from harness.config import config_dict, run_key
from harness.run import prepare, update
from harness.sections import Section
from harness.store import git_state, read_json, source_hash, utc_stamp, write_json

FILE = Path("compute") / "controlled_seconds.json"
"""Where the measurements live, under the results root."""

REFERENCE = "drpo"
"""The method every ratio is taken against, round by round."""

VERSION = 1
"""Bump when the measurement's procedure changes, so stored entries are measured again."""


def section_key(section: Section) -> str:
    """A section's entry: its preset and whether its configurations are the tuned ones."""
    return f"{section.preset}__{'tuned' if section.tuned else 'defaults'}"


def fingerprint(entries: Sequence[tuple[str, Any, Any]], repeats: int, warmup: int, threads: int) -> str:
    """What makes two measurements the same: every method's run key, the code, the procedure and its settings."""
    blob = json.dumps({"methods": {m: run_key(rc, mc) for m, rc, mc in entries}, "code": source_hash(),
                       "repeats": repeats, "warmup": warmup, "threads": threads, "version": VERSION}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def stored(out: str | Path) -> dict[str, Any]:
    """Every stored section entry ({} when none)."""
    path = Path(out) / FILE
    return read_json(path, dict).get("sections", {}) if path.is_file() else {}


def ensure(out: str | Path, section: Section, entries: Sequence[tuple[str, Any, Any]], repeats: int,
           warmup: int) -> dict[str, Any]:
    """The section's stored measurement, measured and stored first unless one with this fingerprint is there.

    Every process of a distributed table measures together (each update spans them all); process 0 decides and
    writes."""
    threads = 1 if not _cuda() else 0
    key = section_key(section)
    want = fingerprint(entries, repeats, warmup, threads)
    found = distributed.on_main(lambda: stored(out).get(key))
    if found and found.get("fingerprint") == want:
        return found
    entry = measure(entries, repeats, warmup, threads)
    entry.update(fingerprint=want, section=section.title, preset=section.preset, tuned=section.tuned)

    def write() -> None:
        path = Path(out) / FILE
        data = read_json(path, dict) if path.is_file() else {}
        data.setdefault("sections", {})[key] = entry
        data["about"] = ("driftbench table2's controlled timing: per section, every method timed in one process, "
                         "interleaved round-robin (harness/compute/controlled.py)")
        write_json(path, data)
    distributed.on_main(write)
    return entry


def measure(entries: Sequence[tuple[str, Any, Any]], repeats: int, warmup: int, threads: int = 1) -> dict[str, Any]:
    """Time (method, run config, method config) entries interleaved in this process; the raw record.

    ``threads``: torch threads while timing (1: as the table's parallel runs use; 0: leave as is, on a GPU)."""
    import torch

    if repeats < 1 or warmup < 0:
        raise ValueError(f"controlled timing needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    methods = [m for m, _, _ in entries]
    before_threads = torch.get_num_threads()
    load_before = _load()
    tick = time.perf_counter()
    try:
        if threads:
            torch.set_num_threads(threads)
        # prepare() writes nothing: the run configs keep their results root (--init-from reads its source there).
        parts = {m: prepare(rc, mc) for m, rc, mc in entries}
        spend = {m: Spend() for m in methods}
        for step in range(warmup):
            for m in methods:
                update(parts[m], step, spend[m])
        for p in parts.values():
            p.meter.reset()
        seconds: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(repeats):
            shift = r % len(methods)
            for m in methods[shift:] + methods[:shift]:
                start = spend[m].seconds
                update(parts[m], warmup + r, spend[m])  # the same prompts and noise for every method
                seconds[m].append(spend[m].seconds - start)  # the meter's, slowest process
        phases = {m: {ph: {"seconds": s["seconds"] / repeats, "flops": s["flops"] / repeats}
                      for ph, s in parts[m].meter.snapshot().items() if s["seconds"] or s["flops"]}
                  for m in methods}
        device = str(next(iter(parts.values())).world.generator.device)
    finally:
        torch.set_num_threads(before_threads)
    wall = time.perf_counter() - tick
    return {"methods": {m: {"key": run_key(rc, mc), "config": config_dict(mc), "seconds": seconds[m],
                            "phases": phases[m]} for m, rc, mc in entries},
            "order": methods, "seed": entries[0][1].seed, "code": source_hash(), "git": git_state(),
            "repeats": repeats, "warmup": warmup, "threads": threads or before_threads, "version": VERSION,
            "machine": {"device": device, "host": platform.node(), "processor": _processor(),
                        "cpus": os.cpu_count(), "load_before": load_before, "load_after": _load()},
            "measured_at": utc_stamp(), "wall_seconds": wall}


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(median, low, high, coverage): the distribution-free interval [x_(j), x_(n+1-j)] of the median with the
    largest j whose coverage 1 - 2 P(Bin(n, 1/2) < j) is at least ``confidence``; below that for every j (n < 6
    at 95%) the range, with its coverage."""
    x = sorted(float(v) for v in values)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mid = x[n // 2] if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2

    def coverage(j: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(j)) / 2.0 ** n
    j = 1
    while j + 1 <= (n + 1) // 2 and coverage(j + 1) >= confidence:
        j += 1
    return mid, x[j - 1], x[n - j], coverage(j)


def summarise(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method: the median seconds per update with its interval, and the round-by-round ratio to DrPO."""
    methods = entry["methods"]
    ref = methods.get(REFERENCE)
    out = {}
    for m, rec in methods.items():
        row: dict[str, Any] = dict(zip(("median", "low", "high", "coverage"), median_interval(rec["seconds"])))
        if ref is not None:
            ratios = [a / b for a, b in zip(rec["seconds"], ref["seconds"]) if b > 0]
            row["ratio"] = dict(zip(("median", "low", "high", "coverage"), median_interval(ratios)))
        row["flops"] = sum(p["flops"] for p in rec["phases"].values())
        out[m] = row
    return out


def _processor() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or ""


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()

