"""Fault suite, part two: what a shared results root or a hostile input must never achieve. A planted pickle
never runs; a secret reaches no file and no output line; a damaged study journal never loses a trial in
silence. Each test here failed on 678faa3 (the commit issue 21 was probed on)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.store import Store
from tests.test_faults import ARGS, ROOT, driftbench

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------------------------------------------
# A planted checkpoint
# ---------------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Generator:
    def load_trainable_state(self, state) -> None:
        pass


def _plant(checkpoint: Path, marker: Path) -> None:
    assert checkpoint.is_file()
    torch.save({"spend": _Payload(marker), "processes": 1}, checkpoint)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "refused" in line]
    assert errors, stderr[-2000:]
    return errors[-1]


@pytest.mark.slow
def test_a_planted_checkpoint_never_runs_on_train_resume(tmp_path):
    out, marker = tmp_path / "results", tmp_path / "MARKER"
    killed = driftbench(["train", *ARGS, "--out", str(out), "--run-id", "R"], tmp_path, fault="update:4:kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoint = Store(out).run_dir("R") / "checkpoint.pt"
    _plant(checkpoint, marker)
    resumed = driftbench(["train", *ARGS, "--out", str(out), "--resume", "R"], tmp_path)
    assert not marker.exists(), "the planted payload ran"
    assert resumed.returncode == 2, resumed.stderr[-2000:]
    line = _one_error_line(resumed.stderr)
    assert str(checkpoint) in line and "posix.system" in line and "refused" in line, line
    assert len([x for x in resumed.stderr.splitlines() if x.strip()]) == 1, resumed.stderr[-2000:]


@pytest.mark.slow
def test_a_planted_checkpoint_never_runs_when_table2_resumes_it(tmp_path):
    out, marker = tmp_path / "results", tmp_path / "MARKER"
    args = ["table2", "--profile", "tiny", "--seeds", "0", "--methods", "drpo", "--jobs", "1", "--no-plots",
            "--no-progress", "--out", str(out)]
    killed = driftbench(args, tmp_path, fault="final-checkpoint:1:kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (checkpoint,) = (out / "runs").glob("*/checkpoint.pt")
    _plant(checkpoint, marker)
    resumed = driftbench(args, tmp_path)
    assert not marker.exists(), "the planted payload ran"
    assert resumed.returncode != 0
    line = _one_error_line(resumed.stderr)
    assert str(checkpoint) in line and "posix.system" in line, resumed.stderr[-2000:]


def test_every_torch_file_a_user_names_loads_as_data_only(tmp_path):
    """The other torch files read from a user's path: evaluation weights, feature and reward weights."""
    from evals.bench import load_weights
    from harness.safe_load import torch_file, weights_only

    marker = tmp_path / "MARKER"
    bad = tmp_path / "weights.pt"
    torch.save({"state_dict": _Payload(marker)}, bad)
    with pytest.raises(ValueError, match=rf"{bad} is refused: it names code \(posix.system\)"):
        torch_file(bad, "weights")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"trainable": _Payload(marker)}, run_dir / "checkpoint.pt")
    with pytest.raises(ValueError, match="checkpoint.pt is refused"):
        load_weights(_Generator(), run_dir)
    from harness.export import stored  # driftbench export, harness.load_run(...).generator(...)

    store = Store(tmp_path / "results")
    store.start("R", {"run": {}, "method_config": {}})
    store.release("R")
    torch.save({"spend": _Payload(marker)}, store.run_dir("R") / "checkpoint.pt")
    with pytest.raises(ValueError, match="checkpoint.pt is refused"):
        stored(str(tmp_path / "results"), "R")
    with weights_only(), pytest.raises(Exception, match="GLOBAL posix.system"):  # a third party's own torch.load
        torch.load(bad, weights_only=False)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


# ---------------------------------------------------------------------------------------------------
# Secrets: one redaction for every sink
# ---------------------------------------------------------------------------------------------------

SECRET = "s3cr3t-5e1f0a9c27"
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")


def _leaks(root: Path, outputs: list[str]) -> list[str]:
    """Every file under ``root`` and every output line that holds the secret."""
    files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    return files + [line for text in outputs for line in text.splitlines() if SECRET in line]


def _env(root: Path) -> dict[str, str]:
    """Trackers write where the test can search: home, W&B offline, MLflow and trackio under ``root``."""
    home = root / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TRACKIO_DIR": str(root / "trackio"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "HF_HOME": str(home / "hf"),
            "DO_NOT_TRACK": "1", "XDG_CACHE_HOME": str(home / "cache")}


STUDY = """
import sys
from harness.cli import main
from harness.config import RunConfig
from harness.presets import PRESETS, Preset
PRESETS["secret-study"] = Preset("test", RunConfig(
    method="drpo", profile="tiny", reward={reward!r}, reward_options={options!r}, evals=("jpeg",), k=4,
    prompts_per_step=1, updates=1, eval_at=(1.0,), eval_seeds=1, eval_prompt_limit=1, count_flops=False),
    methods={{"drpo": {{"m": 2}}}})
sys.exit(main(["study", "--name", "tok", "--preset", "secret-study", "--trials", "1", "--space", "m=1:2",
               "--out", {root!r}]))
"""
"""A one-trial study whose preset's reward needs the token (studies take the reward from the preset)."""


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600):
    """``python -m harness ARGS`` in a subprocess of this checkout with ``env`` added."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "DRIFTBENCH_FAULT": "", **env}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_no_secret_reaches_a_tracker_file_or_output_line(tmp_path, capsys, monkeypatch):
    import http.client
    import importlib.util

    from harness.serving.server import RewardServer
    from rewards import build
    from tests.test_faults import train_args

    installed = [t for t in TRACKERS if importlib.util.find_spec(t) is not None]
    assert "tensorboard" in installed  # the one tracker every install can run offline
    root = tmp_path / "root"
    root.mkdir()
    text, codes = {}, {}
    with RewardServer(build("jpeg"), port=0, token=SECRET, verbose=True).start() as server:
        url = f"remote:{server.url}"
        # A token in an option, in a tag (a query string, a bearer header, user-info without a user name).
        tag = f"t?password={SECRET}&Authorization: Bearer {SECRET} http://:{SECRET}@h"
        args = ["train", *train_args(updates="1", eval_at="1", reward=url), "--out", str(root), "--run-id", "T",
                "--reward-options", f"{url}.token={SECRET}", "--log-with", *installed, "--tag", tag]
        done = _run(args, tmp_path, _env(root))
        codes["train"], text["train"] = done.returncode, done.stdout + done.stderr
        # A study (journal storage) whose runs score through the server with the token as an option.
        study = STUDY.format(reward=url, options=(f"{url}.token={SECRET}",), root=str(root))
        done = subprocess.run([sys.executable, "-c", study], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **_env(root)})
        codes["study"], text["study"] = done.returncode, done.stdout + done.stderr
        # The server's own log: a client that sends the token in the query string.
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
        conn.request("GET", f"/health?token={SECRET}")
        conn.getresponse().read()
        conn.close()
    # A cmd: reward whose program echoes its arguments on stderr and fails.
    echo = f"cmd:python -c 'import sys; sys.exit(str(sys.argv))' --token {SECRET}"
    done = _run(["train", *train_args(updates="1", eval_at="1"), "--reward", echo, "--out", str(root), "--run-id",
                 "C"], tmp_path, _env(root))
    codes["cmd"], text["cmd"] = done.returncode, done.stdout + done.stderr
    # A study's storage URL in every form: user-info with and without a user name, ?password=, an unencoded @.
    for i, storage in enumerate([f"postgresql+psycopg://me:{SECRET}@127.0.0.1:9/db",
                                 f"postgresql+psycopg://:{SECRET}@127.0.0.1:9/db",
                                 f"postgresql+psycopg://me@127.0.0.1:9/db?password={SECRET}",
                                 f"postgresql+psycopg://me:p@{SECRET}@127.0.0.1:9/db",
                                 f"mysql+pymysql://me:{SECRET}@127.0.0.1:9/db"]):
        done = _run(["study", "--name", f"s{i}", "--preset", "tiny-jpeg", "--trials", "1", "--storage", storage,
                     "--out", str(root)], tmp_path, _env(root), timeout=120)
        codes[f"study{i}"], text[f"study{i}"] = done.returncode, done.stdout + done.stderr
    text["server"] = capsys.readouterr().err
    assert codes["train"] == 0, text["train"][-3000:]
    assert codes["cmd"] != 0 and "exited with status" in text["cmd"], text["cmd"][-3000:]
    assert all(codes[f"study{i}"] == 2 for i in range(5)), codes
    assert codes["study"] == 0 and (root / "studies" / "tok.journal").is_file(), text["study"][-3000:]
    assert "/health?token=***" in text["server"]  # the server did log the request, masked
    run_files = [p for p in (root / "runs" / "T").rglob("*") if p.is_file()]
    assert any("tfevents" in p.name for p in run_files) and any(p.name == "hparams.yml" for p in run_files)
    leaks = _leaks(root, list(text.values()))
    assert leaks == [], "\n".join(leaks)


FORMS = [  # (text holding the secret, what it must become)
    (f"remote:http://h:8000.token={SECRET}", "remote:http://h:8000.token=***"),
    (f"GET /score?token={SECRET} HTTP/1.1", "GET /score?token=*** HTTP/1.1"),
    (f"/x?a=1&password={SECRET}&b=2", "/x?a=1&password=***&b=2"),
    (f"Authorization: Bearer {SECRET}", "Authorization: Bearer ***"),
    (f"authorization: bearer {SECRET}", "authorization: bearer ***"),
    (f"X-Api-Key: {SECRET}", "X-Api-Key: ***"),
    (f"postgresql+psycopg://me:{SECRET}@host:5432/db", "postgresql+psycopg://***@host:5432/db"),
    (f"postgresql+psycopg://:{SECRET}@host/db", "postgresql+psycopg://***@host/db"),
    (f"mysql+pymysql://{SECRET}@host/db", "mysql+pymysql://***@host/db"),
    (f"postgresql://me:p@{SECRET}@host/db", "postgresql://***@host/db"),
    (f"postgresql://me@host/db?password={SECRET}", "postgresql://***@host/db?password=***"),
    (f"serve --token {SECRET} --port 1", "serve --token *** --port 1"),
    (f"--api-key={SECRET}", "--api-key=***"),
    (f"{{'token': '{SECRET}'}}", "{'token': '***'}"),
    (f'{{"db_password": "{SECRET}"}}', '{"db_password": "***"}'),
]


@pytest.mark.parametrize("text,want", FORMS, ids=[w[:40] for _, w in FORMS])
def test_every_secret_form_is_masked(text, want):
    from harness.redact import redact_text

    assert redact_text(text) == want


def test_help_placeholders_and_plain_words_are_kept():
    """Masking must not eat the placeholders help texts and errors show (``Bearer TOKEN``, ``USER:PASSWORD``)
    nor ordinary words that merely contain a secret key's name (``max_tokens``, ``Basic``, ``OAuth``)."""
    from harness.redact import redact_text

    for text in ("send 'Authorization: Bearer TOKEN'", "postgresql+psycopg://USER:PASSWORD@HOST:5432/DB",
                 "max_tokens=5", "Basic training", "OAuth: yes"):
        assert redact_text(text) == text


def test_masking_takes_linear_time_on_long_strings():
    """A 100 KB tag took 332 s on 678faa3 (quadratic backtracking over URL-like text: 7.9 s at 16 KB, so about
    50 s at 40 KB); each adversarial form of 40 KB now takes milliseconds (1 MB: 0.01 to 1.9 s on a loaded
    2-core machine)."""
    import time

    from harness.redact import redact_text

    for unit in ("a", "://a@", "token ", "--token ", "bearer ", "@"):
        text = "x://" + unit * (40_000 // len(unit))
        started = time.perf_counter()
        redact_text(text)
        assert time.perf_counter() - started < 2.0, unit


# ---------------------------------------------------------------------------------------------------
# A damaged study journal: refused, never silently mended; salvaged into a new one
# ---------------------------------------------------------------------------------------------------

def _journal_of_six(tmp_path: Path) -> Path:
    import optuna

    from harness.studies.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = tmp_path / "s.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(str(path), str(tmp_path), "s"))
    study.optimize(lambda t: -(t.suggest_float("x", 0, 1) - 0.3) ** 2, n_trials=6)
    return path


@pytest.mark.parametrize("damage", [b"#### not json ####", "half"])
def test_a_damaged_middle_line_refuses_the_study_and_salvage_keeps_every_whole_trial(tmp_path, capsys, damage):
    """The issue's probe: the line creating trial 2 corrupted, in the middle of the journal. 678faa3 dropped it
    with "repaired 1 line", and every later trial took another's parameters."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    from harness.cli import main
    from harness.studies.storage import open_storage

    path = _journal_of_six(tmp_path)
    lines = path.read_bytes().split(b"\n")
    index = [i for i, line in enumerate(lines) if b'"op_code":4' in line][2]
    lines[index] = lines[index][: len(lines[index]) // 2] + b"\xff" if damage == "half" else damage
    path.write_bytes(b"\n".join(lines))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=rf"^{path}:{index + 1}: damaged study journal line .*study-salvage {path}"):
        open_storage(str(path), str(tmp_path), "s")
    assert path.read_bytes() == before  # nothing changed
    assert main(["study", "--name", "s", "--storage", str(path), "--out", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"{path}:{index + 1}" in err[0], err
    new = tmp_path / "new.journal"
    assert main(["study-salvage", str(path), "--to", str(new)]) == 0
    out = capsys.readouterr().out
    assert f"line {index + 1}: damaged creation of trial 2; trial 2 dropped" in out and "with 5 trial(s)" in out
    trials = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(JournalFileBackend(str(new)))
                               ).trials
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    for trial in trials:  # each value still belongs to its own parameters
        assert trial.value == pytest.approx(-(trial.params["x"] - 0.3) ** 2)
    assert main(["study-salvage", str(path), "--to", str(new)]) == 2  # never overwrites


def test_an_unknown_op_code_refuses_in_one_line_naming_the_line(tmp_path):
    from harness.studies.storage import open_storage

    path = _journal_of_six(tmp_path)
    lines = path.read_bytes().rstrip(b"\n").split(b"\n")
    lines.insert(3, b'{"op_code":99,"worker_id":"w"}')
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=rf"^{path}:4: damaged study journal line \(unknown op code 99\)"):
        open_storage(str(path), str(tmp_path), "s")


def test_a_torn_last_line_is_still_repaired_and_loses_no_trial(tmp_path):
    import optuna

    from harness.studies.storage import open_storage

    path = _journal_of_six(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code":4,"worker_id":"x","study_id":0,"datetime_st')  # a write cut by kill -9
    with pytest.warns(UserWarning, match=rf"{path}: repaired 1 line"):
        storage = open_storage(str(path), str(tmp_path), "s")
    assert path.read_bytes() == whole
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 6
