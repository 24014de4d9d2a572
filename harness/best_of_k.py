"""``driftbench best-of-k``: a reference that trains nothing and spends reward calls at inference instead.

For every image of an evaluation set (prompt i, image j < ``seeds``) it samples K candidates from a generator
(the base, or a stored run's weights), keeps the one the target reward scores highest, and evaluates the kept
images with the gold evaluators exactly as a run's evaluation does (``evals.heldout.HeldoutReward``: means,
win rate against the base on the same noise, GenEval's per-tag breakdown). It answers "what does training buy
over reranking?" at a stated cost: K reward calls and K generator passes per image.

Noise (the harness's, as the evaluation's): candidate c of image j of prompt i uses noise seed
``seed_base + 1000 i + c * seeds + j``. Candidate round c is therefore the plain evaluation with its seed base
moved by ``c * seeds``, and round 0 IS the plain evaluation: K = 1 reproduces a run's evaluation on the same
split and noise, and K > 1 can only raise the target reward of each image (ties keep the earlier candidate).
Candidates stay inside their prompt's block of 1000 seeds, so K * seeds <= 1000.

The result is stored like a run, under ``<out>/references/runs/<run_id>/`` (kept apart from trained runs, so
no table mistakes it for a method): ``manifest.json`` (config, generator, versions and code hash,
environment), ``scores.jsonl`` (one record in ``harness.evaluation.scores_record``'s form, plus each image's
kept candidate and every candidate's target score, so best-of-k' for k' < K is a re-indexing), and
``summary.json`` (metrics ``<test|eval>/<reward>/<metric>`` and the compute: reward calls, generator forwards,
decodes, FLOPs and seconds per phase from the harness's meter).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

import rewards as reward_registry
from evals.heldout import HeldoutReward
from harness.budget import Meter
from harness.config import (
    K_MAX,
    LORA_RANK_MAX,
    OPTION_MAX,
    SEED_MAX,
    RunConfig,
    config_dict,
    from_dict,
    plain_name,
    stored_run,
)
from harness.evaluation import TEST_SEED_BASE, generate, noise_seeds
from harness.export import pick, stored
from harness.precision import describe, reward_options
from harness.profiles import DEFAULT_REWARDS, PROFILES
from harness.store import Store, describe_environment, source_hash, utc_stamp
from harness.validate import Bound, Length, at_least, check, nonnegative, within
from harness.world import World, dtype_for
from rewards import check_scores

SEEDS_PER_PROMPT = 1000
"""Noise seeds a prompt owns (``harness.evaluation.noise_seeds``): K * seeds must fit in them."""


@dataclass(frozen=True)
class BestOfKConfig:
    """``driftbench best-of-k``."""

    k: int = 8
    """Candidates per image; the kept one is the target reward's best (K reward calls per image)."""
    profile: str = "shapes"
    """Generator profile (``driftbench list``); with --from-run it must be that run's."""
    model: str = ""
    """Local weights of a real profile (sd-turbo, sdxl-turbo)."""
    reward: str = ""
    """The target reward that ranks the candidates; empty: the profile's training default."""
    evals: tuple[str, ...] = ()
    """Gold evaluators; empty: the profile's defaults. The target reward is always evaluated too."""
    reward_options: tuple[str, ...] = ()
    """Reward constructor options as REWARD.KEY=VALUE (as for train)."""
    split: str = "test"
    """Prompts: a split of the profile or a text file. "test" is stored under the "test" prefix (comparable with
    runs' test evaluations); any other split under "eval"."""
    seeds: int = 16
    """Images per prompt (a run's --test-seeds or --eval-seeds, to compare with it)."""
    seed_base: int = TEST_SEED_BASE
    """Noise seed base of candidate 0 (the plain evaluation's): a run's --test-seed-base for the test split
    (default), its --eval-seed-base (10,000,000) for validation."""
    prompt_limit: int = 0
    """Use only the first N prompts of the split (0: all)."""
    split_seed: int = 0
    """Seed of the profile's prompt split (as for train)."""
    from_run: str = ""
    """Sample from this stored run's weights (a run id under OUT/runs); empty: the base generator."""
    at: str = "final"
    """With --from-run: which stored weights ("final", "selected" or an update number; ``driftbench export``)."""
    lora_rank: int = 0
    """LoRA rank of the generator (0: the profile's default); with --from-run, that run's."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """"auto" (CUDA if present), "cpu" or "cuda"."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    """Dtype of the frozen weights on a GPU (as for train); float32 on CPU."""
    batch_size: int = 64
    """Images per generator and reward call (the evaluation's batch: K = 1 then matches it exactly)."""
    count_flops: bool = True
    """Count FLOPs (a one-off counting pass per component and input shape)."""
    out: str = "results"
    """Results root: trained runs are read from <out>/runs, the result is written to <out>/references/runs."""
    run_id: str = ""
    """Result directory name; empty: ``best-of-k__{reward}__k{K}__{prefix}__{utc}``."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "k": within(1, K_MAX), "seeds": at_least(1), "seed_base": within(0, SEED_MAX), "prompt_limit": nonnegative(),
        "split_seed": nonnegative(), "lora_rank": within(0, LORA_RANK_MAX), "batch_size": at_least(1),
        "reward_options": Length(OPTION_MAX)}
    """Valid range of every numeric field (``harness.validate``)."""


def references(out: str) -> Store:
    """The store best-of-K results live in: ``<out>/references/runs/<run_id>/``."""
    return Store(Path(out) / "references")


def _check(cfg: BestOfKConfig) -> None:
    """Every check that needs no model: bounds, names, the noise layout, the stored run."""
    check(cfg)
    if cfg.k * cfg.seeds > SEEDS_PER_PROMPT:
        raise ValueError(f"--k {cfg.k} x --seeds {cfg.seeds} = {cfg.k * cfg.seeds} candidates per prompt exceed the "
                         f"{SEEDS_PER_PROMPT} noise seeds a prompt owns; lower --k or --seeds")
    PROFILES.check(cfg.profile)
    for name in dict.fromkeys([cfg.reward or DEFAULT_REWARDS[cfg.profile], *cfg.evals]):
        reward_registry.REWARDS.check(name)
    if cfg.run_id:
        plain_name("--run-id", cfg.run_id)


def _run_config(cfg: BestOfKConfig) -> tuple[RunConfig, dict[str, Any]]:
    """The RunConfig the world is built from, and what the manifest says about the generator."""
    own = dict(device=cfg.device, mixed_precision=cfg.mixed_precision, split_seed=cfg.split_seed,
               reward=cfg.reward, evals=cfg.evals, reward_options=cfg.reward_options)
    if not cfg.from_run:
        return RunConfig(profile=cfg.profile, model=cfg.model, lora_rank=cfg.lora_rank, **own), \
            {"from_run": "", "weights": "base"}
    manifest = Store(cfg.out).manifest(plain_name("--from-run", cfg.from_run))  # a missing run is one line
    source = from_dict(RunConfig, stored_run(manifest["run"]), f"run '{cfg.from_run}'")
    if source.profile != cfg.profile:
        raise ValueError(f"run '{cfg.from_run}' was trained on profile '{source.profile}', not '{cfg.profile}'; "
                         f"pass --profile {source.profile}")
    return source.replace(**own), {"from_run": cfg.from_run, "key": manifest.get("key"),
                                   "code": manifest.get("versions", {}).get("code")}


def _rewards(cfg: BestOfKConfig, run_cfg: RunConfig, world: World) -> tuple[Any, dict[str, Any]]:
    """The target reward and the evaluators keyed by their built names (the target among them), as a run builds
    them."""
    options = reward_registry.parse_options(cfg.reward_options)
    dtype = dtype_for(run_cfg)
    target_name = cfg.reward or world.default_reward

    def build(name: str) -> Any:
        return reward_registry.build(name, reward_options(reward_registry.REWARDS.get(name), options.get(name), dtype))
    target = build(target_name)
    evaluators = {target.name: target}
    for name in dict.fromkeys(cfg.evals or world.default_evals):
        if name != target_name:
            built = build(name)
            evaluators.setdefault(built.name, built)
    return target, evaluators


@torch.no_grad()
def _round(gen: Any, meter: Meter, target: Any, prompts: list[str], seeds: int, seed_base: int,
           batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One candidate per image (images on CPU, prompt-major) and its target score, metered. The batching is
    ``harness.evaluation.generate``'s, so round 0 reproduces the evaluation's images bit for bit."""
    rows = noise_seeds(prompts, seeds, seed_base)
    images, scores = [], []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        texts = [p for p, _ in chunk]
        cond = meter.call("text", gen.encode, texts)
        z = meter.call("generate", gen.latents, gen.noise([s for _, s in chunk]), cond)
        x = meter.call("decode", gen.decode, z)
        scores.append(check_scores(meter.call("reward", target.score, x, texts), len(chunk), target.name).float().cpu())
        images.append(x.float().cpu())
    return torch.cat(images), torch.cat(scores)


def select(scores: np.ndarray) -> np.ndarray:
    """The kept candidate of each image from target scores (K, n): the first of the highest (ties keep the
    earlier candidate, so candidate 0, the plain evaluation's image, wins every tie)."""
    return np.argmax(np.asarray(scores), axis=0)


def best_of_k(cfg: BestOfKConfig) -> Path:
    """Sample, keep the best, evaluate, store; returns the result's summary path."""
    _check(cfg)
    run_cfg, generator_record = _run_config(cfg)
    tick = time.perf_counter()
    world = PROFILES.get(run_cfg.profile)(run_cfg)
    gen = world.generator
    if cfg.from_run:
        chosen = pick(stored(cfg.out, cfg.from_run), cfg.at, cfg.from_run)
        if chosen.state is not None:
            gen.load_trainable_state(chosen.state)
        generator_record.update(weights=chosen.name, update=chosen.update)
    target, evaluators = _rewards(cfg, run_cfg, world)
    prompts = world.prompts(cfg.split)[: cfg.prompt_limit or None]
    if not prompts:
        raise ValueError(f"split '{cfg.split}' of profile '{world.name}' has no prompts")
    prefix = "test" if cfg.split == "test" else "eval"
    run_id = plain_name("run id", cfg.run_id or f"best-of-k__{target.name}__k{cfg.k}__{prefix}__{utc_stamp()}")
    startup = time.perf_counter() - tick

    meter = Meter(gen.device, count_flops=cfg.count_flops)
    tick = time.perf_counter()
    ranking, best_images, plain_images = [], None, None
    with gen.reference() if not cfg.from_run else contextlib.nullcontext():
        for c in range(cfg.k):
            images, scores = _round(gen, meter, target, prompts, cfg.seeds, cfg.seed_base + c * cfg.seeds,
                                    cfg.batch_size)
            ranking.append(scores.numpy())
            if best_images is None:
                best_images, best, plain_images = images, scores, images.clone()
            else:
                better = scores > best  # strict: a tie keeps the earlier candidate (``select``)
                best_images[better], best = images[better], torch.where(better, scores, best)
    sampling = time.perf_counter() - tick
    kept = select(np.stack(ranking))

    tick = time.perf_counter()
    # The base side of the comparison, on candidate 0's noise, as every run's evaluation has it (unmetered: it is
    # the comparison, not the reference's cost). Sampling from the base, candidate 0 is that image already.
    base_images = generate(gen, prompts, cfg.seeds, reference=True, batch_size=cfg.batch_size,
                           seed_base=cfg.seed_base)[0] if cfg.from_run else plain_images
    metrics, per_image = {}, {}
    for name, reward in evaluators.items():
        judge = HeldoutReward(reward)
        trained = judge.score(best_images, [p for p in prompts for _ in range(cfg.seeds)])
        per_image[name] = [float(v) for v in trained[0]]
        base = judge.score(base_images, [p for p in prompts for _ in range(cfg.seeds)])
        metrics.update({f"{prefix}/{name}/{k}": v for k, v in judge.compare(trained, base).items()})
    evaluation = time.perf_counter() - tick

    n = len(prompts) * cfg.seeds
    seconds, flops = meter.totals()
    compute = {"k": cfg.k, "prompts": len(prompts), "images": n, "images_per_prompt": cfg.seeds,
               "reward_calls": cfg.k * n, "reward_calls_per_image": cfg.k, "reward_calls_per_prompt": cfg.k * cfg.seeds,
               "generator_forwards": cfg.k * n, "decodes": cfg.k * n, "flops": flops, "flops_per_image": flops / n,
               "seconds": seconds, "phases": {p: s for p, s in meter.snapshot().items() if s["calls"]}}
    plain_mean = float(np.mean(ranking[0]))
    summary = {**metrics, f"{prefix}/selection/{target.name}/kept_mean": float(np.max(ranking, axis=0).mean()),
               f"{prefix}/selection/{target.name}/plain_mean": plain_mean, "compute": compute,
               "clock": {"startup_seconds": startup, "sampling_seconds": sampling, "eval_seconds": evaluation},
               "run_id": run_id}
    manifest = {"kind": "best-of-k", "config": config_dict(cfg), "generator": {"profile": world.name, **generator_record},
                "target": target.name,
                "versions": {"reward": target.version, "evals": {k: r.version for k, r in evaluators.items()},
                             "profile": world.name, "code": source_hash()},
                "precision": describe(run_cfg.mixed_precision, gen.device), "environment": describe_environment()}
    record = {"which": prefix, "step": 0, "prompts": list(prompts), "seeds": cfg.seeds, "seed_base": cfg.seed_base,
              "scores": per_image, "k": cfg.k, "kept": kept.tolist(),
              "candidates": {target.name: [r.tolist() for r in ranking]}}
    store = references(cfg.out)
    store.start(run_id, manifest)
    try:
        store.append_scores(run_id, record)
        store.finish(run_id, summary)
    finally:
        store.release(run_id)
    return store.run_dir(run_id) / "summary.json"

