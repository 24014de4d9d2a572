"""Seed and prompt-bootstrap intervals of a headline difference (``harness.reporting.bootstrap``) on synthetic
scores with known answers, and read back from stored per-image scores."""

from __future__ import annotations

import numpy as np
import pytest

from harness.reporting.bootstrap import (
    compare_runs,
    headline_intervals,
    strata_of,
    stratified_prompt_bootstrap,
)
from harness.shapes.prompts import split
from harness.store import Store


def test_a_two_prompt_stratum_has_the_enumerable_bootstrap_distribution():
    # Drawing 2 of {0, 1} with replacement: mean 0 (1/4), 0.5 (1/2), 1 (1/4); sd sqrt(1/8), percentiles 0 and 1.
    point, low, high, sd = stratified_prompt_bootstrap([0.0, 1.0], ["t", "t"], [0.5, 0.5], reps=20000)
    assert point == 0.5 and low == 0.0 and high == 1.0
    assert sd == pytest.approx(np.sqrt(1 / 8), rel=0.02)


def test_stratified_sd_matches_the_analytic_value_and_zero_weight_strata_are_left_out():
    rng = np.random.default_rng(1)
    d = np.concatenate([rng.normal(0, 1.0, 6), rng.normal(3, 0.2, 10), rng.normal(9, 5.0, 4)])
    strata = ["a"] * 6 + ["b"] * 10 + ["shared"] * 4
    weights = [0.5 / 6] * 6 + [0.5 / 10] * 10 + [0.0] * 4
    point, low, high, sd = stratified_prompt_bootstrap(d, strata, weights, reps=40000, seed=3)
    # sd^2 = sum_t W_t^2 var_t / m_t with population variances; the weight-0 stratum contributes nothing.
    analytic = np.sqrt(0.25 * d[:6].var() / 6 + 0.25 * d[6:16].var() / 10)
    assert point == pytest.approx(0.5 * d[:6].mean() + 0.5 * d[6:16].mean())
    assert sd == pytest.approx(analytic, rel=0.02)
    assert low < point < high and (high - low) / 2 == pytest.approx(1.96 * analytic, rel=0.05)


def test_bad_strata_are_one_line():
    with pytest.raises(ValueError, match="unequal prompt weights"):
        stratified_prompt_bootstrap([0.0, 1.0], ["t", "t"], [0.2, 0.8])
    with pytest.raises(ValueError, match="one difference, stratum and weight per prompt"):
        stratified_prompt_bootstrap([0.0, 1.0], ["t"], [0.5, 0.5])


def _scores(per_seed: list[float], per_prompt: list[float], images: int = 3) -> np.ndarray:
    """y[s, p, k] = per_seed[s] + per_prompt[p], the same for every image."""
    return np.array(per_seed)[:, None, None] + np.array(per_prompt)[None, :, None] + np.zeros((1, 1, images))


def test_seed_noise_only_gives_a_zero_width_prompt_interval_and_the_hand_computed_t_interval():
    # A - B = 0.1, 0.2, 0.3 on seeds 0-2, the same on every prompt: the prompt bootstrap has nothing to resample.
    a = _scores([0.1, 0.2, 0.3], [0.5, 0.1, 0.7, 0.3])
    b = _scores([0.0, 0.0, 0.0], [0.5, 0.1, 0.7, 0.3])
    out = headline_intervals(a, [0, 1, 2], b, [0, 1, 2], ["x", "x", "y", "y"], [0.25] * 4)
    assert out.point == pytest.approx(0.2) and out.seed.mean == pytest.approx(0.2)
    # t(0.975, 2) = 4.3027 (scipy), sd = 0.1: half = 4.3027 * 0.1 / sqrt(3) = 0.24841
    assert out.seed.half == pytest.approx(0.24841, abs=1e-4)
    assert out.prompt_low == pytest.approx(0.2) and out.prompt_high == pytest.approx(0.2)
    assert out.dominant == "seed" and out.seeds == (0, 1, 2) and out.strata == 2


def test_prompt_noise_only_gives_a_zero_width_seed_interval():
    # A - B differs by prompt (-1 or +1 within each tag), identically on every seed.
    a = _scores([0.3, 0.6, 0.1], [1.0, -1.0, 1.0, -1.0])
    b = _scores([0.3, 0.6, 0.1], [0.0, 0.0, 0.0, 0.0])
    out = headline_intervals(a, [4, 5, 6], b, [4, 5, 6], ["x", "x", "y", "y"], [0.25] * 4, reps=20000)
    assert out.point == pytest.approx(0.0) and out.seed.half == pytest.approx(0.0)
    # Each tag: mean of 2 draws of {-1, 1} has sd sqrt(1/2); two tags of weight 1/2: sd = sqrt(2 * 0.25 * 0.5) = 0.5
    assert out.prompt_sd == pytest.approx(0.5, rel=0.02)
    assert out.dominant == "prompt"


def test_pairs_over_common_seeds_and_a_single_run_is_a_fixed_reference():
    a = _scores([0.1, 0.2, 0.4], [0.0, 0.0])
    b = _scores([0.0, 0.1], [0.0, 0.0])
    # Seeds 1 and 2 are shared: d = 0.2 - 0.0 (seed 1), 0.4 - 0.1 (seed 2).
    out = headline_intervals(a, [0, 1, 2], b, [1, 2], ["t", "t"], [0.5, 0.5])
    assert out.seeds == (1, 2) and out.seed.mean == pytest.approx(0.25) and out.point == pytest.approx(0.25)
    ref = _scores([0.05], [0.0, 0.0])  # e.g. best-of-K: one run, no training seed
    out = headline_intervals(a, [0, 1, 2], ref, [0], ["t", "t"], [0.5, 0.5])
    assert out.seed.n == 3 and out.seed.mean == pytest.approx((0.05 + 0.15 + 0.35) / 3)
    with pytest.raises(ValueError, match="share no training seed"):
        headline_intervals(a, [0, 1, 2], b, [7, 8], ["t", "t"], [0.5, 0.5])
    with pytest.raises(ValueError, match="same prompts and images"):
        headline_intervals(a, [0, 1, 2], _scores([0.0], [0.0, 0.0, 0.0]), [0], ["t", "t"], [0.5, 0.5])


def test_shapes_geneval_strata_are_the_disjoint_tags():
    prompts = [m["prompt"] for m in split("val")]
    strata, weights = strata_of(prompts, "shapes-geneval")
    assert weights.sum() == pytest.approx(1.0)
    assert {s for s, w in zip(strata, weights) if w > 0} == {"two_object", "counting", "colors", "position",
                                                                "color_attr"}
    assert strata_of(prompts, "shapes-pref")[0] == ["all"] * len(prompts)


def _write(store: Store, run_id: str, seed: int | None, prompts: list[str], y: np.ndarray, base: int = 7) -> None:
    store.start(run_id, {"run": {"seed": seed}} if seed is not None else {"kind": "best-of-k"})
    store.append_scores(run_id, {"which": "test", "step": 3, "prompts": prompts, "seeds": y.shape[1],
                                 "seed_base": base, "scores": {"shapes-geneval": y.ravel().tolist()}})
    store.finish(run_id, {})
    store.release(run_id)


def test_compare_runs_reads_stored_scores_across_roots(tmp_path):
    prompts = [m["prompt"] for m in split("val")]
    rng = np.random.default_rng(0)
    runs, refs = Store(tmp_path), Store(tmp_path / "references")
    ya = (rng.random((3, len(prompts), 4)) < 0.6).astype(float)
    yb = (rng.random((1, len(prompts), 4)) < 0.4).astype(float)
    for s in range(3):
        _write(runs, f"a{s}", s, prompts, ya[s])
    _write(refs, "bok", None, prompts, yb[0])
    out = compare_runs((runs, ["a0", "a1", "a2"]), (refs, ["bok"]), reps=500)
    strata, weights = strata_of(prompts, "shapes-geneval")
    gold_a, gold_b = ya.mean(axis=2) @ weights, yb.mean(axis=2) @ weights
    assert out.point == pytest.approx(gold_a.mean() - gold_b[0])
    assert out.seed.n == 3 and out.prompt_low < out.point < out.prompt_high
    _write(refs, "other", None, prompts, yb[0], base=8)
    with pytest.raises(ValueError, match="different prompts or noise"):
        compare_runs((runs, ["a0", "a1"]), (refs, ["other"]))
    with pytest.raises(ValueError, match="no 'eval' per-image scores; stored: test"):
        compare_runs((runs, ["a0"]), (refs, ["bok"]), split="eval")


def test_intervals_command_writes_both_intervals_and_bad_input_is_one_line(tmp_path, capsys):
    from harness.cli import main
    from harness.reporting.bootstrap import IntervalsConfig
    from harness.validate import unbounded

    prompts = [m["prompt"] for m in split("val")]
    rng = np.random.default_rng(2)
    runs, refs = Store(tmp_path), Store(tmp_path / "references")
    for s in range(3):
        _write(runs, f"drpo-s{s}", s, prompts, (rng.random((len(prompts), 4)) < 0.6).astype(float))
    _write(refs, "bok", None, prompts, (rng.random((len(prompts), 4)) < 0.4).astype(float))
    assert main(["intervals", "--runs", "drpo-s*", "--versus", "bok", "--versus-root", "references",
                 "--reps", "300", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "intervals.md").read_text()
    assert "A: drpo-s0, drpo-s1, drpo-s2" in text and "n = 3" in text and "Dominant uncertainty: " in text
    capsys.readouterr()
    assert main(["intervals", "--runs", "dpo-*", "--versus", "bok", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"driftbench: error: no complete run matches 'dpo-*' in {tmp_path}/runs"
    assert unbounded(IntervalsConfig) == []
