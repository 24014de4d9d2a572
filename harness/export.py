"""What a run hands on: the chosen weights in its directory, and ``driftbench export`` from its checkpoint.

At the end of a run, process 0 writes (:func:`write_outputs`):

* without ``--select-metric``: ``adapter/`` and ``samples.png``/``.npz``, the final weights;
* with it: ``adapter/`` and ``samples.png``/``.npz`` hold the **selected** checkpoint's weights and samples,
  and ``adapter_final/`` and ``samples_final.png``/``.npz`` the final ones beside them.

Each adapter directory carries ``update.json``: which checkpoint (selected/final), its update, the
selection metric and its value there, and the sample grid drawn from it.

A run stores two weight sets (``checkpoint.pt``): the latest (final, once complete) and the selection's
best so far; update 0 is the base, which the run's config rebuilds. ``driftbench export RUN --at
selected|final|UPDATE --to DIR`` writes any of them as a diffusers LoRA directory
(``pipe.load_lora_weights(DIR)``; the Shapes world's generator writes its own adapter format), or with
``--fused`` as a full diffusers pipeline with the LoRA merged (``StableDiffusionPipeline.from_pretrained(DIR)``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tyro.conf import Positional

from harness.checkpoint import read_file as read_checkpoint
from harness.config import RunConfig, from_dict, plain_name, stored_run
from harness.evaluation import generate
from harness.images import save_samples
from harness.profiles import PROFILES
from harness.store import Store, read_json

if TYPE_CHECKING:
    from harness.parts import Parts
    from harness.selection import Selection

INFO = "update.json"
"""The file in each exported or run adapter directory naming its checkpoint, update, metric and value."""

PROMPTS_SHOWN = 8
"""Prompts in a sample grid (``images.save_samples``'s default)."""


def write_outputs(parts: "Parts", run_dir: Path, selection: "Selection", final_step: int, images: Any,
                  metrics: dict[str, float]) -> None:
    """The run's adapter(s) and sample grid(s): the selected weights in ``adapter/``, the final beside them."""
    gen, cfg, evals = parts.world.generator, parts.cfg, parts.evals
    base_images, base_prompts, _ = evals.base(gen)
    final = {"checkpoint": "final", "update": final_step, "metric": selection.metric or None,
             "value": metrics.get(selection.metric) if selection.metric else None}
    if not cfg.select_metric or selection.state is None:
        _save_adapter(gen, run_dir / "adapter", {**final, "samples": "samples.png"})
        if images is not None:
            save_samples(run_dir, images, (base_images, base_prompts), cfg.eval_seeds)
        return
    _save_adapter(gen, run_dir / "adapter_final", {**final, "samples": "samples_final.png"})
    if images is not None:
        save_samples(run_dir, images, (base_images, base_prompts), cfg.eval_seeds, name="samples_final")
    current = {k: v.detach().clone() for k, v in gen.trainable_state().items()}
    gen.load_trainable_state(selection.state)
    try:
        chosen = {"checkpoint": "selected", "update": selection.step, "metric": selection.metric,
                  "value": selection.value, "samples": "samples.png"}
        _save_adapter(gen, run_dir / "adapter", chosen)
        # The grid's prompts and noise are the evaluation's first ones, as in the final grid.
        shown, _, _ = generate(gen, evals.prompts[:PROMPTS_SHOWN], evals.seeds, seed_base=evals.seed_base)
        save_samples(run_dir, shown, (base_images, base_prompts), cfg.eval_seeds)
    finally:
        gen.load_trainable_state(current)


def _save_adapter(gen: Any, directory: Path, info: dict[str, Any]) -> None:
    gen.save_adapter(directory)
    (Path(directory) / INFO).write_text(json.dumps(info, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------
# driftbench export
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportConfig:
    """``driftbench export RUN --at selected|final|UPDATE --to DIR``."""

    run: Positional[str]
    """The run id (a directory under OUT/runs)."""
    to: str
    """The directory to write; it must not exist yet (or be empty)."""
    at: str = "selected"
    """Which stored weights: "selected" (the run's --select-metric choice), "final", or an update number
    among those stored (0 is the base)."""
    fused: bool = False
    """Write a full diffusers pipeline with the LoRA merged into the UNet, instead of the LoRA directory."""
    out: str = "results"
    """The results root holding runs/RUN."""
    device: str = "cpu"
    """Where to rebuild the generator for the export."""


@dataclass(frozen=True)
class Stored:
    """One weight set a run keeps."""

    name: str
    update: int
    state: dict[str, torch.Tensor] | None
    """None: the base (the generator as its config builds it)."""
    metric: str | None = None
    value: float | None = None


def stored(out: str, run_id: str) -> list[Stored]:
    """The weight sets run ``run_id`` keeps: the base (update 0), the selected checkpoint (with
    --select-metric) and the latest (final once the run is complete)."""
    plain_name("run", run_id)
    store = Store(out)
    run_dir = store.run_dir(run_id)
    store.manifest(run_id)  # a missing run is one line naming it
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"run '{run_id}' has no checkpoint.pt in {run_dir} (it stopped before its first "
                                "checkpoint); nothing to export")
    data = read_checkpoint(path)  # data only: a planted pickle in a shared root is refused, never run
    final_step = int(data["spend"]["updates"])
    complete = store.status(run_id) == "complete"
    summary = read_json(run_dir / "summary.json") if complete and (run_dir / "summary.json").is_file() else {}
    out_sets = [Stored("base", 0, None),
                Stored("final" if complete else "latest", final_step, data["trainable"])]
    selection = data.get("selection") or {}
    if summary.get("select/metric"):
        # The final checkpoint is written before the final evaluation: when that evaluation won, the
        # selection is the final weights; otherwise the checkpoint's selection already holds the winner.
        step = int(summary["select/step"])
        state = data["trainable"] if step == final_step else selection.get("state")
        if step != final_step and selection.get("step") != step:
            raise ValueError(f"run '{run_id}': its summary selected update {step} but checkpoint.pt holds "
                             f"update {selection.get('step')}")
        out_sets.append(Stored("selected", step, state, summary["select/metric"], float(summary["select/value"])))
    elif selection.get("state") is not None:
        out_sets.append(Stored("selected", int(selection["step"]), selection["state"], selection["metric"],
                               float(selection["value"])))
    return out_sets


def pick(sets: list[Stored], at: str, run_id: str) -> Stored:
    """The weight set ``at`` names (a name or an update number); one line listing what is stored otherwise."""
    listing = ", ".join(f"{s.update} ({s.name})" for s in sorted(sets, key=lambda s: (s.update, s.name)))
    by_name = {s.name: s for s in sets}
    if at == "final" and "latest" in by_name:
        raise ValueError(f"run '{run_id}' is not complete: its latest checkpoint is update {by_name['latest'].update}; "
                         f"use --at latest or --at {by_name['latest'].update} (stored: {listing})")
    if at in by_name:
        return by_name[at]
    if at.isdigit():
        for s in sorted(sets, key=lambda s: s.name != "selected"):  # the selected name when it is the final too
            if s.update == int(at):
                return s
        raise ValueError(f"run '{run_id}' does not store update {at}: a run keeps its base, its selected and its "
                         f"final checkpoint; stored updates: {listing}")
    raise ValueError(f"--at '{at}' is not a stored checkpoint of run '{run_id}'; valid: "
                     f"{', '.join(by_name)} or an update number among {listing}")


def export(cfg: ExportConfig) -> Path:
    """Write run ``cfg.run``'s weights at ``cfg.at`` to ``cfg.to``; returns the directory. Everything is written
    to a temporary directory first, so a failure leaves nothing at ``cfg.to``."""
    target = Path(cfg.to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"--to {target} already exists and is not an empty directory; name a new one")
    chosen = pick(stored(cfg.out, cfg.run), cfg.at, cfg.run)
    manifest = Store(cfg.out).manifest(cfg.run)
    run_cfg = from_dict(RunConfig, stored_run(manifest["run"]))
    run_cfg = run_cfg.replace(device=cfg.device) if cfg.device else run_cfg
    gen = PROFILES.get(run_cfg.profile)(run_cfg).generator
    if chosen.state is not None:
        gen.load_trainable_state(chosen.state)
    if cfg.fused and getattr(gen, "family", None) not in ("sd", "sdxl"):
        raise ValueError(f"--fused writes a diffusers pipeline; profile '{run_cfg.profile}' has no diffusers generator "
                         "(export its adapter without --fused)")
    tmp = target.with_name(f".{target.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if cfg.fused:
            fused_pipeline(gen).save_pretrained(str(tmp))
        else:
            gen.save_adapter(tmp)
        info = {"run_id": cfg.run, "checkpoint": chosen.name, "update": chosen.update, "metric": chosen.metric,
                "value": chosen.value, "fused": cfg.fused}
        (tmp / INFO).write_text(json.dumps(info, indent=1) + "\n")
        if target.is_dir():
            target.rmdir()
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fused_pipeline(gen: Any):
    """A stock diffusers pipeline of ``gen`` with its LoRA merged into the UNet's weights (the LoRA layers removed)."""
    import diffusers
    from diffusers.utils.peft_utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    unet = gen.unet
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
    recurse_remove_peft_layers(unet)
    scheduler_class = getattr(diffusers, gen.scheduler_config.get("_class_name", "EulerDiscreteScheduler"))
    scheduler = scheduler_class.from_config({k: v for k, v in gen.scheduler_config.items() if not k.startswith("_")})
    common = dict(vae=gen.vae, unet=unet, scheduler=scheduler)
    if gen.family == "sd":
        return diffusers.StableDiffusionPipeline(text_encoder=gen.text_encoders[0], tokenizer=gen.tokenizers[0],
                                                 safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False, **common)
    return diffusers.StableDiffusionXLPipeline(text_encoder=gen.text_encoders[0], text_encoder_2=gen.text_encoders[1],
                                               tokenizer=gen.tokenizers[0], tokenizer_2=gen.tokenizers[1], **common)
