"""``--init-from``: offline DrPO on the Shapes world (anchors from its preference data set) continued online; the
online run starts from the offline run's final weights, records where it started, and a bad source is one line
before anything is written."""

from __future__ import annotations

import json

import pytest

from harness.config import RunConfig
from harness.run import run
from methods import METHODS

EVAL = dict(eval_at=(0.0, 1.0), eval_seeds=2, eval_prompt_limit=4)


def _shapes(tmp_path, **changes) -> RunConfig:
    base = dict(method="drpo", profile="shapes", reward="shapes-pref", evals=("shapes-pref", "shapes-geneval"), k=4,
                prompts_per_step=1, updates=2, out=str(tmp_path), **EVAL)
    return RunConfig(**{**base, **changes})


def _evals(tmp_path, run_id: str) -> list[dict]:
    rows = [json.loads(line) for line in (tmp_path / "runs" / run_id / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "eval"]


def _scores(tmp_path, run_id: str) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "runs" / run_id / "scores.jsonl").read_text().splitlines()]


def test_online_run_starts_from_the_offline_runs_final_weights(tmp_path):
    drpo = METHODS.get("drpo").Config
    run(_shapes(tmp_path, run_id="offline", offline_data=True), drpo(m=2, anchors="offline"), progress=False)
    run(_shapes(tmp_path, run_id="online", init_from="offline"), drpo(m=2), progress=False)
    offline_last, online_first = _evals(tmp_path, "offline")[-1], _evals(tmp_path, "online")[0]
    assert offline_last["step"] == 2 and online_first["step"] == 0
    metrics = [k for k in offline_last if k.startswith("eval/")]
    assert "eval/shapes-geneval/overall_disjoint" in metrics and "eval/drift/latent_rms" in metrics
    # The same weights on the same noise: every metric, distance from the base included, and every image's score.
    assert {k: online_first[k] for k in metrics} == {k: offline_last[k] for k in metrics}
    assert online_first["eval/drift/latent_rms"] > 0  # the offline run moved away from the base
    assert _scores(tmp_path, "online")[0]["scores"] == _scores(tmp_path, "offline")[-1]["scores"]
    manifest = json.loads((tmp_path / "runs/online/manifest.json").read_text())
    source = json.loads((tmp_path / "runs/offline/manifest.json").read_text())
    assert manifest["run"]["init_from"] == "offline"
    assert manifest["init_from"] == {"run": "offline", "update": 2, "key": source["key"],
                                     "code": source["versions"]["code"]}
    assert manifest["key"] != source["key"]
    # It then trains on: its last evaluation is not its first.
    assert _evals(tmp_path, "online")[-1]["eval/drift/latent_rms"] != online_first["eval/drift/latent_rms"]


def test_a_run_without_init_from_keeps_its_stored_key():
    from harness.config import run_key

    drpo = METHODS.get("drpo").Config()
    # The key of a default run is what it was before the field existed (``ADDED_FIELDS``).
    assert run_key(RunConfig(), drpo) == run_key(RunConfig(init_from=""), drpo)
    assert run_key(RunConfig(init_from="x"), drpo) != run_key(RunConfig(), drpo)


@pytest.mark.parametrize("source, changes, message", [
    (None, dict(init_from="nope"), "--init-from: no run 'nope'"),
    ("tiny", dict(), "has profile 'tiny', this run 'shapes'"),
    ("shapes-r4", dict(lora_rank=2), "has LoRA rank 4, this run 2; give --lora-rank 4"),
    ("shapes-r4", dict(), "weights of another shape"),
    ("running", dict(), "is interrupted, not complete"),
    (None, dict(init_from="../x"), "must be a plain name"),
])
def test_a_bad_source_is_one_line_before_anything_is_written(tmp_path, source, changes, message):
    from harness.store import Store

    drpo = METHODS.get("drpo").Config
    if source == "tiny":
        run(_shapes(tmp_path, run_id="src", profile="tiny", reward="jpeg", evals=("jpeg",)), drpo(m=2),
            progress=False)
    elif source == "shapes-r4":
        run(_shapes(tmp_path, run_id="src", lora_rank=4, updates=1, eval_at=(1.0,)), drpo(m=2), progress=False)
    elif source == "running":  # started, never finished (its writer is gone)
        store = Store(tmp_path)
        store.start("src", {"run": {"profile": "shapes"}})
        store.release("src")
    before = sorted(p.name for p in (tmp_path / "runs").iterdir()) if (tmp_path / "runs").exists() else []
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        run(_shapes(tmp_path, run_id="new", **{"init_from": "src", **changes}), drpo(m=2), progress=False)
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1
    after = sorted(p.name for p in (tmp_path / "runs").iterdir()) if (tmp_path / "runs").exists() else []
    assert after == before
