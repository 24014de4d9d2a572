"""A study journal is repaired only where the repair is provable; anything else refuses, naming the line.

Optuna numbers a journal's trials by the order of their creation lines, so dropping a damaged line in the
middle can shift every later trial onto another's parameters (measured on 678faa3: "best trial 5 value
-1.569 []"). What a crash can leave, and only that, is mended in place: the last line torn by a kill (no
newline yet), or a torn last write with the next process's complete write appended to it (the torn part
is dropped; nothing after it can depend on it, as no reader could parse it). Any other undecodable line, a
line that is not an operation Optuna knows, or one that lacks a field its operation needs, refuses the
study in one line naming the file and the line, and ``driftbench study-salvage JOURNAL --to NEW`` copies
every trial that is provably whole into a new journal, saying what it dropped.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED = {0: ("study_name", "directions"), 1: ("study_id",), 2: ("study_id", "user_attr"),
            3: ("study_id", "system_attr"), 4: ("study_id", "datetime_start"),
            5: ("trial_id", "param_name", "param_value_internal", "distribution"),
            6: ("trial_id", "state", "values"), 7: ("trial_id", "step", "intermediate_value"),
            8: ("trial_id", "user_attr"), 9: ("trial_id", "system_attr"), 10: ()}
"""Optuna's journal operation codes (``JournalOperation``, optuna 4-5) and the fields each needs to replay."""
CREATE_TRIAL = 4
_OP = re.compile(rb'"op_code"\s*:\s*(\d+)')
_TRIAL = re.compile(rb'"trial_id"\s*:\s*(\d+)')


class DamagedJournal(ValueError):
    """A journal line that no repair can prove harmless; the message is one line naming the file and line."""


def problem(line: bytes) -> str:
    """Why ``line`` (without its newline) cannot be replayed; "" when it can."""
    try:
        op = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "not a complete JSON line"
    if not isinstance(op, dict) or not isinstance(op.get("op_code"), int) or isinstance(op["op_code"], bool):
        return "no integer op_code"
    if op["op_code"] not in REQUIRED:
        return f"unknown op code {op['op_code']}"
    missing = [k for k in ("worker_id", *REQUIRED[op["op_code"]]) if k not in op]
    return f"op code {op['op_code']} lacks {', '.join(missing)}" if missing else ""


def repair(path: Path, lock: Any, write_atomic: Any) -> None:
    """Check ``path`` under Optuna's ``lock`` (a context manager): mend a torn last line with a warning naming
    the file, refuse (:class:`DamagedJournal`) any other damage, changing nothing."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with lock:
        data = path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # after the last newline: b"" unless a write was cut
        mended = bool(torn)
        for number, line in enumerate(lines, start=1):
            why = problem(line)
            if not why:
                continue
            start = line.rfind(b'{"op_code"')  # the last line: a torn write, then the next complete one
            if number == len(lines) and not torn and start > 0 and line.startswith(b'{"op_code"') \
                    and problem(line[:start]) and not problem(line[start:]):
                lines[-1], mended = line[start:], True
                continue
            raise DamagedJournal(f"{path}:{number}: damaged study journal line ({why}); nothing was changed. "
                                 f"Copy its complete trials to a new journal: driftbench study-salvage {path} "
                                 f"--to NEW.journal")
        if not mended:
            return
        write_atomic(path, lambda tmp: tmp.write_bytes(b"".join(line + b"\n" for line in lines)))
    warnings.warn(f"{path}: repaired 1 line torn by a crash", stacklevel=3)


# ---------------------------------------------------------------------------------------------------
# Salvage
# ---------------------------------------------------------------------------------------------------

@dataclass
class Salvage:
    kept: int = 0
    """Trials copied."""
    dropped: list[str] = field(default_factory=list)
    """What was left behind and why, one entry per line or trial."""


def salvage(source: Path, target: Path) -> Salvage:
    """Copy every replayable line of ``source`` to the new journal ``target``, leaving out each trial whose
    creation or any of whose lines is damaged (the rest renumbered in order), and check that Optuna opens it.

    A damaged line's trial is read from its bytes where they still say it (``"op_code":4`` is a creation,
    ``"trial_id":N`` names the trial); a damaged line that says neither counts as a lost creation when the
    next line that names a trial names one not yet created, and as a lost study-level line otherwise."""
    if target.exists():
        raise FileExistsError(f"study-salvage: {target} already exists; name a new file")
    if not source.is_file():
        raise FileNotFoundError(f"study-salvage: journal {source} does not exist")
    raw = source.read_bytes().split(b"\n")
    ops: list[tuple[int, dict | None, bytes]] = []  # (line number, operation or None when damaged, bytes)
    for number, line in enumerate(raw, start=1):
        if not line.strip():
            continue
        ops.append((number, None if problem(line) else json.loads(line), line))
    result, created, bad_trials, old_of_line = Salvage(), 0, set(), {}
    for i, (number, op, line) in enumerate(ops):
        if op is not None:
            if op["op_code"] == CREATE_TRIAL:
                old_of_line[number], created = created, created + 1
            continue
        op_code, trial = _guess(line, "op"), _guess(line, "trial")
        if op_code == CREATE_TRIAL or (op_code is None and trial is None and _names_uncreated(ops[i + 1:], created)):
            bad_trials.add(created)
            result.dropped.append(f"line {number}: damaged creation of trial {created}; trial {created} dropped")
            created += 1
        elif trial is not None:
            bad_trials.add(trial)
            result.dropped.append(f"line {number}: damaged line of trial {trial}; trial {trial} dropped")
        else:
            result.dropped.append(f"line {number}: damaged line naming no trial (op code {op_code}); dropped")
    renumber = {old: new for new, old in enumerate(t for t in range(created) if t not in bad_trials)}
    out = []
    for number, op, _ in ops:
        if op is None:
            continue
        if op["op_code"] == CREATE_TRIAL and old_of_line[number] in bad_trials:
            continue
        if "trial_id" in op:
            if op["trial_id"] not in renumber:
                continue
            op = {**op, "trial_id": renumber[op["trial_id"]]}
        out.append(json.dumps(op, separators=(",", ":")).encode())
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"".join(line + b"\n" for line in out))
    result.kept = _count_trials(target)
    return result


def _guess(line: bytes, what: str) -> int | None:
    found = (_OP if what == "op" else _TRIAL).search(line)
    return int(found.group(1)) if found else None


def _names_uncreated(rest: list[tuple[int, dict | None, bytes]], created: int) -> bool:
    """Whether a later readable line names a trial that would not exist yet were the damaged line before
    ``rest`` not a creation (``created`` trials exist before it): then it must have been one."""
    for _, op, _ in rest:
        if op is None:
            return False  # the next damaged line: its own question
        if op["op_code"] == CREATE_TRIAL:
            created += 1
        elif "trial_id" in op and op["trial_id"] >= created:
            return True
    return False


def _count_trials(path: Path) -> int:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return sum(len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
               for name in optuna.get_all_study_names(storage))


def salvage_command(argv: list[str]) -> int:
    """``driftbench study-salvage JOURNAL --to NEW``: copy a damaged journal's whole trials to a new one."""
    if len(argv) != 3 or argv[1] != "--to":
        raise ValueError("usage: driftbench study-salvage JOURNAL --to NEW.journal")
    result = salvage(Path(argv[0]), Path(argv[2]))
    for line in result.dropped:
        print(f"study-salvage: dropped {line}")
    print(f"study-salvage: wrote {argv[2]} with {result.kept} trial(s); {len(result.dropped)} damaged line(s) "
          f"left behind. Open it with --storage {argv[2]}")
    return 0
