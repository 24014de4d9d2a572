"""Noise-aware, equal-spend tuning (issue 18, item 4): per-seed records, metered spend and the spend budget, the
pruner reading the objective's quantity, TPE's start-up trials from the budget, and the tuning report (space
dimensions, spend, UNEQUAL, seed noise, flat learning rates), on hand-made trials and stored studies and on real
tiny studies."""

import math

import pytest

from harness.config import RunConfig
from harness.presets import PRESETS, Preset
from harness.studies.spend import flat_trials, seed_sd, spent, study_spend, unequal_spend

STUDY_PRESET = Preset("tests: tiny profile, 2 updates, K=4, one held-out prompt",
                      RunConfig(method="drpo", profile="tiny", reward="jpeg", evals=("jpeg",), k=4,
                                prompts_per_step=1, updates=2, eval_at=(0.0, 1.0), eval_seeds=1,
                                eval_prompt_limit=1, count_flops=False),
                      methods={"drpo": {"m": 2}})


def _trial(state="COMPLETE", lr=1e-3, runs=(), value=None, steps=None, **attrs):
    """A finished trial as a study stores it, with per-seed records ``runs``."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    values = [r["value"] for r in runs if r.get("status") == "complete"]
    if value is None and state == "COMPLETE":
        value = sum(values) / len(values)
    return optuna.trial.create_trial(
        state=TrialState[state], value=value if state == "COMPLETE" else None,
        params={"lr": lr}, distributions={"lr": FloatDistribution(1e-5, 1e-2, log=True)},
        intermediate_values=steps or {}, user_attrs={"seed_runs": list(runs), **attrs})


def _run(run, value, base=0.2, updates=10, status="complete", drift=0.01, seed=0):
    return {"seed": seed, "run": run, "updates": updates, "status": status, "value": value, "base": base,
            "drift": drift}


# ---------------------------------------------------------------------------------------------------
# Spend, seed noise and flat learning rates, by hand
# ---------------------------------------------------------------------------------------------------

@pytest.mark.unit
def test_spend_counts_each_run_once_and_estimates_studies_without_records():
    stopped = _trial("FAIL", runs=[_run("r1", 0.2, updates=3, status="started")])
    retry = _trial(runs=[_run("r1", 0.3, updates=5), _run("r2", 0.3, updates=5, seed=1)])  # resumed r1
    assert spent([stopped, retry]) == 10
    old = [_trial(value=0.3, steps={50: 0.2, 100: 0.3}), _trial("PRUNED", steps={12: 0.1}), _trial("FAIL")]
    estimate = study_spend(old, updates_per_run=96, n_seeds=1)
    assert (estimate.updates, estimate.full_runs, estimate.estimated) == (108, 108 / 96, True)
    measured = study_spend([stopped, retry], updates_per_run=5, n_seeds=2)
    assert (measured.updates, measured.full_runs, measured.estimated) == (10, 2.0, False)


@pytest.mark.unit
def test_unequal_spend_is_more_than_ten_percent():
    assert unequal_spend({"a": 1000, "b": 1100}) == ""
    assert unequal_spend({"a": 1000, "b": 1101}) == "spend 1000 to 1101 metered updates (+10%, more than 10%: a to b)"
    assert unequal_spend({"a": 0, "b": 5}).startswith("spend 0 to 5 metered updates (one spent nothing")
    assert unequal_spend({"a": 7}) == ""


@pytest.mark.unit
def test_seed_noise_is_pooled_within_trials_and_flat_trials_lie_within_two_standard_errors():
    trials = [_trial(lr=1e-5, runs=[_run("a", 0.20), _run("b", 0.20, seed=1)]),
              _trial(lr=1e-3, runs=[_run("c", 0.30), _run("d", 0.26, seed=1)]),
              _trial("PRUNED", lr=1e-2, runs=[_run("e", 0.10, status="pruned", drift=0.3)]),
              _trial(lr=1e-4, runs=[_run("f", 0.21)])]  # one seed: no within-trial spread
    sd, dof = seed_sd(trials)
    assert dof == 2 and math.isclose(sd, math.sqrt((0.02 ** 2 * 2) / 2))  # (0.30 - 0.28)^2 + (0.26 - 0.28)^2 over 2 df
    flat = flat_trials(trials, sd, n_seeds=2)
    band = 2 * sd / math.sqrt(2)
    assert math.isclose(flat.band, band) and flat.judged == 4
    assert [f["lr"] for f in flat.flat] == [1e-5, 1e-4]  # gains 0 and 0.01 < 0.028; 0.08 and -0.10 are not
    assert (flat.below, flat.below_count) == (1e-4, 2)
    exact = flat_trials(trials, math.nan, n_seeds=1)  # no measured noise: only a gain of exactly 0 is flat
    assert exact.band == 0 and [f["lr"] for f in exact.flat] == [1e-5] and exact.below == 1e-5


@pytest.mark.unit
def test_unequal_effort_flags_a_spend_difference_over_ten_percent():
    from harness.studies.tuned import unequal_effort

    base = {"trials": 48, "spend_budget": 1536, "seeds": [100, 101]}
    assert unequal_effort({"drpo": {"effort": {**base, "spend": 1536}}, "dpo1": {"effort": {**base, "spend": 1600}}}) == []
    unequal = unequal_effort({"drpo": {"effort": {**base, "spend": 1000}}, "pso": {"effort": {**base, "spend": 1452}}})
    assert unequal == ["spend 1000 to 1452 metered updates (+45%, more than 10%: drpo to pso)"]
    # A file written before spend was kept says nothing about it, rather than guess; the studies' own spend
    # (what table2 passes, read from the journals) stands in for it.
    assert unequal_effort({"drpo": {"effort": {**base, "spend": 1000}}, "pso": {"effort": base}}) == []
    assert unequal_effort({"drpo": {"effort": base}, "pso": {"effort": base}}, {"drpo": 960, "pso": 1452}) == [
        "spend 960 to 1452 metered updates (+51%, more than 10%: drpo to pso)"]


# ---------------------------------------------------------------------------------------------------
# The reporter: the objective's quantity, the last step, the budget
# ---------------------------------------------------------------------------------------------------

class _FakeTrial:
    def __init__(self, prune=False):
        self.steps, self.prune, self.user_attrs = {}, prune, {}

    def report(self, value, step):
        self.steps[step] = value

    def should_prune(self):
        return self.prune

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


class _FakeStore:
    def __init__(self):
        self.step = 0

    def manifest(self, run_id):
        return {"reward": "jpeg"}

    def rows(self, run_id, kind=None):
        return [{"kind": "eval", "step": self.step}]


@pytest.mark.unit
def test_reports_are_the_objective_with_update_0_and_the_last_step_is_never_pruned():
    import optuna

    from harness.studies.objective import _Record, _Reporter

    trial, store = _FakeTrial(prune=True), _FakeStore()
    record = _Record(trial)
    first = _Reporter(trial, 0, 2, store, "r0", "", set(), running_max=True, done=[], record=record)
    first(0.0, {"eval/jpeg/mean": 0.3, "eval/jpeg/base_mean": 0.3})  # update 0: the base, not reported
    assert trial.steps == {}
    store.step = 4
    with pytest.raises(optuna.TrialPruned, match="pruned at 25%"):
        first(0.5, {"eval/jpeg/mean": 0.2, "eval/jpeg/base_mean": 0.3})
    # The objective (the best evaluation point) includes update 0, so the report is 0.3, not 0.2.
    assert trial.steps == {25: 0.3}
    assert trial.user_attrs["seed_runs"] == [{"updates": 4, "value": 0.3, "base": 0.3, "drift": None,
                                              "status": "pruned"}]
    # Seed 1 of 2 after seed 0 scored 0.4: the report is the mean so far, and at the trial's last evaluation
    # the pruner is not asked (the trial ran its whole budget: it is complete).
    last = _Reporter(trial, 1, 2, store, "r1", "", set(), running_max=True, done=[0.4], record=record)
    last(0.0, {"eval/jpeg/mean": 0.1, "eval/jpeg/base_mean": 0.1})
    last(1.0, {"eval/jpeg/mean": 0.2, "eval/jpeg/base_mean": 0.1})
    assert trial.steps[100] == pytest.approx((0.4 + 0.2) / 2)


@pytest.mark.unit
def test_a_spent_budget_stops_the_trial_except_at_its_last_evaluation():
    import optuna

    from harness.studies.objective import _Reporter

    trial = _FakeTrial()
    stop = _Reporter(trial, 0, 2, _FakeStore(), "r", "", set(), over_budget=lambda: True)
    with pytest.raises(optuna.TrialPruned, match="spend budget is spent"):
        stop(1.0, {"eval/jpeg/mean": 0.2})
    assert trial.user_attrs["stopped"] == "spend budget"
    _Reporter(_FakeTrial(), 1, 2, _FakeStore(), "r", "", set(), over_budget=lambda: True)(1.0, {"eval/jpeg/mean": 0.2})


# ---------------------------------------------------------------------------------------------------
# Start-up trials and bad input
# ---------------------------------------------------------------------------------------------------

@pytest.mark.unit
def test_startup_trials_fit_the_budget():
    from harness.studies.config import StudyConfig, resolve_startup

    run = RunConfig(updates=96)
    assert resolve_startup(StudyConfig(name="x", trials=16), run) == 4
    assert resolve_startup(StudyConfig(name="x", trials=5), run) == 2
    # 1536 updates buy 8 full trials of 2 seeds x 96 updates: 2 start-up trials, whatever the trial cap.
    assert resolve_startup(StudyConfig(name="x", trials=48, spend=1536, seeds=(100, 101)), run) == 2
    assert resolve_startup(StudyConfig(name="x", trials=48, spend=96 * 40, seeds=(0,)), run) == 10
    assert resolve_startup(StudyConfig(name="x", trials=48, startup_trials=7), run) == 7
    with pytest.raises(ValueError, match=r"--spend 100 is less than one full trial \(2 seed\(s\) x 96 updates = 192\)"):
        resolve_startup(StudyConfig(name="x", spend=100, seeds=(0, 1)), run)
    with pytest.raises(ValueError, match="no update budget"):
        resolve_startup(StudyConfig(name="x", spend=100), RunConfig(updates=0, max_images=10))


@pytest.mark.unit
@pytest.mark.parametrize("argv, message", [
    (["study", "--name", "x", "--spend", "-1"], "--spend must be >= 0, got -1"),
    (["study", "--name", "x", "--startup-trials", "-2"], "--startup-trials must be >= 0, got -2"),
    (["study", "--name", "x", "--preset", "test-spend", "--spend", "3"], "--spend 3 is less than one full trial"),
    (["tune", "--profile", "test-spend", "--spend", "3"], "--spend 3 is less than one full trial"),
    (["tune", "--profile", "test-spend", "--spend", "-5"], "--spend must be >= 0, got -5"),
])
def test_bad_budgets_are_one_line_errors_and_write_nothing(tmp_path, capsys, monkeypatch, argv, message):
    from harness.cli import main
    from harness.sections import SECTIONS, Section

    monkeypatch.setitem(PRESETS, "test-spend", STUDY_PRESET)
    monkeypatch.setitem(SECTIONS, "test-spend", (Section("tiny", "test-spend", ("drpo",), tuned=True),))
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # checked before any storage or run


# ---------------------------------------------------------------------------------------------------
# The tuning report on hand-made stored studies
# ---------------------------------------------------------------------------------------------------

def _stored_study(out, name, trials, seeds=(100, 101), updates=10, spend=400):
    import optuna

    from harness.studies.config import journal_path
    from harness.studies.storage import open_storage

    journal_path(str(out), name).parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=open_storage("", str(out), name), study_name=name, direction="maximize")
    study.set_user_attr("setup", {"study": {"seeds": list(seeds), "spend": spend}, "run": {"updates": updates}})
    for t in trials:
        study.add_trial(t)


@pytest.mark.unit
def test_tuning_report_lists_dimensions_spend_unequal_noise_and_flat_learning_rates(tmp_path):
    from harness.reporting.tuning import report, spends

    a = [_trial(lr=1e-5, runs=[_run("a0", 0.20, drift=0.001), _run("a1", 0.20, seed=1, drift=0.002)], startup_trials=2),
         _trial(lr=1e-3, runs=[_run("a2", 0.30), _run("a3", 0.26, seed=1)], startup_trials=2),
         _trial("PRUNED", lr=1e-2, runs=[_run("a4", 0.10, updates=5, status="pruned")], startup_trials=2,
                steps={25: 0.1})]
    b = [_trial(lr=lr, runs=[_run(f"b{i}", 0.25), _run(f"b{i}s", 0.27, seed=1)], startup_trials=2)
         for i, lr in enumerate((1e-4, 2e-4, 3e-3))]
    b.append(_trial("PRUNED", lr=5e-3, runs=[_run("b9", 0.2, updates=5, status="stopped")], stopped="spend budget",
                    startup_trials=2))
    _stored_study(tmp_path, "tune-s-a", a)
    _stored_study(tmp_path, "tune-s-b", b)
    lines, figure = report("s", ["a", "b"], str(tmp_path), tmp_path / "plots")
    text = "\n".join(lines)
    assert "| a | 1: lr | 1 | 1 | 2 | 2 | 2 / 1 / 0 / 0 | 45 (4.5) of 400 | 0.280 |" in lines
    assert "| b | 1: lr | 1 | 1 | 2 | 2 | 3 / 0 / 1 / 0 | 65 (6.5) of 400 | 0.260 |" in lines
    assert "**UNEQUAL spend**: spend 45 to 65 metered updates (+44%, more than 10%: a to b)." in text
    assert "a SD 0.020 (2 df), spread 0.040: not met" in text
    assert ("a: 1 of 3 flat (|gain| <= 0.028), every trial with lr <= 1e-05 (1); lr 1e-05; their pixel drift <= 0.0020"
            in text)
    assert all(p.stat().st_size > 0 for p in figure)
    assert spends("s", ["a", "b", "never-tuned"], str(tmp_path)) == {"a": 45, "b": 65}


@pytest.mark.unit
def test_the_tune_commands_report_file_holds_every_sections_report_and_figure(tmp_path):
    from harness.reporting.tuning import report, write_report

    _stored_study(tmp_path, "tune-s-a", [_trial(lr=1e-3, runs=[_run("a0", 0.3), _run("a1", 0.26, seed=1)])])
    _stored_study(tmp_path, "tune-t-a", [_trial(lr=1e-4, runs=[_run("c0", 0.2), _run("c1", 0.22, seed=1)])])
    path = write_report({"s": ["a"], "t": ["a"]}, str(tmp_path), "tuning-x", ["# intro"])
    text = path.read_text()
    assert path.name == "tuning-x.md" and text.startswith("# intro\n\n## s\n")
    for section in ("s", "t"):
        assert "\n".join(report(section, ["a"], str(tmp_path), tmp_path / "plots")[0]) in text
        assert f"](plots/{section}__tuning_best_so_far.png)" in text
        assert (tmp_path / "plots" / f"{section}__tuning_best_so_far.png").stat().st_size > 0


@pytest.mark.unit
def test_tuning_report_on_a_study_made_before_the_records_says_what_it_estimates(tmp_path):
    from harness.reporting.tuning import report

    old = [_trial(value=0.3, steps={50: 0.2, 100: 0.3}), _trial("PRUNED", steps={100: 0.2}), _trial("PRUNED", steps={12: 0.1})]
    _stored_study(tmp_path, "tune-s-old", old, seeds=(100,), updates=96, spend=0)
    text = "\n".join(report("s", ["old"], str(tmp_path), tmp_path / "plots")[0])
    assert "| old | 1: lr | 1 | 1 | 1 | 10 (default) | 1 / 2 / 0 / 0 | 204~ (2.1) | 0.300 |" in text
    assert "~: estimated from the trials' last intermediate report" in text
    assert "old not measured (one seed per trial)" in text and "old: not recorded" in text


# ---------------------------------------------------------------------------------------------------
# Real tiny studies
# ---------------------------------------------------------------------------------------------------

@pytest.fixture
def study_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "test-spend", STUDY_PRESET)
    return "test-spend"


def _config(out, name, **changes):
    from harness.studies.config import StudyConfig

    return StudyConfig(**{"name": name, "preset": "test-spend", "trials": 10, "seeds": (0, 1), "space": ("m=1:2",),
                          "out": str(out), **changes})


@pytest.mark.slow
def test_a_spend_budget_ends_the_study_and_every_seed_is_recorded(study_preset, tmp_path):
    """10 updates at 2 seeds x 2 updates per trial: two full trials, then a third is stopped when its first seed
    has spent the rest; the same command again runs nothing."""
    from optuna.trial import TrialState

    from harness.store import Store, read_json
    from harness.studies.study import load_study, study

    cfg = _config(tmp_path, "budget", spend=10)
    lines = []
    study(cfg, log=lines.append)
    trials = load_study("budget", cfg.out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert spent(trials) == 10 and trials[2].user_attrs["stopped"] == "spend budget"
    store = Store(cfg.out)
    for t in trials[:2]:
        runs = t.user_attrs["seed_runs"]
        assert [r["seed"] for r in runs] == [0, 1] and all(r["status"] == "complete" for r in runs)
        for r in runs:  # each seed's value is the number in its stored run
            assert r["value"] == pytest.approx(read_json(store.run_dir(r["run"]) / "summary.json")["eval/jpeg/mean"])
        assert t.value == pytest.approx(sum(r["value"] for r in runs) / 2)
        assert t.intermediate_values[100] == pytest.approx(t.value)  # the pruner read the objective's quantity
        assert t.user_attrs["startup_trials"] == 2
    assert [r["status"] for r in trials[2].user_attrs["seed_runs"]] == ["stopped"]
    assert "10 updates metered of a 10-update budget" in lines[-1]
    again = []
    study(cfg, log=again.append)
    assert "spent 10 of 10 updates (the budget is spent)" in again[0] and len(load_study("budget", cfg.out).trials) == 3


@pytest.mark.slow
def test_a_killed_two_seed_trial_resumes_without_rerunning_its_finished_seed(tmp_path, monkeypatch):
    from optuna.trial import TrialState

    import harness.run as run_module
    from harness.store import Store
    from harness.studies.study import study

    monkeypatch.setitem(PRESETS, "test-spend", Preset("tests", STUDY_PRESET.run.replace(updates=3, checkpoint_every=1),
                                                      methods=STUDY_PRESET.methods))
    cfg = _config(tmp_path, "pickup", trials=1)
    original = run_module.update

    def stopped(parts, step, spend):
        if parts.cfg.seed == 1 and step == 2:
            raise KeyboardInterrupt
        return original(parts, step, spend)

    monkeypatch.setattr(run_module, "update", stopped)
    with pytest.raises(KeyboardInterrupt):
        study(cfg, log=lambda s: None)
    monkeypatch.setattr(run_module, "update", original)
    store = Store(tmp_path)
    first = "study-pickup__t0000__s0"
    trained = len(store.rows(first, kind="train"))
    trials = study(cfg, log=lambda s: None).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    runs = trials[1].user_attrs["seed_runs"]
    assert [(r["seed"], r["run"], r["reused"]) for r in runs] == [(0, first, True), (1, "study-pickup__t0000__s1", False)]
    assert len(store.rows(first, kind="train")) == trained == 3  # seed 0 was not trained again
    assert store.manifest("study-pickup__t0000__s1")["resumed_from"] == 2
    assert spent(trials) == 6


@pytest.mark.slow
def test_tiny_tuning_records_spend_seeds_and_startup_in_the_tuned_file_and_report(tmp_path, monkeypatch):
    import json

    from harness.reporting.tuning import report
    from harness.sections import SECTIONS, Section
    from harness.studies.tune import TuneConfig, tune

    # K=16 leaves room for every M the methods' spaces search; evaluations at 0, 1 and 2 updates.
    monkeypatch.setitem(PRESETS, "test-spend", Preset("tests", STUDY_PRESET.run.replace(
        k=16, eval_at=(0.0, 0.5, 1.0), select_metric="jpeg"), methods={"drpo": {"m": 2, "features": "latent"},
                                                                       "dpo1": {"m": 2}}))
    monkeypatch.setitem(SECTIONS, "test-spend", (Section("tiny", "test-spend", ("drpo", "dpo1"), tuned=True),))
    cfg = TuneConfig(profile="test-spend", spend=8, n_workers=1, out=str(tmp_path), tuned_file=str(tmp_path / "t.json"))
    entries = json.loads(tune(cfg, log=lambda s: None).read_text())["sections"]["test-spend"]
    for entry in entries.values():
        effort = entry["effort"]
        assert (effort["spend_budget"], effort["seeds"], effort["startup_trials"]) == (8, [100, 101], 2)
        assert 8 <= effort["spend"] <= 8 + 2 and effort["spend_estimated"] is False
    text = "\n".join(report("test-spend", ["drpo", "dpo1"], str(tmp_path), tmp_path / "plots")[0])
    assert "Spend is equal within 10%" in text and "drpo SD " in text and "(2 df)" in text


@pytest.mark.unit
def test_the_tuning_objective_is_the_verifier_of_the_sections_edition():
    from harness.studies.config import resolve
    from harness.studies.tune import TuneConfig, objective, study_config

    assert objective(TuneConfig(profile="shapes"), "shapes-pref") == "shapes-geneval"
    assert objective(TuneConfig(profile="shapes2"), "shapes2-pref") == "shapes2-geneval"
    assert objective(TuneConfig(profile="shapes2", objective="shapes2-pref"), "shapes2-pref") == "shapes2-pref"
    cfg = TuneConfig(profile="shapes2")  # edition 2's studies resolve (shapes-geneval is not evaluated there)
    assert resolve(study_config(cfg, "shapes2-geneval", "drpo")).startup_trials == 2


@pytest.mark.unit
def test_the_tuned_table_marks_a_section_whose_studies_spent_unequally(tmp_path):
    """A tuned section written by table2 from hand-made runs and studies: the tuned file keeps no spend (it was
    written before spend was kept), the studies' own spend (45 and 65 updates) marks the section UNEQUAL in the
    table and in its tuning report, which lists each study's space dimensions."""
    import json

    from harness.reporting.table2 import write_table
    from harness.sections import Section
    from harness.store import Store
    from tests.test_reporting import _fake_run

    ids = []
    for seed, (a, b) in enumerate(((0.30, 0.20), (0.32, 0.25), (0.31, 0.21))):
        ids.append(_fake_run(tmp_path, f"drpo-{seed}", "drpo", seed, "shapes-pref", a, a - 0.01, 0.2, 0.6))
        ids.append(_fake_run(tmp_path, f"dpo1-{seed}", "dpo1", seed, "shapes-pref", b, b + 0.02, 0.2, 0.4))
    runs = {"drpo": [_run("d0", 0.30), _run("d1", 0.26, seed=1), _run("d2", 0.1, updates=5, status="pruned")],
            "dpo1": [_run("p0", 0.25), _run("p1", 0.27, seed=1), _run("p2", 0.25, updates=25)]}
    for method, records in runs.items():
        _stored_study(tmp_path / "tuning", f"tune-sec-{method}", [_trial(runs=records[:2]), _trial(
            "PRUNED", runs=records[2:], steps={25: 0.1})])
    effort = {"trials": 2, "seeds": [100, 101], "updates": 10}
    entry = {"trial": 0, "value": 0.28, "config": {}, "effort": effort, "studies_root": str(tmp_path / "tuning")}
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"profile": "shapes", "sections": {"sec": {"drpo": entry, "dpo1": entry}}}))
    text = write_table([(Section("tuned sec", "sec", ("drpo", "dpo1"), tuned=True), ids)], Store(tmp_path), tmp_path,
                       elapsed=0.0, tuned_path=tuned).read_text()
    assert ("**UNEQUAL tuning effort** across this section's studies: spend 25 to 45 metered updates (+80%, more "
            "than 10%: drpo to dpo1) differ.") in text
    assert "**UNEQUAL spend**: spend 25 to 45 metered updates" in text and "| drpo | 1: lr | 1 | 1 | 2 |" in text
