"""Runs a table or figure leaves out, named: never a silent smaller n.

A run whose summary is damaged or absent, or whose headline metric of a reward the table shows is NaN or
missing, is excluded from its method's row and named under the table ("seed 2 of drpo: NaN in
eval/jpeg/mean"); the row's intervals then carry the count they rest on ("n=2 of 3"). Figures say what they
dropped in the plots index. Kept apart from the table code, which only asks :func:`load` and :func:`screen`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Iterator, Sequence

from harness.store import DamagedRecord, Store, read_json


def load(store: Store, run_ids: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each run's summary with its ``run_id``, ``method`` and ``seed`` (from the manifest), and the notes of
    runs left out because a record is damaged or absent."""
    kept, notes = [], []
    for run_id in run_ids:
        try:
            manifest = store.manifest(run_id)
            run = manifest.get("run", {})
            who = f"seed {run.get('seed', '?')} of {run.get('method', '?')} ({run_id})"
            path = store.run_dir(run_id) / "summary.json"
            if not path.is_file():
                notes.append(f"{who}: no summary.json")
                continue
            kept.append({**read_json(path, dict), "run_id": run_id, "method": run.get("method"),
                         "seed": run.get("seed"), "_manifest": manifest})
        except DamagedRecord as exc:
            notes.append(f"run {run_id}: {exc.args[0].split('; restore')[0]}")
    return kept, notes


def metric_key(summary: dict[str, Any], reward: str, base: bool = False, prefix: str = "eval") -> str:
    """The key :func:`harness.tables.headline` reads (its first choice when none is present)."""
    stem = f"{prefix}/{reward}/" + ("base_" if base else "")
    return next((stem + m for m in ("overall_disjoint", "overall", "mean") if stem + m in summary),
                stem + "mean")


def screen(summaries: list[dict[str, Any]], rewards: Sequence[str], prefix: str = "eval",
           base: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """(the runs whose headline metrics, trained and (``base``) base, are finite for every reward; a note per
    run left out, naming its seed, method and the first bad key)."""
    kept, notes = [], []
    for s in summaries:
        bad = None
        for reward in rewards:
            for is_base in (False, True) if base else (False,):
                key = metric_key(s, reward, is_base, prefix)
                value = s.get(key)
                if value is None:
                    bad = f"missing {key}"
                elif not isinstance(value, (int, float)) or not math.isfinite(value):
                    bad = f"{value} in {key}"
                if bad:
                    break
            if bad:
                break
        if bad:
            notes.append(f"seed {s.get('seed', '?')} of {s.get('method', '?')} ({s.get('run_id')}): {bad}")
        else:
            kept.append(s)
    return kept, notes


def asked(store: Store, run_ids: Sequence[str]) -> dict[str, int]:
    """{method: runs asked for}, from the manifests that can be read."""
    out: dict[str, int] = {}
    for run_id in run_ids:
        try:
            method = store.manifest(run_id).get("run", {}).get("method", "?")
        except DamagedRecord:
            continue
        out[method] = out.get(method, 0) + 1
    return out


def beside(cell: str, n: int, of: int) -> str:
    """An interval cell with the count it rests on, when runs were left out."""
    return cell if n == of else f"{cell} (n={n} of {of})"


def note_lines(notes: Sequence[str]) -> list[str]:
    """The lines under a table naming every run it left out."""
    if not notes:
        return []
    return ["", f"**Left out of this table ({len(notes)} run(s)):** " + "; ".join(notes) + "."]


@contextlib.contextmanager
def collect() -> Iterator[list[str]]:
    """Record every warning raised inside (a damaged record skipped, NaN points dropped), show each once on
    stderr as usual, and hand their texts to the caller (the plots index lists them)."""
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield notes
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        notes.append(str(w.message))


def finite_points(points: list[tuple[float, ...]], what: str) -> list[tuple[float, ...]]:
    """``points`` without those whose value (last element) is NaN or infinite, with a warning naming them."""
    kept = [p for p in points if isinstance(p[-1], (int, float)) and math.isfinite(p[-1])]
    if len(kept) < len(points):
        warnings.warn(f"{what}: {len(points) - len(kept)} of {len(points)} point(s) are NaN or missing and are "
                      "left out of the figure", stacklevel=2)
    return kept
