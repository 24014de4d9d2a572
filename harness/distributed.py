"""Data-parallel layout: which process runs which micro-batches, and the few collectives a run needs.

``accelerate launch -m harness train ...`` starts P processes (torch.distributed underneath: NCCL on GPUs,
gloo on CPU). The run config stays the experiment: ``grad_accum`` is the number of micro-batches of the
*whole* update, so the effective batch is ``prompts_per_step * k * grad_accum`` images whatever P is.
Global micro-batch m of update u has the prompts and noise of ``(seed, u, m)``; process r owns the
contiguous block ``[r A/P, (r + 1) A/P)``. A P-process run therefore sees the same prompts and noise as a
1-process run of the same config, which accumulates all A micro-batches itself.

Each process samples, references, decodes and scores its own micro-batches (DrPO ranks within a prompt,
so nothing is gathered). A method whose state depends on the whole update (VGG-Flow's clip threshold) sets it
in its ``end_update`` hook, through ``Context.gather`` (:func:`gather`), never torch.distributed itself.
The loss of micro-batch m is divided by the global A; each process sums its micro-batches' gradients locally and one SUM all-reduce over the trainable (LoRA) parameters follows at
the update's end. That is DDP with ``no_sync`` on every accumulation micro-step but the last, written out
because the generator's one-step map is not a module ``forward`` that DDP could wrap.

Process 0 writes the record; the others never touch the store and get what they need by broadcast.
Without a launcher (or with one process) every function here is a no-op and nothing is initialised.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch

T = TypeVar("T")


class RankFailure(RuntimeError):
    """Another process of the run failed; this one stops too."""


@dataclass(frozen=True)
class Layout:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def micro_batches(self, grad_accum: int) -> range:
        """The global micro-batch indices this process runs (a contiguous block of A/P)."""
        share = grad_accum // self.world
        return range(self.rank * share, (self.rank + 1) * share)


_LAYOUT: Layout | None = None


def launched_world() -> int:
    """The process count a launcher (accelerate/torchrun) asked for; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def check_single_launch() -> None:
    """One line when a launcher asked for several processes but this is the only one.

    ``accelerate launch --num_processes N`` without ``--multi_gpu`` (or a config without a multi-process
    distributed type) runs its simple launcher: one process, with MASTER_ADDR/MASTER_PORT set for the N it
    was asked for but no WORLD_SIZE. ACCELERATE_NUM_PROCESSES, where a launcher sets it, is checked too.
    """
    if launched_world() > 1:
        return
    asked = os.environ.get("ACCELERATE_NUM_PROCESSES", "")
    by_accelerate = "ACCELERATE_USE_CPU" in os.environ or "ACCELERATE_MIXED_PRECISION" in os.environ
    if (asked.isdigit() and int(asked) > 1) or (by_accelerate and os.environ.get("MASTER_PORT")):
        what = f"{asked} processes" if asked.isdigit() and int(asked) > 1 else "several processes (MASTER_PORT is set)"
        raise ValueError(f"the launch asked for {what} but only this one runs: launch with `accelerate launch "
                         "--multi_gpu --num_processes N` (on CPU too, which uses gloo), or drop --num_processes")


def launch_precision(requested: str | None) -> str | None:
    """The run's mixed precision under ``accelerate launch``: accelerate's own setting (ACCELERATE_MIXED_PRECISION)
    unless ``--mixed-precision`` was given, and one line when the two differ; ``requested`` without a launcher."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    if not launched:
        return requested
    if launched not in ("no", "fp16", "bf16"):
        raise ValueError(f"accelerate launch --mixed_precision {launched} is not supported; valid: no, fp16, bf16")
    if requested and requested != launched:
        raise ValueError(f"--mixed-precision {requested} conflicts with accelerate launch's --mixed_precision "
                         f"{launched}; give one of them, or the same value to both")
    return launched


def layout(device: str = "auto") -> Layout:
    """This process's layout; initialises the process group through accelerate on first use.

    ``device`` is the run's device setting: "cpu" (or "auto" without CUDA) selects gloo.
    """
    global _LAYOUT
    if _LAYOUT is not None:
        return _LAYOUT
    check_single_launch()
    if launched_world() <= 1:
        _LAYOUT = Layout()
        return _LAYOUT
    from accelerate import PartialState

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if state.num_processes <= 1 or not torch.distributed.is_initialized():
        raise RuntimeError(f"the launcher asked for {launched_world()} processes but accelerate set up "
                           f"{state.num_processes} (on CPU launch with `accelerate launch --multi_gpu "
                           "--num_processes N`, which uses gloo)")
    _LAYOUT = Layout(state.process_index, state.num_processes, state.local_process_index)
    if not cpu:
        torch.cuda.set_device(_LAYOUT.local_rank)  # "cuda" then means this process's GPU everywhere
    return _LAYOUT


def shutdown() -> None:
    """End a launched run cleanly: wait for every process, then tear the process group down, so no process
    exits while a peer still holds the gloo connection (which can abort the peer at interpreter shutdown)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def current() -> Layout:
    """The layout set up by :func:`layout`, or the single-process one."""
    return _LAYOUT or Layout()


def check_divides(grad_accum: int, prompts_per_step: int, k: int, world: int) -> None:
    """Raise when ``world`` processes cannot split the update's micro-batches evenly."""
    if grad_accum % world:
        raise ValueError(f"{world} processes do not divide the effective batch of {grad_accum} micro-batches "
                         f"({prompts_per_step} prompt(s) x K={k} each): set --grad-accum to a multiple of {world}")


# -- collectives (no-ops with one process) ----------------------------------------------------------

def all_reduce_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over processes, in one flat buffer (a missing grad counts as 0)."""
    if current().world <= 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n


def gather(value: T) -> list[T]:
    """Every process's ``value`` (picklable), in rank order."""
    if current().world <= 1:
        return [value]
    out: list[Any] = [None] * current().world
    torch.distributed.all_gather_object(out, value)
    return out


def broadcast(value: T) -> T:
    """Process 0's ``value`` on every process."""
    if current().world <= 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def agree(error: BaseException | None) -> None:
    """Every process reports whether its part of a step failed; if any did, every process raises.

    Called before each collective that a failed process would never reach, so one failing rank stops
    the whole run with its own message instead of leaving the others blocked.
    """
    if current().world <= 1:
        if error is not None:
            raise error
        return
    reports = gather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, msg) for r, msg in enumerate(reports) if msg is not None]
    if failed:
        rank, message = failed[0]
        raise RankFailure(f"process {rank} of {current().world} failed: {message}")


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on process 0 only and hand its result, or its error, to every process."""
    if current().world <= 1:
        return fn()
    result, error = None, None
    if current().main:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 -- re-raised below, on every process
            error = exc
    box = broadcast((result, None if error is None else (type(error), str(error))))
    if error is not None:
        raise error
    if box[1] is not None:
        kind, message = box[1]
        raise (kind(message) if issubclass(kind, Exception) else RankFailure(message))
    return box[0]


class Terminated(Exception):
    """The launcher stopped this process (SIGTERM), e.g. because another process died."""


def stop_on_sigterm() -> None:
    """Turn the launcher's SIGTERM into an exception, so the run is marked failed before the process ends."""
    if current().world <= 1:
        return

    def handler(signum, frame):
        raise Terminated("stopped by the launcher (SIGTERM): another process of the run failed or was killed")
    signal.signal(signal.SIGTERM, handler)
