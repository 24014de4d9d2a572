"""The run configuration: one frozen dataclass, from which the CLI is generated.

A comparison is fair when every method runs under the same ``RunConfig``: same profile, prompts, noise
seeds, candidates per prompt, micro-batches and budget. Only the method and its own ``Config`` differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

from harness.budget import Budget
from harness.evaluation import EVAL_SEED_BASE, TEST_SEED_BASE
from harness.redact import redact
from harness.registry import unknown
from harness.validate import Bound, Length, at_least, check, nonnegative, positive, within

SEED_MAX = 2 ** 62
"""Largest seed or seed base: noise seeds are base + 1000 i + j and torch takes a signed 64-bit seed."""
K_MAX = 4096
"""Most candidates per prompt; the run's memory estimate refuses what the machine cannot hold well below it."""
PROMPTS_MAX = 4096
"""Most prompts per micro-batch."""
LORA_RANK_MAX = 4096
"""Largest LoRA rank (above any projection's width at the supported sizes; memory is estimated as well)."""
TAG_MAX = 200
"""Most characters of ``--tag`` (a label: it is copied into every record, tracker and log line)."""
OPTION_MAX = 4096
"""Most characters of one ``--reward-options`` entry."""


@dataclass(frozen=True)
class RunConfig:
    """Everything about a training run except the method's own hyperparameters."""

    method: str = "drpo"
    """Update rule (see ``driftbench list``)."""
    profile: str = "shapes"
    """Generator profile: shapes (embedded default), tiny, tiny-xl, sd-turbo, sdxl-turbo."""
    model: str = ""
    """Local directory or cached Hub id of real weights (sd-turbo / sdxl-turbo profiles only)."""
    features_path: str = ""
    """Local weights of the latent feature encoder for real profiles (the drifting release's MAE-256)."""
    reward: str = ""
    """Training reward; empty means the profile's default."""
    evals: tuple[str, ...] = ()
    """Held-out evaluation rewards; empty means the profile's defaults (always includes the training reward)."""
    reward_economy: Literal["exact", "bf16", "small-decoder", "bf16+small-decoder"] = "exact"
    """How the training reward is computed for ranking: exact, bf16 (autocast + inference mode),
    small-decoder, bf16+small-decoder. Gradient-free methods only; every run using an economy records its
    rank agreement with the exact path (see ``driftbench rank-agreement``)."""
    reward_options: tuple[str, ...] = ()
    """Reward constructor options as REWARD.KEY=VALUE, e.g. pickscore.model=/data/PickScore_v1 (local paths)."""
    prompts: str = "train"
    """Training prompts: a split of the profile ("train", "val", "test", "heldout") or a text file, one per line."""
    eval_split: str = "val"
    """Prompts evaluated during training (curves, checkpoint selection, tuning): a split of the profile ("val";
    "test" only for a final table) or a text file."""
    split_seed: int = 0
    """Seed of the profile's train/held-out split (a different seed resamples which prompts are held out)."""
    k: int = 16
    """Candidates sampled per prompt (the paper's K)."""
    prompts_per_step: int = 2
    """Prompts per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer update; effective batch = prompts_per_step * k * grad_accum images."""
    updates: int = 40
    """Budget: optimizer updates (0: no limit on updates)."""
    max_images: int = 0
    """Budget: trainable-generator samples (0: no limit)."""
    max_reward_calls: int = 0
    """Budget: images scored by the training reward (0: no limit)."""
    max_seconds: float = 0.0
    """Budget: metered training seconds (0: no limit)."""
    max_flops: float = 0.0
    """Budget: counted training FLOPs (0: no limit)."""
    seed: int = 0
    """Seeds prompt order, noise and method randomness; same seed = same prompts and noise for every method."""
    eval_at: tuple[float, ...] = (0.0, 0.5, 1.0)
    """Budget fractions at which to evaluate (0 = before training)."""
    eval_seeds: int = 4
    """Noise seeds per evaluation prompt (fixed across runs)."""
    eval_prompt_limit: int = 0
    """Use only the first N evaluation prompts (0: all)."""
    eval_seed_base: int = EVAL_SEED_BASE
    """Evaluation image j of prompt i uses noise seed eval_seed_base + 1000 i + j (the same for every method)."""
    eval_split_rewards: tuple[str, ...] = ()
    """Rewards scored on the evaluation split (empty: all of them: the training reward and ``evals``). A table whose
    evaluation split only selects names its selection reward alone: on Shapes edition 2 the proxy on validation was
    a quarter of a run's evaluation time and informed nothing (the test split and its curve still score every
    reward)."""
    select_metric: str = ""
    """Checkpoint selection: REWARD or REWARD/METRIC on the evaluation split (e.g. shapes-geneval, whose
    headline is overall_disjoint); the best evaluation point's weights are kept. Empty: the final weights."""
    test_split: str = ""
    """After training, evaluate this split (a split name or a text file) once at the selected checkpoint and
    once at the end; empty: no test evaluation. Only a final table should name "test"."""
    test_seeds: int = 16
    """Noise seeds per test prompt."""
    test_seed_base: int = TEST_SEED_BASE
    """Test image j of prompt i uses noise seed test_seed_base + 1000 i + j (disjoint from eval_seed_base)."""
    curve_split: str = ""
    """Also evaluate this split at every evaluation point, on the test noise (``test_seed_base``), for the
    over-optimisation curves alone: selection and tuning never read it, so a table that names "test" draws its
    curves on prompts and noise no choice saw. Empty: none."""
    curve_seeds: int = 4
    """Noise seeds per prompt of the curve split (its first images are the test split's)."""
    lora_rank: int = 0
    """LoRA rank; 0 means the profile's default (16 for SD-Turbo, as in the paper)."""
    weight_decay: float = 1e-2
    """AdamW weight decay (paper: 1e-2)."""
    grad_clip: float = 1.0
    """Gradient-norm clip (paper: 1.0)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every N updates (0: only at the end)."""
    offline_data: bool = False
    """Give the method the profile's offline preference data set (offline DrPO)."""
    init_from: str = ""
    """Start the trainable weights from this stored run's final checkpoint (a complete run under OUT/runs of
    the same profile, model and LoRA rank), e.g. offline DrPO continued online; the optimizer and the method's
    state start fresh, and the reference stays the profile's base. Empty: the profile's fresh adapter."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """"auto" (CUDA if present), "cpu" or "cuda"."""
    out: str = "results"
    """Results root; runs go to ``<out>/runs/<run_id>/``."""
    run_id: str = ""
    """Run directory name; empty means ``{method}__{reward}__s{seed}__{utc}``."""
    tag: str = ""
    """Free-form label stored in the manifest (tables group runs by it)."""
    count_flops: bool = True
    """Count FLOPs (a one-off counting pass per component and input shape)."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    """no, fp16 or bf16: the dtype of the frozen weights (generator, reference, reward, feature encoder) on
    a GPU; the LoRA weights and the optimizer stay float32. On CPU everything runs in float32 (recorded)."""
    log_with: tuple[Literal["tensorboard", "wandb", "mlflow", "trackio"], ...] = ()
    """Experiment trackers to mirror the record to: tensorboard, wandb, mlflow, trackio (the JSON record
    stays the source of truth)."""
    paper_processes: int = 0
    """The process count the setting was published with (presets); with fewer processes the harness
    accumulates more micro-batches per process and says so in the manifest (0: none named)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "split_seed": nonnegative(), "k": within(2, K_MAX), "prompts_per_step": within(1, PROMPTS_MAX), "grad_accum": at_least(1),
        "updates": nonnegative(), "max_images": nonnegative(), "max_reward_calls": nonnegative(),
        "max_seconds": nonnegative(), "max_flops": nonnegative(), "seed": within(0, SEED_MAX), "eval_at": within(0, 1),
        "eval_seeds": at_least(1), "eval_prompt_limit": nonnegative(), "lora_rank": within(0, LORA_RANK_MAX),
        "weight_decay": nonnegative(), "grad_clip": positive(), "checkpoint_every": nonnegative(),
        "eval_seed_base": within(0, SEED_MAX), "test_seeds": at_least(1), "curve_seeds": at_least(1), "test_seed_base": within(0, SEED_MAX),
        "paper_processes": nonnegative(), "tag": Length(TAG_MAX), "reward_options": Length(OPTION_MAX),
    }
    """Valid range of every numeric field (``harness.validate``), checked before any component is built."""

    def budget(self) -> Budget:
        return Budget(updates=self.updates or None, images=self.max_images or None,
                      reward_calls=self.max_reward_calls or None, seconds=self.max_seconds or None,
                      flops=self.max_flops or None)

    def validate(self) -> None:
        """The checks of this config's own fields (bounds, choices, names); ``harness.checks.check_run`` adds
        the checks across components and calls this first."""
        check(self)
        if self.run_id:
            plain_name("--run-id", self.run_id)
        self.budget()

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")


def plain_name(what: str, name: str) -> str:
    """``name`` if it is a plain file name (no separators, no '..', not absolute), else a one-line error."""
    if not PLAIN_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{what} '{name}' must be a plain name: letters, digits and . _ = + - (no '/', no '..'), "
                         "starting with a letter or digit")
    return name


def parse_kv(entries: Sequence[str], example: str = "checkpoint=/data/model.pth") -> dict[str, str]:
    """``("checkpoint=/data/x.pth", ...)`` -> {"checkpoint": "/data/x.pth"}; values may contain '='. The one
    KEY=VALUE parser (evaluator options, the reward server's options)."""
    out = {}
    for entry in entries:
        key, eq, value = entry.partition("=")
        if not (eq and key):
            raise ValueError(f"bad option '{entry}'; expected KEY=VALUE, e.g. {example}")
        out[key] = value
    return out


def config_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return json_ready(dataclasses.asdict(cfg))


def json_ready(value: Any, *, finite: bool = False) -> Any:
    """``value`` with string keys and lists for tuples; ``finite`` also turns NaN and infinities into None
    (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v, finite=finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v, finite=finite) for v in value]
    if finite and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Rebuild a config dataclass from :func:`config_dict` output, checked field by field against its types
    (int -> float and list -> tuple are the only conversions); ``where`` names the source in errors."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{where}: config must be an object of {cls.__module__}.{cls.__qualname__} fields")
    fields = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in data.items():
        if name not in fields:
            raise unknown(f"field of {cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__} ({where})", name, fields)
        out[name] = _typed(value, hints[name], f"{where}.{name}")
    return cls(**out)


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` asks, or a one-line ``TypeError`` naming where it came from."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        return tuple(_typed(v, inner, where) for v in value)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise unknown("value", str(value), [str(a) for a in typing.get_args(hint)], where=where)
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise TypeError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


PRECISIONS = ("no", "fp16", "bf16")

NOT_IN_KEY = ("out", "run_id", "log_with", "paper_processes")
"""Fields that say where a run is stored, what it is called, where it is mirrored and what it was designed
for; they do not change what it computes."""

ADDED_FIELDS = {"mixed_precision": "fp16", "init_from": "", "curve_split": "", "curve_seeds": 4,
                "eval_split_rewards": []}
"""Fields added after results were first stored, with their defaults: at the default they are left out of
:func:`run_key` (stored runs keep their keys), and a stored manifest without one reads as the default."""


def stored_run(data: dict[str, Any]) -> dict[str, Any]:
    """A stored manifest's run config with the fields it predates filled in at their defaults."""
    return {**ADDED_FIELDS, **data}


def run_key(run_cfg: RunConfig, method_cfg: Any) -> str:
    """A short hash of everything that defines a run except where it is stored, what it is called and the
    secrets it is given (a new token is the same run)."""
    data = {k: v for k, v in redact(config_dict(run_cfg)).items()
            if k not in NOT_IN_KEY and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}
    blob = json.dumps({"run": data, "method": config_dict(method_cfg)}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]
