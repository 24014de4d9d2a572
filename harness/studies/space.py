"""A study's search space: the method's own ``space(trial)`` with single parameters overridden.

``StudyConfig.space`` entries (``NAME=LOW:HIGH[:log]``, ``NAME=A,B,...``, ``NAME=VALUE``) are validated against
what the method's ``space`` asks for (:func:`method_space`, read with a recording stand-in trial) and applied
through :class:`SpaceTrial`, a proxy whose ``suggest_*`` consult the overrides, so method files stay as they are.
An entry may also name a field of the method's Config that its ``space`` leaves out (DrPO's ``reference``): the
study then searches it as well (:func:`extra_params`) without changing the method's space, which tuning uses.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from harness.config import RunConfig
from harness.registry import unknown


@dataclass(frozen=True)
class Override:
    """One parameter's replacement distribution: numeric range (low, high, log) or categorical choices."""

    name: str
    integer: bool = False
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    extra: bool = False
    """A field of the method's Config that its ``space`` does not ask for: the study suggests it itself and sets
    it on the trial's config (``extra_params``)."""

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def text(self) -> str:
        if self.choices is not None:
            return f"{self.name}={','.join(str(c) for c in self.choices)}"
        return f"{self.name}={self.low}:{self.high}" + (":log" if self.log else "")


class SpaceTrial:
    """An Optuna trial whose ``suggest_*`` take a parameter's distribution from the overrides when there
    is one; everything else passes through to the wrapped trial."""

    def __init__(self, trial: Any, overrides: Sequence[Override] = (), binary_reward: bool = False):
        self._trial = trial
        self._overrides = {o.name: o for o in overrides}
        self.binary_reward = binary_reward
        """Whether the study trains with a binary (verifier) reward: a ``space`` may then add options that
        read the reward as correct or incorrect (DrPO's GenEval path)."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> Any:
        if name in self._overrides:
            return self._overrides[name].suggest(self._trial)
        return self._trial.suggest_float(name, low, high, step=step, log=log)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> Any:
        if name in self._overrides:
            return self._overrides[name].suggest(self._trial)
        return self._trial.suggest_int(name, low, high, step=step, log=log)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        if name in self._overrides:
            return self._overrides[name].suggest(self._trial)
        return self._trial.suggest_categorical(name, choices)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)


class _Recorder:
    """A stand-in trial that records what ``space(trial)`` asks for: {name: ("float"|"int", low, high, log)
    or ("categorical", choices)}. Returns the low end or first choice, so the space runs once cheaply."""

    binary_reward = True
    """Record every parameter a space can ask for, the binary-reward ones included."""

    def __init__(self):
        self.params: dict[str, tuple] = {}

    def suggest_float(self, name, low, high, *, step=None, log=False):
        self.params[name] = ("float", low, high, log)
        return low

    def suggest_int(self, name, low, high, *, step=1, log=False):
        self.params[name] = ("int", low, high, log)
        return low

    def suggest_categorical(self, name, choices):
        self.params[name] = ("categorical", tuple(choices))
        return choices[0]


def method_space(method: Any) -> dict[str, tuple]:
    """The parameters a method's ``space(trial)`` suggests, plus the run's ``k``."""
    recorder = _Recorder()
    method.space(recorder)
    return {**recorder.params, "k": ("int", 2, 64, False)}


def config_space(method: Any) -> dict[str, tuple]:
    """The fields of the method's Config a study may search beyond its ``space``, with the distribution their
    type allows: a ``Literal`` or bool field its choices, an int or float field its declared bound (or any value)."""
    cls = getattr(method, "Config", None)
    if cls is None:
        return {}
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple] = {}
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name)
        if typing.get_origin(hint) is Literal:
            out[f.name] = ("categorical", typing.get_args(hint))
        elif hint is bool:
            out[f.name] = ("categorical", (False, True))
        elif hint in (int, float):
            out[f.name] = ("int" if hint is int else "float", None, None, False)
    return out


def parse_space(entries: Sequence[str], method: Any) -> tuple[Override, ...]:
    """Validate ``NAME=LOW:HIGH[:log]`` / ``NAME=A,B,...`` / ``NAME=VALUE`` entries against the method's
    space, or a Config field the space does not search (an extra parameter: a choice field's choices, a number's
    range); raises a one-line ``ValueError`` naming the entry and the valid names."""
    searched = method_space(method)
    known = {**config_space(method), **searched}
    out: dict[str, Override] = {}
    for entry in entries:
        name, sep, spec = entry.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name:
            raise ValueError(f"space entry '{entry}' must be NAME=LOW:HIGH[:log], NAME=A,B,... or NAME=VALUE; "
                             f"valid names: {', '.join(known)}")
        if name not in known:
            raise unknown("search-space parameter", name, list(known))
        if name in out:
            raise ValueError(f"space entry '{entry}': parameter '{name}' is given twice")
        if not spec:
            raise ValueError(f"space entry '{entry}' has an empty range; give LOW:HIGH[:log], A,B,... or VALUE")
        out[name] = dataclasses.replace(_parse_one(entry, name, spec, known[name]), extra=name not in searched)
        _check_bound(entry, out[name], method)
    return tuple(out.values())


def extra_params(trial: Any, overrides: Sequence[Override]) -> dict[str, Any]:
    """The values of the extra parameters (Config fields the method's ``space`` does not search) for ``trial``."""
    return {o.name: o.suggest(trial) for o in overrides if o.extra}


def _check_bound(entry: str, override: Override, method: Any) -> None:
    """Refuse a range that reaches outside the parameter's declared bound (every trial would fail)."""

    owner = RunConfig if override.name == "k" else getattr(method, "Config", None)
    bound = getattr(owner, "BOUNDS", {}).get(override.name)
    values = override.choices if override.choices is not None else (override.low, override.high)
    if bound is not None:
        bad = [v for v in values if isinstance(v, (int, float)) and not bound.admits(v)]
        if bad:
            raise ValueError(f"space entry '{entry}': {override.name} must be {bound.text()}, got {bad[0]}")


def _parse_one(entry: str, name: str, spec: str, original: tuple) -> Override:
    kind = original[0]
    if ":" in spec:
        if kind == "categorical":
            raise ValueError(f"space entry '{entry}': '{name}' is categorical; give choices, e.g. "
                             f"{name}={','.join(str(c) for c in original[1])}")
        parts = spec.split(":")
        log = parts[-1].strip().lower() == "log"
        bounds = parts[:-1] if log else parts
        if len(bounds) != 2 or not all(b.strip() for b in bounds):
            raise ValueError(f"space entry '{entry}' must be {name}=LOW:HIGH or {name}=LOW:HIGH:log")
        low, high = (_number(entry, b, kind == "int") for b in bounds)
        if low == high:
            raise ValueError(f"space entry '{entry}' is an empty range ({low} to {high}); "
                             f"use {name}={low} to fix the parameter")
        if low > high:
            raise ValueError(f"space entry '{entry}' is an inverted range: low {low} > high {high}")
        if log and low <= 0:
            raise ValueError(f"space entry '{entry}' is a bad log range: a log scale needs low > 0, got {low}")
        return Override(name, integer=kind == "int", low=low, high=high, log=log)
    items = [s.strip() for s in spec.split(",")]
    if not all(items):
        raise ValueError(f"space entry '{entry}' has an empty choice")
    if kind == "categorical":
        by_text = {str(c): c for c in original[1]}
        for item in items:
            if item not in by_text:
                raise ValueError(f"space entry '{entry}': unknown {name} '{item}'; "
                                 f"valid values: {', '.join(by_text)}")
        choices = [by_text[i] for i in items]
    else:
        choices = [_number(entry, i, kind == "int") for i in items]
    return Override(name, integer=kind == "int", choices=tuple(dict.fromkeys(choices)))


def _number(entry: str, text: str, integer: bool) -> float | int:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"space entry '{entry}': '{text}' is not {kind}") from None
