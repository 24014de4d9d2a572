"""What ``driftbench table2`` checks before it trains anything: the chosen methods (nearest match for a
typo), that each belongs to a section of the profile, the seeds, and every input the table reads at the end
(the tuned file and the studies its tuning report is drawn from). Each failure is one line; nothing is run
or written before these pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from harness.registry import unknown
from harness.studies.config import journal_path
from harness.studies.tune import study_name
from harness.studies.tuned import studies_root, tuned_entries
from methods import METHODS


def chosen_methods(sections: Sequence[Any], methods: Sequence[str]) -> None:
    """Every name in ``methods`` is a method of at least one section (nearest match otherwise)."""
    in_sections = sorted({m for s in sections for m in s.methods})
    for method in methods:
        if method not in METHODS:
            raise unknown("method", method, list(METHODS))
        if method not in in_sections:
            raise ValueError(f"method '{method}' is in no section of this table; its sections run: "
                             + "; ".join(f"{s.preset}: {', '.join(s.methods)}" for s in sections))


def seeds(values: Sequence[int]) -> None:
    """Seeds are distinct: a paired interval over a repeated seed would count one run twice (none given: the
    profile's design, ``harness.sections.DESIGNS``)."""
    repeated = sorted({s for s in values if list(values).count(s) > 1})
    if repeated:
        raise ValueError(f"table2 --seeds repeats {', '.join(map(str, repeated))}; each seed must be given once")


def tuned_inputs(sections: Sequence[Any], methods: Sequence[str], tuned_file: str, profile: str) -> None:
    """For every tuned section: the tuned file has the section and each chosen method, and each method's
    study (the tuning report's input) is where the tuned file says the studies are."""
    for section in sections:
        if not section.tuned:
            continue
        chosen = [m for m in section.methods if not methods or m in methods]
        path = tuned_file or None
        entries = tuned_entries(section.preset, path, profile)
        for method in chosen:
            if method not in entries:
                raise ValueError(f"the tuned file has no {section.preset} config for '{method}'; run "
                                 f"`driftbench tune --sections {section.preset} --methods {method}`")
        root = studies_root(section.preset, path, profile)
        missing = [study_name(section.preset, m) for m in chosen
                   if not journal_path(root, study_name(section.preset, m)).is_file()]
        if missing:
            raise FileNotFoundError(f"the tuning report needs the studies {', '.join(missing)} in "
                                    f"{Path(root) / 'studies'} (where the tuned file says they are)")


def check_table2(cfg: Any, sections: Sequence[Any], profile: str) -> list[Any]:
    """Run every check; returns the sections that have at least one chosen method (the table's sections)."""
    chosen_methods(sections, cfg.methods)
    seeds(cfg.seeds)
    kept = [s for s in sections if not cfg.methods or any(m in cfg.methods for m in s.methods)]
    tuned_inputs(kept, cfg.methods, cfg.tuned_file, profile)
    return kept
