"""nox sessions. The virtualenvs are reused between runs (``nox.options.reuse_venv``).

    nox -s tests                  the whole test suite on CPU (unit, smoke, slow tiers)
    nox -s reproduce_table2       the main comparison on the embedded default; `-- --profile tiny` for the toy table
    nox -s lint                   ruff
"""

import os

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

# The CPU build of torch lies on these machines' disks; on a GPU machine PyPI's default wheel is CUDA.
# DRIFTBENCH_TORCH overrides the requirement (e.g. "torch==2.5.1"), or "skip" keeps what is installed.
TORCH = os.environ.get("DRIFTBENCH_TORCH", "torch==2.13.0")


def install(session: nox.Session, *extras: str) -> None:
    if TORCH != "skip":
        session.install(TORCH)
    target = "." + (f"[{','.join(extras)}]" if extras else "")
    session.install("-e", target)


@nox.session
def tests(session: nox.Session) -> None:
    """Every test tier that runs on CPU; GPU tests skip themselves without CUDA."""
    install(session, "test")
    session.run("pytest", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def reproduce_table2(session: nox.Session) -> None:
    """Run (or resume) the main comparison and write results/table2.md and .csv."""
    install(session)
    session.run("python", "-m", "harness", "table2", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "harness", "methods", "rewards", "evals", "tests", "noxfile.py")
