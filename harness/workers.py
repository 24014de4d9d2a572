"""Worker processes that do not outlive their parent (``table2 --jobs``, ``study``/``tune --n-workers``).

A worker calls :func:`bind_to_parent` first thing. On Linux the kernel then sends it SIGTERM the moment its
parent dies, however it dies (``kill -9`` included: ``prctl(PR_SET_PDEATHSIG)``); elsewhere, and as a fallback,
a daemon thread polls the parent's pid. SIGTERM stops a training run at its next safe point (a checkpoint,
marked interrupted: ``harness.lifecycle.StopSignals``); a worker still alive ``GRACE`` seconds later is killed.
:func:`terminate` is how a parent that is itself stopped (SIGTERM, Ctrl-C) passes the signal on.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Iterable

PR_SET_PDEATHSIG = 1
POLL = 1.0
"""Seconds between the watchdog's looks at the parent."""
GRACE = 120.0
"""Seconds an orphaned worker has to reach its safe point before it is killed."""


def bind_to_parent(parent: int) -> None:
    """Make this process end when process ``parent`` (the one that started it) dies."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still works
    if os.getppid() != parent:  # the parent died before the line above took effect
        _orphaned()
    threading.Thread(target=_watch, args=(parent,), name="parent-watchdog", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL)
    _orphaned()


_orphan = threading.Event()


def _orphaned() -> None:
    """Stop at the next safe point (SIGTERM), and for good after ``GRACE`` seconds."""
    if _orphan.is_set():
        return
    _orphan.set()
    os.kill(os.getpid(), signal.SIGTERM)
    timer = threading.Timer(GRACE, os.kill, args=(os.getpid(), signal.SIGKILL))
    timer.daemon = True
    timer.start()


def task_done() -> None:
    """Called by a pool worker after each task: an orphan exits here, its run stopped and recorded, rather than
    wait for a next task that no parent will send (its copy of the task queue's pipe keeps it open)."""
    if _orphan.is_set():
        os._exit(1)


def terminate(processes: Iterable[Any]) -> None:
    """Send SIGTERM to every live worker (``multiprocessing.Process`` objects): each stops at its next safe
    point."""
    for process in processes:
        try:
            if process.is_alive():
                process.terminate()
        except (OSError, ValueError):  # already reaped or closed
            pass
