"""Registries: dicts of lazy import strings, resolved on first use.

Every registry in driftbench (methods, rewards, evaluators, profiles) is a plain dict literal mapping a
public name to ``"module"`` or ``"module:attribute"``. Nothing registers itself at import time, so the
registry is complete the moment its package is imported (lm-eval #1304 is what import-time decorators
cost), and nothing heavy is imported until a name is actually asked for.

An unknown name raises :class:`UnknownName`, a ``ValueError`` whose one-line message lists the valid
names and the nearest match.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Iterator, Mapping


class UnknownName(ValueError):
    """A name that is not in a registry; the message names the valid choices and the nearest match."""


def unknown(kind: str, name: str, valid: list[str], where: str = "") -> UnknownName:
    """Build the one-line error for ``name`` not being a valid ``kind`` (``where``: the flag or file it came from)."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    at = f" ({where})" if where else ""
    return UnknownName(f"unknown {kind} '{name}'{at}{hint} valid {kind}s: {', '.join(valid)}")


class Registry(Mapping[str, Any]):
    """A read-only mapping from names to lazily imported objects.

    ``entries`` maps each name to ``"package.module"`` (the module itself is the object, as for methods)
    or ``"package.module:attr"``. ``patterns`` maps a prefix such as ``"remote:"`` to a factory target
    for names that carry an argument (``remote:http://host:port``); the factory receives the text after
    the prefix.
    """

    def __init__(self, kind: str, entries: dict[str, str], patterns: dict[str, str] | None = None):
        self.kind = kind
        self._entries = dict(entries)
        self._patterns = dict(patterns or {})
        self._cache: dict[str, Any] = {}

    # -- Mapping protocol over the static entries -------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or self._pattern(name) is not None)

    def names(self) -> list[str]:
        """The static names, in registry order (pattern families are listed by ``patterns()``)."""
        return list(self._entries)

    def patterns(self) -> list[str]:
        """Prefixes of parametrised names, such as ``remote:``."""
        return list(self._patterns)

    def target(self, name: str) -> str:
        """The import string behind ``name`` (without importing it)."""
        self.check(name)
        pattern = self._pattern(name)
        return self._entries[name] if pattern is None else self._patterns[pattern]

    def check(self, name: str) -> str:
        """Return ``name`` if it is valid, else raise :class:`UnknownName`."""
        if name not in self:
            valid = self.names() + [p + "..." for p in self._patterns]
            raise unknown(self.kind, name, valid)
        return name

    def get(self, name: str) -> Any:  # type: ignore[override]
        """Import and return the object behind ``name``.

        For a pattern name (``remote:URL``) this returns ``(factory, argument)``.
        """
        self.check(name)
        pattern = self._pattern(name)
        if pattern is not None:
            return load(self._patterns[pattern]), name[len(pattern):]
        if name not in self._cache:
            self._cache[name] = load(self._entries[name])
        return self._cache[name]

    def _pattern(self, name: str) -> str | None:
        for prefix in self._patterns:
            if name.startswith(prefix) and len(name) > len(prefix):
                return prefix
        return None


def load(target: str) -> Any:
    """Import ``"module"`` or ``"module:attr"``."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module
