"""Files from a shared results root or a user's path are loaded as data, never as code.

Torch files load with ``weights_only=True``: tensors, numbers, strings and plain containers only, so a pickle
that names a callable (``os.system``, a class with ``__reduce__``) is refused before any of it runs. Third-party
loaders that call ``torch.load`` themselves (ImageReward's ``RM.load``) run inside :func:`weights_only`, which
forces the same mode on every ``torch.load`` in between (torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, honoured by
torch >= 2.4 even where the caller passed ``weights_only=False``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def torch_file(path: str | Path, what: str, hint: str = "") -> Any:
    """``torch.load(path)`` as data only; a one-line ``ValueError`` naming ``what`` and the file otherwise
    (``hint``, if given, is appended after a semicolon)."""
    import torch

    tail = f"; {hint}" if hint else ""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler met something other than plain data
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise ValueError(f"{what} {path} is refused: it names code ({found.group(1)}), which such a file never "
                             f"holds, and nothing of it was run{tail}") from None
        found = re.search(r"Unsupported [^\n]*", str(exc))
        raise ValueError(f"{what} {path} is unreadable (not a torch file of tensors and plain data: "
                         f"{found.group(0) if found else 'bad pickle'}){tail}") from None
    except Exception as exc:  # noqa: BLE001 - pickle and zip raise many types for a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{what} {path} is unreadable ({type(exc).__name__}: {reason}){tail}") from None


@contextlib.contextmanager
def weights_only() -> Iterator[None]:
    """Every ``torch.load`` inside loads as data only, whatever its caller asked for."""
    before = os.environ.get(FORCE)
    os.environ[FORCE] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(FORCE, None)
        else:
            os.environ[FORCE] = before
