"""``driftbench power``: variance components recovered from synthetic data with known components, the
minimum detectable difference on hand-computed values, the per-image scores runs store, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.reporting.power import (
    PowerConfig,
    components,
    gold_weights,
    load_group,
    power,
    seed_variance,
)
from harness.reporting.stats import mdd
from harness.shapes.prompts import split
from harness.store import Store
from harness.validate import unbounded

TRUE = {"seed": 0.04, "seed_x_prompt": 0.02, "noise": 0.05, "residual": 0.1, "prompt": 0.09}


def synthetic(n: int, m: int, k: int, seed: int = 0, comp: dict = TRUE) -> np.ndarray:
    """y[s, p, k] = a[s] + b[p] + ab[s, p] + c[p, k] + e[s, p, k] with the given variances."""
    rng = np.random.default_rng(seed)
    sd = {key: np.sqrt(v) for key, v in comp.items()}
    return (0.5 + sd["seed"] * rng.standard_normal((n, 1, 1)) + sd["prompt"] * rng.standard_normal((1, m, 1))
            + sd["seed_x_prompt"] * rng.standard_normal((n, m, 1)) + sd["noise"] * rng.standard_normal((1, m, k))
            + sd["residual"] * rng.standard_normal((n, m, k)))


def test_components_recover_known_variances():
    est = components(synthetic(200, 200, 20))
    for name, value in TRUE.items():
        tolerance = 0.25 if name in ("seed", "prompt") else 0.1  # 200 levels: ~10% sampling sd for s2_s, s2_p
        assert est[name] == pytest.approx(value, rel=tolerance), name


def test_components_are_unbiased_over_replications_and_truncate_at_zero():
    # Small designs (5 seeds, like the table): the average over replications still recovers the truth.
    runs = [components(synthetic(5, 20, 8, seed=r)) for r in range(300)]
    assert np.mean([c["seed"] for c in runs]) == pytest.approx(TRUE["seed"], rel=0.15)
    assert np.mean([c["residual"] for c in runs]) == pytest.approx(TRUE["residual"], rel=0.05)
    # No seed effect at all: the estimate is clipped at 0, never negative.
    none = components(synthetic(5, 20, 8, comp={**TRUE, "seed": 0.0, "seed_x_prompt": 0.0}))
    assert min(none.values()) >= 0.0
    with pytest.raises(ValueError, match="at least 2 seeds"):
        components(np.zeros((1, 4, 4)))


def test_modelled_seed_variance_matches_the_observed_variance_of_the_gold():
    y = synthetic(400, 12, 8, seed=3)
    weights = np.full(12, 1 / 12)
    observed = (y.mean(axis=2) @ weights).var(ddof=1)
    modelled = seed_variance(components(y), float((weights ** 2).sum()), 8)
    assert modelled == pytest.approx(observed, rel=0.15)


def test_mdd_and_seed_variance_on_hand_computed_values():
    comp = {"seed": 0.001, "seed_x_prompt": 0.004, "residual": 0.2, "noise": 0.5, "prompt": 0.5}
    # V = 0.001 + (1/20) (0.004 + 0.2 / 8) = 0.00245; noise and prompt cancel on fixed prompts and noise.
    assert seed_variance(comp, 1 / 20, 8) == pytest.approx(0.00245)
    # Var(d) = 0.0049, sd(d) = 0.07. n = 5: (t(0.975, 4) + t(0.8, 4)) sqrt(0.0049 / 5) = (2.7764 + 0.9410) * 0.031305
    assert mdd(0.07, 5) == pytest.approx(0.11637, abs=1e-4)
    # n = 10: (2.2622 + 0.8834) * sqrt(0.0049 / 10) = 3.1456 * 0.022136 = 0.06963
    assert mdd(0.07, 10) == pytest.approx(0.06963, abs=1e-4)


def test_gold_weights_are_overall_disjoint():
    prompts = [m["prompt"] for m in split("val")]
    weights, tags = gold_weights(prompts, "shapes-geneval")
    assert tags == 5 and weights.sum() == pytest.approx(1.0)
    assert all(w == 0 for p, w in zip(prompts, weights) if p in ("a photo of a circle", "a photo of a square"))
    plain, one = gold_weights(["x", "y"], "shapes-pref")
    assert one == 1 and list(plain) == [0.5, 0.5]


# -- stored runs ----------------------------------------------------------------------------------------------


def _fake_run(store: Store, run_id: str, seed: int, y: np.ndarray, prompts: list[str], *, code: str = "abc",
              lr: float = 0.01, scores: bool = True) -> None:
    path = store.run_dir(run_id)
    path.mkdir(parents=True)
    manifest = {"run_id": run_id, "status": "complete", "run": {"seed": seed, "method": "drpo", "run_id": run_id},
                "method_config": {"lr": lr}, "versions": {"code": code}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    weights, _ = gold_weights(prompts, "shapes-geneval")
    (path / "summary.json").write_text(json.dumps({"test/shapes-geneval/overall_disjoint":
                                                   float(y.mean(axis=1) @ weights)}))
    if scores:
        records = [{"which": which, "step": 4, "prompts": prompts, "seeds": y.shape[1], "seed_base": 7,
                    "scores": {"shapes-geneval": [float(v) for v in y.ravel()]}} for which in ("eval", "test")]
        (path / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _binary(n: int, m: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = np.clip(0.4 + 0.1 * rng.standard_normal((n, 1, 1)) + 0.2 * rng.standard_normal((1, m, 1)), 0.05, 0.95)
    return (rng.random((n, m, k)) < p).astype(float)


def test_power_report_from_stored_runs(tmp_path):
    store = Store(tmp_path)
    prompts = [m["prompt"] for m in split("val")]
    y = _binary(3, len(prompts), 4)
    for s in range(3):
        _fake_run(store, f"a-s{s}", s, y[s], prompts)
        _fake_run(store, f"b-s{s}", s, _binary(3, len(prompts), 4, seed=9)[s], prompts, lr=0.02)
    group = load_group(store, ("a-s*",), "test", "shapes-geneval")
    assert group.seeds == [0, 1, 2] and np.allclose(group.gold(), group.stored_gold)
    path = power(PowerConfig(runs=("a-s*",), versus=("b-s*",), seeds=(5, 10), out=str(tmp_path)))
    text = path.read_text()
    assert "| seed |" in text and "observed" in text and "n = 10" in text
    csv = path.with_suffix(".csv").read_text().splitlines()
    assert csv[0].startswith("kind,name") and sum(line.startswith("mdd,") for line in csv) == 2 * 3 * 3
    assert sum(line.startswith("mdd_observed,") for line in csv) == 2 and "observed sd(d) |" in text
    beside = power(PowerConfig(runs=("a-s*",), split="eval", seeds=(5,), out=str(tmp_path)))
    assert beside.name == "power-eval.md" and "split 'eval'" in beside.read_text() and path.read_text() == text


@pytest.mark.parametrize("case, message", [
    ("one-seed", "two or more training seeds; a-s0 has only seed 0"),
    ("code", "ran different code (abc vs xyz)"),
    ("config", "differ in configuration: method.lr (0.01 vs 0.02)"),
    ("no-scores", "stores no per-image scores"),
    ("same-seed", "have the same training seed 0"),
])
def test_power_bad_input_is_one_line(tmp_path, case, message):
    store = Store(tmp_path)
    prompts = [m["prompt"] for m in split("val")]
    y = _binary(2, len(prompts), 4)
    _fake_run(store, "a-s0", 0, y[0], prompts)
    if case != "one-seed":
        _fake_run(store, "a-s1", 0 if case == "same-seed" else 1, y[1], prompts, code="xyz" if case == "code" else "abc",
                  lr=0.02 if case == "config" else 0.01, scores=case != "no-scores")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        power(PowerConfig(runs=("a-s*",), out=str(tmp_path)))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "power.md").exists()


def test_power_config_bounds():
    assert unbounded(PowerConfig) == []
    with pytest.raises(ValueError, match="--seeds"):
        power(PowerConfig(runs=("x",), seeds=(1,)))


def test_runs_store_per_image_scores_that_reproduce_their_means(tmp_path):
    from harness.run import run
    from methods import drpo
    from tests.conftest import tiny_run

    summary = run(tiny_run(tmp_path, run_id="sc", test_split="test", test_seeds=2, select_metric="jpeg"),
                  drpo.Config(m=2), progress=False)
    records = Store(tmp_path).scores("sc")
    assert {r["which"] for r in records} >= {"eval", "test"}
    test = next(r for r in records if r["which"] == "test")
    assert len(test["scores"]["jpeg"]) == len(test["prompts"]) * test["seeds"] == len(test["prompts"]) * 2
    assert np.mean(test["scores"]["jpeg"]) == pytest.approx(summary["test/jpeg/mean"], rel=1e-6)


def test_power_command_refuses_in_one_line(tmp_path, capsys):
    from harness.cli import main

    assert main(["power", "--runs", "nope-*", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"driftbench: error: no run matches 'nope-*' in {tmp_path / 'runs'}"


def test_every_writer_a_run_sees_takes_scores(tmp_path):
    """The store, the tracker-mirrored store (trackers get no scores) and other processes' silent store."""
    from harness.run import _Silent
    from harness.trackers import Mirrored

    store = Store(tmp_path)
    store.run_dir("r").mkdir(parents=True)
    Mirrored(store, (), "r", {"run": {"method": "drpo"}, "method_config": {}}).append_scores("r", {"which": "test", "step": 1})
    _Silent(store).append_scores("r", {"which": "test", "step": 2})
    assert store.scores("r") == [{"which": "test", "step": 1}]
