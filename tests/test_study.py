"""Optuna studies over ``run()``: parallel workers on one journal, resume after a killed worker, space
overrides, setup and storage errors, failing trials, and the report, on the tiny profile at a toy budget."""

import json
from collections import Counter

import pytest

from harness.config import RunConfig
from harness.presets import PRESETS, Preset
from harness.store import Store, read_json
from harness.studies.config import StudyConfig, resolve
from harness.studies.objective import _Reporter
from harness.studies.space import parse_space
from harness.studies.storage import create_or_load, open_storage
from harness.studies.study import load_study, study

pytestmark = pytest.mark.slow

PRESET = "test-study"
TINY = Preset("tests: tiny profile, 2 updates, K=4, one held-out prompt",
              RunConfig(method="drpo", profile="tiny", reward="jpeg", evals=("jpeg",), k=4,
                        prompts_per_step=1, updates=2, eval_at=(0.0, 1.0), eval_seeds=1, eval_prompt_limit=1,
                        count_flops=False),
              methods={"drpo": {"m": 2}})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: toy models on a shared machine run several times faster than with two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_preset():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PRESETS, PRESET, TINY)
        yield PRESET


def config(out, name, **changes) -> StudyConfig:
    """K=4 allows M <= 2, so every study here narrows the method's M range."""
    return StudyConfig(**{"name": name, "preset": PRESET, "trials": 3, "seeds": (0,), "space": ("m=1:2",),
                          "out": str(out), **changes})


@pytest.fixture(scope="module")
def parallel(tiny_preset, tmp_path_factory):
    """A 4-trial study run by 2 worker processes on one journal file (shared by the report test)."""
    out = tmp_path_factory.mktemp("parallel")
    cfg = config(out, "par", trials=4, n_workers=2)
    study(cfg, log=lambda s: None)
    return cfg


def test_two_workers_complete_exactly_the_requested_trials(parallel):
    from optuna.trial import TrialState

    from harness.reporting.tables import headline

    trials = load_study("par", parallel.out).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # The workers split the trials 2 + 2 and each trial ran its one seed exactly once.
    assert sorted(Counter(t.user_attrs["worker"] for t in trials).values()) == [2, 2]
    store = Store(parallel.out)
    runs = [r for r in store.run_ids(status=None) if store.manifest(r)["run"]["tag"] == "study:par"]
    assert sorted(runs) == [f"study-par__t{n:04d}__s0" for n in range(4)]
    for t in trials:  # the value Optuna holds is the number in the store
        summary = read_json(store.run_dir(t.user_attrs["run_ids"][0]) / "summary.json")
        assert t.value == pytest.approx(headline(summary, "jpeg"))
        assert list(t.intermediate_values) == [100]
    # Running the same command again finds the study complete and runs nothing.
    study(parallel, log=lambda s: None)
    assert len(load_study("par", parallel.out).get_trials()) == 4


def test_killed_worker_is_resumed_and_completed_trials_are_kept(tiny_preset, tmp_path):
    from optuna.trial import TrialState

    study(config(tmp_path, "resume", trials=2), log=lambda s: None)
    before = {t.number: t.value for t in load_study("resume", str(tmp_path)).get_trials()}
    # A worker killed mid-trial leaves it RUNNING with the parameters it had drawn.
    stale = load_study("resume", str(tmp_path)).ask()
    stale.suggest_int("m", 1, 2)
    store = Store(tmp_path)
    store.start("study-resume__t0002__s0", {})  # its run, cut short
    store.release("study-resume__t0002__s0")  # the kernel drops a dead worker's lock
    stale.set_user_attr("run_ids", ["study-resume__t0002__s0"])
    lines = []
    resumed = study(config(tmp_path, "resume", trials=3), log=lines.append)
    assert f"re-enqueued trial(s) [{stale.number}]" in lines[0]
    trials = resumed.get_trials()
    killed = trials[stale.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["requeued"]
    assert "stopped" in killed.user_attrs["error"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == stale.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params["m"] == stale.params["m"]
    assert Store(tmp_path).manifest("study-resume__t0002__s0")["status"] == "interrupted"
    assert {t.number: t.value for t in trials if t.number in before} == before
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


def test_failing_trial_is_recorded_and_the_study_continues(tiny_preset, tmp_path):
    from optuna.trial import TrialState

    cfg = config(tmp_path, "fails", space=("m=1:3",))
    created = create_or_load(cfg, resolve(cfg), open_storage("", cfg.out, cfg.name))
    for m in (3, 1, 2):  # M=3 needs K >= 6: the first trial raises
        created.enqueue_trial({"m": m})
    study(cfg, log=lambda s: None)
    trials = load_study("fails", cfg.out).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    error = trials[0].user_attrs["error"]
    assert error.startswith("ValueError") and "K >= 2M" in error


@pytest.mark.parametrize("entry,match", [
    ("lrr=1e-5:1e-3:log", "unknown search-space parameter 'lrr'; did you mean 'lr'.*valid"),
    ("m=", "empty range"),
    ("lr=1e-3:1e-3", "empty range"),
    ("m=6:2", "inverted range: low 6 > high 2"),
    ("lr=0:1e-3:log", "bad log range"),
    ("kernel=laplacian,gauss", "unknown kernel 'gauss'; valid values: laplacian, rbf, cosine"),
    ("kernel=1:2", "categorical"),
    ("m=2.5:4", "not an integer"),
    ("lr", "must be NAME=LOW:HIGH"),
])
def test_space_override_errors(entry, match):
    from methods import drpo

    with pytest.raises(ValueError, match=match):
        parse_space([entry], drpo)


def test_space_overrides_replace_the_method_distributions():
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from harness.studies.space import SpaceTrial
    from methods import drpo

    overrides = parse_space(["lr=1e-5:1e-3:log", "kernel=laplacian,rbf", "m=2:6", "lam=0.5", "k=8:24"], drpo)
    trial = optuna.create_study().ask()
    params = drpo.space(SpaceTrial(trial, overrides))
    assert trial.distributions["lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert trial.distributions["kernel"] == CategoricalDistribution(["laplacian", "rbf"])
    assert trial.distributions["m"] == IntDistribution(2, 6)
    assert params["lam"] == 0.5 and trial.distributions["radius_scale"] == FloatDistribution(0.25, 4.0, log=True)


def test_a_config_field_the_space_leaves_out_is_searched_as_an_extra_parameter(tiny_preset, tmp_path):
    """DrPO's ``space`` has no ``reference``; ``--space reference=...`` searches it without changing the space
    (tuning's), and each trial's run is trained with the drawn value."""
    from methods import drpo

    extra, searched = parse_space(["reference=drift,none", "kernel=rbf,cosine"], drpo)
    assert extra.extra and extra.choices == ("drift", "none") and not searched.extra
    with pytest.raises(ValueError, match="unknown reference 'perceptul'; valid values: drift, perceptual, none"):
        parse_space(["reference=perceptul"], drpo)
    cfg = config(tmp_path, "extra", trials=2, space=("m=1:2", "reference=drift,none"))
    created = create_or_load(cfg, resolve(cfg), open_storage("", cfg.out, cfg.name))
    for reference in ("none", "drift"):
        created.enqueue_trial({"reference": reference})
    trials = study(cfg, log=lambda s: None).get_trials()
    assert [t.params["reference"] for t in trials] == ["none", "drift"]
    store = Store(tmp_path)
    for t in trials:
        assert t.user_attrs["method_config"]["reference"] == t.params["reference"]
        assert store.manifest(t.user_attrs["run_ids"][0])["method_config"]["reference"] == t.params["reference"]


def test_cli_reports_bad_overrides_in_one_line(tmp_path, capsys):
    from harness.cli import main

    assert main(["study", "--name", "x", "--space", "m=6:2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("driftbench: error: space entry 'm=6:2' is an inverted range") and "\n" not in err
    assert not (tmp_path / "studies").exists()  # validation happens before the storage is touched
    assert main(["study", "--name", "x", "--k", "8", "--space", "k=8:24", "--out", str(tmp_path)]) == 2


def test_an_objective_validation_does_not_score_is_refused_before_training(tmp_path, capsys):
    """shapes2 presets score only the verifier on validation (``eval_split_rewards``): the proxy as an objective
    would train every trial and then find nothing to read."""
    from harness.cli import main

    assert main(["study", "--name", "x", "--preset", "shapes2-pref", "--objective", "shapes2-pref",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "objective 'shapes2-pref' is not scored on these runs' validation split; valid objectives: " \
        "shapes2-geneval" in err and "\n" not in err
    assert not (tmp_path / "studies").exists()


def test_existing_study_with_a_different_space_raises(tiny_preset, tmp_path):
    cfg = config(tmp_path, "same")
    create_or_load(cfg, resolve(cfg), open_storage("", cfg.out, cfg.name))
    with pytest.raises(ValueError, match=r"already exists .* different search space .*stored \['m=1:2'\]"):
        study(config(tmp_path, "same", space=("m=1:2", "lr=1e-4:1e-2:log")))
    with pytest.raises(ValueError, match="different search space .*multi_objective: stored False, now True"):
        study(config(tmp_path, "same", multi_objective=True))


@pytest.mark.parametrize("url", ["nosuchdb://nowhere/db", "sqlite:////no/such/dir/study.db",
                                 "postgresql+psycopg://user:secret@127.0.0.1:1/db"])
def test_bad_storage_url_raises(tiny_preset, tmp_path, url):
    with pytest.raises(ValueError, match="cannot open storage") as info:
        study(config(tmp_path, "db", storage=url))
    assert "secret" not in str(info.value) and "\n" not in str(info.value)


def test_a_database_storage_is_opened_once_per_process(tmp_path):
    """Reopening a database study reuses its storage (and so its connection pool) instead of leaving one
    pool per call for the garbage collector; another results root or heartbeat gets its own."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = open_storage(url, str(tmp_path), "x")
    assert open_storage(url, str(tmp_path), "y") is first
    assert open_storage(url, str(tmp_path / "other"), "x") is not first
    assert open_storage(url, str(tmp_path), "x", heartbeat=5) is not first


@pytest.mark.parametrize("url,module,package,hint", [
    ("mysql+mysqldb://u:secret@127.0.0.1/db", "MySQLdb", "mysqlclient", r"driftbench\[mysql\]' and use a URL mysql\+pymysql://"),
    ("postgresql+psycopg2://u:secret@127.0.0.1/db", "psycopg2", "psycopg2-binary",
     r"driftbench\[postgres\]' and use a URL postgresql\+psycopg://"),
])
def test_missing_database_driver_is_named_with_its_extra(tmp_path, url, module, package, hint):
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(ValueError, match=f"needs the database driver '{module}' \\(pip package {package}\\).*{hint}") as info:
        open_storage(url, str(tmp_path), "x")
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("flags,match", [
    (["--heartbeat", "0"], "--heartbeat must be >= 1, got 0"),
    (["--heartbeat", "-5"], "--heartbeat must be >= 1, got -5"),
    (["--heartbeat", "10", "--grace", "5"], r"grace must be >= the heartbeat interval \(10 s\)"),
])
def test_bad_heartbeat_options_are_one_line_errors(tmp_path, capsys, flags, match):
    import re

    from harness.cli import main

    assert main(["study", "--name", "hb", "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(match, err) and "\n" not in err
    assert not (tmp_path / "studies").exists()


def test_reports_land_at_fixed_fractions_of_the_trial_spend():
    import optuna

    class FakeTrial:
        def __init__(self, prune_at=None):
            self.steps, self.prune_at = {}, prune_at

        def report(self, value, step):
            self.steps[step] = value

        def should_prune(self):
            return self.prune_at in self.steps

    class FakeStore:
        def manifest(self, run_id):
            return {"reward": "jpeg"}

    trial, reported = FakeTrial(), set()
    for i in range(3):
        reporter = _Reporter(trial, i, 3, FakeStore(), "r", "", reported)
        for fraction in (0.0, 0.5, 1.0):
            reporter(fraction, {"eval/jpeg/mean": float(i) + fraction})
    assert trial.steps == {17: 0.5, 33: 1.0, 50: 1.5, 67: 2.0, 83: 2.5, 100: 3.0}
    with pytest.raises(optuna.TrialPruned):
        _Reporter(FakeTrial(prune_at=50), 0, 2, FakeStore(), "r", "", set())(1.0, {"eval/jpeg/mean": 1.0})


def test_study_report_writes_importances_slices_best_and_robustness(parallel):
    import pandas as pd

    from harness.studies.report import StudyReportConfig, report

    out = report(StudyReportConfig(name="par", out=parallel.out, fresh_seeds=1), log=lambda s: None)
    for stem in ("importances", "slices"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.pdf").stat().st_size > 0
    importances = pd.read_csv(out / "importances.csv")
    the_study = load_study("par", parallel.out)
    # Every searched parameter that took two or more values over the 4 trials (M is drawn from 1:2, so all four
    # trials may draw one M: a parameter held at one value has nothing to rank and is left out).
    varied = {p for p in ("features", "radius_scale", "kernel", "m", "lam", "strict_ties", "lr")
              if len({str(t.params[p]) for t in the_study.trials}) > 1}
    assert {"radius_scale", "lam", "lr"} <= varied and set(importances["param"]) == varied  # floats always vary
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] == the_study.best_trial.number and best["value"] == the_study.best_value
    table = pd.read_csv(out / "robustness.csv")
    assert list(zip(table["condition"], table["split_seed"], table["configuration"])) == [
        ("fresh seeds", 0, "default"), ("fresh seeds", 0, "best"),
        ("resampled prompts", 1, "default"), ("resampled prompts", 1, "best")]
    assert "Does the gain survive" in (out / "robustness.md").read_text()
    store = Store(parallel.out)
    robust = [r for r in store.run_ids() if store.manifest(r)["run"]["tag"] == "study:par:robustness"]
    assert len(robust) == 4
    assert {store.manifest(r)["run"]["seed"] for r in robust} == {1}  # a seed the study did not use
    # A second report reuses the stored re-runs.
    report(StudyReportConfig(name="par", out=parallel.out, fresh_seeds=1), log=lambda s: None)
    assert len(store.run_ids(status=None)) == 4 + 4


def test_a_retried_trial_resumes_the_stopped_trials_run_from_its_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C (or kill -9) mid-trial, then the same command: the retry picks the run up from its checkpoint."""
    from optuna.trial import TrialState

    import harness.run as run_module

    monkeypatch.setitem(PRESETS, "test-pickup", Preset("tests", TINY.run.replace(updates=3, checkpoint_every=1),
                                                       methods=TINY.methods))
    cfg = config(tmp_path, "pickup", preset="test-pickup", trials=1)
    original = run_module.update

    def stopped(parts, step, spend):
        if step == 2:
            raise KeyboardInterrupt
        return original(parts, step, spend)

    monkeypatch.setattr(run_module, "update", stopped)
    with pytest.raises(KeyboardInterrupt):
        study(cfg, log=lambda s: None)
    monkeypatch.setattr(run_module, "update", original)
    store = Store(tmp_path)
    assert store.status("study-pickup__t0000__s0") == "interrupted"
    trials = study(cfg, log=lambda s: None).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["run_ids"] == ["study-pickup__t0000__s0"]
    assert store.run_ids(status=None) == ["study-pickup__t0000__s0"]  # no duplicate run
    manifest = store.manifest("study-pickup__t0000__s0")
    assert manifest["status"] == "complete" and manifest["resumed_from"] == 2
