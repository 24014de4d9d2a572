"""``cmd:COMMAND``: any program as a black-box reward.

For each batch the harness writes a fresh temporary directory holding ``000000.png``, ``000001.png``, ...
(RGB, the images rounded to uint8) and ``prompts.jsonl`` (one line per image, in order:
``{"index": 0, "image": "000000.png", "prompt": "..."}``), then runs ``COMMAND DIRECTORY`` (the command is
split like a shell would, ``shlex.split``, but no shell runs it) and reads **one float per line** from its
stdout; blank lines are ignored, anything else is an error. Its stderr is shown when it fails.

    driftbench train --reward "cmd:python /opt/score.py" --reward-options "cmd:python /opt/score.py.timeout=120"

Errors (all :class:`RuntimeError`, naming the command): the program is missing, exits non-zero, runs past
``timeout`` seconds (its whole process group is killed), or prints the wrong number of lines, non-numbers or
non-finite values. Options: ``timeout`` seconds per batch (600), ``batch`` images per call (0 = all),
``name`` (recorded reward name, default ``cmd``), ``version`` (1); bump the version when the program changes.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from harness.config import plain_name
from harness.redact import redact_text, remember
from harness.serving.wire import to_uint8
from rewards import check_images, number_option


class CommandReward:
    name = "cmd"
    version = 1
    differentiable = False
    resolution = None
    requires = "the command's own environment (any program that prints one float per image)"

    def __init__(self, command: str, timeout: float | str = 600, batch: int | str = 0, name: str = "cmd",
                 version: int | str = 1):
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("cmd: reward needs a command, e.g. cmd:python score.py")
        self.command = command
        remember(self.argv)  # the program may echo its arguments on stderr, which its error line quotes
        self.shown = redact_text(command)  # what error lines name: the command, its secrets masked
        what = f"reward 'cmd:{self.shown}'"
        self.timeout = number_option(what, "timeout", timeout, strict=True)
        self.batch = number_option(what, "batch", batch, integer=True)
        self.version = number_option(what, "version", version, integer=True)
        self.name = plain_name(f"{what} option name", name)

    def score(self, images: Tensor, prompts: Sequence[str]) -> list[float]:
        check_images(images, prompts, self.name)
        step = self.batch or len(prompts)
        out: list[float] = []
        for i in range(0, len(prompts), step):
            out += self._score_batch(images[i:i + step], list(prompts[i:i + step]))
        return out

    def _score_batch(self, images: Tensor, prompts: list[str]) -> list[float]:
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="driftbench-cmd-") as tmp:
            directory = Path(tmp)
            lines = []
            for i, (array, prompt) in enumerate(zip(to_uint8(images), prompts)):
                Image.fromarray(array).save(directory / f"{i:06d}.png")
                lines.append(json.dumps({"index": i, "image": f"{i:06d}.png", "prompt": prompt}))
            (directory / "prompts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            stdout = self._run(str(directory))
        return self._parse(stdout, len(prompts))

    def _run(self, directory: str) -> str:
        try:
            process = subprocess.Popen(self.argv + [directory], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        except OSError as exc:
            raise RuntimeError(redact_text(f"reward command '{self.shown}' could not start: {exc}")) from None
        try:
            stdout, stderr = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.communicate()
            raise RuntimeError(f"reward command '{self.shown}' timed out after {self.timeout:g} s "
                               f"(option timeout=...)") from None
        if process.returncode != 0:
            tail = " | ".join(stderr.strip().splitlines()[-3:]) or "no stderr"
            raise RuntimeError(redact_text(f"reward command '{self.shown}' exited with status {process.returncode}: "
                                           f"{tail}"))
        return stdout

    def _parse(self, stdout: str, n: int) -> list[float]:
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        if len(lines) != n:
            raise RuntimeError(f"reward command '{self.shown}' printed {len(lines)} lines for {n} images; "
                               f"expected one float per line")
        values = []
        for i, line in enumerate(lines):
            try:
                value = float(line)
            except ValueError:
                raise RuntimeError(f"reward command '{self.shown}' printed a non-number on line {i + 1}: "
                                   f"{line[:80]!r}") from None
            if not math.isfinite(value):
                raise RuntimeError(f"reward command '{self.shown}' printed a non-finite score on line {i + 1}: "
                                   f"{line!r}")
            values.append(value)
        return values
