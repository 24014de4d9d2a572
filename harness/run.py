"""``run()``: the one training loop every method goes through.

The harness draws the prompts and the noise, samples the K candidates, runs the frozen reference, decodes
and calls the reward; the method only turns that rollout into a loss. The harness then backpropagates,
clips, steps the optimizer, meters every phase, evaluates at fixed budget fractions, checkpoints and
writes the record. A method never touches the clock, the store, the budget or the filesystem.

Under ``accelerate launch`` the same loop runs in every process (``harness/distributed.py``): each
process runs its block of the update's micro-batches, gradients are summed once per update, spend is
summed over processes, and process 0 alone writes the record.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

import rewards as reward_registry
from harness import checkpoint, distributed, economy, faults, init_from, memory
from harness.api import Context, Rollout
from harness.budget import Meter, Spend
from harness.checks import CapabilityError, check_binary, check_run
from harness.config import RunConfig, plain_name
from harness.evaluation import EVAL_SEED_BASE, EvalSet, scores_record
from harness.export import write_outputs
from harness.lifecycle import StopSignals, open_run, record_end
from harness.parts import Parts
from harness.precision import reward_options
from harness.profiles import PROFILES
from harness.selection import check_select_metric, eval_split_rewards, evaluate_test
from harness.store import Store
from harness.trackers import Mirrored
from harness.world import World, dtype_for
from rewards import check_scores

__all__ = ["EVAL_SEED_BASE", "CapabilityError", "Parts", "prepare", "run", "update"]


def prepare(cfg: RunConfig, method_cfg: Any = None) -> Parts:
    """Check the run (``harness.checks.check_run``: every static check, before anything is built), then
    build every component."""
    method, method_cfg, needs = check_run(cfg, method_cfg)
    dtype = dtype_for(cfg)
    options = reward_registry.parse_options(cfg.reward_options)
    world = PROFILES.get(cfg.profile)(cfg)
    init = init_from.load(cfg, world.generator)  # another run's final weights (--init-from), before the optimizer
    memory.check_batch(world.generator, cfg.k * cfg.prompts_per_step, getattr(world.generator, "device", "cpu"))
    reward_name = cfg.reward or world.default_reward
    options = {n: _precision_options(n, options.get(n), dtype) for n in {reward_name, *cfg.evals, *world.default_evals}}
    reward = reward_registry.build(reward_name, options.get(reward_name))
    check_binary(needs, reward, reward_name)  # again on the built reward: a served one or fraction=true
    economy.decoder(world, cfg.reward_economy)  # the profile must offer it
    # Keyed by the built reward's name (a remote reward's is the served reward's, read from /health), so
    # metrics do not change with a server's port and one reward reached two ways is evaluated once.
    eval_rewards = {reward.name: reward}
    for name in dict.fromkeys(cfg.evals or world.default_evals):
        if name != reward_name:
            built = reward_registry.build(name, options.get(name))
            eval_rewards.setdefault(built.name, built)
    split_rewards = eval_split_rewards(cfg, eval_rewards)
    evals = EvalSet("eval", world.prompts(cfg.eval_split)[: cfg.eval_prompt_limit or None], cfg.eval_seeds,
                    cfg.eval_seed_base, split_rewards)
    test = EvalSet("test", world.prompts(cfg.test_split), cfg.test_seeds, cfg.test_seed_base,
                   eval_rewards) if cfg.test_split else None
    curve = EvalSet("curve", world.prompts(cfg.curve_split), cfg.curve_seeds, cfg.test_seed_base,
                    eval_rewards) if cfg.curve_split else None
    if world.check_splits is not None:  # the curve split is read by no choice: it may be the test split itself
        sets = {"train": world.prompts(cfg.prompts), "eval": evals.prompts, "test": test.prompts if test else []}
        world.check_splits({name: prompts for name, prompts in sets.items() if prompts})
    check_select_metric(cfg, split_rewards)  # against the built rewards' names: the one check that waits for them
    meter = Meter(world.generator.device, count_flops=cfg.count_flops)
    ctx = Context(k=cfg.k, reward=reward, decode=lambda x: _decode(meter, world, x),
                  features=lambda space: _features(meter, world, space), rng=torch.Generator(),
                  offline=world.offline if cfg.offline_data else None,
                  info={"profile": world.name, "prompts_per_step": cfg.prompts_per_step}, count=meter.count,
                  gather=distributed.gather)
    state = method.init(method_cfg, ctx)
    optimizer = torch.optim.AdamW(world.generator.trainable(), lr=method_cfg.lr, betas=(0.9, 0.999),
                                  weight_decay=cfg.weight_decay, eps=1e-8)
    return Parts(cfg=cfg, method=method, method_cfg=method_cfg, world=world, reward=reward,
                 eval_rewards=eval_rewards, needs=needs,
                 train_prompts=world.prompts(cfg.prompts), evals=evals, test=test, budget=cfg.budget(), meter=meter,
                 ctx=ctx, state=state, optimizer=optimizer, init=init, curve=curve)


def _precision_options(name: str, options: dict[str, str] | None, dtype: torch.dtype) -> dict[str, str]:
    """A reward's options with the run's mixed precision as its dtype, unless the options set one."""
    return reward_options(reward_registry.REWARDS.get(name), options, dtype)


def _decode(meter: Meter, world: World, latents: Tensor) -> Tensor:
    return meter.call("decode", world.generator.decode, latents, backward="decode_backward")


def _features(meter: Meter, world: World, space: str) -> Callable[[Tensor], dict[str, Tensor]]:
    fmap = world.features(space)

    def metered(latents: Tensor) -> dict[str, Tensor]:
        x = _decode(meter, world, latents) if space in world.pixel_spaces else latents
        return meter.call("features", fmap, x, backward="features_backward", key=f"features:{space}")
    return metered


# ---------------------------------------------------------------------------------------------------
# Sampling: the harness, not the method, draws prompts and noise, samples and scores.
# ---------------------------------------------------------------------------------------------------

def micro_batch(parts: Parts, update: int, micro: int) -> tuple[list[str], list[int]]:
    """The prompts and per-candidate noise seeds of one micro-batch; a function of (seed, update, micro)."""
    cfg, world = parts.cfg, parts.world
    rng = np.random.default_rng([cfg.seed, update, micro])
    if world.sample_prompts is not None:
        prompts = world.sample_prompts(rng, parts.train_prompts, cfg.prompts_per_step)
    else:
        pool = parts.train_prompts
        idx = rng.choice(len(pool), size=cfg.prompts_per_step, replace=len(pool) < cfg.prompts_per_step)
        prompts = [pool[i] for i in idx]
    seeds = rng.integers(0, 2 ** 31 - 1, size=len(prompts) * cfg.k).tolist()
    return prompts, seeds


def round_seeds(parts: Parts, update: int, micro: int, round_: int) -> list[int]:
    """The noise seeds of extra sampling round ``round_`` >= 1 of a micro-batch (``Needs.rounds``); a function
    of (seed, update, micro, round), so every process and every resume draws the same."""
    rng = np.random.default_rng([parts.cfg.seed, update, micro, round_])
    return rng.integers(0, 2 ** 31 - 1, size=parts.cfg.prompts_per_step * parts.cfg.k).tolist()


def sample(parts: Parts, prompts: list[str], seeds: list[int]) -> Rollout:
    """K candidates per prompt from the trainable generator (with grad), the reference on the same noise,
    decoded and scored; everything metered."""
    gen, meter, method, k = parts.world.generator, parts.meter, parts.method, parts.cfg.k
    cond = meter.call("text", gen.encode, prompts).repeat(k)
    noise = gen.noise(seeds)
    if hasattr(method, "propose"):  # e.g. Neighbor-GRPO's neighbours of a base noise
        noise = method.propose(parts.method_cfg, noise.reshape(len(prompts), k, *noise.shape[1:])).flatten(0, 1)
    latents = meter.call("generate", gen.latents, noise, cond, backward="generator_backward",
                         params=gen.trainable())
    ref = None
    if parts.needs.reference:
        with gen.reference():
            ref = meter.call("reference", gen.latents, noise, cond)
    scored = method.act(parts.method_cfg, latents.detach(), noise) if hasattr(method, "act") else latents
    prompts_k = [p for p in prompts for _ in range(k)]
    if parts.needs.reward_grad:
        images = meter.call("decode", gen.decode, scored, backward="decode_backward")
        scores = meter.call("reward", parts.reward.score, images, prompts_k, backward="reward_backward")
    else:
        cheap = parts.cfg.reward_economy
        call, count = economy.scorer(parts.reward, cheap, gen.device)
        with torch.no_grad():
            images = meter.call("decode", economy.decoder(parts.world, cheap), scored.detach(), key=f"decode:{cheap}")
            scores = meter.call("reward", call, images, prompts_k, count=count)

    rewards = check_scores(scores, len(prompts_k), parts.reward.name).to(latents.device)
    return Rollout(prompts=prompts, k=k, cond=cond, noise=noise, latents=latents, ref_latents=ref,
                   scored_latents=scored.detach(), images=images if parts.needs.reward_grad else images.detach(),
                   rewards=rewards)


def update(parts: Parts, step: int, spend: Spend) -> dict[str, float]:
    """One optimizer update over ``grad_accum`` micro-batches (this process's block of them); adds what it
    spent, summed over processes, to ``spend`` and returns the logs averaged over all micro-batches."""
    cfg, meter, gen = parts.cfg, parts.meter, parts.world.generator
    parts.optimizer.zero_grad(set_to_none=True)
    meter.trace.clear()  # keep only the latest update's computation pattern
    before = meter.totals()
    logs: dict[str, float] = {}
    counts = {"images": 0, "reward_calls": 0, "reference_images": 0}
    try:
        for micro in distributed.current().micro_batches(cfg.grad_accum):
            _micro_step(parts, step, micro, logs, counts)
        error = None
    except Exception as exc:  # every process must learn of it before the gradient all-reduce
        error = exc
    distributed.agree(error)
    if hasattr(parts.method, "end_update"):  # e.g. VGG-Flow's clip threshold, from every process's norms
        parts.method.end_update(parts.method_cfg, parts.state, parts.ctx)
    with meter.phase("optimizer"):
        distributed.all_reduce_gradients(gen.trainable())
        norm = torch.nn.utils.clip_grad_norm_(gen.trainable(), cfg.grad_clip)
        parts.optimizer.step()
    after = meter.totals()
    ranks = distributed.gather({"logs": logs, "counts": counts, "seconds": after[0] - before[0],
                                "flops": after[1] - before[1], "total_seconds": after[0]})
    for key in counts:
        setattr(spend, key, getattr(spend, key) + sum(r["counts"][key] for r in ranks))
    # The update ends when the slowest process does; FLOPs are all the processes' work.
    spend.seconds += max(r["seconds"] for r in ranks)
    spend.flops += sum(r["flops"] for r in ranks)
    out: dict[str, float] = {}
    for r in ranks:
        for key, value in r["logs"].items():
            out[key] = out.get(key, 0.0) + value
    out["grad_norm"] = float(norm)
    if len(ranks) > 1:
        out.update({f"rank_seconds/{i}": r["total_seconds"] for i, r in enumerate(ranks)})
    return out


def _micro_step(parts: Parts, step: int, micro: int, logs: dict[str, float], counts: dict[str, int]) -> None:
    """Sample, score and backpropagate global micro-batch ``micro`` of update ``step``."""
    cfg, meter = parts.cfg, parts.meter
    prompts, seeds = micro_batch(parts, step, micro)
    parts.ctx.rng.manual_seed(int(np.random.SeedSequence([cfg.seed, step, micro, 7]).generate_state(1)[0]))
    batch = sample(parts, prompts, seeds)
    needs = parts.needs
    for round_ in range(1, needs.rounds):  # more candidates until the method has enough (metered like the first)
        if needs.enough is not None and needs.enough(batch.per_prompt(batch.rewards.detach())):
            break
        batch = batch.extend(sample(parts, prompts, round_seeds(parts, step, micro, round_)))
    if step == 0 and micro == 0 and cfg.reward_economy != "exact":
        logs.update({f"agreement_{k}": v for k, v in _agreement(parts, batch).items()})
    with meter.phase("loss"):
        loss, method_logs = parts.method.step(parts.method_cfg, parts.state, batch, parts.ctx)
    if not torch.isfinite(loss.detach()).all():
        raise FloatingPointError(f"method '{cfg.method}' produced a non-finite loss ({float(loss.detach())}) at update {step}")
    if loss.requires_grad:  # a micro-batch with no preference signal can have a constant loss
        with meter.phase("generator_backward"):
            (loss / cfg.grad_accum).backward()
    faults.point("update")
    n = len(batch.rewards)
    counts["images"] += n
    counts["reward_calls"] += n
    counts["reference_images"] += n if batch.ref_latents is not None else 0
    r = batch.rewards.detach()
    rounds = {"sample_rounds": batch.k / cfg.k} if needs.rounds > 1 else {}
    for key, value in {"loss": float(loss.detach()), "reward_mean": float(r.mean()), "reward_std": float(r.std()),
                       **rounds, **method_logs}.items():
        logs[key] = logs.get(key, 0.0) + float(value) / cfg.grad_accum


def _agreement(parts: Parts, batch: Rollout) -> dict[str, float]:
    """Rank agreement of the run's reward economy with the exact path on its first micro-batch (not metered)."""

    prompts_k = [p for p in batch.prompts for _ in range(batch.k)]
    with torch.no_grad():
        exact = parts.reward.score(parts.world.generator.decode(batch.scored_latents), prompts_k)
    exact = check_scores(exact, len(prompts_k), parts.reward.name)
    m = parts.needs.anchors or max(1, batch.k // 4)
    return economy.agreement(exact, batch.rewards, batch.k, m)


# ---------------------------------------------------------------------------------------------------
# The loop and the record
# ---------------------------------------------------------------------------------------------------

def run(cfg: RunConfig, method_cfg: Any = None, *, store: Store | None = None, resume: str = "",
        on_eval: Callable[[float, dict[str, float]], None] | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.method`` under ``cfg``'s budget and record it; returns the run's summary.

    ``resume`` continues a stored run from its checkpoint (or restarts it when it has none). The run holds
    its lock throughout; SIGINT and SIGTERM stop it at the next update boundary after a checkpoint, marked
    "interrupted". ``on_eval(fraction, metrics)`` is called after each evaluation (Optuna reports and prunes
    there; an exception it raises, such as ``optuna.TrialPruned``, ends the run with status "pruned").
    """
    store = store or Store(cfg.out)
    tick = time.perf_counter()
    if resume:
        plain_name("--resume", resume)
    parts = prepare(cfg, method_cfg)
    startup = time.perf_counter() - tick
    distributed.stop_on_sigterm()
    main = distributed.current().main
    # One process: SIGINT/SIGTERM stop at a safe point. Several: the launcher's SIGTERM means another process
    # died, so the run stops at once (distributed.stop_on_sigterm) rather than wait in a collective.
    with StopSignals(enabled=distributed.current().world <= 1) as stop:
        run_id, start, manifest = open_run(store, parts, resume)
        writer: Any = store if main else _Silent(store)
        try:
            try:
                if main and cfg.log_with:  # a tracker that cannot start fails the run before any update
                    writer = Mirrored(store, cfg.log_with, run_id, manifest)
                summary = _loop(parts, writer, run_id, start, on_eval, progress and main, stop)
                summary["clock"]["startup_seconds"] = startup
                writer.finish(run_id, summary)
            except BaseException as exc:
                record_end(store if main else writer, run_id, exc)
                if hasattr(writer, "close"):
                    writer.close()
                raise
        finally:
            store.release(run_id)
    return summary


class _Silent:
    """The store as processes other than 0 see it: they run the same loop but write nothing."""

    def __init__(self, store: Store):
        self.root, self.runs_dir = store.root, store.runs_dir
        self.run_dir = store.run_dir

    def start(self, *args: Any, **kwargs: Any) -> None: ...
    def append(self, *args: Any, **kwargs: Any) -> None: ...
    def append_scores(self, *args: Any, **kwargs: Any) -> None: ...
    def set_status(self, *args: Any, **kwargs: Any) -> None: ...
    def finish(self, *args: Any, **kwargs: Any) -> None: ...


def _loop(parts: Parts, store: Store, run_id: str, start, on_eval, progress: bool,
          stop: StopSignals | None = None) -> dict[str, Any]:

    cfg, meter, spend, gen = parts.cfg, parts.meter, start.spend, parts.world.generator
    clock = {"eval": 0.0, "test": 0.0, "checkpoint": 0.0}

    def save() -> None:
        tick = time.perf_counter()
        checkpoint.save(store, run_id, parts, spend, start.evaluated_upto, selection)
        clock["checkpoint"] += time.perf_counter() - tick

    tick = time.perf_counter()
    parts.evals.base(gen)  # the base side of every curve, once
    clock["eval"] += time.perf_counter() - tick
    pending = sorted(f for f in set(cfg.eval_at) | {1.0} if f > start.evaluated_upto)
    bar = _progress(parts, spend, progress)
    metrics, images, selection = {}, None, start.selection
    while True:
        if stop is not None:
            stop.check(save, run_id, spend.updates)
        fraction, done = parts.budget.fraction(spend), parts.budget.done(spend)
        if done:
            # The final checkpoint comes before the final evaluation: a run stopped from here on resumes
            # into that evaluation rather than claiming results that were never written.
            save()
            faults.point("final-checkpoint")
        if pending and fraction >= pending[0] - 1e-12:
            tick = time.perf_counter()
            metrics, images = parts.evals.evaluate(gen)
            if parts.curve is not None:  # beside the row, never offered to selection (which reads eval/ keys)
                metrics = {**metrics, **parts.curve.evaluate(gen)[0]}
                store.append_scores(run_id, scores_record(parts.curve, spend.updates, "curve"))
            clock["eval"] += time.perf_counter() - tick
            store.append(run_id, {"kind": "eval", "step": spend.updates, "fraction": fraction, **_budget_row(spend),
                                  **metrics})
            store.append_scores(run_id, scores_record(parts.evals, spend.updates, "eval"))
            selection.offer(parts, spend.updates, metrics)
            while pending and fraction >= pending[0] - 1e-12:
                start.evaluated_upto = pending.pop(0)
            if on_eval is not None:
                on_eval(fraction, metrics)
        if done:
            break
        logs = update(parts, spend.updates, spend)
        spend.updates += 1
        store.append(run_id, {"kind": "train", "step": spend.updates, **_budget_row(spend),
                              **{f"train/{k}": v for k, v in logs.items()}})
        if cfg.checkpoint_every and spend.updates % cfg.checkpoint_every == 0 and not parts.budget.done(spend):
            save()
        bar.update(spend, logs)
    bar.close()
    if distributed.current().main:  # the selected weights in adapter/, the final ones beside them
        write_outputs(parts, store.run_dir(run_id), selection, spend.updates, images, metrics)
    tick = time.perf_counter()
    tested = evaluate_test(parts, selection, spend.updates,
                           lambda which: store.append_scores(run_id, scores_record(parts.test, spend.updates, which)))
    clock["test"] = time.perf_counter() - tick
    chosen = {"select/metric": selection.metric, "select/value": selection.value, "select/step": selection.step} \
        if cfg.select_metric else {}
    return {**metrics, **tested, **chosen, **_budget_row(spend), "phases": _per_update(meter, spend.updates),
            "clock": {f"{k}_seconds": v for k, v in clock.items()}, "run_id": run_id}


def _budget_row(spend: Spend) -> dict[str, float]:
    return {f"budget/{k}": v for k, v in spend.as_dict().items()}


def _per_update(meter: Meter, updates: int) -> dict[str, dict[str, float]]:
    """Per-phase seconds, FLOPs and peak memory, averaged over updates."""
    n = max(updates, 1)
    return {p: {"seconds": s["seconds"] / n, "flops": s["flops"] / n, "peak_bytes": s["peak_bytes"]}
            for p, s in meter.snapshot().items()}


class _progress:
    """A tqdm bar over the budget fraction, showing the current reward and an ETA."""

    def __init__(self, parts: Parts, spend: Spend, enabled: bool):
        from tqdm.auto import tqdm

        self.parts = parts
        self.bar = tqdm(total=1000, disable=not enabled, desc=f"{parts.cfg.method} s{parts.cfg.seed}",
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}", leave=False)
        self.bar.update(int(1000 * min(parts.budget.fraction(spend), 1.0)))

    def update(self, spend: Spend, logs: dict[str, float]) -> None:
        done = int(1000 * min(self.parts.budget.fraction(spend), 1.0))
        self.bar.set_postfix_str(f"upd {spend.updates} reward {logs['reward_mean']:.4g} loss {logs['loss']:.4g}")
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()
