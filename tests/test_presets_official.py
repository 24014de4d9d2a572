"""Every paper-preset field against the official launch scripts (harness/presets_official.json): a preset that
differs from its source without a listed reason fails, and so does a listed deviation that no longer holds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness import presets
from methods import METHODS

TABLE = json.loads((Path(presets.__file__).parent / "presets_official.json").read_text())
PAPER = ("paper-sd-turbo", "paper-geneval", "paper-sdxl-turbo", "paper-hpsv3-timing")
RUN_FIELDS = ("profile", "reward", "k", "prompts_per_step", "grad_accum", "paper_processes", "updates",
              "mixed_precision", "lora_rank")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _rows():
    for name in PAPER:
        for method in METHODS:
            yield name, method


def test_every_paper_preset_and_method_is_in_the_table():
    assert sorted(k for k in TABLE if not k.startswith("_")) == sorted(PAPER)
    for name, method in _rows():
        entry = TABLE[name].get(method)
        assert entry is not None, f"{name}: no row for method '{method}'"
        if entry["script"] is None:
            assert entry.get("why"), f"{name}/{method}: no official script and no reason given"


@pytest.mark.parametrize("name, method", list(_rows()))
def test_preset_matches_its_official_source_or_says_why(name, method):
    entry = TABLE[name][method]
    if entry["script"] is None:
        return
    preset = presets.get(name)
    run, cfg = preset.run_for(method), preset.method_config(method)
    rows = entry["fields"]
    wanted = {f"run.{f}" for f in RUN_FIELDS} | {f.name for f in dataclasses.fields(cfg)}
    assert sorted(wanted - set(rows)) == [], f"{name}/{method}: fields without a source row"
    assert sorted(set(rows) - wanted) == [], f"{name}/{method}: rows for fields the preset does not have"
    problems = []
    for field, row in rows.items():
        assert row.get("source"), f"{name}/{method}/{field}: no source"
        actual = _plain(getattr(run, field[4:]) if field.startswith("run.") else getattr(cfg, field))
        if row["official"] is None:
            continue
        differs = actual != row["official"]
        if differs and not row.get("deviation"):
            problems.append(f"{field}: preset {actual!r}, official {row['official']!r} ({row['source']}), no reason")
        if not differs and row.get("deviation"):
            problems.append(f"{field}: a deviation is listed but the preset now matches the official value")
    assert not problems, f"{name}/{method}: " + "; ".join(problems)


def test_listed_deviations_are_all_matched_budget_and_say_what_they_change():
    for name, method in _rows():
        for field, row in TABLE[name][method].get("fields", {}).items():
            if row.get("deviation"):
                assert field.startswith("run."), f"{name}/{method}/{field}: only shared-run fields may deviate"
                assert len(row["deviation"]) > 60, f"{name}/{method}/{field}: say what the deviation changes"


def test_precision_follows_each_official_script():
    assert presets.get("paper-sd-turbo").run_for("ngrpo").mixed_precision == "bf16"
    assert presets.get("paper-sd-turbo").run_for("drpo").mixed_precision == "fp16"
    for name in ("paper-sdxl-turbo", "paper-hpsv3-timing"):
        assert {presets.get(name).run_for(m).mixed_precision for m in METHODS} == {"bf16"}
    with pytest.raises(ValueError, match="preset run overrides may change only"):
        presets.Preset("x", presets.PAPER_SD_TURBO.run, run_overrides={"ngrpo": {"updates": 5000}})
