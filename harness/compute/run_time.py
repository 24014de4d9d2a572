"""``driftbench run-time``: where one run's wall-clock goes, measured and written to ``results/compute/``.

Runs one method under a preset (its tuned configuration where the tuned file has one) and splits the run's
time into start-up (building the generator, rewards and features), the metered training phases (the meter's
per-phase seconds), evaluation on the validation split (the base's cached side included), the test
evaluation, checkpoints, and what is left (the record, samples, FLOP counting passes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from harness import presets
from harness.run import run
from harness.store import Store, utc_stamp, write_json
from harness.studies.tuned import tuned_configs
from harness.validate import Bound, nonnegative


@dataclass(frozen=True)
class RunTimeConfig:
    """``driftbench run-time``."""

    preset: str = "shapes-pref"
    """Preset of the run."""
    method: str = "drpo"
    """Method to time."""
    tuned: bool = True
    """Use the tuned file's configuration for this preset and method (else the preset's)."""
    test_split: str = "test"
    """Split of the final evaluation, as the table runs it (empty: none)."""
    seed: int = 0
    """Training seed."""
    out: str = "results"
    """Results root: the run goes to <out>/runs, the report to <out>/compute/run_time__<preset>__<method>.md."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"seed": nonnegative()}
    """Valid range of every numeric field (``harness.validate``)."""


def measure(cfg: RunTimeConfig) -> Path:
    import json

    import torch

    preset = presets.get(cfg.preset)
    method_cfg = tuned_configs(cfg.preset)[cfg.method] if cfg.tuned else preset.method_config(cfg.method)
    run_cfg = preset.run_for(cfg.method).replace(method=cfg.method, seed=cfg.seed, out=cfg.out, test_split=cfg.test_split,
                                 run_id=f"run-time__{cfg.preset}__{cfg.method}__{utc_stamp()}", tag="run-time")
    torch.set_num_threads(1)
    tick = time.perf_counter()
    summary = run(run_cfg, method_cfg, store=Store(cfg.out), progress=False)
    total = time.perf_counter() - tick
    clock, phases = summary["clock"], summary["phases"]
    training = {k: v["seconds"] * summary["budget/updates"] for k, v in phases.items()}
    parts = {"startup": clock["startup_seconds"], "training (metered)": sum(training.values()),
             "validation evaluation": clock["eval_seconds"], "test evaluation": clock["test_seconds"],
             "checkpoints": clock["checkpoint_seconds"]}
    parts["other (record, samples, FLOP counting)"] = total - sum(parts.values())
    report = {"preset": cfg.preset, "method": cfg.method, "tuned": cfg.tuned, "total_seconds": total,
              "parts": parts, "training_phases": training, "updates": summary["budget/updates"],
              "run_id": summary["run_id"]}
    dest = Path(cfg.out) / "compute"
    dest.mkdir(parents=True, exist_ok=True)
    stem = dest / f"run_time__{cfg.preset}__{cfg.method}"
    write_json(stem.with_suffix(".json"), report)
    lines = [f"# Where one run's time goes: {cfg.preset}, {cfg.method} ({'tuned' if cfg.tuned else 'preset'} config)",
             "", f"`driftbench run-time --preset {cfg.preset} --method {cfg.method}`, one torch thread; "
             f"{summary['budget/updates']:.0f} updates, {total:.1f} s in all.", "", "| part | seconds | share |",
             "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {100 * v / total:.0f}% |" for k, v in parts.items()]
    lines += ["", "| training phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in sorted(training.items(), key=lambda kv: -kv[1]) if v > 0]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(parts, indent=1))
    return stem.with_suffix(".md")
