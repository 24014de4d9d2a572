"""``driftbench tune``: every method of a table section tuned with the same effort, and the tuned file.

A comparison is only as good as its weakest-tuned baseline (Lucic et al. 2018, "Are GANs Created Equal?").
For each method of a section this runs one Optuna study over the method's own ``space(trial)`` with
everything else held equal: the same TPE sampler and sampler seed, the same number of trials and pruner, the
same per-trial budget and training seeds, the same objective (validation shapes-GenEval, ``overall_disjoint``,
at the run's best evaluation point) and the same learning-rate range for every method, 1e-5 to 1e-2 on a log
scale. Tuning runs evaluate the validation split only; the test split is never read (``test_split`` stays
empty, and ``tests/test_tune.py`` poisons it to prove so).

``write_tuned`` then turns the stored studies into the committed tuned file (``harness/tuned/<profile>.json``):
for each section and method, the study, the best complete trial's number, its objective value, its method
config and the commit the study ran at. Presets read it through :func:`tuned_configs`, which validates every
entry against the method's ``Config``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from harness.registry import unknown
from harness.validate import Bound, at_least, nonnegative

LR_SPACE = "lr=1e-5:1e-2:log"
"""The learning-rate range every method gets (an override on top of each ``space``)."""
TUNED_DIR = Path(__file__).resolve().parent / "tuned"
EFFORT_KEYS = ("trials", "updates", "seeds", "sampler_seed", "pruner", "space_lr", "objective", "k",
               "prompts_per_step", "eval_at", "eval_seeds", "eval_split")
"""What must be equal across the studies of one section."""


@dataclass(frozen=True)
class TuneConfig:
    """``driftbench tune``: one equal-effort Optuna study per method of each table section."""

    profile: str = "shapes"
    """Table profile whose sections are tuned (see ``driftbench table2 --help``)."""
    sections: tuple[str, ...] = ()
    """Section presets to tune (e.g. shapes-pref); empty: every section of the profile."""
    methods: tuple[str, ...] = ()
    """Restrict to these methods (empty: every method of each section)."""
    trials: int = 16
    """Trials per study; the same for every method."""
    seeds: tuple[int, ...] = (100,)
    """Training seeds of every trial (the reported table uses others)."""
    sampler_seed: int = 0
    """TPE seed, the same for every study."""
    pruner: str = "median"
    """Pruner, the same for every study."""
    objective: str = ""
    """Validation reward whose headline (GenEval's overall_disjoint, else the mean) at the best evaluation point
    is maximised; empty: shapes-geneval on the Shapes profile, else each section's training reward."""
    n_workers: int = 2
    """Worker processes per study (one torch thread each)."""
    out: str = "results"
    """Results root: runs in ``<out>/runs``, studies in ``<out>/studies``."""
    tuned_file: str = ""
    """Where to write the tuned file; empty: ``harness/tuned/<profile>.json``."""
    write_only: bool = False
    """Do not run studies; only rewrite the tuned file from the stored ones."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"trials": at_least(1), "seeds": nonnegative(), "sampler_seed": nonnegative(),
                                          "n_workers": at_least(1)}
    """Valid range of every numeric field (``harness.validate``)."""


def study_name(section: str, method: str) -> str:
    return f"tune-{section}-{method}"


def plan(cfg: TuneConfig) -> list[tuple[str, str]]:
    """(section preset, method) pairs to tune, in table order; unknown names fail with the nearest match."""
    from harness.reproduce import SECTIONS

    if cfg.profile not in SECTIONS:
        raise unknown("table profile", cfg.profile, list(SECTIONS))
    sections = {s.preset: s for s in SECTIONS[cfg.profile]}
    for name in cfg.sections:
        if name not in sections:
            raise unknown("section", name, list(sections))
    chosen = [sections[n] for n in (cfg.sections or sections)]
    every = sorted({m for s in chosen for m in s.methods})
    for m in cfg.methods:
        if m not in every:
            raise unknown("method", m, every)
    return [(s.preset, m) for s in chosen for m in s.methods if not cfg.methods or m in cfg.methods]


def objective(cfg: TuneConfig, section: str) -> str:
    from harness import presets

    return cfg.objective or ("shapes-geneval" if cfg.profile.startswith("shapes") else presets.get(section).run.reward)


def study_config(cfg: TuneConfig, section: str, method: str):
    from harness.study import StudyConfig

    return StudyConfig(name=study_name(section, method), method=method, preset=section, trials=cfg.trials,
                       seeds=cfg.seeds, objective=objective(cfg, section), at_best=True, pruner=cfg.pruner,
                       n_workers=cfg.n_workers, space=(LR_SPACE,), sampler_seed=cfg.sampler_seed, out=cfg.out)


def tune(cfg: TuneConfig, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) every study, then write the tuned file; returns its path."""
    from harness import study as studies

    pairs = plan(cfg)
    if not cfg.write_only:
        for i, (section, method) in enumerate(pairs):
            log(f"[{i + 1}/{len(pairs)}] {study_name(section, method)}")
            studies.study(study_config(cfg, section, method), log=log)
    return write_tuned(cfg, pairs, log)


# ---------------------------------------------------------------------------------------------------
# The tuned file
# ---------------------------------------------------------------------------------------------------

def best_trial(the_study: Any) -> Any:
    """The complete trial with the highest value (the lowest number among ties); None if none completed."""
    from optuna.trial import TrialState

    done = [t for t in the_study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def effort(cfg: TuneConfig, section: str, the_study: Any) -> dict[str, Any]:
    """The tuning effort a study had: what ``EFFORT_KEYS`` compares across a section."""
    from harness import presets
    from harness.study import counted

    run = presets.get(section).run
    attrs = the_study.user_attrs
    return {"trials": len(counted(the_study.get_trials(deepcopy=False))), "updates": run.updates,
            "seeds": list(cfg.seeds), "sampler_seed": cfg.sampler_seed, "pruner": cfg.pruner, "space_lr": LR_SPACE,
            "objective": objective(cfg, section), "k": run.k, "prompts_per_step": run.prompts_per_step,
            "eval_at": list(run.eval_at), "eval_seeds": run.eval_seeds, "eval_split": run.eval_split,
            "fingerprint": attrs.get("fingerprint")}


def write_tuned(cfg: TuneConfig, pairs: list[tuple[str, str]], log: Callable[[str], None] = print) -> Path:
    """Write the tuned file from the stored studies (existing entries of other sections are kept)."""
    from harness.store import Store, write_json
    from harness.study import load_study

    path = Path(cfg.tuned_file) if cfg.tuned_file else TUNED_DIR / f"{cfg.profile}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"profile": cfg.profile, "sections": {}}
    for section, method in pairs:
        the_study = load_study(study_name(section, method), out=cfg.out)
        trial = best_trial(the_study)
        if trial is None:
            raise ValueError(f"study '{study_name(section, method)}' has no complete trial to take a config from")
        manifest = Store(cfg.out).manifest(trial.user_attrs["run_ids"][0])
        data["sections"].setdefault(section, {})[method] = {
            "study": study_name(section, method), "trial": trial.number, "value": trial.value,
            "config": trial.user_attrs["method_config"], "params": trial.params,
            "commit": manifest["environment"]["git"], "code": manifest["versions"].get("code"),
            "effort": effort(cfg, section, the_study)}
        log(f"{section} / {method}: trial {trial.number}, validation {objective(cfg, section)} {trial.value:.4f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    log(f"wrote {path}")
    return path


def unequal_effort(entries: dict[str, dict[str, Any]]) -> list[str]:
    """Keys of ``EFFORT_KEYS`` on which a section's methods were tuned differently (empty: equal)."""
    efforts = {m: e["effort"] for m, e in entries.items()}
    return [k for k in EFFORT_KEYS if len({json.dumps(e.get(k), sort_keys=True) for e in efforts.values()}) > 1]


def tuned_configs(section: str, path: str | Path | None = None, profile: str = "shapes") -> dict[str, Any]:
    """{method: validated Config} of a section from the tuned file; raises a one-line error naming an
    unknown section, method or field, or a value of the wrong type."""
    path = Path(path) if path else TUNED_DIR / f"{profile}.json"
    entries = tuned_entries(section, path, profile)
    return {m: method_config(m, entry.get("config"), f"{path.name}: {section}.{m}") for m, entry in entries.items()}


def tuned_entries(section: str, path: str | Path | None = None, profile: str = "shapes") -> dict[str, dict]:
    """The raw entries (study, trial, value, config, commit, effort) of one section of the tuned file."""
    path = Path(path) if path else TUNED_DIR / f"{profile}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tuned file at {path}; run `driftbench tune --profile {profile}`")
    try:
        data = json.loads(path.read_text())
        sections = data["sections"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a tuned file ({err})") from None
    if section not in sections:
        raise unknown(f"section of {path.name}", section, list(sections))
    return sections[section]


def method_config(method: str, values: Any, where: str) -> Any:
    """A method's Config from a dict of field values, checked field by field against the Config's types."""
    from methods import METHODS

    if method not in METHODS:
        raise unknown(f"method in {where.split(':')[0]}", method, list(METHODS))
    config = METHODS.get(method).Config
    if not isinstance(values, dict):
        raise ValueError(f"{where}: config must be an object of {config.__module__}.Config fields")
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(config)
    out = {}
    for name, value in values.items():
        if name not in fields:
            raise unknown(f"field of {method}.Config ({where})", name, list(fields))
        out[name] = _typed(value, hints[name], f"{where}.{name}")
    return config(**out)


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` asks (int -> float and list -> tuple are the only conversions)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        return tuple(_typed(v, inner, where) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise TypeError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
