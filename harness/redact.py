"""Secrets never reach the record: reward tokens, passwords and URL user-info are masked before writing.

Applied to everything the store writes (manifest, including the recorded command line and error text;
summary) and to what a study stores in its journal. Masked are: the value of a known secret key as an
option (``remote:http://host:8000.token=T``, ``?password=P``), a dict entry or a flag (``--token T``,
``--token=T``); the user-info of a URL (``http://user:pass@host`` -> ``http://***@host``); a bearer token.
"""

from __future__ import annotations

import re
from typing import Any

SECRET_KEYS = ("token", "password", "passwd", "secret", "api_key", "apikey")
"""Option, field and flag names whose values are secrets."""
MASK = "***"

_KEYS = "|".join(SECRET_KEYS).replace("_", "[_-]")
_OPTION = re.compile(rf"(?i)((?:^|[^A-Za-z0-9])(?:{_KEYS})=)[^\s&;,]+")
_FLAG = re.compile(rf"(?i)((?:^|\s)--?(?:{_KEYS})[ =])\S+")
_USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
_SECRET_FLAGS = {f"-{'-' if len(k) > 1 else ''}{k}" for k in SECRET_KEYS} | {f"--{k.replace('_', '-')}"
                                                                               for k in SECRET_KEYS}


def redact_text(text: str) -> str:
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    text = _OPTION.sub(rf"\1{MASK}", text)
    text = _FLAG.sub(rf"\1{MASK}", text)
    return _BEARER.sub(rf"\1{MASK}", text)


def redact(value: Any) -> Any:
    """``value`` (str, dict, list or tuple, nested) with every secret masked; other values unchanged."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and k.lower().replace("-", "_") in SECRET_KEYS and v
                else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = [redact(v) for v in value]
        for i, item in enumerate(value[:-1]):  # argv: a secret flag's value is the next word
            if isinstance(item, str) and item.lower() in _SECRET_FLAGS:
                out[i + 1] = MASK
        return type(value)(out) if isinstance(value, tuple) else out
    return value
