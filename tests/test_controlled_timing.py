"""The controlled timing behind the table's seconds columns (``harness/compute/controlled.py``) and how the
table reads it (``harness/reporting/timing.py``)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.compute import controlled
from harness.reporting.table2 import write_table
from harness.run import run
from harness.sections import Section
from harness.store import Store
from methods import dpo1, drpo
from tests.conftest import tiny_run


def test_median_interval_hand_values():
    # n = 5: no 95% interval of the median exists; the range covers 1 - 2/32.
    assert controlled.median_interval([3, 1, 2, 5, 4]) == (3, 1, 5, 1 - 2 / 32)
    # n = 9: [x_(2), x_(8)] covers 1 - 2 (1 + 9) / 512 = 0.961; [x_(3), x_(7)] only 0.820.
    median, low, high, coverage = controlled.median_interval(range(1, 10))
    assert (median, low, high) == (5, 2, 8) and coverage == pytest.approx(1 - 20 / 512)
    assert controlled.median_interval([2.0, 4.0])[:3] == (3.0, 2.0, 4.0)


def test_ratios_are_taken_within_each_round():
    entry = {"methods": {
        "drpo": {"seconds": [1.0, 2.0, 4.0], "phases": {"loss": {"seconds": 1.0, "flops": 5.0}}},
        "draft": {"seconds": [1.5, 3.0, 6.0], "phases": {"generate": {"seconds": 2.0, "flops": 7.0}}}}}
    rows = controlled.summarise(entry)
    # The machine slowed down round by round; the per-round ratio stays 1.5 where a ratio of medians would too,
    # but a ratio of runs made in different rounds would read 0.75 to 6.
    assert rows["draft"]["ratio"]["median"] == pytest.approx(1.5) and rows["draft"]["ratio"]["low"] == pytest.approx(1.5)
    assert rows["drpo"]["median"] == 2.0 and rows["draft"]["flops"] == 7.0


def _section_runs(tmp_path):
    """Real 2-update tiny runs of DrPO and DPO-1step (seed 0) and their (method, run config, method config)."""
    entries = []
    for method, method_cfg in (("drpo", drpo.Config(m=2)), ("dpo1", dpo1.Config(m=2))):
        cfg = tiny_run(tmp_path, method=method, run_id=f"{method}-s0")
        run(cfg, method_cfg, progress=False)
        entries.append((method, cfg, method_cfg))
    return entries


def test_the_table_shows_the_stored_controlled_seconds_and_only_for_its_runs(tmp_path, monkeypatch):
    entries = _section_runs(tmp_path)
    section = Section("Tiny", "tiny-jpeg", ("drpo", "dpo1"))
    entry = controlled.ensure(tmp_path, section, entries, repeats=3, warmup=1)
    assert [len(entry["methods"][m]["seconds"]) for m in ("drpo", "dpo1")] == [3, 3]
    assert all(s > 0 for m in entry["methods"].values() for s in m["seconds"])
    assert entry["methods"]["drpo"]["phases"]["loss"]["flops"] > 0  # the drift field's analytic count
    stored = json.loads((tmp_path / controlled.FILE).read_text())["sections"]["tiny-jpeg__defaults"]
    assert stored["repeats"] == 3 and stored["code"] and stored["machine"]["cpus"]

    # Resumable: the same configurations, code and settings are not measured again; other settings are.
    def refuse(*args, **kwargs):
        raise AssertionError("measured again")
    monkeypatch.setattr(controlled, "measure", refuse)
    assert controlled.ensure(tmp_path, section, entries, repeats=3, warmup=1)["measured_at"] == entry["measured_at"]
    with pytest.raises(AssertionError, match="measured again"):
        controlled.ensure(tmp_path, section, entries, repeats=4, warmup=1)

    store = Store(tmp_path)
    text = write_table([(section, ["drpo-s0", "dpo1-s0"])], store, tmp_path, elapsed=0.0).read_text()
    summary = controlled.summarise(entry)
    row = next(line for line in text.splitlines() if line.startswith("| dpo1 |"))
    ratio = summary["dpo1"]["ratio"]
    assert f"{summary['dpo1']['median']:.3f} [" in row and f"{ratio['median']:.2f}x [{ratio['low']:.2f}, " in row
    assert "Seconds (controlled): the section's methods timed in one process, interleaved" in text
    frame = pd.read_csv(tmp_path / "table2.csv")
    seconds = frame[(frame.method == "dpo1") & (frame.metric == "seconds_per_update")]
    assert seconds.value.item() == pytest.approx(summary["dpo1"]["median"])
    assert seconds.ci_low.item() <= seconds.value.item() <= seconds.ci_high.item()
    assert len(frame[frame.metric == "metered_seconds_per_update"]) == 2  # the runs' own, in the CSV only

    # A measurement of other code is not shown beside these runs.
    data = json.loads((tmp_path / controlled.FILE).read_text())
    data["sections"]["tiny-jpeg__defaults"]["code"] = "0123456789ab"
    (tmp_path / controlled.FILE).write_text(json.dumps(data))
    text = write_table([(section, ["drpo-s0", "dpo1-s0"])], store, tmp_path, elapsed=0.0).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| dpo1 |"))
    assert "| – | – |" in row and "No controlled timing of this section's configuration and code for drpo, dpo1" in text
