"""Fault injection: named points the harness passes through, for the fault suite (``tests/test_faults.py``).

``DRIFTBENCH_FAULT="POINT[:N[:ACTION]],..."`` makes the N-th passage (default the first) of this process
through ``POINT`` do ``ACTION`` (``N+``: the N-th and every later one, as a disk that stays full):

* ``kill`` (default): SIGKILL this process, as the OOM killer or ``kill -9`` would;
* ``term`` / ``int``: send this process SIGTERM / SIGINT (the run stops at its next safe point);
* ``enospc`` / ``erofs`` / ``eacces``: raise that ``OSError``, as a full disk, a read-only file system or a
  directory without write permission would.

Points (see where :func:`point` is called): ``eval`` (inside each evaluation, the first being the one at
fraction 0 when ``eval_at`` holds 0), ``test`` (inside the final test-split evaluation), ``update`` (after the backward pass, before the optimizer
step), ``checkpoint`` (the checkpoint written to its temporary file, not yet in place), ``final-checkpoint``
(the final checkpoint in place, the final evaluation still to come), ``summary`` (before the summary is
written) and ``write`` (each record file being written, its temporary file not yet in place: manifest,
metrics row, checkpoint, summary).
With the variable unset, as everywhere outside the fault suite, a point costs one environment lookup.
"""

from __future__ import annotations

import errno
import os
import signal

from harness.registry import unknown

ENV = "DRIFTBENCH_FAULT"
POINTS = ("eval", "test", "update", "checkpoint", "final-checkpoint", "summary", "write")
"""Every point :func:`point` is called with; a spec naming another is refused, not silently never fired."""
ACTIONS = ("kill", "term", "int", "enospc", "erofs", "eacces")
_passes: dict[str, int] = {}
_parsed: dict[str, list[tuple[str, int, bool, str]]] = {}


def parse(spec: str) -> list[tuple[str, int, bool, str]]:
    """``spec`` as (point, N, and-later, action) entries; a one-line ``ValueError`` names the first bad entry
    (an unknown point or action, or an N that is not a positive integer)."""
    if spec in _parsed:
        return _parsed[spec]
    out = []
    for entry in spec.split(","):
        if not entry.strip():
            continue
        target, _, rest = entry.strip().partition(":")
        nth, _, action = rest.partition(":")
        if target not in POINTS:
            raise ValueError(f"{ENV}: {unknown('fault point', target, list(POINTS))} (in '{entry}')")
        count = nth.rstrip("+") or "1"
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{ENV}: N must be a positive integer (optionally followed by +), got '{nth}' in "
                             f"'{entry}'; expected POINT[:N[:ACTION]]")
        if (action or "kill") not in ACTIONS:
            raise ValueError(f"{ENV}: unknown action '{action}' in '{entry}'; valid actions: {', '.join(ACTIONS)}")
        out.append((target, int(count), nth.endswith("+"), action or "kill"))
    _parsed[spec] = out
    return out


def check() -> None:
    """Refuse a malformed ``DRIFTBENCH_FAULT`` before anything runs (the CLI calls this first)."""
    parse(os.environ.get(ENV, ""))


def point(name: str, path: object = None) -> None:
    """Pass through fault point ``name`` (``path``: the file about to be written, for ``enospc``)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _passes[name] = count = _passes.get(name, 0) + 1
    for target, first, later, action in parse(spec):
        if target != name or count < first or (count > first and not later):
            continue
        if action in ("enospc", "erofs", "eacces"):
            code = getattr(errno, action.upper())
            raise OSError(code, os.strerror(code), str(path) if path is not None else None)
        signals = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}
        os.kill(os.getpid(), signals[action])
