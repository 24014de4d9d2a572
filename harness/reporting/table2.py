"""The main table from stored results: per-section tables (untuned and tuned, with the over-optimisation
and tuning reports), the paper comparison of the real profiles and the reward-backprop cost ratio. Reads
only the store; ``harness/reporting/reproduce.py`` runs what it reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from harness.reporting import aggregate, missing, overopt, timing, tuned_table, tuning
from harness.reporting.stats import holm
from harness.reporting.tables import fmt, method_rows, t_interval
from harness.sections import Section
from harness.store import Store, git_state
from harness.studies.tuned import studies_root, tuned_entries, unequal_effort
from methods import METHODS

# The paper's numbers (drpo-method.md section 2.4: DrPO website dd473d8, aligned with the arXiv table in 689acca).
# Row: (label, driftbench method or "base" or None for reference-only rows, steps, uses reward gradient,
#       Pick-a-Pic (PS, AES, IR), Parti (PS, AES, IR)); PS = PickScore x100, IR = ImageReward x10.
PAPER_TABLES: dict[str, tuple[tuple[str, str | None, int, str, tuple[float, ...], tuple[float, ...]], ...]] = {
    "sd-turbo": (
        ("SD1.5", None, 50, "–", (20.79, 5.455, 1.22), (21.49, 5.358, 2.25)),
        ("LCM-SD1.5", None, 4, "–", (20.50, 5.497, -3.08), (21.15, 5.396, -1.94)),
        ("SD2.1", None, 50, "–", (21.09, 5.645, 2.49), (21.77, 5.547, 3.97)),
        ("SD-Turbo", "base", 1, "–", (21.88, 6.054, 5.75), (22.29, 5.758, 5.37)),
        ("DRaFT", "draft", 1, "Yes", (24.69, 6.820, 9.63), (23.07, 6.516, 7.72)),
        ("VGGFlow", "vggflow", 1, "Yes", (23.73, 6.378, 7.74), (22.99, 6.027, 6.50)),
        ("DPO 1step", "dpo1", 1, "No", (22.02, 6.080, 5.95), (22.39, 5.793, 5.21)),
        ("PSO", "pso", 1, "No", (21.88, 6.059, 5.80), (22.29, 5.763, 5.42)),
        ("GRPO 1step", "ngrpo", 1, "No", (21.98, 6.077, 6.08), (22.35, 5.779, 5.65)),
        ("DrPO", "drpo", 1, "No", (23.49, 6.485, 9.54), (22.99, 6.284, 7.46)),
    ),
    "sdxl-turbo": (
        ("SDXL base", None, 50, "–", (22.15, 6.104, 6.85), (22.64, 5.761, 7.24)),
        ("SDXL-DPO", None, 50, "–", (22.57, 6.076, 9.38), (22.95, 5.811, 10.66)),
        ("SDXL-Turbo", "base", 1, "–", (22.45, 6.059, 9.36), (22.77, 5.693, 9.13)),
        ("DRaFT", "draft", 1, "Yes", (24.45, 6.712, 12.70), (24.34, 6.485, 12.66)),
        ("VGGFlow", "vggflow", 1, "Yes", (24.27, 6.490, 12.19), (23.98, 6.200, 11.40)),
        ("DPO 1step", "dpo1", 1, "No", (22.77, 6.227, 10.44), (22.85, 6.019, 11.25)),
        ("PSO", "pso", 1, "No", (22.56, 6.092, 8.97), (22.87, 5.744, 9.17)),
        ("GRPO 1step", "ngrpo", 1, "No", (22.50, 6.077, 9.57), (22.80, 5.710, 9.27)),
        ("DrPO", "drpo", 1, "No", (23.66, 6.717, 12.46), (23.71, 6.665, 12.60)),
    ),
}
PAPER_COLUMNS = ("PS", "AES", "IR")


def paper_table(profile: str, results: dict[str, tuple[dict, list[tuple[str, dict]]]]) -> tuple[list[str], list[dict]]:
    """Markdown lines and CSV records putting our benchmark numbers beside the paper's (``PAPER_TABLES``).

    ``results``: {section title: (base summary, [(method, run summary), ...])}; ours are mean ± 95% t-interval
    half-width over seeds, the paper's (one run each) in parentheses.
    """

    lines: list[str] = []
    records: list[dict[str, Any]] = []
    set_names = {"pickapic": "Pick-a-Pic", "parti": "Parti"}
    for title, (base, runs) in results.items():
        sets = [k for k in set_names if k in base.get("scores", {})]
        columns = [c for c in ("PS", "AES", "IR", "HPSv2") if any(c in base["scores"][k] for k in sets)]
        header = ["method", "steps", "reward grad."] + [f"{set_names[k]} {c}" for k in sets for c in columns]
        lines += [f"## Paper comparison: {title}", "",
                  "Ours: mean ± 95% t-interval half-width over seeds; the paper's number (one run) in parentheses. "
                  "PS = PickScore x100, AES = LAION aesthetic, IR = ImageReward x10, HPSv2 = HPSv2.1 x100 (not in the "
                  "paper's table).", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        by_method: dict[str, list[dict]] = {}
        for method, summary in runs:
            by_method.setdefault(method, []).append(summary)
        for label, key, steps, grad, *paper in PAPER_TABLES[profile]:
            summaries = [base] if key == "base" else by_method.get(key or "", [])
            cells = [label + (" (base)" if key == "base" else ""), str(steps), grad]
            for k in sets:
                paper_values = dict(zip(PAPER_COLUMNS, paper[0 if k == "pickapic" else 1]))
                for c in columns:
                    ours = t_interval([s["scores"][k][c] for s in summaries if c in s["scores"].get(k, {})])
                    ref = paper_values.get(c)
                    digits = 3 if c == "AES" else 2
                    cell = fmt(*ours, digits=digits) if summaries else "–"
                    cells.append(cell + (f" ({ref:.{digits}f})" if ref is not None else ""))
                    records.append({"section": f"paper comparison: {title}", "table": "paper", "method": key or label,
                                    "metric": c, "reward": c, "split": k, "checkpoint": "end", "value": ours[0],
                                    "half_width": ours[1], "paper": ref, "seeds": len(summaries)})
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines, records


LONG_COLUMNS = ("section", "table", "method", "metric", "reward", "split", "checkpoint", "value", "half_width",
                "ci_low", "ci_high", "seeds", "p", "p_holm", "mdd", "paper")
"""The columns of ``<name>.csv``, one row per section x method x metric (``results/README.md``)."""


def _frame(records: list[dict[str, Any]], columns: Sequence[str]):
    """A typed frame: every listed column present, identifiers as strings, the rest numeric."""
    import pandas as pd

    frame = pd.DataFrame.from_records(records, columns=list(columns))
    for c in frame.columns:
        if c in ("section", "table", "method", "metric", "reward", "split", "checkpoint", "set"):
            frame[c] = frame[c].fillna("").astype(str)
        elif c == "past_peak":
            frame[c] = frame[c].astype(bool)
        elif c in ("seeds", "seed", "peak_update"):
            frame[c] = pd.to_numeric(frame[c]).fillna(0).astype(int)
        else:
            frame[c] = pd.to_numeric(frame[c]).astype(float)
    return frame


def write_table(sections: Sequence[tuple[Section, list[str]]], store: Store, out: Path, elapsed: float,
                extra: tuple[list[str], list[dict[str, Any]]] = ([], []), name: str = "table2",
                tuned_path: Path | None = None) -> Path:
    """Markdown and tidy CSVs of every section, from the stored summaries; ``extra`` (lines, records) are
    appended (the paper comparison of the real profiles). Writes ``<name>.md``, ``<name>.csv`` (one row per
    section x method x metric), ``<name>_seeds.csv`` (the per-seed values behind the tested sections) and
    ``<name>_overopt.csv`` (one row per section x method of the over-optimisation summary)."""
    lines = [f"# Table 2 (driftbench reproduction): `{name}`", "",
             f"Generated by `driftbench table2` at git {git_state()['commit'] or 'unknown'} in {elapsed / 60:.1f} min "
             f"(the command's own time; {_run_commits(store, [r for _, ids in sections for r in ids])}). "
             "Values are mean ± 95% t-interval half-width over seeds; Δ columns are paired by seed.", ""]
    # Pass 1: compute every tested section, so Holm's correction runs over the paired tests of the whole table.
    computed = {}
    for i, (section, run_ids) in enumerate(sections):
        readable, _ = missing.load(store, run_ids)
        if not readable:
            raise ValueError(f"section '{section.title}': none of its {len(run_ids)} runs has a readable summary")
        if "test_selected/drift/latent_rms" in readable[0]:
            computed[i] = tested_section(section, store, run_ids, out, tuned_path)
    family = [c for result, _, _ in computed.values() for c in result.comparisons]
    for c, p in zip(family, holm([c.test.p for c in family])):
        c.p_holm = p
    records, seeds, overopt_rows = [], [], []
    for i, (section, run_ids) in enumerate(sections):
        if i in computed:
            result, extra_lines, over = computed[i]
            table, rows = tuned_table.render(result)
            table += extra_lines
            seeds += result.seeds
            overopt_rows += over
        else:
            table, rows = section_table(section, store, run_ids, timing.for_section(out, section, store, run_ids))
        lines += [f"## {section.title}", "", *table, ""]
        records += rows
    golds = {result.gold for result, _, _ in computed.values()}
    if len(computed) > 1 and len(golds) == 1:
        refs = {result.ref for result, _, _ in computed.values()}
        agg_lines, agg_records = aggregate.aggregate(seeds, golds.pop(), refs.pop() if len(refs) == 1 else "drpo")
        lines += agg_lines
        records += agg_records
    lines += extra[0]
    records += extra[1]
    md = out / f"{name}.md"
    out.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines))
    _frame(records, LONG_COLUMNS).to_csv(out / f"{name}.csv", index=False)
    if seeds:
        _frame(seeds, ("section", "method", "seed", "metric", "reward", "checkpoint", "value")).to_csv(
            out / f"{name}_seeds.csv", index=False)
    if overopt_rows:
        _frame(overopt_rows, list(overopt_rows[0])).to_csv(out / f"{name}_overopt.csv", index=False)
    return md


def tested_section(section: Section, store: Store, run_ids: list[str], out: Path,
                   tuned_path: Path | None = None) -> tuple[Any, list[str], list[dict]]:
    """A section evaluated on the test split: the computed paired table (rendered once the table's Holm
    correction is known), the over-optimisation table and figure, and for a tuned section the tuning report
    (space sizes, best-so-far curves) read from where the tuned file says its studies are."""

    entries, unequal = {}, []
    if section.tuned:
        entries = tuned_entries(section.preset, tuned_path)
        root = studies_root(section.preset, tuned_path)
        unequal = unequal_effort(entries, tuning.spends(section.preset, list(entries), root))  # spend from the studies
    result = tuned_table.compute(section.title, store, run_ids, entries, unequal,
                                 timing.for_section(out, section, store, run_ids))
    by_method: dict[str, list[str]] = {}
    for run_id in run_ids:
        by_method.setdefault(store.manifest(run_id)["run"]["method"], []).append(run_id)
    proxy, gold = result.proxy, result.gold
    curves = [overopt.curve(store, m, ids, proxy, gold) for m, ids in by_method.items()]
    stem = f"{section.preset}__{'tuned' if section.tuned else 'defaults'}__overoptimisation"
    figure = overopt.figure(curves, proxy, gold, out / "plots", stem, section.title)
    rows = overopt.summary(curves)
    where = overopt.SPLIT_NAMES[curves[0].prefix] if curves else overopt.SPLIT_NAMES["eval"]
    lines = ["", f"Over-optimisation on {where} (proxy {proxy}, gold {gold}; seed means; gold at the common "
             f"distance is interpolated between the two measured points around it, never extrapolated; figure "
             f"`{figure[0].relative_to(out).as_posix()}`):", "", *overopt.table(rows)]
    if curves and curves[0].prefix == "eval":
        lines.insert(2, "These runs evaluated no curve split (`--curve-split`), so the curves sit on the split "
                        "selection reads.")
    over = [{"section": section.title, **r} for r in rows]
    if section.tuned:
        root = studies_root(section.preset, tuned_path)
        report, fig = tuning.report(section.preset, list(by_method), root, out / "plots")
        lines += ["", f"Equal-effort tuning (studies in `{root}`; figure `{fig[0].relative_to(out).as_posix()}`):",
                  "", *report]
    return result, lines, over


def section_table(section: Section, store: Store, run_ids: list[str],
                  clock: timing.SectionTiming | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown lines and CSV records for one section; ``clock``: its controlled timing (the seconds columns)."""

    summaries, notes = missing.load(store, run_ids)
    manifest = summaries[0]["_manifest"]
    # The training reward first: its gain over the base is the column the claim rests on.
    rewards = [manifest["reward"]] + sorted(r for r in manifest["versions"]["evals"] if r != manifest["reward"])
    summaries, bad = missing.screen(summaries, rewards)  # NaN or missing: excluded and named, never averaged away
    notes += bad
    if not summaries:
        raise ValueError(f"section '{section.title}': every run was left out: " + "; ".join(notes))
    asked = missing.asked(store, run_ids)
    per_method = method_rows(summaries, rewards)
    header = ["method", "steps", "reward grad.", *rewards, f"gain ({rewards[0]})", "updates", "images",
              "reward calls", "GFLOP/update", *timing.HEADER, "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    first = next(iter(per_method.values()))
    base = [fmt(*first[f"{r}/base"]) for r in rewards]
    lines.append("| " + " | ".join([f"base ({manifest['versions']['profile']})", "1", "–", *base,
                                    "–", "0", "0", "0", "–", "–", "–", "–"]) + " |")

    def record(method: str, metric: str, reward: str, value: float, half: float = float("nan"), seeds: int = 0,
               checkpoint: str = "end") -> dict[str, Any]:
        return {"section": section.title, "table": "main", "method": method, "metric": metric, "reward": reward,
                "split": manifest["run"].get("eval_split") or "eval", "checkpoint": checkpoint, "value": value,
                "half_width": half, "seeds": seeds}
    records = [record("base", "score", r, *first[f"{r}/base"], checkpoint="base") for r in rewards]
    for method, row in per_method.items():
        grad = "Yes" if METHODS.get(method).REWARD_GRADIENT else "No"
        n, of = row["seeds"], max(asked.get(method, row["seeds"]), row["seeds"])
        cells = [method, "1", grad, *[missing.beside(fmt(*row[r]), n, of) for r in rewards],
                 missing.beside(fmt(*row[f"{rewards[0]}/gain"], digits=4), n, of),
                 f"{row['updates']:.0f}", f"{row['images']:.0f}", f"{row['reward_calls']:.0f}",
                 f"{row['flops'] / row['updates'] / 1e9:.1f}", *timing.cells(clock, method),
                 str(n) if n == of else f"{n} of {of}"]
        lines.append("| " + " | ".join(cells) + " |")
        for r in rewards:
            records += [record(method, "score", r, *row[r], seeds=n), record(method, "gain", r, *row[f"{r}/gain"], seeds=n)]
        records += [record(method, k, "", row[k], seeds=n) for k in ("updates", "images", "reward_calls", "seconds", "flops")]
        for r in timing.records(clock, method, row["seconds"] / row["updates"]):
            records.append({**record(method, r["metric"], "", r["value"], seeds=r.get("seeds", n)),
                            "ci_low": r.get("ci_low", float("nan")), "ci_high": r.get("ci_high", float("nan"))})
    lines += timing.cost_line(per_method, clock)
    lines += timing.note(clock)
    lines += missing.note_lines(notes)
    return lines, records


def _run_commits(store: Store, run_ids: Sequence[str]) -> str:
    """Where the table's runs were made: a table reuses stored runs of the same code, so the command's commit
    and time need not be theirs."""
    commits: dict[str, int] = {}
    for run_id in run_ids:
        try:
            git = store.manifest(run_id).get("environment", {}).get("git", {}) or {}
        except (OSError, ValueError):
            continue
        commit = (git.get("commit") or "unknown")[:7] + ("+modified" if git.get("dirty") else "")
        commits[commit] = commits.get(commit, 0) + 1
    return "its runs were made at " + ", ".join(f"git {c} ({n})" for c, n in commits.items()) if commits else \
        "no run manifest readable"
