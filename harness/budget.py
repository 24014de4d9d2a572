"""The budget and the meter: what an update costs, measured by the harness and never by a method.

The :class:`Meter` attributes every update's cost to phases (text encoding, trainable and reference
generation, decode, reward forward and backward, features forward and backward, loss, generator
backward, optimizer). For each phase it records

* **FLOPs** from ``torch.utils.flop_counter.FlopCounterMode``, counted once per (callable, input shapes,
  grad mode) and then cached. Counting runs outside the clock, with the math SDPA backend forced (the
  CPU flash kernel counts as zero) and never inside ``inference_mode`` (which counts as zero too).
  Backward FLOPs come from the same counting pass (``autograd.grad`` of the callable's output).
* **Seconds** from ``perf_counter``, with device synchronisation at every boundary on a GPU. Backward
  passes run inside one ``loss.backward()``; gradient hooks on the tensors that cross component
  boundaries split that time between the reward, decoder, feature and generator backward phases.
* **Memory**: CUDA max allocated per phase on a GPU; resident set size (RSS) at the phase's end on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

PHASES = ("text", "generate", "reference", "decode", "reward", "reward_backward", "decode_backward",
          "features", "features_backward", "loss", "generator_backward", "optimizer")
"""Every phase an update's cost is attributed to, in pipeline order."""


@dataclass
class Spend:
    """What a run has spent so far; all counts are per run, cumulative."""

    updates: int = 0
    images: int = 0
    """Trainable-generator samples."""
    reference_images: int = 0
    """Frozen reference-generator samples."""
    reward_calls: int = 0
    """Images scored by the training reward."""
    seconds: float = 0.0
    """Metered wall-clock of the updates (evaluation and checkpointing excluded)."""
    flops: float = 0.0
    """Counted FLOPs of the updates."""

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Budget:
    """Limits on a run; the run stops when any limit that is set is reached."""

    updates: int | None = None
    """Optimizer updates."""
    images: int | None = None
    """Trainable-generator samples."""
    reward_calls: int | None = None
    """Images scored by the training reward."""
    seconds: float | None = None
    """Metered training wall-clock."""
    flops: float | None = None
    """Counted training FLOPs."""

    def __post_init__(self) -> None:
        limits = self.limits()
        if not limits:
            raise ValueError("the budget sets no limit; give at least one of updates, images, reward_calls, "
                             "seconds, flops")
        for name, value in limits.items():
            if not value > 0:
                raise ValueError(f"budget {name} must be positive, got {value}")

    def limits(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def fraction(self, spend: Spend) -> float:
        """The largest spent/limit ratio over the limits that are set."""
        return max(getattr(spend, k) / v for k, v in self.limits().items())

    def done(self, spend: Spend) -> bool:
        return self.fraction(spend) >= 1.0 - 1e-12


@dataclass
class PhaseStat:
    seconds: float = 0.0
    flops: float = 0.0
    calls: int = 0
    peak_bytes: int = 0


@dataclass
class _Count:
    forward: float
    backward: float


@dataclass
class TraceEntry:
    """One metered component call of an update: what ran, on how many items, and whether its backward ran.

    The trace is the method's computation pattern; ``harness.compute.flops`` replays it on full-size models.
    """

    phase: str
    component: str
    items: int
    """Leading batch size of the first argument (images, latents or prompts)."""
    grad: bool
    """Autograd was recording (the call builds a graph)."""
    trainable: bool
    """The call used trainable weights (the generator's adapters)."""
    backward: str | None = None
    """The phase its backward pass is charged to, if one was requested."""
    backward_ran: bool = False
    """The backward pass actually reached this call during the update."""


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: report nothing rather than a wrong number
        return 0


class Meter:
    """Attributes seconds, FLOPs and memory of an update to :data:`PHASES`.

    Use ``with meter.phase(name):`` for work the harness does itself and ``meter.call(name, fn, ...)``
    for component calls whose FLOPs are counted and whose backward pass is split off by hooks.
    """

    def __init__(self, device: torch.device | str = "cpu", *, count_flops: bool = True):
        self.device = torch.device(device)
        self.count_flops = count_flops
        self.stats: dict[str, PhaseStat] = {p: PhaseStat() for p in PHASES}
        self._counts: dict[tuple, _Count] = {}
        self._stack: list[str] = []
        self._mark = 0.0
        self._paused = 0.0
        self._pending_generator: list[float] = []
        self.trace: list[TraceEntry] = []
        """Every metered call since the last ``reset_trace()``."""

    # -- clock --------------------------------------------------------------------------------
    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _charge(self, phase: str, seconds: float, flops: float = 0.0) -> None:
        stat = self.stats[phase]
        stat.seconds += max(seconds, 0.0)
        stat.flops += flops

    def _split(self, phase: str, flops: float) -> None:
        """Close the running segment and charge it to ``phase`` (called from backward hooks)."""
        now = self._now()
        self._charge(phase, now - self._mark - self._paused, flops)
        self._mark, self._paused = now, 0.0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the block's wall-clock (less any hook-split segments) to ``name``."""
        if name not in self.stats:
            raise ValueError(f"unknown phase '{name}'; valid phases: {', '.join(PHASES)}")
        if self._stack:  # nested: close the outer segment first
            self._split(self._stack[-1], 0.0)
        else:
            self._mark, self._paused = self._now(), 0.0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._stack.append(name)
        try:
            yield
        finally:
            self._stack.pop()
            self._split(name, 0.0)
            self.stats[name].calls += 1
            if name == "generator_backward" and self._pending_generator:
                self.stats[name].flops += sum(self._pending_generator)
                self._pending_generator.clear()
            peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else _rss_bytes()
            self.stats[name].peak_bytes = max(self.stats[name].peak_bytes, int(peak))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Exclude the block from the running phase's seconds (FLOP counting passes)."""
        start = self._now()
        try:
            yield
        finally:
            self._paused += self._now() - start

    def count(self, flops: float) -> None:
        """Charge ``flops`` to the running phase: an analytic count of work the counter cannot see (a method's
        own tensor arithmetic, e.g. ``methods.drift.drift_flops``), reported through ``Context.count``."""
        if not self._stack:
            raise RuntimeError("meter.count() outside a phase: analytic FLOPs are charged to the running phase "
                               "(a method reports them from step())")
        if not flops >= 0 or not math.isfinite(flops):
            raise ValueError(f"analytic FLOPs must be finite and non-negative, got {flops}")
        if self.count_flops:
            self.stats[self._stack[-1]].flops += float(flops)

    # -- metered component calls --------------------------------------------------------------
    def call(self, phase: str, fn: Callable[..., Any], *args: Any, backward: str | None = None,
             params: Sequence[torch.nn.Parameter] = (), key: str | None = None,
             count: Callable[..., Any] | None = None) -> Any:
        """Run ``fn(*args)`` in ``phase``; count its FLOPs once per shape; meter its backward pass.

        ``backward`` names the phase its backward pass is charged to; ``params`` are trainable weights
        it uses (the generator's adapters), whose backward is charged when ``generator_backward`` runs.
        ``count`` is the same computation without ``inference_mode``, when ``fn`` uses it (FLOPs inside
        inference mode count as zero).
        """
        counted = self._count(key or phase, count or fn, args, params)
        with self.phase(phase):
            out = fn(*args)
        self.stats[phase].flops += counted.forward
        first = args[0] if args else None
        items = first.shape[0] if isinstance(first, Tensor) and first.ndim else len(first) if isinstance(first, (list, tuple)) else 1
        entry = TraceEntry(phase, key or phase, int(items), torch.is_grad_enabled(), bool(params))
        self.trace.append(entry)
        if backward is not None and torch.is_grad_enabled():
            entry.backward = backward
            self._hook(out, args, backward, counted.backward, entry)
        return out

    def _hook(self, out: Any, args: Sequence[Any], backward: str, flops: float, entry: TraceEntry) -> None:
        if entry.trainable:
            if isinstance(out, Tensor) and out.requires_grad:
                # Gradient reached the generator's output: its own backward will run in this backward pass.
                out.register_hook(lambda g: self._mark_generator(flops, entry))
            return
        inputs = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
        for i, t in enumerate(inputs):
            # The gradient for our input is complete once this component's backward has run.
            t.register_hook(lambda g, f=(flops if i == 0 else 0.0): self._backward_done(backward, f, entry))

    def _backward_done(self, phase: str, flops: float, entry: TraceEntry) -> None:
        entry.backward_ran = True
        if self._stack:
            self._split(phase, flops)

    def _mark_generator(self, flops: float, entry: TraceEntry) -> None:
        if self._stack and self._stack[-1] == "generator_backward":
            entry.backward_ran = True
            self._pending_generator.append(flops)

    def _count(self, name: str, fn: Callable[..., Any], args: Sequence[Any],
               params: Sequence[torch.nn.Parameter]) -> _Count:
        if not self.count_flops:
            return _Count(0.0, 0.0)
        shapes = tuple((tuple(a.shape), a.dtype, a.requires_grad) if isinstance(a, Tensor) else type(a).__name__
                       for a in args)
        key = (name, shapes, torch.is_grad_enabled(), bool(params))
        if key not in self._counts:
            with self.paused() if self._stack else contextlib.nullcontext():
                self._counts[key] = count_flops(fn, args, params)
        return self._counts[key]

    # -- reports ------------------------------------------------------------------------------
    def totals(self) -> tuple[float, float]:
        """(seconds, FLOPs) summed over all phases."""
        return (sum(s.seconds for s in self.stats.values()), sum(s.flops for s in self.stats.values()))

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {p: dataclasses.asdict(s) for p, s in self.stats.items()}

    def reset(self) -> None:
        self.stats = {p: PhaseStat() for p in PHASES}


def count_flops(fn: Callable[..., Any], args: Sequence[Any], params: Sequence[torch.nn.Parameter] = ()) -> _Count:
    """FLOPs of ``fn(*args)`` forward and, if its output carries grad, of its backward pass.

    The backward count differentiates the output with respect to the inputs that require grad and
    ``params``, which is what the training backward pass computes through this component.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if torch.is_inference_mode_enabled():
        raise RuntimeError("FLOPs cannot be counted inside torch.inference_mode (they count as zero); use no_grad")
    clones = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a for a in args]
    with sdpa_kernel(SDPBackend.MATH):
        counter = FlopCounterMode(display=False)
        with counter:
            out = fn(*clones)
        forward = float(counter.get_total_flops())
        backward = 0.0
        wrt = [a for a in clones if isinstance(a, Tensor) and a.requires_grad] + list(params)
        outs = [t for t in _tensors(out) if t.requires_grad]
        if torch.is_grad_enabled() and outs and wrt:
            counter = FlopCounterMode(display=False)
            with counter:
                torch.autograd.grad(outs, wrt, grad_outputs=[torch.ones_like(t) for t in outs], allow_unused=True)
            backward = float(counter.get_total_flops())
    return _Count(forward, backward)


def _tensors(out: Any) -> list[Tensor]:
    """The tensors in a callable's output: a tensor, a dict of tensors (feature maps) or a sequence."""
    if isinstance(out, Tensor):
        return [out]
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else []
    return [v for v in values if isinstance(v, Tensor)]


def format_flops(flops: float) -> str:
    """Human units: 1.2 GFLOP, 3.4 TFLOP."""
    if flops <= 0 or not math.isfinite(flops):
        return "0"
    units = ["", "K", "M", "G", "T", "P", "E"]
    k = min(int(math.log10(flops) // 3), len(units) - 1)
    return f"{flops / 10 ** (3 * k):.3g} {units[k]}FLOP"
