"""GenEval's metadata format (``prompts/evaluation_metadata.jsonl``): one JSON object per prompt with its tag,
prompt and include/exclude clauses. Read and checked here, once, for the benchmark (``evals/geneval_bench.py``),
the real detector reward (``rewards/geneval_mmdet.py``) and the Shapes world's prompt files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evals.geneval import GENEVAL_TAGS, RELATIONS


def check_metadata(meta: Any, where: str) -> dict:
    """``meta`` if it is a GenEval metadata object (tag, prompt, include clauses, optional exclude), else a
    ValueError naming ``where`` and the first problem."""
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: metadata must be a JSON object, got {type(meta).__name__}")
    for key, kind in (("tag", str), ("prompt", str), ("include", list)):
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"{where}: metadata needs '{key}' ({kind.__name__}); keys present: {sorted(meta)}")
    if meta["tag"] not in GENEVAL_TAGS:
        raise ValueError(f"{where}: unknown tag '{meta['tag']}'; GenEval's tags: {', '.join(GENEVAL_TAGS)}")
    if not meta["include"]:
        raise ValueError(f"{where}: 'include' is empty")
    for part in ("include", "exclude"):
        clauses = meta.get(part, [])
        if not isinstance(clauses, list):
            raise ValueError(f"{where}: '{part}' must be a list")
        for i, clause in enumerate(clauses):
            if not (isinstance(clause, dict) and isinstance(clause.get("class"), str)
                    and type(clause.get("count")) is int and clause["count"] >= 1):
                raise ValueError(f"{where}: {part}[{i}] needs 'class' (str) and 'count' (int >= 1), got {clause!r}")
            if "color" in clause and not isinstance(clause["color"], str):
                raise ValueError(f"{where}: {part}[{i}].color must be a string")
            if "position" in clause:
                pos = clause["position"]
                if (part != "include" or not isinstance(pos, list) or len(pos) != 2 or pos[0] not in RELATIONS
                        or type(pos[1]) is not int or not 0 <= pos[1] < i):
                    raise ValueError(f"{where}: {part}[{i}].position must be [relation, index of an earlier include "
                                     f"clause] with relation in {list(RELATIONS)}, got {pos!r}")
    return meta


def load_metadata(path: str | Path) -> list[dict]:
    """GenEval's ``evaluation_metadata.jsonl`` (553 lines upstream) or any file in its format: one JSON object per
    line, blank lines skipped. Errors name the file and the line number."""
    path = Path(path)
    if not str(path) or str(path) == ".":
        raise ValueError("geneval needs --metadata PATH (GenEval's prompts/evaluation_metadata.jsonl, or a Shapes "
                         "metadata file)")
    if not path.is_file():
        raise FileNotFoundError(f"GenEval metadata file '{path}' does not exist")
    metas = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        where = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{where}: GenEval metadata must be UTF-8 ({err.reason} at byte {err.start})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not a JSON object ({err.msg} at column {err.colno})") from None
        metas.append(check_metadata(meta, f"{path}:{lineno}"))
    if not metas:
        raise ValueError(f"GenEval metadata file '{path}' holds no prompts")
    return metas
