"""``driftbench train --help`` leads with the run's common flags; a method's fields only with ``--method NAME``."""

from __future__ import annotations

import dataclasses

import pytest

from harness.cli import TrainOptions, main
from harness.config import RunConfig
from harness.train_args import GROUPS, groups, parser_class, run_config

pytestmark = pytest.mark.unit


def help_text(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as done:
        main(["train", *argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_general_help_leads_with_the_common_flags_and_lists_no_method_fields(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch)
    # Boxes on a terminal ("╭─ run options ─"), plain headings otherwise (" run options").
    headings = [line.strip(" ╭─") for line in text.splitlines() if line.strip(" ╭─").endswith("options")]
    assert headings == ["options", "run options", "command options", "budget options", "evaluation options",
                        "data options", "record options"]
    assert text.index("--profile") < text.index("--preset") < text.index("--grad-accum") < text.index("--lora-rank")
    assert "driftbench train --method NAME --help" in text
    assert "--drpo." not in text and "drpo options" not in text


def test_method_help_adds_that_methods_group_only(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "--method", "pso")
    assert "pso options" in text and "--pso.lr" in text
    assert "--drpo." not in text and "--run-id" in text


def test_every_run_field_is_in_one_group_and_parsing_gives_the_same_config():
    import tyro

    import methods.drpo as drpo

    names = [n for _, fields in groups().values() for n in fields]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(RunConfig)) and len(names) == len(set(names))
    assert set(GROUPS["run"][1]) >= {"method", "profile", "reward", "updates", "seed", "out"}
    default = RunConfig()
    Args = parser_class(default, TrainOptions, TrainOptions(), "drpo", drpo.Config())
    args = tyro.cli(Args, args=["--updates", "3", "--eval-at", "0", "1", "--drpo.m", "2", "--tag", "x", "--lora-rank",
                                "8", "--resume", "r1", "--log-with", "tensorboard"])
    assert run_config(args, default) == default.replace(updates=3, eval_at=(0.0, 1.0), tag="x", lora_rank=8,
                                                        log_with=("tensorboard",))
    assert args.drpo == drpo.Config(m=2) and args.command.resume == "r1"
