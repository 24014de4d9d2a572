"""Equal-effort tuning and the tuned file: tuning never reads the test split, the file is validated against
each method's Config, sections with unequal effort are caught, and the tuned table's helpers by hand."""

import json
import math

import numpy as np
import pytest

from harness.config import RunConfig
from harness.presets import PRESETS, Preset
from harness.sections import SECTIONS, Section
from harness.studies.tune import TuneConfig
from harness.studies.tuned import method_config, tuned_configs, unequal_effort

TINY = Preset("tests: tiny profile, 2 updates, K=4", RunConfig(
    method="drpo", profile="tiny", reward="jpeg", evals=("jpeg",), k=16, prompts_per_step=1, updates=2,
    eval_at=(0.0, 0.5, 1.0), eval_seeds=1, eval_prompt_limit=2, select_metric="jpeg", count_flops=False),
    methods={"drpo": {"m": 2, "features": "latent"}, "dpo1": {"m": 2}})


@pytest.fixture
def tiny_table(monkeypatch):
    monkeypatch.setitem(PRESETS, "test-tune", TINY)
    monkeypatch.setitem(SECTIONS, "test-tiny", (Section("tiny", "test-tune", ("drpo", "dpo1"), tuned=True),))


def _tune(tmp_path, name):
    from harness.studies.study import load_study
    from harness.studies.tune import study_name, tune

    cfg = TuneConfig(profile="test-tiny", trials=2, n_workers=1, out=str(tmp_path / name),
                     tuned_file=str(tmp_path / name / "tuned.json"))
    path = tune(cfg, log=lambda s: None)
    values = {m: [t.value for t in load_study(study_name("test-tune", m), out=cfg.out).trials]
              for m in ("drpo", "dpo1")}
    return json.loads(path.read_text()), values


@pytest.mark.slow
def test_tuning_never_reads_the_test_split(tmp_path, monkeypatch, tiny_table):
    """The same tuning with the test split poisoned (any read of it raises) chooses the same configurations
    with the same trial values."""
    import harness.profiles as profiles

    clean, clean_values = _tune(tmp_path, "clean")
    real = profiles.tiny_prompts

    def poisoned(split_seed=0):
        splits = real(split_seed)

        class Poison(list):
            def __iter__(self):
                raise AssertionError("tuning read the test split")
            __getitem__ = __len__ = __iter__
        splits["test"] = Poison(splits["test"])
        return splits
    monkeypatch.setattr(profiles, "tiny_prompts", poisoned)
    dirty, dirty_values = _tune(tmp_path, "poisoned")
    assert dirty_values == clean_values and all(v is not None for vs in clean_values.values() for v in vs)
    pick = lambda data: {m: (e["trial"], e["value"], e["config"]) for m, e in data["sections"]["test-tune"].items()}  # noqa: E731
    assert pick(dirty) == pick(clean)
    assert not unequal_effort(clean["sections"]["test-tune"])
    configs = tuned_configs("test-tune", tmp_path / "clean" / "tuned.json")
    assert set(configs) == {"drpo", "dpo1"} and configs["drpo"].lr == clean["sections"]["test-tune"]["drpo"]["config"]["lr"]


@pytest.mark.unit
@pytest.mark.parametrize("method, values, message", [
    ("drpoo", {}, "unknown method in tuned.json 'drpoo'; did you mean 'drpo'?"),
    ("drpo", {"lamda": 0.1}, "unknown field of drpo.Config (tuned.json: s.drpo) 'lamda'; did you mean 'lam'?"),
    ("drpo", {"m": 2.5}, "tuned.json: s.drpo.m: expected int, got 2.5"),
    ("drpo", {"strict_ties": "yes"}, "tuned.json: s.drpo.strict_ties: expected bool, got 'yes'"),
    ("drpo", {"radii": 0.2}, "tuned.json: s.drpo.radii: expected a list, got 0.2"),
])
def test_tuned_file_errors_name_the_bad_method_field_or_value(method, values, message):
    with pytest.raises((ValueError, TypeError)) as err:
        method_config(method, values, "tuned.json: s." + method)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.unit
def test_tuned_file_converts_only_int_to_float_and_list_to_tuple():
    cfg = method_config("drpo", {"lr": 1, "radii": [0.1, 0.2], "m": 3}, "x")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.radii == (0.1, 0.2) and cfg.m == 3


@pytest.mark.unit
def test_unequal_effort_names_the_differing_keys():
    base = {"trials": 16, "updates": 96, "seeds": [100], "sampler_seed": 0, "pruner": "median"}
    entries = {"drpo": {"effort": base}, "draft": {"effort": {**base, "trials": 8, "sampler_seed": 1}}}
    assert unequal_effort(entries) == ["trials", "sampler_seed"]
    assert unequal_effort({"drpo": {"effort": base}, "dpo1": {"effort": dict(base)}}) == []


@pytest.mark.unit
def test_paired_interval_is_over_per_seed_differences():
    from harness.reporting.tuned_table import paired

    a, b = {0: 0.5, 1: 0.6, 2: 0.7, 9: 1.0}, {0: 0.4, 1: 0.5, 2: 0.7}
    mean, half = paired(a, b)  # differences 0.1, 0.1, 0.0 on the shared seeds
    assert math.isclose(mean, 0.2 / 3) and math.isclose(half, 4.302653 * (np.std([0.1, 0.1, 0.0], ddof=1) / 3 ** 0.5),
                                                        rel_tol=1e-5)


@pytest.mark.unit
def test_overoptimisation_summary_by_hand():
    from harness.reporting.overopt import Curve, summary

    def curve(method, dist, gold, proxy):
        n = len(dist)
        return Curve(method, np.arange(n) * 10, np.array(dist), np.array(gold), np.zeros(n), np.array(proxy),
                     np.zeros(n), proxy_scale=2.0, gold_scale=0.5, seeds=3)

    a = curve("a", [0.0, 0.5, 1.0, 2.0], [0.2, 0.4, 0.3, 0.1], [-4.0, -3.0, -2.0, -1.0])
    b = curve("b", [0.0, 0.2, 0.6], [0.2, 0.25, 0.35], [-4.0, -3.8, -3.6])
    rows = {r["method"]: r for r in summary([a, b])}
    assert rows["a"]["budget_distance"] == 0.6  # the largest distance both reach
    assert (rows["a"]["peak_gold"], rows["a"]["peak_update"], rows["a"]["peak_distance"]) == (0.4, 10, 0.5)
    assert math.isclose(rows["a"]["gold_at_budget"], 0.4 + 0.2 * (0.3 - 0.4))  # 0.6 is 1/5 of the way 0.5 -> 1.0
    assert math.isclose(rows["b"]["gold_at_budget"], 0.35) and rows["b"]["past_peak"] is False
    assert math.isclose(rows["a"]["gap_end"], 3.0 / 2.0 - (-0.1) / 0.5)  # proxy +1.5 std, gold -0.2 std


@pytest.mark.unit
def test_stored_runs_are_reused_only_for_the_same_method_version_and_code(tmp_path):
    from harness.config import run_key
    from harness.reporting.reproduce import Table2Config, plan
    from harness.store import Store, source_hash
    from methods import METHODS

    store = Store(tmp_path)
    cfg = Table2Config(profile="tiny", seeds=(0,), out=str(tmp_path))
    job = plan(SECTIONS["tiny"], cfg, store)[0]
    key = run_key(job.run_cfg, job.method_cfg)
    for run_id, code, version in (("old-code", "0123456789ab", METHODS.get("drpo").VERSION),
                                  ("old-method", source_hash(), -1)):
        store.start(run_id, {"key": key, "versions": {"method": version, "code": code}})
        store.finish(run_id, {})
    assert not plan(SECTIONS["tiny"], cfg, store)[0].done  # neither is reused
    store.start("same", {"key": key, "versions": {"method": METHODS.get("drpo").VERSION, "code": source_hash()}})
    store.finish("same", {})
    assert plan(SECTIONS["tiny"], cfg, store)[0].done == "same"
