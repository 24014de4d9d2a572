"""Secrets never reach a record, a tracker, a terminal or a log: one masking for every sink.

Applied to everything the store writes (manifest, including the recorded command line and error text;
summary), to what a study stores in its journal, to the hyperparameters sent to trackers, to every error
line ``driftbench`` prints, to a ``cmd:`` reward's errors and the reward server's log, and (through
:class:`RedactingStream`, installed by ``driftbench``'s ``main``) to every line written to stdout and stderr.

Masked are:

* the value of a known secret key as an option or query parameter (``remote:http://host:8000.token=T``,
  ``?token=T``, ``&password=P``), a dict entry, a JSON or repr key (``"token": "T"``), a header
  (``Authorization: Bearer T``, ``X-Api-Key: T``) or a flag (``--token T``, ``--token=T``);
* the user-info of a URL, with or without a user name and up to the last ``@`` before the path, so an
  unencoded ``@`` in a password is covered (``postgresql://u:p@ss@host/db`` -> ``postgresql://***@host/db``);
* a bearer credential anywhere (``Bearer T``, ``bearer T``; ``Basic`` only after a header name).

Every pattern starts with a literal or a single character class and never backtracks across the text, so
masking takes time linear in its length (a 100 KB tag: milliseconds, see the test).
"""

from __future__ import annotations

import re
from typing import Any, TextIO

SECRET_KEYS = ("token", "password", "passwd", "pwd", "secret", "api_key", "apikey", "auth", "authorization",
               "access_key", "private_key")
"""Option, field, header and flag names whose values are secrets (``_``, ``-`` or nothing between words)."""
MASK = "***"

_KEYS = "|".join(k.replace("_", "[_-]?") for k in sorted(SECRET_KEYS, key=len, reverse=True))
_NOT_WORD = r"(?:^|(?<=[^A-Za-z0-9]))"
# key=VALUE, key: VALUE, "key": "VALUE", 'key'='VALUE' (options, query strings, headers, JSON and repr):
# the key must not be the tail of a longer word (``mytoken=`` is not a secret key, ``x_token=`` is).
_KEYED = re.compile(rf"(?i){_NOT_WORD}((?:x-)?(?:{_KEYS})[\"']?[ \t]*[:=][ \t]*[\"']?"
                    rf"(?:(?:bearer|basic|token|digest)[ \t]+)?)[^\s&;,'\"]+")
_FLAG = re.compile(rf"(?i)((?:^|(?<=\s))--?(?:{_KEYS})[ \t]+)\S+")
# Scheme-less text after "://" up to the end of the authority; backtracks to its last "@" only.
_USERINFO = re.compile(r"://[^/\s?#@]*(?:@[^/\s?#@]*)*@")
_BEARER = re.compile(r"(?i)\b(bearer[ \t]+)[^\s,;'\"]+")
_SECRET_FLAGS = {f"-{'-' if len(k) > 1 else ''}{k}" for k in SECRET_KEYS} | {f"--{k.replace('_', '-')}"
                                                                               for k in SECRET_KEYS}


PLACEHOLDERS = frozenset({"TOKEN", "PASSWORD", "USER:PASSWORD", "SECRET", "KEY", "API_KEY", "T", "P", MASK})
"""Words that stand for a secret in help and error text (``Authorization: Bearer TOKEN``); kept as they are."""


def _mask(found: re.Match) -> str:
    secret = found.group(0)[len(found.group(1)):]
    return found.group(0) if secret in PLACEHOLDERS else found.group(1) + MASK


def _mask_userinfo(found: re.Match) -> str:
    return found.group(0) if found.group(0)[3:-1] in PLACEHOLDERS else f"://{MASK}@"


def redact_text(text: str) -> str:
    """``text`` with every secret form above, and every secret this process was told of, masked (linear time
    in the text's length)."""
    for secret in _KNOWN:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _USERINFO.sub(_mask_userinfo, text)
    text = _KEYED.sub(_mask, text)
    text = _FLAG.sub(_mask, text)
    return _BEARER.sub(_mask, text)


_KNOWN: list[str] = []
"""Secrets seen in this process's command line, reward commands and server tokens, longest first: masked
wherever they show up again, in any form (a reward program that echoes its argv, a library's repr)."""


def secret_values(value: Any) -> list[str]:
    """The secrets in ``value`` (a string, or an argv-like list): what :func:`redact` would mask."""
    if isinstance(value, (list, tuple)):
        found = [v for item in value for v in secret_values(item)]
        found += [value[i + 1] for i, item in enumerate(value[:-1])
                  if isinstance(item, str) and item.lower() in _SECRET_FLAGS and isinstance(value[i + 1], str)]
        return found
    if not isinstance(value, str):
        return []
    found = [m.group(0)[3:-1] for m in _USERINFO.finditer(value)]
    found += [m.group(0)[len(m.group(1)):] for pattern in (_KEYED, _FLAG, _BEARER) for m in pattern.finditer(value)]
    return [f for f in found if f not in PLACEHOLDERS]


def remember(value: Any, *, bare: bool = False) -> None:
    """Mask the secrets in ``value`` (see :func:`secret_values`; with ``bare``, ``value`` is itself a secret,
    such as a token) in everything :func:`redact_text` sees from now on in this process."""
    found = ([value] if value else []) if bare else secret_values(value)
    for secret in found:
        # A user name before ":" is not secret, its password is, and so is each part after an unencoded "@"
        # (a parser takes it for the host and quotes it); very short values would mask ordinary text.
        password = secret.partition(":")[2]
        for part in {secret, password, *(password.split("@", i)[-1] for i in range(1, password.count("@") + 1))}:
            if len(part) >= 6 and part not in PLACEHOLDERS and part not in _KNOWN:
                _KNOWN.append(part)
    _KNOWN.sort(key=len, reverse=True)


def redact(value: Any) -> Any:
    """``value`` (str, dict, list or tuple, nested) with every secret masked; other values unchanged."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_text(k) if isinstance(k, str) else k: MASK if _secret_key(k) and v else redact(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = [redact(v) for v in value]
        for i, item in enumerate(value[:-1]):  # argv: a secret flag's value is the next word
            if isinstance(item, str) and item.lower() in _SECRET_FLAGS:
                out[i + 1] = MASK
        return type(value)(out) if isinstance(value, tuple) else out
    return value


def _secret_key(key: Any) -> bool:
    """A dict key naming a secret: ``token``, ``reward.token``, ``X-Api-Key``, ``db_password``."""
    if not isinstance(key, str):
        return False
    last = re.split(r"[.:/]", key.lower())[-1].replace("-", "_")
    return any(last == k or last.endswith("_" + k) or last == "x_" + k for k in SECRET_KEYS)


class RedactingStream:
    """A text stream that masks secrets in what passes through it, line by line (a secret split across two
    ``write`` calls of one line is still masked); a partial line goes out at ``flush`` (progress bars flush)
    or once 64 KiB are pending. Everything else is the wrapped stream's."""

    LIMIT = 1 << 16

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        cut = max(self._pending.rfind("\n"), self._pending.rfind("\r")) + 1
        if len(self._pending) > self.LIMIT:
            cut = len(self._pending)
        if cut:
            self.stream.write(redact_text(self._pending[:cut]))
            self._pending = self._pending[cut:]
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            self.stream.write(redact_text(self._pending))
            self._pending = ""
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def redact_streams() -> tuple[Any, Any]:
    """Route ``sys.stdout`` and ``sys.stderr`` through :class:`RedactingStream` (``driftbench``'s ``main`` and
    every worker process it spawns); returns the streams to restore."""
    import sys

    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (s if isinstance(s, RedactingStream) else RedactingStream(s) for s in streams)
    return streams
