"""GenEval's folder layout and its metadata format (``prompts/evaluation_metadata.jsonl``): one JSON object per prompt with its tag,
prompt and include/exclude clauses. Read and checked here, once, for the benchmark (``evals/geneval_bench.py``),
the real detector reward (``rewards/geneval_mmdet.py``) and the Shapes world's prompt files."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evals.geneval import GENEVAL_TAGS, RELATIONS
from harness.images import grid as tile
from harness.images import to_uint8

IMAGE_NAME = re.compile(r"\d+\.png")


def check_metadata(meta: Any, where: str) -> dict:
    """``meta`` if it is a GenEval metadata object (tag, prompt, include clauses, optional exclude), else a
    ValueError naming ``where`` and the first problem."""
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: metadata must be a JSON object, got {type(meta).__name__}")
    for key, kind in (("tag", str), ("prompt", str), ("include", list)):
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"{where}: metadata needs '{key}' ({kind.__name__}); keys present: {sorted(meta)}")
    if meta["tag"] not in GENEVAL_TAGS:
        raise ValueError(f"{where}: unknown tag '{meta['tag']}'; GenEval's tags: {', '.join(GENEVAL_TAGS)}")
    if not meta["include"]:
        raise ValueError(f"{where}: 'include' is empty")
    for part in ("include", "exclude"):
        clauses = meta.get(part, [])
        if not isinstance(clauses, list):
            raise ValueError(f"{where}: '{part}' must be a list")
        for i, clause in enumerate(clauses):
            if not (isinstance(clause, dict) and isinstance(clause.get("class"), str)
                    and type(clause.get("count")) is int and clause["count"] >= 1):
                raise ValueError(f"{where}: {part}[{i}] needs 'class' (str) and 'count' (int >= 1), got {clause!r}")
            if "color" in clause and not isinstance(clause["color"], str):
                raise ValueError(f"{where}: {part}[{i}].color must be a string")
            if "position" in clause:
                pos = clause["position"]
                if (part != "include" or not isinstance(pos, list) or len(pos) != 2 or pos[0] not in RELATIONS
                        or type(pos[1]) is not int or not 0 <= pos[1] < i):
                    raise ValueError(f"{where}: {part}[{i}].position must be [relation, index of an earlier include "
                                     f"clause] with relation in {list(RELATIONS)}, got {pos!r}")
    return meta


def load_metadata(path: str | Path) -> list[dict]:
    """GenEval's ``evaluation_metadata.jsonl`` (553 lines upstream) or any file in its format: one JSON object per
    line, blank lines skipped. Errors name the file and the line number."""
    path = Path(path)
    if not str(path) or str(path) == ".":
        raise ValueError("geneval needs --metadata PATH (GenEval's prompts/evaluation_metadata.jsonl, or a Shapes "
                         "metadata file)")
    if not path.is_file():
        raise FileNotFoundError(f"GenEval metadata file '{path}' does not exist")
    metas = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        where = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{where}: GenEval metadata must be UTF-8 ({err.reason} at byte {err.start})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not a JSON object ({err.msg} at column {err.colno})") from None
        metas.append(check_metadata(meta, f"{path}:{lineno}"))
    if not metas:
        raise ValueError(f"GenEval metadata file '{path}' holds no prompts")
    return metas


# ---------------------------------------------------------------------------------------------------
# The folder layout
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayoutEntry:
    """One prompt folder as GenEval reads it."""

    index: int
    folder: Path
    metadata: dict
    images: tuple[Path, ...]
    """The sample files, in numeric order."""


def _as_uint8(images: Any) -> np.ndarray:
    """(k, 3, H, W) float in [0, 1] (tensor or array) or (k, H, W, 3) uint8 -> (k, H, W, 3) uint8."""

    if isinstance(images, Tensor):
        return to_uint8(images)
    array = np.asarray(images)
    if array.dtype == np.uint8 and array.ndim == 4 and array.shape[-1] == 3:
        return array
    if array.ndim == 4 and array.shape[1] == 3:
        return to_uint8(torch.from_numpy(array.astype(np.float32)))
    raise ValueError(f"images must be (k, 3, H, W) floats in [0, 1] or (k, H, W, 3) uint8, got {array.shape} "
                     f"{array.dtype}")


def write_prompt(folder: str | Path, index: int, metadata: Mapping, images: Any, *, grid: bool = True) -> Path:
    """Write one prompt's folder ``<folder>/<index:05d>/``: ``metadata.jsonl`` (one JSON object), ``samples/
    <k:05d>.png`` and, with ``grid``, ``grid.png`` (the samples side by side). Returns the prompt folder."""
    from PIL import Image

    pixels = _as_uint8(images)
    out = Path(folder) / f"{index:05d}"
    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    with open(out / "metadata.jsonl", "w", encoding="utf-8") as f:
        json.dump(dict(metadata), f)
    for k, image in enumerate(pixels):
        Image.fromarray(image).save(samples / f"{k:05d}.png")
    if grid and len(pixels):
        Image.fromarray(tile(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0, len(pixels))).save(
            out / "grid.png")
    return out


def write_layout(folder: str | Path, metadatas: Sequence[Mapping], images_per_prompt: Sequence[Any], *,
                 grid: bool = True) -> Path:
    """Write GenEval's layout for ``metadatas[i]`` with ``images_per_prompt[i]`` (k images: (k, 3, H, W) floats
    in [0, 1] or (k, H, W, 3) uint8) into ``folder``; prompt i goes to ``<folder>/<i:05d>/``."""
    if len(metadatas) != len(images_per_prompt):
        raise ValueError(f"write_layout: {len(metadatas)} metadata objects but {len(images_per_prompt)} image sets")
    for i, (meta, images) in enumerate(zip(metadatas, images_per_prompt)):
        write_prompt(folder, i, check_metadata(dict(meta), f"metadata {i}"), images, grid=grid)
    return Path(folder)


def read_layout(folder: str | Path) -> list[LayoutEntry]:
    """Read a GenEval image folder the way ``evaluate_images.py`` does: sub-folders whose name passes
    ``isdigit()``, each with ``metadata.jsonl`` holding one JSON object (``json.load``) and ``samples/`` files whose
    name matches ``\\d+\\.png``; everything else is ignored. Sorted by folder number, then sample number."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"GenEval image folder '{folder}' does not exist")
    entries = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        meta_path = sub / "metadata.jsonl"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} is missing (every numbered folder needs its metadata)")
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta_path}: not one JSON object ({err.msg} at line {err.lineno} column {err.colno}); "
                             "GenEval reads each folder's metadata.jsonl with json.load") from None
        check_metadata(meta, str(meta_path))
        samples = sub / "samples"
        names = [p for p in samples.iterdir() if p.is_file() and IMAGE_NAME.match(p.name)] if samples.is_dir() else []
        images = tuple(sorted(names, key=lambda p: (int(re.match(r"\d+", p.name).group()), p.name)))
        entries.append(LayoutEntry(int(sub.name), sub, meta, images))
    return entries


def clear_layout(folder: Path) -> None:
    """Remove what a previous evaluation wrote into ``folder`` (numbered prompt folders, results, summary)."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.is_dir() and p.name.isdigit() and (p / "metadata.jsonl").exists():
            shutil.rmtree(p)
        elif p.name in ("results.jsonl", "summary.json"):
            p.unlink()


def load_images(paths: Sequence[Path]) -> Tensor:
    """PNG files -> (B, 3, H, W) float in [0, 1] (uint8 / 255; all files must share one size)."""
    from PIL import Image, ImageOps

    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(ImageOps.exif_transpose(image).convert("RGB")))
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images of one batch differ in size: {sorted(sizes)} (e.g. {paths[0]})")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
