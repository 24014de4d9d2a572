"""What a run hands on: the selected weights in adapter/, the final ones beside them, and `driftbench export`.

Every export is loaded into a stock diffusers pipeline built from the tiny profile's base weights and must
give the UNet output of the generator at that update, which a separate run of exactly that many updates
reproduces (prompts, noise and the method's randomness are functions of (seed, update)).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from harness.cli import main
from harness.export import ExportConfig, export
from harness.run import run
from tests.conftest import tiny_run

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def small_m(monkeypatch):
    """K=4 runs need DrPO's M=2."""
    import methods.drpo as drpo

    monkeypatch.setattr(drpo, "Config", dataclasses.make_dataclass(
        "Config", [("m", int, dataclasses.field(default=2))], bases=(drpo.Config,), frozen=True))


def base_generator():
    from harness.generator import tiny_sd

    return tiny_sd(seed=0)  # the tiny profile's generator (seed 0, rank 4) before any update


def generator_at(tmp_path, update: int):
    """The generator after ``update`` updates, from a run of exactly that budget."""
    gen = base_generator()
    if update:
        run(tiny_run(tmp_path / f"ref{update}", run_id="ref", updates=update), progress=False)
        state = torch.load(tmp_path / f"ref{update}" / "runs" / "ref" / "checkpoint.pt", weights_only=False)
        gen.load_trainable_state(state["trainable"])
    return gen


def unet_output(unet, gen):
    cond, z = gen.encode(["a red circle"]), gen.noise([5])
    with torch.no_grad():
        return unet(z, torch.tensor([999]), encoder_hidden_states=cond.tensors["hidden"]).sample


def stock_pipeline():
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    base = base_generator()
    return StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoders[0], tokenizer=base.tokenizers[0],
                                   unet=base.unet, scheduler=EulerDiscreteScheduler(timestep_spacing="trailing"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def test_selected_and_final_weights_and_every_export_equal_the_generator_at_that_update(tmp_path):
    from diffusers import StableDiffusionPipeline

    # Trained on JPEG, selected on colorfulness, which peaks at update 1 here (73.242607 against 73.242569 at
    # the end): the selected and final weights then differ. Whatever is selected, the checks below hold.
    summary = run(tiny_run(tmp_path, run_id="sel", updates=3, eval_at=(0.0, 1 / 3, 2 / 3, 1.0),
                           evals=("jpeg", "colorfulness"), select_metric="colorfulness/mean"), progress=False)
    run_dir = tmp_path / "runs" / "sel"
    selected = json.loads((run_dir / "adapter" / "update.json").read_text())
    final = json.loads((run_dir / "adapter_final" / "update.json").read_text())
    assert selected == {"checkpoint": "selected", "update": summary["select/step"], "metric": "eval/colorfulness/mean",
                        "value": summary["select/value"], "samples": "samples.png"}
    assert final == {"checkpoint": "final", "update": 3, "metric": "eval/colorfulness/mean",
                     "value": summary["eval/colorfulness/mean"], "samples": "samples_final.png"}
    assert (run_dir / "samples_final.png").is_file() and (run_dir / "samples.png").is_file()
    step = selected["update"]
    if step != 3:  # the selected grid is drawn from the selected weights
        assert (run_dir / "samples.png").read_bytes() != (run_dir / "samples_final.png").read_bytes()

    reference = {u: generator_at(tmp_path, u) for u in sorted({0, step, 3})}
    for u, gen in reference.items():
        assert u == 0 or not torch.allclose(unet_output(gen.unet, gen), unet_output(reference[0].unet, gen))
    exports = {"selected": step, "final": 3, str(step): step, "0": 0}
    for at, update in exports.items():
        out = export(ExportConfig(run="sel", at=at, to=str(tmp_path / f"export-{at}"), out=str(tmp_path)))
        info = json.loads((out / "update.json").read_text())
        assert info["update"] == update
        pipe = stock_pipeline()
        pipe.load_lora_weights(str(out), adapter_name="driftbench")
        pipe.set_adapters(["driftbench"])
        torch.testing.assert_close(unet_output(pipe.unet, reference[update]),
                                   unet_output(reference[update].unet, reference[update]), rtol=1e-4, atol=1e-5)
    # The run's own adapter/ and adapter_final/ load the same way.
    for directory, update in (("adapter", step), ("adapter_final", 3)):
        pipe = stock_pipeline()
        pipe.load_lora_weights(str(run_dir / directory), adapter_name="driftbench")
        pipe.set_adapters(["driftbench"])
        torch.testing.assert_close(unet_output(pipe.unet, reference[update]),
                                   unet_output(reference[update].unet, reference[update]), rtol=1e-4, atol=1e-5)
    # A fused full pipeline: from_pretrained alone, no LoRA loading.
    fused = export(ExportConfig(run="sel", at="final", to=str(tmp_path / "fused"), out=str(tmp_path), fused=True))
    pipe = StableDiffusionPipeline.from_pretrained(str(fused))
    torch.testing.assert_close(unet_output(pipe.unet, reference[3]), unet_output(reference[3].unet, reference[3]),
                               rtol=1e-4, atol=1e-5)


def test_export_names_what_a_run_stores_in_one_line(tmp_path, capsys):
    run(tiny_run(tmp_path, run_id="plain", updates=2), progress=False)
    info = json.loads((tmp_path / "runs" / "plain" / "adapter" / "update.json").read_text())
    assert info == {"checkpoint": "final", "update": 2, "metric": None, "value": None, "samples": "samples.png"}
    assert not (tmp_path / "runs" / "plain" / "adapter_final").exists()
    assert main(["export", "plain", "--at", "1", "--to", str(tmp_path / "x"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["driftbench: error: run 'plain' does not store update 1: a run keeps its base, its selected and "
                   "its final checkpoint; stored updates: 0 (base), 2 (final)"]
    assert main(["export", "plain", "--at", "selectd", "--to", str(tmp_path / "x"), "--out", str(tmp_path)]) == 2
    assert "valid: base, final or an update number" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["export", "plain", "--to", str(tmp_path / "y"), "--out", str(tmp_path), "--at", "final"]) == 0
    assert (tmp_path / "y" / "pytorch_lora_weights.safetensors").is_file()
    assert main(["export", "plain", "--to", str(tmp_path / "y"), "--out", str(tmp_path), "--at", "final"]) == 2
    assert "already exists" in capsys.readouterr().err
