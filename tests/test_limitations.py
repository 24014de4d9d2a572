"""``driftbench limitations`` (issue 22): the K-two-ways arithmetic and the full plan's size by hand, claim lines
that quote their interval and (for a null result) the minimum detectable difference, the time model, the quoted
sensitivity study, bad input in one line with nothing written, and the smoke plan end to end: every section, the
headline difference checked against the stored summaries, and a second call that trains nothing."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import run_key
from harness.reporting.bootstrap import Intervals
from harness.reporting.limitations_data import Rates, plan_seconds, prompt_claim, seed_claim
from harness.reporting.limitations_plan import (
    LimitationsConfig,
    Plan,
    k_points,
    plan_points,
    resolve,
    scale_of,
)
from harness.reporting.limitations_report import _study
from harness.reporting.reproduce import Table2Config, plan
from harness.reporting.stats import mdd, paired
from harness.sections import SECTIONS
from harness.store import Store
from harness.validate import unbounded


def test_k_two_ways_arithmetic():
    # Base K 16 x 2 prompts x grad-accum 3: 96 images per update.
    images = k_points(16, 2, 3, (8, 16, 24, 32), "k-images", m=4)
    assert [(p.k, p.prompts, p.images) for p in images] == [(8, 4, 96), (16, 2, 96), (24, 0, 0), (32, 1, 96)]
    assert "does not divide the 32 images per micro-batch" in images[2].note
    prompts = k_points(16, 2, 3, (8, 16, 24, 32), "k-prompts", m=4)
    assert [(p.k, p.prompts, p.images) for p in prompts] == [(8, 2, 48), (16, 2, 96), (24, 2, 144), (32, 2, 192)]
    assert k_points(16, 2, 1, (8,), "k-prompts", m=5)[0].note == "K=8 < 2M = 10: no disjoint top-M and bottom-M"
    with pytest.raises(ValueError, match="unknown K sweep 'k-both'"):
        k_points(16, 2, 1, (8,), "k-both")


def test_the_full_plan_by_hand():
    cfg = LimitationsConfig(scale="full", base="preset")
    scale = scale_of(cfg)
    res = resolve(cfg, scale)
    points = plan_points(cfg, scale, res)
    run0 = res.runs["drpo"]
    assert (run0.profile, run0.k, run0.prompts_per_step, run0.updates, run0.test_split, run0.test_seeds) == \
        ("shapes2", 16, 2, 96, "test", 4)
    by = {}
    for p in points:
        by.setdefault(p.part, []).append(p)
    assert [p.value for p in by["k-images"]] == ["8", "16", "24", "32"]
    assert [p.run.prompts_per_step for p in by["k-images"]] == [4, 2, 2, 1]  # 24 is not run (its note)
    assert [p.images for p in by["k-images"] if not p.note] == [32, 32, 32]
    assert [p.images for p in by["k-prompts"]] == [16, 32, 48, 64]
    assert [p.value for p in by["lambda"]] == ["0", "0.2", "0.5", "1"]  # the preset's 0.2 is the base
    assert [p.method_cfg.grouping for p in by["features"]] == ["prompt", "prompt", "position"]
    assert [p.method_cfg.reference for p in by["reference"]] == ["drift", "none", "perceptual"]
    assert [p.value for p in by["baseline"]] == ["dpo1", "pso", "ngrpo", "draft", "vggflow"]
    assert by["offline"][0].run.offline_data and by["offline"][0].method_cfg.anchors == "offline"
    assert by["long"][0].run.updates == 96 + 96 and by["long"][0].method_cfg == res.configs["drpo"]
    # Distinct configurations: the base, 4 + 2 + 3 + 3 + 3 + 2 + 2 sweep points away from it, 5 baselines,
    # offline, online, the longer online control; x 5 seeds.
    _, runs, refs = plan_seconds(points, scale.seeds, scale.test_seeds, (1, 4, 16), "shapes2",
                                 Rates(0.0, {"drpo": 0.0}, 0.0, 0.0, "zero"))
    assert (runs, refs) == ((1 + 19 + 5 + 3) * 5, 3)


def test_the_time_model_by_hand():
    cfg = LimitationsConfig(scale="smoke", base="preset", parts=("sweeps",), factors=())
    scale = scale_of(cfg)
    points = plan_points(cfg, scale, resolve(cfg, scale))
    assert [p.part for p in points] == ["base"]
    rates = Rates(startup=2.0, train={"drpo": 0.01}, evaluate=0.001, candidate=0.002, source="made up")
    seconds, runs, refs = plan_seconds(points, (0, 1), 2, (1, 2), "shapes", rates)
    # A run: 2 s + 0.01 s x (K 4 x 2 prompts x 2 updates) + 0.001 s x (2 evaluations x 4 val prompts x 1 image
    # + 2 test evaluations x 19 prompts x 2 images). References: (K x 19 x 2) candidates + 2 x 38 gold images.
    run = 2.0 + 0.01 * 16 + 0.001 * (8 + 76)
    assert (runs, refs) == (2, 2)
    assert seconds == pytest.approx(2 * run + (1 + 2) * 38 * 0.002 + 2 * 76 * 0.001)


def test_claim_lines_quote_their_interval_and_a_null_result_its_mdd():
    null = paired([0.1, 0.3, -0.1])  # mean 0.1, sd 0.2: t(0.975, 2) = 4.303 -> half 0.497
    assert null.half == pytest.approx(4.3027 * 0.2 / math.sqrt(3), abs=1e-3)
    assert seed_claim(null) == f"+0.100 ± 0.497 (95% t, 3 seeds, p = {null.p:.2g}); null, MDD {mdd(0.2, 3):.3f}"
    clear = paired([0.30, 0.32, 0.31])
    assert "MDD" not in seed_claim(clear) and seed_claim(clear).startswith("+0.310 ± 0.025 (95% t, 3 seeds")
    assert seed_claim(paired([0.2])) == "+0.200 (1 seed: no interval)"
    spans = Intervals(0.01, null, -0.02, 0.04, 0.015, (0, 1, 2), 10, 2)
    assert prompt_claim(spans) == "[-0.020, +0.040] (prompt bootstrap); null, MDD 0.042"  # 2.80 x 0.015
    apart = Intervals(0.05, clear, 0.02, 0.08, 0.015, (0, 1, 2), 10, 2)
    assert prompt_claim(apart) == "[+0.020, +0.080] (prompt bootstrap)"


def _plan(tmp_path) -> Plan:
    cfg = LimitationsConfig(scale="smoke", base="preset", out=str(tmp_path))
    scale = scale_of(cfg)
    res = resolve(cfg, scale)
    return Plan(cfg, scale, res, plan_points(cfg, scale, res), {}, {})


def test_the_sensitivity_study_is_quoted_when_stored_and_named_when_not(tmp_path):
    plan = _plan(tmp_path)
    text = "\n".join(_study(plan))
    assert "Not run: no stored study report" in text and "driftbench study --name shapes-drpo-sensitivity" in text
    folder = tmp_path / "studies" / "shapes-drpo-sensitivity"
    folder.mkdir(parents=True)
    (folder / "importances.csv").write_text("parameter,importance,low,high\nradius_scale,0.41,0.20,0.63\nm,0.05,0.00,0.12\n")
    (folder / "best.json").write_text(json.dumps({"value": 0.31, "params": {"m": 4}}))
    text = "\n".join(_study(plan))
    assert "| parameter | importance | low | high |" in text and "| radius_scale | 0.41 | 0.2 | 0.63 |" in text
    assert "Best trial: value 0.31" in text and "Not run" not in text


@pytest.mark.parametrize("args, message", [
    (["--scale", "huge"], "unknown scale 'huge'"),
    (["--parts", "sweep"], "did you mean 'sweeps'?"),
    (["--seeds", "0", "0"], "--seeds must not repeat a value"),
    (["--seeds", "3"], "needs at least 2 seeds"),
    (["--k", "1"], "--k must be in [2, 4096], got 1"),
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--source", "recrd"], "did you mean 'record'?"),
    (["--source", "record"], "no limitations record at"),
    (["--base", "tuned", "--tuned-file", "/nonexistent/t.json"], "limitations --base tuned: no tuned file"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    scale = [] if "--scale" in args else ["--scale", "smoke"]
    assert main(["limitations", *scale, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("driftbench: error:") and message in err[0], err
    assert not out.exists()


def test_every_numeric_field_is_bounded():
    assert unbounded(LimitationsConfig) == []


def _report_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("Generated by")]


@pytest.mark.slow
def test_the_smoke_plan_end_to_end_and_resumable(tmp_path, capsys):
    out = tmp_path / "results"
    args = ["limitations", "--scale", "smoke", "--out", str(out), "--jobs", "1", "--no-progress"]
    assert main(args) == 0
    report = out / "limitations-smoke.md"
    text = report.read_text()
    for heading in ("## Limitation 1: prompt selection", "### DrPO's sensitivity study", "### One-factor sweeps",
                    "### Prompt selection: per-tag and per-prompt effects", "## Limitation 2: a stronger reference",
                    "## Limitation 3: offline to online", "**Verdict: ", "## Time", "Estimated time of the full plan"):
        assert heading in text, heading
    assert "corresponds to matched prompts" in text
    for factor in ("bandwidth", "k-images", "k-prompts", "m", "lambda", "reference", "features"):
        assert f"| {factor} | " in text
    for name in ("sweeps", "per_prompt", "best_of_k", "offline_online"):
        assert (out / "limitations-smoke" / f"{name}.png").is_file()
    # Every seed-paired difference quotes its interval, and a null one its MDD.
    claims = re.findall(r"[+-]\d\.\d{3} ± \d\.\d{3} \(95% t, 2 seeds, p = [^)]*\)(; null, MDD \d\.\d{3})?", text)
    assert len(claims) > 20
    for m in re.finditer(r"([+-]\d\.\d{3}) ± (\d\.\d{3}) \(95% t, 2 seeds, p = [^)]*\)(; null, MDD)?", text):
        assert (abs(float(m.group(1))) <= float(m.group(2))) == bool(m.group(3)), m.group(0)
    # DrPO - base generator, by hand from the stored headlines: the runs' final test gold minus best-of-1's.
    runs = sorted((out / "runs").glob("lim-base__drpo__s*"))
    ref = next((out / "references" / "runs").glob("lim-bok__shapes-pref__k1__*"))
    gold = "test/shapes-geneval/overall_disjoint"
    base = json.loads((ref / "summary.json").read_text())[gold]
    d = [json.loads((r / "summary.json").read_text())[gold] - base for r in runs]
    expected = paired(d)
    assert f"| base generator | {expected.mean:+.3f} | {expected.mean:+.3f} ± {expected.half:.3f} (95% t, 2 seeds" in text
    first = _report_lines(report)
    stored = sorted(p.name for p in (out / "runs").iterdir()), sorted(p.name for p in (out / "references/runs").iterdir())
    capsys.readouterr()

    assert main(args) == 0  # resumable: everything is stored, nothing is trained again
    assert (sorted(p.name for p in (out / "runs").iterdir()),
            sorted(p.name for p in (out / "references/runs").iterdir())) == stored
    assert "this call trained 0 run(s) and computed 0 best-of-K reference(s)" in capsys.readouterr().out
    assert _report_lines(report) == first
    record = out / "limitations-smoke" / "record.tar.xz"
    _the_record_renders_the_same_report(tmp_path, record, first, capsys)


def _the_record_renders_the_same_report(tmp_path: Path, record: Path, first: list[str], capsys) -> None:
    """A root holding only the record gets the same report, trains nothing, and refuses a record that does not
    hold the plan's runs."""
    fresh = tmp_path / "fresh"
    (fresh / "limitations-smoke").mkdir(parents=True)
    shutil.copy(record, fresh / "limitations-smoke" / "record.tar.xz")
    args = ["limitations", "--scale", "smoke", "--source", "record", "--out", str(fresh), "--no-progress"]
    assert main(args) == 0
    assert "nothing trained" in capsys.readouterr().out and not (fresh / "runs").exists()
    lines = [line.replace(str(fresh), str(record.parents[1])) for line in _report_lines(fresh / "limitations-smoke.md")]
    assert lines == first
    assert main([*args, "--seeds", "0", "1", "2"]) == 2
    assert "has no run of point 'base' at seed 2 (it holds seeds 0, 1)" in capsys.readouterr().err
    # A record whose index gives a point another point's runs is refused by run key, not rendered.
    with tarfile.open(record, "r:xz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    index = json.loads(members["record.json"])
    index["runs"]["m-1"], index["runs"]["m-2"] = index["runs"]["m-2"], index["runs"]["m-1"]
    members["record.json"] = json.dumps(index).encode()
    with tarfile.open(fresh / "limitations-smoke" / "record.tar.xz", "w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert main(args) == 2
    assert "of point 'm-1' has key" in capsys.readouterr().err


def test_the_committed_record_renders_the_committed_report(tmp_path, capsys):
    """``nox -s limitations`` on a fresh clone: the committed record and study give the committed report, line for
    line (the figures' lines aside: drawn here without figures)."""
    results = Path(__file__).resolve().parents[1] / "results"
    (tmp_path / "limitations").mkdir()
    (tmp_path / "limitations" / "record.tar.xz").symlink_to(results / "limitations" / "record.tar.xz")
    (tmp_path / "studies").symlink_to(results / "studies")
    assert main(["limitations", "--scale", "full", "--source", "record", "--out", str(tmp_path), "--no-plots",
                 "--no-progress"]) == 0
    capsys.readouterr()

    def lines(path: Path, root: str) -> list[str]:
        return [line.replace(root, "results") for line in _report_lines(path) if line and not line.startswith("![")]
    assert lines(tmp_path / "limitations.md", str(tmp_path)) == lines(results / "limitations.md", "results")


def test_the_full_plans_base_point_and_baselines_are_the_tables_runs(tmp_path):
    table = Table2Config(profile="shapes2-defaults", out=str(tmp_path))
    jobs = plan(SECTIONS["shapes2-defaults"][:1], table, Store(tmp_path))
    theirs = {run_key(j.run_cfg, j.method_cfg) for j in jobs}
    cfg = LimitationsConfig(scale="full", base="preset")
    scale = scale_of(cfg)
    mine = {run_key(p.run.replace(seed=s), p.method_cfg) for p in plan_points(cfg, scale, resolve(cfg, scale))
            if p.part in ("base", "baseline") for s in scale.seeds}
    assert mine <= theirs and len(mine) == 6 * 5 and len(theirs) == 6 * 8  # the table's seeds 0-4 of 0-7
