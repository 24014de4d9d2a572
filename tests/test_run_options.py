"""Run options around the loop: experiment trackers, mixed precision, the model's scheduler config."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from harness.run import run
from tests.conftest import tiny_run

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def small_m(monkeypatch):
    """K=4 runs need DrPO's M=2."""
    import dataclasses

    import methods.drpo as drpo

    monkeypatch.setattr(drpo, "Config", dataclasses.make_dataclass(
        "Config", [("m", int, dataclasses.field(default=2))], bases=(drpo.Config,), frozen=True))


def test_tensorboard_event_file_holds_the_metrics_jsonl_values(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from harness.store import Store

    run(tiny_run(tmp_path, run_id="tb", log_with=("tensorboard",), eval_at=(0.0, 0.5, 1.0)), progress=False)
    logdir = tmp_path / "runs" / "tb" / "tensorboard"
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    logged = {tag: {(e.step, round(e.value, 5)) for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    rows = Store(tmp_path).rows("tb")
    assert {r["kind"] for r in rows} == {"train", "eval"}
    checked = 0
    for row in rows:
        for key, value in row.items():
            if key in ("kind", "step") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            as_float32 = float(torch.tensor(float(value), dtype=torch.float32))  # TensorBoard stores float32
            assert (row["step"], round(as_float32, 5)) in logged[key], key
            checked += 1
    assert checked > 20 and "train/loss" in logged and "eval/jpeg/mean" in logged
    assert events.Tags()["images"] == ["samples"]
    hparams = list(logdir.glob("*/hparams.yml"))
    assert hparams and "run.k: 4" in hparams[0].read_text()


def test_unknown_or_missing_tracker_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'tensorboard'"):
        run(tiny_run(tmp_path, log_with=("tensorbord",)), progress=False)
    missing = [n for n in ("wandb", "mlflow", "trackio") if importlib.util.find_spec(n) is None]
    if not missing:
        pytest.skip("every tracker package is installed here")
    with pytest.raises(ValueError, match=rf"tracker '{missing[0]}' needs .*pip install 'driftbench\[{missing[0]}\]'"):
        run(tiny_run(tmp_path, log_with=(missing[0],)), progress=False)
    assert not (tmp_path / "runs").exists()


def test_bf16_on_a_device_without_bf16_fails_before_anything_is_written(tmp_path, monkeypatch):
    from harness import precision, world

    monkeypatch.setattr(world, "device_for", lambda cfg: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(ValueError, match="--mixed-precision bf16: Tesla V100 has no bf16 support"):
        run(tiny_run(tmp_path, mixed_precision="bf16"), progress=False)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ValueError, match="unknown mixed precision 'fp8'"):
        run(tiny_run(tmp_path, mixed_precision="fp8"), progress=False)
    assert precision.dtype_for("fp16", torch.device("cuda", 0)) == torch.float16
    assert precision.dtype_for("bf16", torch.device("cpu")) == torch.float32  # CPU stays float32


@pytest.mark.unit
def test_frozen_parts_follow_the_precision_but_the_sdxl_vae_upcasts():
    from harness.generator import tiny_sd, tiny_sdxl
    from harness.precision import describe, reward_options
    from rewards.clip_rewards import PickScore
    from rewards.jpeg import JpegCompressibility

    xl = tiny_sdxl(seed=0, dtype=torch.float16)
    assert xl.vae.config.force_upcast and xl.vae_dtype == torch.float32
    assert next(xl.vae.parameters()).dtype == torch.float32 and xl.unet.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in xl.trainable())  # LoRA stays float32
    sd = tiny_sd(seed=0, dtype=torch.bfloat16)  # SD's pipeline does not upcast
    assert sd.vae_dtype == torch.bfloat16 and next(sd.vae.parameters()).dtype == torch.bfloat16
    assert reward_options(PickScore, {}, torch.float16) == {"dtype": "float16"}
    assert reward_options(PickScore, {"dtype": "float32"}, torch.float16) == {"dtype": "float32"}
    assert reward_options(JpegCompressibility, {}, torch.float16) == {}
    assert "CUDA only" in describe("fp16", torch.device("cpu"))["note"]


@pytest.mark.unit
def test_one_step_schedule_comes_from_the_scheduler_config(tmp_path):
    from harness.generator import SD_TURBO_SCHEDULER, from_pretrained, one_step_schedule, scaled_linear_alphas

    alphas, t = one_step_schedule(SD_TURBO_SCHEDULER)
    assert t == 999 and torch.equal(alphas, scaled_linear_alphas())
    linear, _ = one_step_schedule({**SD_TURBO_SCHEDULER, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02})
    assert abs(float(linear[999]) - float(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[999])) < 1e-12
    short, t = one_step_schedule({**SD_TURBO_SCHEDULER, "num_train_timesteps": 500})
    assert t == 499 and len(short) == 500
    for change, match in [({"prediction_type": "v_prediction"}, "prediction_type 'v_prediction' is not supported"),
                          ({"timestep_spacing": "leading"}, "'leading' puts a single step at t=1"),
                          ({"beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid' is not supported"),
                          ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr")]:
        with pytest.raises(ValueError, match=match):
            one_step_schedule({**SD_TURBO_SCHEDULER, **change})
    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match="scheduler/scheduler_config.json"):
        from_pretrained(str(tmp_path), family="sd", name="sd-turbo")
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({**SD_TURBO_SCHEDULER, "prediction_type": "v_prediction"}))
    with pytest.raises(ValueError, match="v_prediction"):  # refused before any weights are read
        from_pretrained(str(tmp_path), family="sd", name="sd-turbo")


@pytest.mark.unit
def test_a_generator_uses_its_own_schedule():
    from harness.generator import SD_TURBO_SCHEDULER, tiny_sd

    other = {**SD_TURBO_SCHEDULER, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    a, b = tiny_sd(seed=0), tiny_sd(seed=0, scheduler=other)
    assert a._a999 != b._a999
    cond, z = a.encode(["a cat"]), a.noise([1])
    with torch.no_grad():
        assert not torch.allclose(a.latents(z, cond), b.latents(z, cond))


def test_bench_drift_writes_the_ratio(tmp_path):
    from harness.cli import main

    assert main(["bench-drift", "--generated", "24", "--positive", "8", "--negative", "8", "--dim", "16",
                 "--repeats", "2", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "compute" / "bench_drift.json").read_text())
    assert record["ratio_driftbench_over_plain"] > 0 and len(record["seconds"]["plain"]) == 2
    assert record["agreement"]["loss_relative"] < 1e-4
