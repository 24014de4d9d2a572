"""Studies on a real PostgreSQL server, as on several machines: simultaneous starts, two identical commands,
a worker killed with kill -9 mid-trial, and the report.

They need a server: set DRIFTBENCH_TEST_PG_URL=postgresql+psycopg://USER:PASSWORD@127.0.0.1:5432/DB (``.ci/run``
installs and starts one). Without it they skip and say why; with DRIFTBENCH_TEST_PG_REQUIRED=1 (CI) an
unreachable server fails them instead. Each test module works in a fresh database when the role may create
one, so Optuna's tables are created here, by racing workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path

import pytest

from harness.store import Store
from harness.studies.config import resolve
from harness.studies.storage import counted, create_or_load, open_storage
from harness.studies.study import load_study
from tests.test_study import PRESET, TINY, config

pytestmark = pytest.mark.slow
URL_ENV, REQUIRED_ENV = "DRIFTBENCH_TEST_PG_URL", "DRIFTBENCH_TEST_PG_REQUIRED"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def toy_preset():
    from harness.presets import PRESETS

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PRESETS, PRESET, TINY)
        yield PRESET


def _unavailable(reason: str):
    if os.environ.get(REQUIRED_ENV):
        pytest.fail(f"{reason} ({REQUIRED_ENV} is set)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def pg_url():
    """A database URL on the test server: a fresh database when the role may create one."""
    url = os.environ.get(URL_ENV)
    if not url:
        _unavailable(f"no PostgreSQL server: set {URL_ENV}=postgresql+psycopg://USER:PASSWORD@127.0.0.1:5432/DB "
                     "(.ci/run starts one)")
    try:
        import psycopg
        from sqlalchemy.engine import make_url
    except ImportError:
        _unavailable("psycopg is not installed: pip install 'driftbench[postgres]'")
    admin = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            name = f"driftbench_{uuid.uuid4().hex[:10]}"
            try:
                conn.execute(f'CREATE DATABASE "{name}"')
            except psycopg.Error:  # no CREATEDB privilege: share the given database (names are unique)
                yield url
                return
    except psycopg.OperationalError as exc:
        _unavailable(f"PostgreSQL at {make_url(url).render_as_string()} is not reachable: "
                     f"{str(exc).strip().splitlines()[0]}")
    yield make_url(url).set(database=name).render_as_string(hide_password=False)
    with suppress(psycopg.Error), psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def command(out, name: str, url: str, trials: int, *extra: str) -> list[str]:
    """One study command on the toy preset (see tests/study_cli.py); identical for every process."""
    return [sys.executable, "-m", "tests.study_cli", "study", "--name", name, "--preset", "test-study",
            "--trials", str(trials), "--seeds", "0", "--space", "m=1:2", "--storage", url, "--out", str(out),
            *extra]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait(proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    """A generous limit: on a loaded 2-core machine the first trial's imports alone took 140 s."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"study process timed out:\n{log.read_text()[-2000:]}")
    assert proc.returncode == 0, log.read_text()[-2000:]


def test_twenty_simultaneous_starts_all_succeed(toy_preset, pg_url, tmp_path):
    """Twenty commands starting at once on an empty database: the tables and the study are created once,
    and every start loads it with its fingerprint (none mistakes it for a foreign study)."""
    cfg = config(tmp_path, unique("race"), storage=pg_url)
    setup = resolve(cfg)
    errors, barrier = [], threading.Barrier(20)

    def one_start():
        try:
            barrier.wait()
            create_or_load(cfg, setup, open_storage(cfg.storage, cfg.out, cfg.name))
        except Exception as exc:  # noqa: BLE001 - collected and shown below
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one_start) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    study = load_study(cfg.name, cfg.out, pg_url)
    assert study.user_attrs["fingerprint"] == setup.fingerprint
    assert study.metric_names == ["held-out jpeg"]


def test_two_identical_commands_never_share_a_parameter_set(pg_url, tmp_path):
    name = unique("twins")
    logs = [tmp_path / f"cmd{i}.log" for i in range(2)]
    procs = [start(command(tmp_path, name, pg_url, 4), log) for log in logs]
    for proc, log in zip(procs, logs):
        wait(proc, log)
    trials = load_study(name, str(tmp_path), pg_url).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(counted(trials)) == len(complete) == 4  # exactly the requested total, all complete
    # A trial beyond the total (both commands asked at once) is marked surplus and never run.
    assert all(t.user_attrs.get("surplus") for t in trials if t not in counted(trials))
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) == 2  # both commands ran trials...
    seeds = {t.user_attrs["worker"]: t.user_attrs["sampler_seed"] for t in complete}
    assert len(set(seeds.values())) == 2  # ...from different TPE seeds although their commands are identical
    runs = [r for t in complete for r in t.user_attrs["run_ids"]]
    assert len(set(runs)) == 4 and all(Store(tmp_path).manifest(r)["status"] == "complete" for r in runs)


@pytest.fixture(scope="module")
def killed(pg_url, tmp_path_factory):
    """A 3-trial study whose worker is killed with kill -9 mid-trial, then rerun by the same command with a
    1 s heartbeat and a 2 s grace; returns (out, name, the killed trial, values completed before the kill)."""
    out, name = tmp_path_factory.mktemp("killed"), unique("killed")
    cmd = command(out, name, pg_url, 3, "--heartbeat", "1", "--grace", "2")
    first = start(cmd, out / "first.log")
    store, deadline = Store(out), time.monotonic() + 900  # generous: see wait()
    while True:
        assert first.poll() is None, "the study ended before it could be killed:\n" + (out / "first.log").read_text()
        assert time.monotonic() < deadline, "no trial was running after a complete one"
        with suppress(ValueError):  # the study may not exist yet
            trials = load_study(name, str(out), pg_url).get_trials()
            done = {t.number: t.value for t in trials if t.state.name == "COMPLETE"}
            running = [t for t in trials if t.state.name == "RUNNING" and t.user_attrs.get("run_ids")
                       and store.run_dir(t.user_attrs["run_ids"][0]).joinpath("manifest.json").is_file()]
            if done and running:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
                break
        time.sleep(0.1)
    victim = load_study(name, str(out), pg_url).trials[running[0].number]
    assert victim.state.name == "RUNNING"  # killed mid-trial: nobody recorded its end
    time.sleep(3)  # past the grace period
    second = start(cmd, out / "second.log")
    wait(second, out / "second.log")
    return out, name, victim, done


def test_killed_worker_is_failed_by_heartbeat_and_retried(killed, pg_url):
    out, name, victim, done = killed
    study = load_study(name, str(out), pg_url)
    trials = study.get_trials()
    failed = trials[victim.number]
    assert failed.state.name == "FAIL"
    assert "stopped beating" in study.user_attrs[f"stale_trial:{victim.number}"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == victim.params
    assert retry[0].system_attrs["failed_trial"] == victim.number
    assert "error" not in retry[0].user_attrs  # the retry starts with a clean record
    # Nothing completed is lost or run twice, and the study holds exactly its 3 trials.
    assert {t.number: t.value for t in trials if t.number in done} == done
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(counted(trials)) == 3
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3
    store = Store(out)
    # The retry picked up the killed trial's run (from its checkpoint, or from the start when it had none)
    # instead of starting a second one; the run's history keeps how it was stopped.
    assert retry[0].user_attrs["run_ids"] == victim.user_attrs["run_ids"]
    manifest = store.manifest(victim.user_attrs["run_ids"][0])
    assert manifest["status"] == "complete" and "resumed_from" in manifest
    assert [h["status"] for h in manifest["history"]] == ["interrupted"]
    assert "heartbeat" in manifest["history"][0]["error"]
    assert all(store.manifest(r)["status"] == "complete" for t in complete for r in t.user_attrs["run_ids"])


def test_study_report_reads_the_database_study(killed, pg_url):
    import pandas as pd

    from harness.cli import main

    out, name, victim, _ = killed
    assert main(["study-report", name, "--storage", pg_url, "--out", str(out), "--no-robustness"]) == 0
    report = out / "studies" / name
    table = pd.read_csv(report / "trials.csv").set_index("number")
    assert (table["state"] == "complete").sum() == 3
    assert "failed by heartbeat" in table.loc[victim.number, "error"]
    assert (report / "importances.png").stat().st_size > 0 and (report / "best.json").is_file()


def test_database_errors_are_one_line_with_the_password_hidden(pg_url, tmp_path):
    from sqlalchemy.engine import make_url

    bad = make_url(pg_url).set(password="not-the-password").render_as_string(hide_password=False)
    with pytest.raises(ValueError, match="cannot open storage .*password authentication failed") as info:
        open_storage(bad, str(tmp_path), "x")
    assert "not-the-password" not in str(info.value) and "\n" not in str(info.value)


def test_reopening_a_study_holds_no_more_connections(toy_preset, pg_url, tmp_path):
    """A process that opens the same study over and over (a report polling it) holds a bounded number of
    server connections: before the storages were shared, each dropped one kept its pool until garbage
    collection, and the polling fixture above exhausted the server's 100 slots in CI."""
    import psycopg
    from sqlalchemy.engine import make_url

    cfg = config(tmp_path, unique("reopen"), storage=pg_url)
    create_or_load(cfg, resolve(cfg), open_storage(cfg.storage, cfg.out, cfg.name))
    admin = make_url(pg_url).set(drivername="postgresql")

    def connections() -> int:
        with psycopg.connect(admin.render_as_string(hide_password=False)) as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            return conn.execute(query, (admin.database,)).fetchone()[0]

    before = connections()
    for _ in range(30):
        load_study(cfg.name, cfg.out, pg_url).get_trials()
    assert connections() - before <= 2
