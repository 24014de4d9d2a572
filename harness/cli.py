"""``driftbench`` (= ``python -m harness``): commands generated from the config dataclasses with tyro.

    driftbench list                                  methods, rewards, evaluators, profiles, presets
    driftbench train --method drpo --profile tiny --reward jpeg --drpo.m 2 ...
    driftbench train --preset tiny-jpeg --method drpo --resume RUN_ID
    driftbench table2 --profile shapes               the main comparison, resumable
    driftbench pretrain generator|encoder|reward|all the Shapes world's assets

Bad input ends with a one-line error naming the value and the valid choices, and a non-zero exit; so does
an operating-system failure (read-only directory, full disk, port in use), naming the path or the port.
SIGTERM is handled like Ctrl-C: a training run stops at its next update boundary, marked interrupted.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass, field, make_dataclass
from typing import Callable, Sequence

USAGE = """usage: driftbench COMMAND [OPTIONS]   (driftbench COMMAND --help for a command's options)

commands:
  list           methods (with their reward-gradient requirement), rewards, evaluators, profiles, presets
  train          train one method under a run config (--preset, --resume)
  table2         run or resume the main comparison and write results/table2.md and .csv
  tune           equal-effort Optuna studies of every method of a table, and the tuned file the table reads
  run-time       where one run's wall-clock goes (start-up, training phases, evaluation), written to results/compute
  pretrain       pretrain the Shapes world's generator, encoder and reward assets
  compute        FLOPs per update and per phase of every method at full size (meta device, no weights)
  profile-step   time real updates per phase (GPU: full-size random weights; CPU: the tiny profile)
  bench-drift    time methods/drift.py against a plain torch drift field at DrPO's SD-Turbo size
  bench-serve    the reward server under sustained concurrent load: answers and resets per listen backlog
  plots          redraw every figure from stored results (index in results/plots/README.md)
  rank-agreement how well the cheap reward economies (bf16, small decoder) keep the exact reward's ranking
  study          run or resume an Optuna study of a method's hyperparameters (--name, --n-workers, --space)
  study-report   importances, slice/contour/Pareto plots, best.json and a robustness re-run of a study
  serve-reward   serve a registered reward over HTTP for remote:URL (NAME --port N --token T --option K=V)
  evaluate       a benchmark on a stored run: geneval, hpdv3, pickapic-parti (NAME --run RUN_ID [--base])
"""


@dataclass(frozen=True)
class TrainOptions:
    """Options of the train command itself."""

    preset: str = ""
    """Start from a named preset (see ``driftbench list``); flags override it."""
    resume: str = ""
    """Resume this run id from its checkpoint (the config must match the stored one)."""
    quiet: bool = False
    """No progress bar."""


def _peek(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in argv, without parsing anything else."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


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


def _cli(cls: type, argv: Sequence[str], prog: str):
    """Parse ``argv`` into config ``cls`` and check every numeric field's bound before anything is built."""
    import tyro

    from harness.validate import check

    _once(argv)
    cfg = tyro.cli(cls, args=list(argv), prog=prog)
    check(cfg)
    return cfg


def train(argv: Sequence[str]) -> int:
    import tyro

    from harness import presets
    from harness.config import RunConfig
    from harness.run import run
    from methods import METHODS

    _once(argv)
    preset = presets.get(_peek(argv, "--preset")) if _peek(argv, "--preset") else None
    run_default = preset.run if preset else RunConfig()
    method = METHODS.check(_peek(argv, "--method") or run_default.method)
    run_default = preset.run_for(method) if preset else run_default  # the method's official precision
    method_default = preset.method_config(method) if preset else METHODS.get(method).Config()
    Args = make_dataclass("TrainArgs", [
        ("command", tyro.conf.OmitArgPrefixes[TrainOptions], field(default=TrainOptions())),
        ("run", tyro.conf.OmitArgPrefixes[RunConfig], field(default=run_default.replace(method=method))),
        (method, type(method_default), field(default=method_default)),
    ], frozen=True)
    args = tyro.cli(Args, args=list(argv), prog="driftbench train",
                    description=f"Train '{method}' ({METHODS.get(method).__doc__.strip().splitlines()[0]})")
    summary = run(args.run, getattr(args, method), resume=args.command.resume, progress=not args.command.quiet)
    from harness import distributed

    metrics = {k: round(v, 4) for k, v in summary.items() if k.startswith("eval/") and k.endswith(("/mean", "/overall"))}
    if distributed.current().main:
        print(f"run {summary['run_id']} complete: {metrics}")
    distributed.shutdown()
    return 0


def table2(argv: Sequence[str]) -> int:
    from harness import distributed
    from harness.reproduce import Table2Config, reproduce

    cfg = _cli(Table2Config, argv, "driftbench table2")
    path = reproduce(cfg)
    if not distributed.current().main:
        return 0
    print(path.read_text())
    print(f"wrote {path} and {path.with_suffix('.csv')}")
    return 0


def tune(argv: Sequence[str]) -> int:
    from harness import distributed
    from harness.tune import TuneConfig
    from harness.tune import tune as run_tune

    if distributed.launched_world() > 1:
        raise ValueError("driftbench tune does not run under accelerate launch yet (its trials are not data-parallel); "
                         "run it as one command")
    run_tune(_cli(TuneConfig, argv, "driftbench tune"))
    return 0


def run_time(argv: Sequence[str]) -> int:
    from harness.run_time import RunTimeConfig, measure

    path = measure(_cli(RunTimeConfig, argv, "driftbench run-time"))
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def pretrain(argv: Sequence[str]) -> int:
    from harness.shapes.pretrain import main as pretrain_main

    return pretrain_main(list(argv)) or 0


def compute(argv: Sequence[str]) -> int:
    from harness.compute import ComputeConfig
    from harness.compute import compute as run_compute

    cfg = _cli(ComputeConfig, argv, "driftbench compute")
    _, path = run_compute(cfg)
    print(path.read_text())
    print(f"wrote {path} and {path.with_suffix('.csv')}")
    return 0


def study(argv: Sequence[str]) -> int:
    from harness import distributed
    from harness.study import StudyConfig
    from harness.study import study as run_study

    if distributed.launched_world() > 1:
        raise ValueError("driftbench study does not run under accelerate launch yet (its trials are not data-parallel); "
                         "run it as one command with --n-workers N, one trial per worker")
    run_study(_cli(StudyConfig, argv, "driftbench study"))
    return 0


def study_report(argv: Sequence[str]) -> int:
    from harness.study_report import StudyReportConfig, report

    report(_cli(StudyReportConfig, argv, "driftbench study-report"))
    return 0


def profile_step(argv: Sequence[str]) -> int:
    from harness.profile_step import ProfileConfig
    from harness.profile_step import profile_step as run_profile

    cfg = _cli(ProfileConfig, argv, "driftbench profile-step")
    _, path = run_profile(cfg)
    print(path.read_text())
    print(f"wrote {path} and {path.with_suffix('.csv')}")
    return 0


def bench_drift(argv: Sequence[str]) -> int:
    from harness.bench_drift import BenchDriftConfig
    from harness.bench_drift import bench_drift as run_bench

    _, path = run_bench(_cli(BenchDriftConfig, argv, "driftbench bench-drift"))
    print(path.with_suffix(".md").read_text())
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


def bench_serve(argv: Sequence[str]) -> int:
    from harness.bench_serve import BenchServeConfig
    from harness.bench_serve import bench_serve as run_bench

    _, path = run_bench(_cli(BenchServeConfig, argv, "driftbench bench-serve"))
    print(path.read_text())
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def serve_reward(argv: Sequence[str]) -> int:
    from harness.serve import main as serve_main

    return serve_main(list(argv))


def evaluate(argv: Sequence[str]) -> int:
    from evals.bench import main as evaluate_main

    return evaluate_main(list(argv))


def plots(argv: Sequence[str]) -> int:
    from harness.plots import PlotsConfig
    from harness.plots import plots as draw

    index = draw(_cli(PlotsConfig, argv, "driftbench plots"))
    print(index.read_text())
    return 0


def rank_agreement(argv: Sequence[str]) -> int:
    from harness.economy import AgreementConfig
    from harness.economy import rank_agreement as measure

    path = measure(_cli(AgreementConfig, argv, "driftbench rank-agreement"))
    print(path.read_text())
    return 0


def list_components(argv: Sequence[str]) -> int:
    from harness.inventory import describe

    print(describe())
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "list": list_components,
    "train": train,
    "table2": table2,
    "tune": tune,
    "run-time": run_time,
    "pretrain": pretrain,
    "compute": compute,
    "study": study,
    "study-report": study_report,
    "profile-step": profile_step,
    "bench-drift": bench_drift,
    "bench-serve": bench_serve,
    "plots": plots,
    "rank-agreement": rank_agreement,
    "serve-reward": serve_reward,
    "evaluate": evaluate,
}


def main(argv: Sequence[str] | None = None) -> int:
    from harness.registry import unknown

    # transformers warns on every import that torchvision (deliberately absent) is missing.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    previous = _on_sigterm()
    try:
        if command not in COMMANDS:
            raise unknown("command", command, list(COMMANDS))
        return COMMANDS[command](rest)
    except KeyboardInterrupt as exc:
        print(f"driftbench: interrupted{f' ({exc})' if str(exc) else ''}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, TypeError, KeyError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"driftbench: error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, KeyError)) else 1
    except OSError as exc:  # read-only directory, full disk, port in use: one line naming the path or port
        print(f"driftbench: error: {os_message(exc)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


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
