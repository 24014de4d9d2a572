"""One validation pass for every numeric config field, run before any model is built.

Each config dataclass declares the valid range of each of its numeric fields in a class-level table placed
right after its fields::

    BOUNDS: ClassVar[dict[str, Bound]] = {"k": at_least(2), "lr": positive(), "eval_at": within(0, 1)}

:func:`check` walks the table (a tuple field is checked element by element) and raises a one-line
``ValueError`` naming the CLI flag, the valid range and the bad value, e.g. ``--drpo.lam must be a finite
number >= 0, got nan``. Every bound refuses NaN and, unless it says otherwise, infinity: a NaN never passes a
comparison silently. :func:`unbounded` lists numeric fields without a declared bound (a test fails on any, so
a new field cannot skip validation).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

from harness.registry import unknown


@dataclass(frozen=True)
class Bound:
    """A numeric range: ``low``/``high`` (None: unbounded), strict or not; ``zero`` also admits exactly 0
    (the "off" value of many fields); ``finite`` refuses +-inf."""

    low: float | None = None
    high: float | None = None
    strict_low: bool = False
    strict_high: bool = False
    zero: bool = False
    finite: bool = True
    distinct: bool = False
    """For a tuple field: no value twice (two runs of one seed would count one run twice)."""

    def admits(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if math.isnan(value) or (self.finite and math.isinf(value)):
            return False
        if self.zero and value == 0:
            return True
        if self.low is not None and (value <= self.low if self.strict_low else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.strict_high else value > self.high))

    def text(self, number: bool = False) -> str:
        """The range in words, e.g. ">= 2", "in (0, 1]"; ``number`` puts "a finite number" first."""
        parts = []
        if self.low is not None and self.high is not None:
            parts.append(f"in {'(' if self.strict_low else '['}{_num(self.low)}, {_num(self.high)}"
                         f"{')' if self.strict_high else ']'}")
        elif self.low is not None:
            parts.append(f"{'>' if self.strict_low else '>='} {_num(self.low)}")
        elif self.high is not None:
            parts.append(f"{'<' if self.strict_high else '<='} {_num(self.high)}")
        kind = ("a finite number" if self.finite else "a number (not NaN)") if number or not parts else ""
        return f"{kind} {' '.join(parts)}".strip() + (" or 0" if self.zero else "")


@dataclass(frozen=True)
class Length:
    """A text field's most characters (each element's, for a tuple of strings): a size bound, so that a
    100 KB tag or option cannot slow every later step that copies, masks or logs it."""

    most: int

    def admits(self, value: Any) -> bool:
        return isinstance(value, str) and len(value) <= self.most

    def text(self, number: bool = False) -> str:
        return f"at most {self.most} characters"


def positive() -> Bound:
    return Bound(low=0, strict_low=True)


def at_least(low: float, *, zero: bool = False) -> Bound:
    return Bound(low=low, zero=zero)


def nonnegative() -> Bound:
    return Bound(low=0)


def within(low: float, high: float, *, strict_low: bool = False, strict_high: bool = False) -> Bound:
    return Bound(low=low, high=high, strict_low=strict_low, strict_high=strict_high)


def finite() -> Bound:
    return Bound()


def flag(prefix: str, name: str) -> str:
    """The CLI flag of a field as tyro spells it (``--drpo.ref-radii``, ``--eval-prompt-limit``)."""
    return f"--{prefix + '.' if prefix else ''}{name.replace('_', '-')}"


def check(cfg: Any, prefix: str = "") -> None:
    """Raise a one-line ``ValueError`` for the first field of ``cfg`` outside its declared bound, or the first
    ``Literal`` field holding a value that is not one of its choices (nearest match named)."""
    for name, bound in getattr(type(cfg), "BOUNDS", {}).items():
        value = getattr(cfg, name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        if not all(bound.admits(v) for v in values):
            if isinstance(bound, Length):
                longest = max((len(v) for v in values if isinstance(v, str)), default=0)
                raise ValueError(f"{flag(prefix, name)} must be {bound.text()}, got {longest}")
            odd = any(isinstance(v, float) and not math.isfinite(v) for v in values)
            raise ValueError(f"{flag(prefix, name)} must be {bound.text(odd)}, got {_show(value)}")
        if getattr(bound, "distinct", False) and len(set(values)) < len(values):
            twice = sorted({v for v in values if values.count(v) > 1})
            raise ValueError(f"{flag(prefix, name)} must not repeat a value, got {_show(value)} "
                             f"({', '.join(_show(v) for v in twice)} more than once)")
    for name, valid in choice_fields(type(cfg)).items():
        value = getattr(cfg, name)
        check_choice(prefix, name, value, valid)


def check_choice(prefix: str, name: str, value: Any, valid: tuple[str, ...]) -> None:
    """One-line error for a value (or any element of a tuple value) outside ``valid``."""
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if v not in valid:
            raise unknown(name.replace("_", " "), str(v), list(valid), where=flag(prefix, name))


def choice_fields(cls: type) -> dict[str, tuple[str, ...]]:
    """{field: its choices} for every field of dataclass ``cls`` typed ``Literal[...]`` or a tuple of one."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name)
        if typing.get_origin(tp) is tuple:
            tp = typing.get_args(tp)[0]
        if typing.get_origin(tp) is Literal:
            out[f.name] = tuple(typing.get_args(tp))
    return out


def _num(x: float) -> str:
    """A bound as text: integers in full (the seed range's 2**62 is not 4.61169e+18), others as %g."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(_show(v) for v in value) or "nothing"
    return repr(value) if isinstance(value, str) else f"{value}"


def numeric_fields(cls: type) -> list[str]:
    """Fields of dataclass ``cls`` typed int or float, or a tuple of them (bool excluded)."""
    hints = typing.get_type_hints(cls, include_extras=False)
    return [f.name for f in dataclasses.fields(cls) if _numeric(hints.get(f.name))]


def _numeric(tp: Any) -> bool:
    if tp in (int, float):
        return True
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (tuple, list) or (origin is not None and args):
        return any(_numeric(a) for a in args if a is not Ellipsis and a is not type(None))
    return False


def unbounded(cls: type) -> list[str]:
    """Numeric fields of ``cls`` without an entry in its ``BOUNDS`` table (and entries naming no field)."""
    bounds = getattr(cls, "BOUNDS", {})
    names = {f.name for f in dataclasses.fields(cls)}
    return [n for n in numeric_fields(cls) if n not in bounds] + [f"{n} (no such field)" for n in bounds
                                                                   if n not in names]
