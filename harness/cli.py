"""``driftbench`` (= ``python -m harness``): commands generated from the config dataclasses with tyro.

    driftbench list                                  methods, rewards, evaluators, profiles, presets
    driftbench train --method drpo --profile tiny --reward jpeg --drpo.m 2 ...
    driftbench train --preset tiny-jpeg --method drpo --resume RUN_ID
    driftbench table2 --profile shapes               the main comparison, resumable
    driftbench pretrain generator|encoder|reward|all the Shapes world's assets
    driftbench --version                             the package version and the git commit

The command table, :data:`COMMANDS`, is data: each entry names its function and its config class as lazy
import strings (as the registries do), so the usage text and the one generic wrapper are generated from it.

Bad input ends with a one-line error naming the value and the valid choices, and a non-zero exit; so does
an operating-system failure (read-only directory, full disk, port in use), naming the path or the port.
SIGTERM is handled like Ctrl-C: a training run stops at its next update boundary, marked interrupted.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from harness import distributed, faults
from harness.redact import redact, redact_streams, redact_text, remember
from harness.registry import load, unknown
from harness.store import git_state
from harness.train_args import parser_class, run_config
from harness.validate import check, choice_fields


@dataclass(frozen=True)
class Command:
    """One ``driftbench`` command."""

    summary: str
    """One line for the usage text."""
    target: str
    """``module:function``. With ``config`` it is called with the parsed config; without, with the raw argv."""
    config: str = ""
    """``module:Class``: the frozen dataclass the argv is parsed into (bounds and choices checked first)."""
    launch: bool = True
    """False: refused under ``accelerate launch`` with several processes (its work is not data-parallel)."""


COMMANDS: dict[str, Command] = {
    "list": Command("methods (with their reward-gradient requirement), rewards, evaluators, profiles, presets",
                    "harness.inventory:main"),
    "train": Command("train one method under a run config (--preset, --resume)", "harness.cli:train"),
    "table2": Command("run or resume the main comparison and write results/table2.md and .csv",
                      "harness.reporting.reproduce:reproduce", "harness.reporting.reproduce:Table2Config"),
    "tune": Command("equal-effort Optuna studies of every method of a table, and the tuned file the table reads",
                    "harness.reporting.tuning:tune_and_report", "harness.studies.tune:TuneConfig", launch=False),
    "run-time": Command("where one run's wall-clock goes (start-up, training phases, evaluation)",
                        "harness.compute.run_time:measure", "harness.compute.run_time:RunTimeConfig"),
    "pretrain": Command("pretrain the Shapes world's generator, encoder and reward assets",
                        "harness.shapes.pretrain:main"),
    "compute": Command("FLOPs per update and per phase of every method at full size (meta device, no weights)",
                       "harness.compute.flops:compute", "harness.compute.flops:ComputeConfig"),
    "profile-step": Command("time real updates per phase (GPU: full-size random weights; CPU: the tiny profile)",
                            "harness.compute.profile_step:profile_step", "harness.compute.profile_step:ProfileConfig"),
    "bench-drift": Command("time methods/drift.py against a plain torch drift field at DrPO's SD-Turbo size",
                           "harness.compute.bench_drift:bench_drift", "harness.compute.bench_drift:BenchDriftConfig"),
    "bench-serve": Command("the reward server under sustained concurrent load: answers and resets per listen backlog",
                           "harness.serving.bench:bench_serve", "harness.serving.bench:BenchServeConfig"),
    "plots": Command("redraw every figure from stored results (index in results/plots/README.md)",
                     "harness.reporting.plots:plots", "harness.reporting.plots:PlotsConfig"),
    "rank-agreement": Command("how well the cheap reward economies (bf16, small decoder) keep the exact ranking",
                              "harness.compute.rank_agreement:rank_agreement",
                              "harness.compute.rank_agreement:AgreementConfig"),
    "study": Command("run or resume an Optuna study of a method's hyperparameters (--name, --n-workers, --space)",
                     "harness.studies.study:study", "harness.studies.config:StudyConfig", launch=False),
    "study-report": Command("importances, slice/contour/Pareto plots, best.json and a robustness re-run of a study",
                            "harness.studies.report:report", "harness.studies.report:StudyReportConfig"),
    "study-salvage": Command("copy a damaged study journal's whole trials to a new journal (JOURNAL --to NEW)",
                             "harness.studies.journal:salvage_command"),
    "serve-reward": Command("serve a registered reward over HTTP for remote:URL (NAME --port N --token T --option K=V)",
                            "harness.serving.server:main"),
    "evaluate": Command("a benchmark on a stored run: geneval, hpdv3, pickapic-parti (NAME --run RUN_ID [--base])",
                        "evals.bench:main"),
    "export": Command("a run's selected, final or stored update as a diffusers LoRA (RUN --at selected --to DIR [--fused])",
                      "harness.export:export", "harness.export:ExportConfig"),
    "power": Command("variance components of the gold over stored runs and the minimum detectable paired difference",
                     "harness.reporting.power:power", "harness.reporting.power:PowerConfig"),
    "intervals": Command("a paired headline difference's seed interval beside its prompt-bootstrap interval",
                         "harness.reporting.bootstrap:intervals", "harness.reporting.bootstrap:IntervalsConfig"),
    "limitations": Command("the paper's three limitations from stored runs: sweeps, prompt effects, best-of-K, offline->online",
                           "harness.reporting.limitations:limitations",
                           "harness.reporting.limitations_plan:LimitationsConfig", launch=False),
    "best-of-k": Command("a reference without training: K samples per image, the target reward's best kept, gold-evaluated",
                         "harness.best_of_k:best_of_k", "harness.best_of_k:BestOfKConfig", launch=False),
}
"""Every command: name -> what it runs. A new command is one entry here."""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: driftbench COMMAND [OPTIONS]   (driftbench COMMAND --help for a command's options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "  --version  the package version and the git commit"]
    return "\n".join(lines)


def version() -> str:
    """``driftbench X.Y.Z (git COMMIT[, modified])``: the installed package's version and the checkout's commit."""
    try:
        number = metadata.version("driftbench")
    except metadata.PackageNotFoundError:
        number = "unknown (not installed)"
    git = git_state()
    where = f"git {git['commit']}{', modified' if git['dirty'] else ''}" if git["commit"] else "no git checkout"
    return f"driftbench {number} ({where})"


def execute(name: str, argv: Sequence[str]) -> int:
    """Run command ``name``: parse its config (if it has one), call its function and report what it wrote."""
    command = COMMANDS[name]
    if not command.launch and distributed.launched_world() > 1:
        raise ValueError(f"driftbench {name} does not run under accelerate launch (its trials are not data-parallel); "
                         "run it as one command" + (" with --n-workers N, one trial per worker" if name == "study" else ""))
    function = load(command.target)
    if not command.config:
        return function(list(argv)) or 0
    result = function(parse_config(load(command.config), argv, f"driftbench {name}"))
    if distributed.current().main:
        _report(result)
    return 0


def _report(result: Any) -> None:
    """Print the Markdown report among what a command wrote, then the files it wrote."""
    paths = [r for r in (result if isinstance(result, tuple) else (result,)) if isinstance(r, Path)]
    for path in paths:
        written = [p for p in dict.fromkeys([path, *(path.with_suffix(s) for s in (".md", ".csv", ".json"))])
                   if p.is_file() or (p == path and p.is_dir())]  # export writes a directory
        report = next((p for p in written if p.suffix == ".md"), None)
        if report is not None:
            print(report.read_text())
        print("wrote " + " and ".join(str(p) for p in written))


def _peek(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in argv, without parsing anything else."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _values(argv: Sequence[str], flag: str) -> list[str]:
    """Every value given to ``flag`` (``--flag A B`` or ``--flag=A``), without parsing anything else."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            out.append(arg.split("=", 1)[1])
        elif arg == flag:
            out += [a for a in _until_flag(argv[i + 1:])]
    return out


def _until_flag(rest: Sequence[str]) -> list[str]:
    out = []
    for arg in rest:
        if arg.startswith("--"):
            break
        out.append(arg)
    return out


def _check_choices(cls: type, argv: Sequence[str], prefix: str = "") -> None:
    """A bad value of a ``Literal`` field is one line with the nearest match, before tyro parses (tyro's own
    message is a multi-line box)."""
    for name, valid in choice_fields(cls).items():
        flag = f"--{prefix + '.' if prefix else ''}{name.replace('_', '-')}"
        for value in _values(argv, flag):
            if value not in valid:
                raise unknown(name.replace("_", " "), value, list(valid), where=flag)


def _once(argv: Sequence[str]) -> None:
    """Refuse a flag given twice (the parser would keep one of them silently)."""
    seen: set[str] = set()
    for arg in argv:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name.startswith("--") and len(name) > 2:
            if name in seen:
                raise ValueError(f"{name} is given twice; give it once")
            seen.add(name)


def parse_config(cls: type, argv: Sequence[str], prog: str):
    """Parse ``argv`` into config ``cls`` and check every field's bound and choice before anything is built."""
    import tyro  # CLI start-up: tyro only when a command parses

    _once(argv)
    _check_choices(cls, argv)
    cfg = tyro.cli(cls, args=list(argv), prog=prog)
    check(cfg)
    return cfg


@dataclass(frozen=True)
class TrainOptions:
    """Options of the train command itself."""

    preset: str = ""
    """Start from a named preset (see ``driftbench list``); flags override it."""
    resume: str = ""
    """Resume this run id from its checkpoint (the config must match the stored one)."""
    quiet: bool = False
    """No progress bar."""


def train(argv: Sequence[str]) -> int:
    import tyro  # CLI start-up: the run's modules (torch, the registries) load only for train

    from harness import distributed, presets
    from harness.config import RunConfig
    from harness.run import run
    from methods import METHODS

    _once(argv)
    preset = presets.get(_peek(argv, "--preset")) if _peek(argv, "--preset") else None
    run_default = preset.run if preset else RunConfig()
    precision = distributed.launch_precision(_peek(argv, "--mixed-precision"))  # accelerate's, when launched
    run_default = run_default.replace(mixed_precision=precision) if precision else run_default
    method = METHODS.check(_peek(argv, "--method") or run_default.method)
    run_default = preset.run_for(method) if preset else run_default  # the method's official precision
    method_default = preset.method_config(method) if preset else METHODS.get(method).Config()
    _check_choices(RunConfig, argv)
    _check_choices(type(method_default), argv, method)
    # Help without --method lists the run's flags only; --method NAME --help adds that method's group.
    general = _peek(argv, "--method") is None and any(a in ("-h", "--help") for a in argv)
    run_default = run_default.replace(method=method)
    Args = parser_class(run_default, TrainOptions, TrainOptions(), None if general else method, method_default)
    about = (f"Train one method (default '{method}'); each method's own fields: driftbench train --method NAME --help "
             f"(methods: {', '.join(METHODS)})") if general else \
        f"Train '{method}' ({METHODS.get(method).__doc__.strip().splitlines()[0]})"
    args = tyro.cli(Args, args=list(argv), prog="driftbench train", description=about)
    summary = run(run_config(args, run_default), getattr(args, method), resume=args.command.resume,
                  progress=not args.command.quiet)
    metrics = {k: round(v, 4) for k, v in summary.items() if k.startswith("eval/") and k.endswith(("/mean", "/overall"))}
    if distributed.current().main:
        print(f"run {summary['run_id']} complete: {metrics}")
    distributed.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # transformers warns on every import that torchvision (deliberately absent) is missing.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version())
        return 0
    command, rest = argv[0], argv[1:]
    previous = _on_sigterm()
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line  # one line naming the file
    remember(argv)  # its secrets are masked in whatever form they show up again
    sys.argv = redact(sys.argv)  # libraries record it (W&B's run metadata); parsing uses ``argv``
    streams = redact_streams()  # every line it (or a library it calls) prints is masked as the record is
    try:
        if command not in COMMANDS:
            raise unknown("command", command, list(COMMANDS))
        faults.check()  # a malformed fault spec is refused before anything runs, not silently never fired
        return execute(command, rest)
    except KeyboardInterrupt as exc:
        print(redact_text(f"driftbench: interrupted{f' ({exc})' if str(exc) else ''}"), file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, TypeError, KeyError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(redact_text(f"driftbench: error: {message}"), file=sys.stderr)
        return 2 if isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, KeyError)) else 1
    except OSError as exc:  # read-only directory, full disk, port in use: one line naming the path or port
        print(redact_text(f"driftbench: error: {os_message(exc)}"), file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = formatwarning
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = streams
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
              line: str | None = None) -> str:
    return f"driftbench: warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}\n"


def os_message(exc: OSError) -> str:
    """One line for an operating-system error: the path (or what failed) and the reason."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = exc.strerror or first
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    return f"{where}: {text}" if where else text


def _on_sigterm():
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does; returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")
    return signal.signal(signal.SIGTERM, interrupt) or signal.SIG_DFL
