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
    from harness.reporting.checks import check_table2
    from harness.reproduce import SECTIONS, Table2Config

    sections = SECTIONS["shapes"][1:]  # shapes-geneval: drpo, dpo1, pso, ngrpo
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        check_table2(Table2Config(methods=methods, seeds=seeds, out=str(tmp_path)), sections, "shapes")


@pytest.mark.unit
def test_table2_reads_the_studies_where_the_tuned_file_says(tmp_path):
    """A method of one section keeps only that section; the tuning report's studies are looked up in the root
    the tuned file records, not in --out, and a missing one is named before any run."""
    import json

    from harness.reporting.checks import check_table2
    from harness.reproduce import SECTIONS, Table2Config

    entry = {"trial": 0, "value": 0.2, "config": {}, "studies_root": str(tmp_path / "tuning")}
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"profile": "shapes", "sections": {"shapes-pref": {"draft": entry}}}))
    cfg = Table2Config(methods=("draft",), tuned_file=str(tuned), out=str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="tune-shapes-pref-draft in .*tuning/studies"):
        check_table2(cfg, SECTIONS["shapes"], "shapes")
    (tmp_path / "tuning" / "studies").mkdir(parents=True)
    (tmp_path / "tuning" / "studies" / "tune-shapes-pref-draft.journal").write_text("")
    kept = check_table2(cfg, SECTIONS["shapes"], "shapes")
    assert [s.preset for s in kept] == ["shapes-pref"]  # shapes-geneval has no draft: left out, not an IndexError
