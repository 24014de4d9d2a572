"""Where a study lives: journal files and database URLs, creation, resume and stale trials.

A journal file (the default, ``<out>/studies/<name>.journal``) serves workers on one machine. A database URL
(``postgresql+psycopg://USER:PASSWORD@HOST/DB``, ``mysql+pymysql://...``, ``sqlite:///FILE``) serves workers
on several machines; those storages get heartbeats: a worker records one every ``heartbeat`` seconds while it
runs a trial, and a trial silent for ``grace`` seconds is failed by the next worker that looks
(:func:`fail_stale`), recorded as failed in the study and in its run manifests, and enqueued again with its
parameters (:class:`StaleTrialCallback`, over Optuna's ``RetryHeartbeatStaleTrialCallback``).

Only public Optuna APIs are used: ``Study`` methods, the storage object this module opened and its
``BaseStorage`` methods.
"""

from __future__ import annotations

import os
import random
import re
import socket
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import config_dict
from harness.redact import redact, redact_text
from harness.store import Store, write_atomic
from harness.studies import journal
from harness.studies.config import (
    HEARTBEAT_SECONDS,
    Setup,
    StudyConfig,
    check_heartbeat,
    is_rdb,
    journal_path,
)

if TYPE_CHECKING:
    import optuna

MAX_RETRY = 2
"""How many times one set of parameters is re-run after its workers stopped beating."""
DRIVERS = {
    "psycopg": ("psycopg[binary]", "postgres", "postgresql+psycopg://USER:PASSWORD@HOST:5432/DB"),
    "psycopg2": ("psycopg2-binary", "postgres", "postgresql+psycopg://USER:PASSWORD@HOST:5432/DB"),
    "pymysql": ("PyMySQL", "mysql", "mysql+pymysql://USER:PASSWORD@HOST:3306/DB"),
    "MySQLdb": ("mysqlclient", "mysql", "mysql+pymysql://USER:PASSWORD@HOST:3306/DB"),
}
"""DBAPI module -> (pip package, driftbench extra, the URL form that extra serves)."""
STALE_ATTR = "stale_trial:"
"""Study user attribute ``stale_trial:<number>`` holds why a heartbeat-failed trial failed (a finished
trial's own attributes can no longer be set)."""
FINGERPRINT_WAIT = 10.0
"""Seconds a loader waits for the fingerprint of a study another command is creating at that moment."""
_OPEN: dict[tuple[str, str, int, int], Any] = {}
"""Database storages this process has opened, one per (URL, results root, heartbeat, grace). An Optuna
``RDBStorage`` sits in reference cycles, so one that is dropped keeps its pooled connections until the
garbage collector runs; a process that opens the same study repeatedly (a report polling it, a worker per
trial) would otherwise exhaust the server's connection slots (measured: 10 opens held 14 connections)."""


def hide_password(url: str) -> str:
    """The URL with its user-info and secret query parameters masked (also with no user name, ``?password=``
    or an unencoded ``@`` in the password): the one redaction every sink uses."""
    return redact_text(url)


def storage_label(cfg: StudyConfig) -> str:
    return hide_password(cfg.storage) if cfg.storage else str(journal_path(cfg.out, cfg.name))


def open_storage(spec: str, out: str, name: str, *, heartbeat: int = HEARTBEAT_SECONDS, grace: int = 0) -> Any:
    """The study's storage: a journal file (default or a path) or a database URL with heartbeats.

    Raises a one-line ``ValueError`` (password hidden) for a bad URL, a missing driver (naming it and the
    extra that installs it), an unreachable server or refused credentials.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    grace = check_heartbeat(heartbeat, grace)
    if not is_rdb(spec):
        path = Path(spec) if spec else journal_path(out, name)
        try:
            if not spec:  # the default location is ours to create; a given path's directory must exist
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.parent.is_dir():
                raise FileNotFoundError(f"--storage '{spec}': directory {path.parent} does not exist")
            repair_journal(path)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and exc.filename is None:
                raise
            raise ValueError(f"cannot open journal storage '{path}': {exc}") from None
    if spec.split("://", 1)[1].split("/", 1)[0].count("@") > 1:  # the driver would take the rest for the host
        raise ValueError(f"storage URL '{hide_password(spec)}' has an unencoded '@' in its user name or password; "
                         "percent-encode it as %40")
    key = (spec, str(out), heartbeat, grace)
    if key in _OPEN:
        return _OPEN[key]
    engine_kwargs = _check_driver(spec)
    callback = StaleTrialCallback(out)
    for attempt in range(6):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(spec, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                                     grace_period=grace, heartbeat_stale_trial_callback=callback)
            # Threads that opened it at once each made one (their table creation races, as processes' do);
            # all of them go on with the first that was kept.
            return _OPEN.setdefault(key, storage)
        except Exception as exc:  # noqa: BLE001 - sqlalchemy raises many types (dialect, driver, connection)
            # Workers starting together on an empty database race to create Optuna's tables; the losers
            # see a unique-key or duplicate-table error, and the tables exist when they try again.
            if type(exc).__name__ in ("IntegrityError", "ProgrammingError") and attempt < 5:
                time.sleep(0.2 + random.random())
                continue
            raise ValueError(f"cannot open storage '{hide_password(spec)}': {_reason(exc, spec)}") from None


def repair_journal(path: Path) -> None:
    """Mend what a crash leaves in a journal file (its torn last line), under Optuna's own lock, with a
    warning naming the file; refuse any other damage in one line naming the file and line
    (:mod:`harness.studies.journal`)."""
    from optuna.storages.journal import JournalFileSymlinkLock
    from optuna.storages.journal._file import get_lock_file

    if path.is_file() and path.stat().st_size:
        journal.repair(path, get_lock_file(JournalFileSymlinkLock(str(path))), write_atomic)


def _reason(exc: BaseException, spec: str) -> str:
    from sqlalchemy.engine import make_url

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.sub(r"^\([\w.]+\) ", "", text)  # sqlalchemy's "(psycopg.OperationalError) " prefix
    try:
        password = make_url(spec).password
    except Exception:  # noqa: BLE001 - the URL did not parse; nothing to hide beyond the label
        password = None
    if password:
        text = text.replace(str(password), "***")
    return redact_text(f"{type(exc).__name__}: {text}")


def _check_driver(spec: str) -> dict[str, Any]:
    """Import the URL's DBAPI module up front, so a missing one is named; returns engine keyword arguments."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(spec)
        dialect = url.get_dialect()
    except Exception as exc:  # noqa: BLE001 - ArgumentError, NoSuchModuleError
        raise ValueError(f"cannot open storage '{hide_password(spec)}': {_reason(exc, spec)}; use "
                         f"postgresql+psycopg://, mysql+pymysql:// or sqlite:///") from None
    load = getattr(dialect, "import_dbapi", None) or getattr(dialect, "dbapi", None)
    try:
        if load is not None:
            load()
    except ImportError as exc:
        module = getattr(exc, "name", None) or (str(exc).split("'")[1] if "'" in str(exc) else "?")
        module = module.split(".")[0]
        package, extra, form = DRIVERS.get(module, (module, "", ""))
        hint = (f"pip install 'driftbench[{extra}]' and use a URL {form.split('//')[0]}//..." if extra else
                f"pip install {package}")
        raise ValueError(f"storage '{hide_password(spec)}' needs the database driver '{module}' (pip package "
                         f"{package}), which is not installed: {hint}") from None
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        return {"connect_args": {"connect_timeout": 10}}  # an unreachable host fails in seconds, not minutes
    return {}


# ---------------------------------------------------------------------------------------------------
# Creation
# ---------------------------------------------------------------------------------------------------

def create_or_load(cfg: StudyConfig, setup: Setup, storage: Any) -> optuna.Study:
    """Create the study with its fingerprint, or load it and check the fingerprint matches.

    Safe when many commands start at once: exactly one of them creates the study and labels it at once; a
    loader that finds no fingerprint yet waits for the creator's (or, on an empty study whose creator died before
    labelling it, writes the same one itself). Only a loader waits: the creator knows no one else can label it.
    """
    import optuna

    directions = ["maximize", "minimize"] if cfg.multi_objective else ["maximize"]
    try:
        study = optuna.create_study(storage=storage, study_name=cfg.name, directions=directions)
        stored = None
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=cfg.name, storage=storage)
        stored = _fingerprint(study)
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise ValueError(f"study '{cfg.name}' in {storage_label(cfg)} was not created by driftbench study; "
                             "use another --name")
        _label(study, cfg, setup)
        stored = _fingerprint(study)
    if stored != setup.fingerprint:
        diff = "; ".join(f"{k}: stored {stored.get(k)!r}, now {v!r}" for k, v in setup.fingerprint.items()
                         if stored.get(k) != v)
        raise ValueError(f"study '{cfg.name}' already exists in {storage_label(cfg)} with a different search "
                         f"space or setup ({diff}); use another --name or the original settings")
    return study


def _fingerprint(study: Any) -> dict[str, Any] | None:
    """The stored fingerprint, waiting briefly while a study another command just created has none yet."""
    deadline = time.monotonic() + FINGERPRINT_WAIT
    while True:
        stored = study.user_attrs.get("fingerprint")
        if stored is not None or time.monotonic() > deadline or study.get_trials(deepcopy=False):
            return stored
        time.sleep(0.1)


def _label(study: Any, cfg: StudyConfig, setup: Setup) -> None:
    """Setup and metric names first, the fingerprint last: a study with a fingerprint is complete."""
    import optuna

    reward = cfg.objective or setup.base_run.reward or "training reward"
    names = [f"held-out {reward}"] + (["pixel drift from base"] if cfg.multi_objective else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)
    study.set_user_attr("setup", redact({"study": config_dict(cfg), "run": config_dict(setup.base_run),
                                         "method_config": config_dict(setup.base_method),
                                         "overrides": [o.text() for o in setup.overrides]}))
    study.set_user_attr("fingerprint", setup.fingerprint)


# ---------------------------------------------------------------------------------------------------
# Counting, resume and stale trials
# ---------------------------------------------------------------------------------------------------

def counted(trials: Sequence[Any]) -> list[Any]:
    """Trials that count towards ``StudyConfig.trials``: complete, pruned and failed, except failures that
    were enqueued again (a stopped worker's trial, or a stale database trial retried by its callback) and
    surplus trials that found the study already full."""
    from optuna.trial import TrialState

    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])} | _retried(trials)
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and not t.user_attrs.get("requeued") and not t.user_attrs.get("surplus")
                and t.number not in retried)]


def _retried(trials: Sequence[Any]) -> set[int]:
    """Numbers of trials that a later trial retries (``retry_of``, set when a stopped trial is re-enqueued)."""
    return {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}


def trial_error(trial: Any, study_attrs: dict[str, Any]) -> str:
    """Why a trial failed: its own ``error``, or what the stale-trial callback recorded for it."""
    return trial.user_attrs.get("error") or study_attrs.get(f"{STALE_ATTR}{trial.number}", "")


def _alive(worker: str | None) -> bool:
    """Whether the worker that owns a RUNNING trial ("host:pid") is a live process on this machine."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()  # this process runs no trial while it resumes


def _interrupt_runs(out: str, run_ids: Sequence[str], why: str) -> None:
    """Runs of a stopped trial still say "running" in their manifests; those on this machine get ``why``."""

    store = Store(out)
    for run_id in run_ids:
        if store.run_dir(run_id).is_dir() and store.manifest(run_id).get("status") == "running" \
                and store.status(run_id) == "interrupted":  # nobody holds its lock: its writer is gone
            store.set_status(run_id, "interrupted", error=why)


def requeue_stopped(study: optuna.Study, rdb: bool, out: str = "results", *, storage: Any = None) -> list[int]:
    """Mark trials left RUNNING by a stopped worker (journal storages) or interrupted by Ctrl-C as FAIL and
    enqueue their parameters again; returns the numbers requeued. Database storages find stale RUNNING
    trials by heartbeat instead (:func:`fail_stale`). ``storage`` is the storage ``study`` was opened on."""
    from optuna.trial import TrialState

    if storage is None:
        raise TypeError("requeue_stopped needs the storage the study was opened on (storage=...)")
    study_id, requeued = storage.get_study_id_from_name(study.study_name), []
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    for t in trials:
        stopped = t.state == TrialState.RUNNING and not rdb and not _alive(t.user_attrs.get("worker"))
        interrupted = (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
                       and not t.user_attrs.get("requeued") and t.number not in retried)
        if not (stopped or interrupted):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        if stopped:  # still RUNNING, so it takes attributes (a finished trial does not: its retry marks it)
            storage.set_trial_user_attr(trial_id, "requeued", True)
            storage.set_trial_user_attr(trial_id, "error", "worker stopped while the trial was running")
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            _interrupt_runs(out, t.user_attrs.get("run_ids", []), "the study worker running it stopped")
        study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        requeued.append(t.number)
    return requeued


def fail_stale(study: Any) -> None:
    """Database storages: fail (and, through :class:`StaleTrialCallback`, retry) trials whose worker
    stopped beating; a no-op on journal storages."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class StaleTrialCallback:
    """Optuna calls this with a trial it failed for a missed heartbeat: record why (in the study and in the
    trial's run manifests on this machine), then enqueue its parameters again with a clean record."""

    def __init__(self, out: str, max_retry: int = MAX_RETRY):
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.out = out

    def __call__(self, study: Any, trial: Any) -> None:
        import copy

        why = (f"worker {trial.user_attrs.get('worker', '?')} stopped beating while the trial was running "
               "(failed by heartbeat)")
        study.set_user_attr(f"{STALE_ATTR}{trial.number}", why)
        _interrupt_runs(self.out, trial.user_attrs.get("run_ids", []), why)
        retry = copy.deepcopy(trial)
        retry.user_attrs = {"retry_of": trial.number}
        self.retry(study, retry)
