"""`driftbench pretrain`: every job runs end to end at toy length, writes verified assets, and reproduces."""

from __future__ import annotations

import json

import pytest
import torch

from harness.shapes import assets
from harness.shapes.pretrain import (
    EncoderConfig,
    GeneratorConfig,
    RewardConfig,
    main,
    pretrain_encoder,
    pretrain_generator,
    pretrain_reward,
)
from harness.shapes.pretrain_reward import log_bce

pytestmark = pytest.mark.slow

TOY_GENERATOR = GeneratorConfig(ae_steps=2, steps=2, batch=4, warmup=1, threads=1)


def test_all_jobs_write_verified_assets(tmp_path):
    pretrain_generator(TOY_GENERATOR, tmp_path)
    pretrain_encoder(EncoderConfig(steps=2, batch=8, pool_per_prompt=1, image_steps=2, image_batch=4, warmup=1,
                                   threads=1), tmp_path)
    pretrain_reward(RewardConfig(steps=2, batch=2, gen_batch=2, pool_per_prompt=1, warmup=1, threads=1), tmp_path)
    sums = json.loads((tmp_path / assets.CHECKSUMS).read_text())
    assert {f"{name}.safetensors" for name in assets.NAMES} | {f"{name}.json" for name in assets.NAMES} == set(sums)
    for name in assets.NAMES:
        state, _ = assets.load_asset(name, tmp_path)
        assert state and all(torch.isfinite(v).all() for v in state.values())
    assert set(json.loads((tmp_path / "timings.json").read_text())) == {"generator", "encoder", "reward"}


def test_generator_job_reproduces_from_its_seed(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    pretrain_generator(TOY_GENERATOR, first)
    pretrain_generator(TOY_GENERATOR, second)
    assert assets.sha256(first / "generator.safetensors") == assets.sha256(second / "generator.safetensors")


def test_pretrain_cli_rejects_unknown_jobs(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generatr"])
    assert exc.value.code == 2 and "invalid choice: 'generatr'" in capsys.readouterr().err


@pytest.mark.unit
def test_log_bce_by_hand():
    log_p = torch.log(torch.tensor([0.8, 0.25]))
    expected = -(torch.log(torch.tensor(0.8)) + torch.log(torch.tensor(0.75))) / 2
    assert torch.allclose(log_bce(log_p, torch.tensor([1.0, 0.0])), expected, atol=1e-6)
