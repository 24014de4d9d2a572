"""GenEval as a benchmark (Ghosh et al. 2023, djghosh13/geneval@af4902f): generate, write GenEval's folder
layout, detect, apply GenEval's rules (``evals.geneval``), and summarise as ``summary_scores.py`` does.

    driftbench evaluate geneval --run RUN_ID --metadata /data/geneval/evaluation_metadata.jsonl \\
        --reward remote:http://127.0.0.1:8002            # Mask2Former + CLIP served from the GenEval environment
    driftbench evaluate geneval --run RUN_ID --metadata shapes.jsonl --detector shapes   # the Shapes world

**Layout** (what GenEval's ``generation/diffusers_generate.py`` writes and ``evaluation/evaluate_images.py``
reads)::

    <folder>/<index:05d>/metadata.jsonl        ONE JSON object (the prompt's metadata line), read with json.load
    <folder>/<index:05d>/samples/<k:05d>.png   the prompt's samples; only names matching \\d+\\.png are read
    <folder>/<index:05d>/grid.png              optional
    <folder>/results.jsonl                     GenEval's per-image rows (written here, ignored by the reader)
    <folder>/summary.json

Only sub-folders whose name passes ``str.isdigit()`` are prompt folders, so the upstream scripts run unchanged on
``<folder>`` (``python evaluation/evaluate_images.py <folder> --outfile ...``).

**Seeds.** GenEval's reference generator calls ``seed_everything(42)`` before every prompt, so sample k of every
prompt starts from the same noise. The harness draws noise per seed (``Generator.noise(seeds)``, one
``torch.Generator`` per seed, independent of the device and of batching), and sample k of every prompt uses seed
``42 + k`` (42, 43, 44, 45 for the default 4 samples). The noise is thus a function of the sample index only:
every method, every training seed and the base generator see exactly the same 4 noises per prompt. (Upstream's
bit-exact noise comes from the global RNG and a diffusers pipeline; it cannot be matched by any other sampler.)

**Scoring** goes through a detector, ``images (B, 3, H, W) in [0, 1] -> [{class: [Detection, ...]}] * B``, fed to
``evals.geneval.filter_detections`` (GenEval's thresholds: 0.3, 0.9 for counting, 16 objects per class, NMS off),
``evaluate_detections`` and ``summarize``. Detectors: ``shapes`` (``harness.shapes.detect``, the embedded default)
and ``mmdet`` (``rewards.geneval_mmdet``: Mask2Former + the CLIP colour classifier, GenEval's environment only).
From the main environment the real detector is reached as a reward, ``--reward remote:URL`` (a server started by
``nox -s reward_env-geneval``): the reward answers GenEval's per-image correctness (1/0), so ``results.jsonl`` has
``correct`` but no ``reason`` text; run ``driftbench evaluate geneval --images FOLDER --detector mmdet`` inside the
GenEval environment on the same folder for the reasons. Images are always scored from the PNG files, as GenEval
does.

**Outputs.** ``results.jsonl`` in GenEval's format (one row per image: ``filename``, ``tag``, ``prompt``,
``correct``, ``reason``, ``metadata`` (the JSON string), ``details`` (kept boxes per class, JSON)) and
``summary.json``: ``scores`` = ``evals.geneval.summarize`` of those rows (per-tag accuracy, ``overall`` = the
unweighted mean of the tag accuracies, ``correct_images``, ``correct_prompts``: fractions), plus counts and the
configuration.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from torch import Tensor

from evals.bench import build_reward, iter_images, record
from evals.geneval import (
    Detection,
    evaluate_detections,
    filter_detections,
    summarize,
)
from evals.geneval_layout import (
    LayoutEntry,
    clear_layout,
    load_images,
    load_metadata,
    read_layout,
    write_prompt,
)
from harness.config import parse_kv
from harness.shapes.detect import detect_batch
from harness.store import write_json
from harness.validate import Bound, at_least, check, nonnegative, within
from rewards.geneval_mmdet import GenEvalMMDet

SAMPLES = 4
"""Images per prompt (GenEval's ``--n_samples`` default)."""
SEED = 42
"""GenEval's ``--seed`` default; sample k uses noise seed ``SEED + k``."""
"""Sample file names GenEval reads (``re.match``, as ``evaluate_images.py`` does)."""
METADATA_PROMPT_REWARDS = ("geneval-mmdet",)
"""Rewards that accept a metadata JSON object as the prompt string (so a server needs no metadata file)."""

Detector = Callable[[Tensor], list[dict[str, list[Detection]]]]


def sample_seeds(n: int = SAMPLES, seed: int = SEED) -> list[int]:
    """Noise seeds of a prompt's ``n`` samples: ``seed + k``, the same for every prompt (see the module doc)."""
    return [seed + k for k in range(n)]


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Thresholds:
    """GenEval's ``--options`` defaults (``evaluate_images.py``)."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0
    position_threshold: float = 0.1


def _row(path: Path, meta: dict, correct: bool, reason: str, details: Mapping[str, Any]) -> dict[str, Any]:
    """One results.jsonl row in GenEval's format."""
    return {"filename": str(path), "tag": meta["tag"], "prompt": meta["prompt"], "correct": bool(correct),
            "reason": reason, "metadata": json.dumps(meta), "details": json.dumps(details)}


def _images_in_batches(entries: Sequence[LayoutEntry], batch_size: int):
    items = [(entry, path) for entry in entries for path in entry.images]
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        yield chunk, load_images([p for _, p in chunk])


def score_with_detector(entries: Sequence[LayoutEntry], detector: Detector, thresholds: Thresholds = Thresholds(),
                        batch_size: int = 16) -> list[dict[str, Any]]:
    """GenEval's rows for every image of ``entries``: detect, filter with the prompt's tag, apply the rules."""
    rows = []
    for chunk, images in _images_in_batches(entries, batch_size):
        raw = detector(images)
        if len(raw) != len(chunk):
            raise RuntimeError(f"detector returned {len(raw)} results for {len(chunk)} images")
        for (entry, path), dets in zip(chunk, raw):
            kept = filter_detections(dets, entry.metadata["tag"], threshold=thresholds.threshold,
                                     counting_threshold=thresholds.counting_threshold,
                                     max_objects=thresholds.max_objects, max_overlap=thresholds.max_overlap)
            correct, reason = evaluate_detections(entry.metadata, kept, position_threshold=thresholds.position_threshold)
            details = {c: [[*map(float, d.box), float(d.score)] for d in ds] for c, ds in kept.items()}
            rows.append(_row(path, entry.metadata, correct, reason, details))
    return rows


def reward_prompt(reward: Any, meta: Mapping) -> str:
    """The prompt string a GenEval reward receives: the metadata as JSON for rewards that accept it (the server
    then needs no metadata file), else the prompt itself (e.g. ``shapes-geneval`` parses Shapes prompts)."""
    return json.dumps(dict(meta)) if getattr(reward, "name", "") in METADATA_PROMPT_REWARDS else meta["prompt"]


def score_with_reward(entries: Sequence[LayoutEntry], reward: Any, batch_size: int = 16) -> list[dict[str, Any]]:
    """GenEval's rows from a binary GenEval reward (1 = correct), e.g. ``remote:URL`` serving ``geneval-mmdet``:
    ``correct`` only; the reason is not available through a reward."""
    from evals.bench import score_batch

    rows = []
    for chunk, images in _images_in_batches(entries, batch_size):
        scores = score_batch(reward, images, [reward_prompt(reward, e.metadata) for e, _ in chunk])
        for (entry, path), value in zip(chunk, scores):
            correct = value >= 0.5
            reason = "" if correct else f"incorrect (scored by reward '{reward.name}'; no reason through a reward)"
            rows.append(_row(path, entry.metadata, correct, reason, {}))
    return rows


def write_results(folder: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``results.jsonl`` as GenEval writes it (pandas, records, one per line)."""
    import pandas as pd

    path = Path(folder) / "results.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        pd.DataFrame(list(rows)).to_json(f, orient="records", lines=True)
    return path


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """GenEval's ``results.jsonl`` back as dicts."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Images and prompts in total and per tag (``summary_scores.py`` prints these beside the accuracies)."""
    per_tag: dict[str, list[int]] = {}
    for row in rows:
        tally = per_tag.setdefault(row["tag"], [0, 0])
        tally[0] += bool(row["correct"])
        tally[1] += 1
    return {"images": len(rows), "prompts": len({r["metadata"] for r in rows}),
            "per_tag": {t: {"correct": c, "images": n} for t, (c, n) in per_tag.items()}}


# ---------------------------------------------------------------------------------------------------
# Detectors and the evaluator
# ---------------------------------------------------------------------------------------------------

def build_detector(name: str, options: Mapping[str, str]) -> Detector:
    """``shapes`` (the Shapes world's template detector) or ``mmdet`` (Mask2Former + CLIP colours; GenEval's
    environment only, options as for the ``geneval-mmdet`` reward)."""
    if name == "shapes":
        if options:
            raise ValueError(f"the shapes detector takes no options, got {sorted(options)}")

        return detect_batch
    if name == "mmdet":
        return GenEvalMMDet(**dict(options)).detect
    raise ValueError(f"unknown GenEval detector '{name}'; valid detectors: shapes, mmdet (or --reward NAME)")


@dataclass(frozen=True)
class Config:
    """``driftbench evaluate geneval`` options."""

    metadata: str = ""
    """GenEval's prompts/evaluation_metadata.jsonl (553 prompts), or any file in its format (Shapes prompts)."""
    images: str = ""
    """Score this existing GenEval layout folder instead of generating (no --run needed; outputs go beside it)."""
    samples: int = SAMPLES
    """Images per prompt (GenEval: 4)."""
    seed: int = SEED
    """Sample k of every prompt uses noise seed ``seed + k`` (GenEval: 42)."""
    detector: Literal["auto", "shapes", "mmdet"] = "auto"
    """shapes | mmdet | auto (shapes on the shapes profile; other generators need --reward or --detector mmdet)."""
    reward: str = ""
    """Score through this GenEval reward instead of a detector, e.g. remote:http://127.0.0.1:8002 (geneval-mmdet)."""
    option: tuple[str, ...] = ()
    """Detector options KEY=VALUE for --detector mmdet (checkpoint=..., clip=...), or reward options for --reward."""
    threshold: float = 0.3
    """Detection confidence threshold (GenEval's default)."""
    counting_threshold: float = 0.9
    """Confidence threshold for the counting tag."""
    max_objects: int = 16
    """Most detections kept per class."""
    max_overlap: float = 1.0
    """NMS IoU threshold (1.0: off)."""
    position_threshold: float = 0.1
    """Shrink of the centre offset in the position rule, relative to the summed box sizes."""
    limit: int = 0
    """Evaluate only the first N prompts (0: all)."""
    grid: bool = True
    """Also write each prompt's grid.png."""
    score_batch: int = 16
    """Images per detector or reward call."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"samples": at_least(1), "seed": nonnegative(), "threshold": within(0, 1),
                                          "counting_threshold": within(0, 1), "max_objects": at_least(1),
                                          "max_overlap": within(0, 1), "position_threshold": nonnegative(),
                                          "limit": nonnegative(), "score_batch": at_least(1)}
    """Valid range of every numeric field (``harness.validate``)."""


class GenEvalBenchmark:
    """GenEval: generate 4 samples per prompt (seed 42), write GenEval's layout, detect, score and summarise."""

    name = "geneval"
    version = 1
    Config = Config

    def __init__(self, cfg: Config):
        check(cfg, "geneval")  # bounds and choices, for callers that build the config in Python
        self.cfg = cfg
        self.needs_generator = not cfg.images
        self.metadatas: list[dict] = []
        if not cfg.images:
            self.metadatas = load_metadata(cfg.metadata)[: cfg.limit or None]
        elif not Path(cfg.images).is_dir():
            raise FileNotFoundError(f"GenEval image folder '{cfg.images}' does not exist")
        self.thresholds = Thresholds(cfg.threshold, cfg.counting_threshold, cfg.max_objects, cfg.max_overlap,
                                     cfg.position_threshold)
        options = parse_kv(cfg.option)
        self.reward = self.detector = None
        if cfg.reward:
            self.reward = build_reward(cfg.reward, {cfg.reward: options}, "geneval --reward")
        elif cfg.detector != "auto":
            self.detector = build_detector(cfg.detector, options)
        elif options:
            raise ValueError("--option needs --detector mmdet or --reward NAME")

    def check_profile(self, profile: str) -> None:
        """Fail before a model loads when no scorer fits the generator's profile."""
        if not self.cfg.images:
            self._scorer(profile)

    def _scorer(self, profile: str) -> str:
        if self.reward is None and self.detector is None:
            if profile != "shapes":
                raise ValueError(f"geneval on profile '{profile}': choose a scorer: --reward remote:URL (geneval-mmdet "
                                 "served by `nox -s reward_env-geneval`), --detector mmdet (GenEval environment) or "
                                 "--detector shapes")
            self.detector = build_detector("shapes", {})
            return "detector:shapes"
        return f"reward:{self.reward.name}" if self.reward is not None else f"detector:{self.cfg.detector}"

    def generate(self, gen: Any, dest: Path, *, reference: bool, batch_size: int) -> None:
        """Write the layout for every prompt: ``cfg.samples`` images each, noise seeds ``seed + k``."""

        seeds = sample_seeds(self.cfg.samples, self.cfg.seed)
        prompts = [m["prompt"] for m in self.metadatas]
        for i, images in iter_images(gen, prompts, lambda _: seeds, reference=reference, batch_size=batch_size):
            write_prompt(dest, i, self.metadatas[i], images, grid=self.cfg.grid)

    def score(self, folder: Path) -> list[dict[str, Any]]:
        """GenEval's rows for a layout folder, read back from disk as GenEval reads it."""
        entries = read_layout(folder)
        if not entries:
            raise ValueError(f"no GenEval prompt folders (numbered, with metadata.jsonl) in '{folder}'")
        if self.reward is not None:
            return score_with_reward(entries, self.reward, self.cfg.score_batch)
        return score_with_detector(entries, self.detector, self.thresholds, self.cfg.score_batch)

    def run(self, gen: Any, dest: Path | None, *, reference: bool = False, batch_size: int = 16,
            info: Mapping[str, Any] | None = None) -> dict[str, Any]:

        info = dict(info or {})
        if self.cfg.images:
            folder = Path(self.cfg.images)
            dest = Path(dest) if dest else folder
            scorer = self._scorer("shapes")  # an existing folder: the embedded default unless told otherwise
        else:
            if dest is None:
                raise ValueError("geneval: no output folder")
            dest = folder = Path(dest)
            scorer = self._scorer(info.get("profile", ""))
            clear_layout(dest)
            dest.mkdir(parents=True, exist_ok=True)
            self.generate(gen, dest, reference=reference, batch_size=batch_size)
        rows = self.score(folder)
        dest.mkdir(parents=True, exist_ok=True)
        write_results(dest, rows)
        summary = {**record(self.name, self.version, self.cfg, run_id=info.get("run_id", ""), reference=reference,
                            weights=info.get("weights", ""), profile=info.get("profile", "")),
                   "scores": summarize(rows), "counts": counts(rows), "scorer": scorer,
                   "seeds": sample_seeds(self.cfg.samples, self.cfg.seed), "layout": str(folder),
                   "reasons": self.reward is None, "dest": str(dest)}
        write_json(dest / "summary.json", summary)
        return summary
