"""What the benchmark evaluators share: the ``driftbench evaluate`` command, rebuilding a run's generator,
prompt files, seeded generation in batches, and building the rewards they score with.

    driftbench evaluate NAME --run RUN_ID [--base] [--out results] [--dest DIR] [evaluator options ...]

A benchmark evaluator (``geneval``, ``hpdv3``, ``pickapic-parti`` in ``EVALS``) is a class with ``name``,
``version``, a frozen ``Config`` dataclass (its CLI options), ``__init__(cfg)``, which reads every input file
and builds every scorer (so a missing file or reward fails before any model is loaded), and
``run(gen, dest, *, reference, batch_size, info) -> dict``, which generates, scores, writes its files under
``dest`` (``summary.json`` always) and returns the summary it wrote; ``info`` carries the run id, weights file
and profile into the summary. Optional: ``check_profile(profile)`` (validate against the generator before it
loads) and ``needs_generator = False`` (score existing images only, e.g. ``geneval --images FOLDER``).

The command rebuilds the run's generator from ``manifest.json`` (its profile and run config; ``--model`` and
``--device`` override the stored ones when the weights moved), loads the trained weights (:func:`load_weights`)
unless ``--base``, and writes into ``<out>/runs/<RUN_ID>/<NAME>/`` (``<NAME>-base/`` with ``--base``, where the
adapters are switched off: the frozen base generator on the same noise). Without ``--run``, ``--profile`` names a
generator to evaluate as it is (base only). Generation runs under ``no_grad`` in batches, so a 553 x 4 GenEval
pass at 512 px never holds more than one batch of images.
"""

from __future__ import annotations

import contextlib
import csv
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from evals import EVALS
from harness.checkpoint import read_file as read_checkpoint
from harness.config import RunConfig, config_dict, from_dict, plain_name
from harness.images import to_uint8
from harness.profiles import PROFILES
from harness.registry import unknown
from harness.run import EVAL_SEED_BASE
from harness.store import Store, git_state
from harness.validate import Bound, at_least
from harness.validate import check as check_bounds
from rewards import check_scores

BENCHMARKS = ("geneval", "hpdv3", "pickapic-parti")
"""The evaluators ``driftbench evaluate`` runs (``heldout`` runs inside training, per reward)."""


@dataclass(frozen=True)
class EvaluateOptions:
    """Options of ``driftbench evaluate`` shared by every benchmark."""

    run: str = ""
    """Run id under ``<out>/runs/`` whose trained generator is evaluated."""
    base: bool = False
    """Evaluate the frozen base generator (adapters off) instead of the trained one."""
    out: str = "results"
    """Results root the run lives in."""
    dest: str = ""
    """Write here instead of ``<out>/runs/<run>/<name>`` (``<name>-base`` with --base)."""
    profile: str = ""
    """Without --run: evaluate this profile's generator as it is (its base), e.g. sd-turbo --model PATH."""
    model: str = ""
    """Override the stored model path (real profiles: a local diffusers directory)."""
    device: str = ""
    """Override the stored device: auto, cpu or cuda."""
    batch_size: int = 16
    """Images generated per forward pass."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"batch_size": at_least(1)}
    """Valid range of every numeric field (``harness.validate``)."""


# ---------------------------------------------------------------------------------------------------
# Rebuilding a run's generator
# ---------------------------------------------------------------------------------------------------

def load_weights(gen: Any, run_dir: str | Path) -> str:
    """Load a run's trained weights into ``gen``; returns the file used.

    In order: ``adapter/adapter_model.safetensors`` (peft key names, the Shapes generator's LoRA),
    ``adapter/net.safetensors`` (full fine-tuning), ``adapter/pytorch_lora_weights.safetensors`` (diffusers
    LoRA, converted back to peft names), then ``checkpoint.pt`` (the exact ``trainable_state``, written at the
    end of every run). All go through ``Generator.load_trainable_state``.
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    adapter = run_dir / "adapter"
    for name in ("adapter_model.safetensors", "net.safetensors"):
        if (adapter / name).is_file():
            gen.load_trainable_state(load_file(str(adapter / name)))
            return str(adapter / name)
    diffusers_file = adapter / "pytorch_lora_weights.safetensors"
    if diffusers_file.is_file():
        from diffusers.utils import convert_unet_state_dict_to_peft

        state = {k.removeprefix("unet."): v for k, v in load_file(str(diffusers_file)).items()}
        gen.load_trainable_state(convert_unet_state_dict_to_peft(state))
        return str(diffusers_file)
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.is_file():
        gen.load_trainable_state(read_checkpoint(checkpoint)["trainable"])
        return str(checkpoint)
    raise FileNotFoundError(f"run directory {run_dir} has neither adapter/ weights nor checkpoint.pt to load")


def load_run(out: str, run_id: str, *, model: str = "", device: str = "", base: bool = False):
    """(world, manifest, run_dir, weights file or "") for a stored run, its trained weights loaded unless ``base``."""

    plain_name("--run", run_id)
    store = Store(out)
    manifest = store.manifest(run_id)
    cfg = from_dict(RunConfig, manifest["run"])
    changes = {k: v for k, v in (("model", model), ("device", device)) if v}
    cfg = cfg.replace(**changes) if changes else cfg
    world = PROFILES.get(cfg.profile)(cfg)
    weights = "" if base else load_weights(world.generator, store.run_dir(run_id))
    return world, manifest, store.run_dir(run_id), weights


# ---------------------------------------------------------------------------------------------------
# Prompts and generation
# ---------------------------------------------------------------------------------------------------

PROMPT_COLUMNS = ("prompt", "Prompt", "caption", "text")
"""Column (or JSON key) names read as the prompt, in this order."""


def read_prompts(path: str | Path, what: str = "prompts") -> list[str]:
    """Prompts from a file: ``.txt`` (one per non-empty line), ``.tsv``/``.csv`` (a ``prompt``/``Prompt``
    column: Parti-Prompts' ``PartiPrompts.tsv`` works as it is), ``.json`` (a list of strings or of objects
    with a prompt key) or ``.jsonl`` (one string or object per line). Errors name the file (and line)."""
    path = Path(path)
    if not str(path):
        raise ValueError(f"{what}: no prompt file given")
    if not path.is_file():
        raise FileNotFoundError(f"{what}: prompt file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        prompts = [row for _, row in _table_rows(path, "\t" if suffix == ".tsv" else ",", what)]
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{what}: {path}: not JSON ({err.msg} at line {err.lineno})") from None
        if not isinstance(data, list):
            raise ValueError(f"{what}: {path}: expected a JSON list of prompts, got {type(data).__name__}")
        prompts = [_prompt_of(item, f"{path}[{i}]") for i, item in enumerate(data)]
    elif suffix == ".jsonl":
        prompts = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    prompts.append(_prompt_of(json.loads(line), f"{path}:{lineno}"))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{what}: {path}:{lineno}: not JSON ({err.msg} at column {err.colno})") from None
    else:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise ValueError(f"{what}: prompt file '{path}' holds no prompts")
    return prompts


def _prompt_of(item: Any, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in PROMPT_COLUMNS:
            if isinstance(item.get(key), str):
                return item[key]
    raise ValueError(f"{where}: expected a prompt string or an object with one of {list(PROMPT_COLUMNS)}")


def _table_rows(path: Path, delimiter: str, what: str, extra: str | None = None) -> Iterator[tuple[str | None, str]]:
    """(value of column ``extra`` or None, prompt) per row of a CSV/TSV file with a header."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        column = next((c for c in PROMPT_COLUMNS if c in (reader.fieldnames or [])), None)
        if column is None:
            raise ValueError(f"{what}: {path} has no prompt column; expected one of {list(PROMPT_COLUMNS)}, "
                             f"found {reader.fieldnames}")
        for row in reader:
            yield (row.get(extra) if extra else None), row[column] or ""


def heldout_seeds(prompt_index: int, n: int) -> list[int]:
    """The harness's fixed evaluation seeds (``harness.run.generate``): image j of prompt i uses
    ``EVAL_SEED_BASE + 1000 i + j``, the same for every method, run and the base."""

    return [EVAL_SEED_BASE + 1000 * prompt_index + j for j in range(n)]


@torch.no_grad()
def iter_images(gen: Any, prompts: Sequence[str], seeds: Callable[[int], Sequence[int]], *, reference: bool = False,
                batch_size: int = 16) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(i, images (k_i, 3, H, W) float in [0, 1] on the CPU)`` for each prompt i in order, its k_i images
    drawn with noise seeds ``seeds(i)``. Batches of ``batch_size`` rows span prompts; ``reference`` switches the
    adapters off (the base generator)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = [(i, s) for i in range(len(prompts)) for s in seeds(i)]
    pending: dict[int, list[Tensor]] = {}
    need = {i: len(seeds(i)) for i in range(len(prompts))}
    nxt = 0
    scope = gen.reference() if reference else contextlib.nullcontext()
    with scope:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            cond = gen.encode([prompts[i] for i, _ in chunk])
            images = gen.decode(gen.latents(gen.noise([s for _, s in chunk]), cond)).float().cpu()
            for (i, _), image in zip(chunk, images):
                pending.setdefault(i, []).append(image)
            while nxt < len(prompts) and len(pending.get(nxt, [])) == need[nxt]:
                yield nxt, torch.stack(pending.pop(nxt)) if need[nxt] else torch.empty(0)
                nxt += 1


def score_prompts(gen: Any, prompts: Sequence[str], seeds: Callable[[int], Sequence[int]], rewards: Mapping[str, Any], *,
                  reference: bool = False, batch_size: int = 16,
                  on_images: Callable[[int, Tensor], None] | None = None) -> dict[str, list[list[float]]]:
    """Generate ``seeds(i)`` images per prompt and score them with every reward, in batches of about
    ``batch_size`` images across prompts; ``{reward key: [scores of prompt i, ...]}``. ``on_images(i, images)``
    sees each prompt's images (e.g. to save them) before they are dropped."""
    out: dict[str, list[list[float]]] = {key: [] for key in rewards}
    buffer: list[tuple[int, Tensor]] = []

    def flush() -> None:
        if not buffer:
            return
        images = torch.cat([im for _, im in buffer])
        texts = [prompts[i] for i, im in buffer for _ in range(len(im))]
        for key, reward in rewards.items():
            values = score_batch(reward, images, texts)
            at = 0
            for _, im in buffer:
                out[key].append(values[at:at + len(im)])
                at += len(im)
        buffer.clear()

    for i, images in iter_images(gen, prompts, seeds, reference=reference, batch_size=batch_size):
        if on_images is not None:
            on_images(i, images)
        buffer.append((i, images))
        if sum(len(im) for _, im in buffer) >= batch_size:
            flush()
    flush()
    return out


# ---------------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------------

def build_reward(name: str, options: Mapping[str, Mapping[str, str]] | None, context: str) -> Any:
    """``rewards.build(name, options[name])`` with ``context`` (which evaluator column needs it) in every error."""
    import rewards

    try:
        rewards.REWARDS.check(name)
        return rewards.build(name, dict((options or {}).get(name, {})))
    except (ValueError, FileNotFoundError, RuntimeError, ImportError, TypeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = type(exc) if isinstance(exc, (ValueError, FileNotFoundError, RuntimeError)) else RuntimeError
        raise kind(f"{context}: reward '{name}' could not be built: {first}") from exc


def score_batch(reward: Any, images: Tensor, prompts: Sequence[str]) -> list[float]:
    """Validated scores of one batch, under ``no_grad``."""

    with torch.no_grad():
        return check_scores(reward.score(images, list(prompts)), len(prompts), reward.name).tolist()


def save_png(image: Tensor, path: Path) -> None:
    """One image (3, H, W) in [0, 1] as an 8-bit RGB PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image[None])[0]).save(path)


def record(name: str, version: int, cfg: Any, *, run_id: str = "", reference: bool = False, weights: str = "",
           profile: str = "") -> dict[str, Any]:
    """What every benchmark summary carries: evaluator, version, config, source and git state."""

    return {"evaluator": name, "version": version, "config": config_dict(cfg), "run_id": run_id,
            "generator": "base" if reference else "trained", "weights": weights, "profile": profile,
            "git": git_state(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# ---------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------

def benchmark_class(name: str) -> Any:
    EVALS.check(name)
    if name not in BENCHMARKS:
        raise unknown("benchmark evaluator", name, list(BENCHMARKS))
    return EVALS.get(name)


def main(argv: Sequence[str]) -> int:
    """``driftbench evaluate NAME --run RUN_ID [--base] [evaluator options ...]``."""
    import tyro

    argv = list(argv)
    if not argv or argv[0].startswith("-"):
        print(f"usage: driftbench evaluate NAME --run RUN_ID [--base] [options]   NAME: {', '.join(BENCHMARKS)}\n"
              "       driftbench evaluate NAME --help   for an evaluator's options")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    cls = benchmark_class(name)
    Args = make_dataclass("EvaluateArgs", [
        ("command", tyro.conf.OmitArgPrefixes[EvaluateOptions], field(default=EvaluateOptions())),
        ("bench", tyro.conf.OmitArgPrefixes[cls.Config], field(default=cls.Config())),
    ], frozen=True)
    args = tyro.cli(Args, args=rest, prog=f"driftbench evaluate {name}",
                    description=(cls.__doc__ or name).strip().splitlines()[0])
    check_bounds(args.command)
    check_bounds(args.bench)
    if args.command.run:
        plain_name("--run", args.command.run)
    summary = evaluate(name, args.bench, args.command)
    print(json.dumps(summary.get("scores", summary), indent=2, default=str))
    print(f"wrote {summary['dest']}")
    return 0


def evaluate(name: str, cfg: Any, options: EvaluateOptions) -> dict[str, Any]:
    """Run benchmark ``name`` with its ``cfg`` on the generator ``options`` designate; returns its summary."""
    cls = benchmark_class(name)
    bench = cls(cfg)  # reads its files and builds its scorers first: bad input fails before a model loads
    if getattr(bench, "needs_generator", True) is False:
        return bench.run(None, Path(options.dest) if options.dest else None, reference=False,
                         batch_size=options.batch_size)
    profile = options.profile
    if options.run:
        profile = Store(options.out).manifest(options.run)["run"]["profile"]
    if hasattr(bench, "check_profile"):  # e.g. GenEval's scorer choice depends on the generator
        bench.check_profile(profile)
    if options.run:
        world, _, run_dir, weights = load_run(options.out, options.run, model=options.model, device=options.device,
                                              base=options.base)
        dest = Path(options.dest) if options.dest else run_dir / (name + ("-base" if options.base else ""))
    elif options.profile:
        run_cfg = RunConfig(profile=options.profile, model=options.model, device=options.device or "auto")
        world, weights = PROFILES.get(options.profile)(run_cfg), ""
        if not options.dest:
            raise ValueError("evaluating a profile without --run needs --dest DIR for the outputs")
        dest = Path(options.dest)
    else:
        raise ValueError(f"driftbench evaluate {name} needs --run RUN_ID (or --profile NAME --dest DIR)")
    reference = options.base or not options.run
    info = {"run_id": options.run, "weights": weights, "profile": world.name}
    return bench.run(world.generator, dest, reference=reference, batch_size=options.batch_size, info=info)
