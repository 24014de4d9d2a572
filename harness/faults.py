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

ENV = "DRIFTBENCH_FAULT"
_passes: dict[str, int] = {}


def point(name: str, path: object = None) -> None:
    """Pass through fault point ``name`` (``path``: the file about to be written, for ``enospc``)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _passes[name] = count = _passes.get(name, 0) + 1
    for entry in spec.split(","):
        target, _, rest = entry.strip().partition(":")
        nth, _, action = rest.partition(":")
        first = int(nth.rstrip("+") or 1)
        if target != name or count < first or (count > first and not nth.endswith("+")):
            continue
        action = action or "kill"
        if action in ("enospc", "erofs", "eacces"):
            code = getattr(errno, action.upper())
            raise OSError(code, os.strerror(code), str(path) if path is not None else None)
        signals = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}
        if action not in signals:
            raise ValueError(f"{ENV}: unknown action '{action}' in '{entry}'; valid actions: enospc, erofs, "
                             f"eacces, {', '.join(signals)}")
        os.kill(os.getpid(), signals[action])
