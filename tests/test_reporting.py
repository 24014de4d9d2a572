"""The reporting layer's statistics on hand-computed values (Holm, the minimum detectable difference, IQM and
the seeded stratified bootstrap, interpolation that never extrapolates), table2's checks before compute, and
the tidy result files' types."""

import math

import numpy as np
import pytest

from harness.reporting import stats


@pytest.mark.unit
def test_holm_adjusts_a_small_p_vector_by_hand():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> running max 0.06
    assert np.allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    out = stats.holm([0.02, math.nan])  # nan stays out of the family (m = 1)
    assert out[0] == 0.02 and math.isnan(out[1])


@pytest.mark.unit
def test_minimum_detectable_difference_by_hand():
    # n = 5: t(0.975, 4) = 2.7764, t(0.8, 4) = 0.9410; (2.7764 + 0.9410) * 0.05 / sqrt(5) = 0.08312
    assert math.isclose(stats.mdd(0.05, 5), 3.7174 * 0.05 / math.sqrt(5), rel_tol=1e-4)
    # n = 10: 2.2622 + 0.8834 = 3.1456
    assert math.isclose(stats.mdd(1.0, 10), 3.1456 / math.sqrt(10), rel_tol=1e-4)
    assert math.isnan(stats.mdd(0.05, 1))


@pytest.mark.unit
def test_seeds_for_a_half_width_by_hand():
    # sd 0.019: n = 8 gives 2.3646 x 0.019 / sqrt(8) = 0.01588 > 0.015; n = 9 gives 2.3060 x 0.019 / 3 = 0.01461
    assert stats.seeds_for_half_width(0.019, 0.015) == 9
    assert stats.seeds_for_half_width(0.0, 0.015) == 2
    assert stats.seeds_for_half_width(math.nan, 0.015) == 0 and stats.seeds_for_half_width(1.0, 1e-4, most=50) == 0


@pytest.mark.unit
def test_the_power_target_line_names_each_miss_with_the_seeds_it_needs():
    from harness.reporting.tuned_table import Comparison, SectionResult, power_target

    hit, miss = stats.paired([0.01, 0.012, 0.011, 0.013]), stats.paired([0.05, -0.03, 0.02, 0.0])
    res = SectionResult("s", "proxy", "gold", "drpo", ["proxy", "gold"], [], [], [
        Comparison("dpo1", "gold", hit), Comparison("pso", "gold", miss), Comparison("pso", "proxy", miss)], [])
    line = power_target(res)[-1]
    assert "met by 1 of 2 (dpo1)" in line and f"missed by pso ({miss.half:.4f}" in line
    assert f"{stats.seeds_for_half_width(miss.sd, 0.015)} seeds would need" in line


@pytest.mark.unit
def test_paired_test_by_hand():
    # d = 0.1, 0.2, 0.3, 0.2, 0.2: mean 0.2, sd sqrt(0.02 / 4) = 0.070711, se 0.031623, t = 6.3246 (df 4)
    t = stats.paired([0.1, 0.2, 0.3, 0.2, 0.2])
    assert math.isclose(t.mean, 0.2) and math.isclose(t.sd, math.sqrt(0.005))
    assert math.isclose(t.half, 2.776445 * 0.031623, rel_tol=1e-4)
    assert math.isclose(t.p, 0.003196, rel_tol=1e-3) and not t.spans_zero
    assert math.isclose(t.mdd, 3.7174 * 0.031623, rel_tol=1e-4)
    assert stats.paired([0.1, -0.1, 0.0]).spans_zero


@pytest.mark.unit
def test_iqm_and_probability_of_improvement_by_hand():
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5  # the middle four: 3, 4, 5, 6
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 100]) == 4.5  # robust to the outlier run
    # pairs of (1, 2, 3) against (2, 2): 3 > 2 twice, 2 = 2 twice (half each) -> 2/6 + 1/6
    assert math.isclose(stats.improvement_probability([1, 2, 3], [2, 2]), 0.5)
    assert stats.average_improvement_probability({"a": [1.0], "b": [0.0]}, {"a": [0.0], "b": [1.0]}) == 0.5


@pytest.mark.unit
def test_stratified_bootstrap_is_seeded_and_resamples_within_tasks():
    runs = {"a": [0.0, 1.0, 2.0, 3.0], "b": [10.0, 11.0]}
    first = stats.stratified_bootstrap([runs], stats.pooled_iqm, reps=500, seed=3)
    assert first == stats.stratified_bootstrap([runs], stats.pooled_iqm, reps=500, seed=3)
    assert first[1] <= first[0] <= first[2]
    # a constant task set has a zero-width interval
    assert stats.stratified_bootstrap([{"a": [2.0, 2.0], "b": [2.0]}], stats.pooled_iqm, reps=50) == (2.0, 2.0, 2.0)
    # one task, values 0 and 1: resampled means are 0, 0.5 or 1 -> the 95% interval is [0, 1]
    point, low, high = stats.stratified_bootstrap([{"a": [0.0, 1.0]}], lambda r: float(np.mean(r["a"])), reps=400)
    assert (point, low, high) == (0.5, 0.0, 1.0)


@pytest.mark.unit
def test_interpolation_between_measured_points_never_extrapolates():
    x, y = [0.0, 0.2, 0.5, 0.4], [0.3, 0.4, 0.1, 0.2]  # the distance folds back after the third point
    assert math.isclose(stats.interpolate_at(x, y, 0.35), 0.25)  # halfway 0.2 -> 0.5
    assert math.isclose(stats.interpolate_at(x, y, 0.45), 0.4 + (0.25 / 0.3) * (0.1 - 0.4))  # first crossing
    assert stats.interpolate_at(x, y, 0.2) == 0.4  # a measured point as measured
    assert math.isnan(stats.interpolate_at(x, y, 0.6)) and math.isnan(stats.interpolate_at(x, y, -0.1))
    assert math.isnan(stats.interpolate_at([0.1, 0.3], [1.0, 2.0], 0.05))  # before the first point: not a line to 0


@pytest.mark.unit
@pytest.mark.parametrize("methods, seeds, message", [
    (("drpx",), (0, 1), "unknown method 'drpx'; did you mean 'drpo'?"),
    (("dpo1", "drpp"), (0,), "unknown method 'drpp'; did you mean 'drpo'?"),
    (("vggflow",), (0,), "method 'vggflow' is in no section of this table"),
    (("drpo",), (0, 1, 1), "table2 --seeds repeats 1"),
])
def test_table2_checks_names_and_seeds_before_compute(tmp_path, methods, seeds, message):
    from harness.reporting.preflight import check_table2
    from harness.reporting.reproduce import Table2Config
    from harness.sections import SECTIONS

    sections = SECTIONS["shapes"][1:]  # shapes-geneval: drpo, dpo1, pso, ngrpo
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        check_table2(Table2Config(profile="shapes", methods=methods, seeds=seeds, out=str(tmp_path)), sections, "shapes")


@pytest.mark.unit
def test_table2_reads_the_studies_where_the_tuned_file_says(tmp_path):
    """A method of one section keeps only that section; the tuning report's studies are looked up in the root
    the tuned file records, not in --out, and a missing one is named before any run."""
    import json

    from harness.reporting.preflight import check_table2
    from harness.reporting.reproduce import Table2Config
    from harness.sections import SECTIONS

    entry = {"trial": 0, "value": 0.2, "config": {}, "studies_root": str(tmp_path / "tuning")}
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"profile": "shapes", "sections": {"shapes-pref": {"draft": entry}}}))
    cfg = Table2Config(profile="shapes", methods=("draft",), tuned_file=str(tuned), out=str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="tune-shapes-pref-draft in .*tuning/studies"):
        check_table2(cfg, SECTIONS["shapes"], "shapes")
    (tmp_path / "tuning" / "studies").mkdir(parents=True)
    (tmp_path / "tuning" / "studies" / "tune-shapes-pref-draft.journal").write_text("")
    kept = check_table2(cfg, SECTIONS["shapes"], "shapes")
    assert [s.preset for s in kept] == ["shapes-pref"]  # shapes-geneval has no draft: left out, not an IndexError


def _fake_run(root, run_id, method, seed, proxy, gold_sel, gold_end, base, tag_two):
    """A complete run as the store holds it: manifest, summary with test rows, and validation eval rows."""
    import json

    path = root / "runs" / run_id
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"status": "complete", "reward": proxy,
                                                    "run": {"method": method, "seed": seed, "tag": "t"},
                                                    "versions": {"code": "c0"}}))
    summary = {"test_selected/drift/latent_rms": 0.1, "select/step": 2, "budget/updates": 4,
               "budget/flops": 4e9, "budget/seconds": 2.0}
    for prefix, gold in (("test_selected", gold_sel), ("test", gold_end)):
        summary.update({f"{prefix}/shapes-geneval/overall_disjoint": gold, f"{prefix}/shapes-geneval/base_overall_disjoint": base,
                        f"{prefix}/shapes-geneval/two_object": tag_two, f"{prefix}/shapes-geneval/base_two_object": 0.5,
                        f"{prefix}/shapes-geneval/mean": gold, f"{prefix}/shapes-geneval/base_mean": base})
        if proxy != "shapes-geneval":
            summary.update({f"{prefix}/{proxy}/mean": -3 + gold, f"{prefix}/{proxy}/base_mean": -3 + base})
    (path / "summary.json").write_text(json.dumps(summary))
    rows = []
    for step, dist in ((0, 0.0), (2, 0.2), (4, 0.15)):  # the distance folds back at the end
        row = {"kind": "eval", "step": step, "eval/drift/latent_rms": dist,
               "eval/shapes-geneval/overall_disjoint": base + step * 0.01, "eval/shapes-geneval/base_std": 0.4}
        if proxy != "shapes-geneval":
            row.update({f"eval/{proxy}/mean": -3 + step * 0.1, f"eval/{proxy}/base_std": 1.0})
        rows.append(json.dumps(row))
    (path / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    return run_id


@pytest.mark.unit
def test_table_files_are_tidy_typed_and_holm_runs_over_the_whole_table(tmp_path):
    """Two tested sections written from a hand-made store: Holm over the paired Δs of both sections, the
    MDD beside a spanning interval, per-tag gold, selected against end, the aggregate, typed CSVs."""
    import pandas as pd

    from harness.reporting.table2 import write_table
    from harness.sections import Section
    from harness.store import Store

    sections = []
    for preset, proxy in (("sec-pref", "shapes-pref"), ("sec-gen", "shapes-geneval")):
        ids = []
        for seed, (a, b) in enumerate(((0.30, 0.20), (0.32, 0.25), (0.31, 0.21))):
            ids.append(_fake_run(tmp_path, f"{preset}-drpo-{seed}", "drpo", seed, proxy, a, a - 0.01, 0.2, 0.6))
            ids.append(_fake_run(tmp_path, f"{preset}-dpo1-{seed}", "dpo1", seed, proxy, b, b + 0.02, 0.2, 0.4))
        sections.append((Section(f"section {preset}", preset, ("drpo", "dpo1")), ids))
    md = write_table(sections, Store(tmp_path), tmp_path, elapsed=60.0)
    text = md.read_text()
    frame = pd.read_csv(tmp_path / "table2.csv")
    text_columns = {c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])}
    assert text_columns == {"section", "table", "method", "metric", "reward", "split", "checkpoint"}
    delta = frame[frame.metric == "delta_vs_drpo"]
    # three paired tests (gold and proxy in sec-pref, gold in sec-gen); dpo1 - drpo = -0.10, -0.07, -0.10
    assert len(delta) == 3
    # the three tests have the same differences, so Holm gives each max(3p, 2p, p) = 3p
    p = stats.paired([-0.10, -0.07, -0.10]).p
    assert np.allclose(delta.p, p) and np.allclose(delta.p_holm, 3 * p)
    seeds = pd.read_csv(tmp_path / "table2_seeds.csv")
    assert seeds.seed.dtype.kind == "i" and seeds.value.dtype.kind == "f"
    over = pd.read_csv(tmp_path / "table2_overopt.csv")
    assert over.past_peak.dtype == bool and over.peak_update.dtype.kind == "i"
    # gold at the common distance 0.2: reached at update 2, the measured point (not the folded-back end)
    assert np.allclose(over.gold_at_budget, 0.2 + 2 * 0.01)
    tags = frame[(frame.table == "per_tag") & (frame.method == "dpo1")]
    assert np.allclose(tags.value, 0.4) and set(tags.metric) == {"two_object"}
    sel = frame[(frame.metric == "selected_minus_end") & (frame.method == "dpo1")]
    assert np.allclose(sel.value, -0.02)
    agg = frame[frame.table == "aggregate"]
    assert set(agg.metric) == {"iqm_gain", "p_improve_vs_drpo"}
    assert agg[(agg.method == "dpo1") & (agg.metric == "p_improve_vs_drpo")].value.item() == 0.0  # dpo1 never wins
    assert "p_Holm" in text and "Aggregate over 2 section(s)" in text and "Per-tag test shapes-geneval" in text
