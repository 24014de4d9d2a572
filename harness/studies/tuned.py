"""The tuned file (``harness/tuned/<profile>.json``): the configuration each method of a tuned section runs
with, the study and trial it came from, and the effort spent finding it. ``driftbench tune`` writes it;
``driftbench table2`` reads it through :func:`tuned_configs`, which checks every entry against the method's
``Config`` field by field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.config import from_dict
from harness.registry import unknown
from harness.studies.spend import unequal_spend
from harness.validate import check
from methods import METHODS

TUNED_DIR = Path(__file__).resolve().parent.parent / "tuned"
EFFORT_KEYS = ("trials", "spend_budget", "startup_trials", "updates", "seeds", "sampler_seed", "pruner", "space_lr",
               "objective", "k", "prompts_per_step", "eval_at", "eval_seeds", "eval_split")
"""What a section's studies must share for their tuning to count as equal effort; besides these, the updates
they metered (``spend``) must agree within ``SPEND_TOLERANCE``."""


def unequal_effort(entries: dict[str, dict[str, Any]], spends: dict[str, float] | None = None) -> list[str]:
    """Keys of ``EFFORT_KEYS`` on which a section's methods were tuned differently, and the spend when the
    updates the studies metered differ by more than 10% (empty: equal). ``spends``: the updates read from the
    studies themselves (``harness.reporting.tuning.spends``), which stand in for the file's."""
    efforts = {m: e["effort"] for m, e in entries.items()}
    keys = [k for k in EFFORT_KEYS if len({json.dumps(e.get(k), sort_keys=True) for e in efforts.values()}) > 1]
    spends = {m: e["spend"] for m, e in efforts.items() if isinstance(e.get("spend"), (int, float))} | (spends or {})
    spend = unequal_spend(spends) if len(spends) == len(efforts) else ""  # files written before spend was kept
    return keys + ([spend] if spend else [])


def tuned_path(profile: str, path: str | Path | None = None) -> Path:
    """The tuned file: ``path`` when given, else the profile's committed one (``harness/tuned/<profile>.json``)."""
    return Path(path) if path else TUNED_DIR / f"{profile}.json"


def tuned_configs(section: str, path: str | Path | None = None, profile: str = "shapes") -> dict[str, Any]:
    """{method: validated Config} of a section from the tuned file; raises a one-line error naming an
    unknown section, method or field, or a value of the wrong type."""
    path = tuned_path(profile, path)
    entries = tuned_entries(section, path, profile)
    return {m: method_config(m, entry.get("config"), f"tuned file {path}: {section}.{m}") for m, entry in entries.items()}


DEFAULT_STUDIES_ROOT = "results"
"""Where ``driftbench tune`` keeps its studies by default (``TuneConfig.out``)."""


def studies_root(section: str, path: str | Path | None = None, profile: str = "shapes") -> str:
    """The results root whose ``studies/`` holds a section's studies, as the tuned file records it
    (``studies_root``, written by ``write_tuned``); files written before it was recorded came from
    ``driftbench tune``'s default root."""
    roots = {e.get("studies_root") or DEFAULT_STUDIES_ROOT for e in tuned_entries(section, path, profile).values()}
    if len(roots) > 1:
        raise ValueError(f"the tuned file's {section} studies are in several roots ({', '.join(sorted(roots))})")
    return roots.pop() if roots else DEFAULT_STUDIES_ROOT


def tuned_entries(section: str, path: str | Path | None = None, profile: str = "shapes") -> dict[str, dict]:
    """The raw entries (study, trial, value, config, commit, effort) of one section of the tuned file."""
    path = tuned_path(profile, path)
    if not path.is_file():
        raise FileNotFoundError(f"no tuned file at {path}; run `driftbench tune --profile {profile}`")
    try:
        data = json.loads(path.read_text())
        sections = data["sections"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a tuned file ({err})") from None
    if section not in sections:
        raise ValueError(f"{path}: {unknown('tuned section', section, list(sections))}")
    return sections[section]


def method_config(method: str, values: Any, where: str) -> Any:
    """A method's Config from a dict of field values, checked field by field against the Config's types."""
    if method not in METHODS:
        raise unknown(f"method in {where.split(':')[0]}", method, list(METHODS))
    config = from_dict(METHODS.get(method).Config, values, where)
    try:  # checked here, so that a bad value is blamed on the file and field, not on a flag never given
        check(config)
    except ValueError as exc:
        raise ValueError(f"{where}.{str(exc).removeprefix('--')} (the tuned file's value; fix or re-tune it)") \
            from None
    return config
