"""The Shapes world's committed pretrained weights: paths, checksums and verified loading. No network, ever.

``harness/assets/shapes/`` holds ``<name>.safetensors`` (weights) and ``<name>.json`` (the model's config)
for name in ``NAMES``, ``checksums.json`` (sha256 of every such file) and ``timings.json`` (each
pretraining job's wall time). ``python -m harness.shapes.pretrain <name>`` rebuilds an asset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "shapes"
NAMES = ("generator", "encoder", "image_encoder", "reward")
CHECKSUMS = "checksums.json"


class AssetError(RuntimeError):
    """A missing or corrupted asset; the message names the file and the command that rebuilds it."""


def asset_path(name: str, directory: str | Path | None = None) -> Path:
    """Path of ``<name>.safetensors`` in ``directory`` (default: the committed asset folder)."""
    if name not in NAMES:
        raise ValueError(f"unknown Shapes asset '{name}'; valid assets: {', '.join(NAMES)}")
    return Path(directory or ASSET_DIR) / f"{name}.safetensors"


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


JOB_OF = {"image_encoder": "encoder"}
"""Assets written by another asset's job (the encoder job also trains the image encoder)."""


def _rebuild(name: str) -> str:
    return f"rebuild it with `python -m harness.shapes.pretrain {JOB_OF.get(name, name)}`"


def _verified(path: Path, name: str) -> Path:
    """``path`` after checking it exists and matches its entry in checksums.json."""
    sums_path = path.parent / CHECKSUMS
    if not path.is_file():
        raise AssetError(f"Shapes asset {path} is missing; {_rebuild(name)}")
    if not sums_path.is_file():
        raise AssetError(f"checksum file {sums_path} is missing; {_rebuild('all')}")
    expected = _json(sums_path, "all").get(path.name)
    if expected is None:
        raise AssetError(f"{sums_path} has no checksum for {path.name}; {_rebuild(name)}")
    if sha256(path) != expected:
        raise AssetError(f"Shapes asset {path} is corrupted (sha256 mismatch); {_rebuild(name)}")
    return path


def load_asset(name: str, directory: str | Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict as float32, config dict) of asset ``name``, both files verified against checksums.json."""
    from safetensors.torch import load_file

    weights = _verified(asset_path(name, directory), name)
    config = _verified(weights.with_suffix(".json"), name)
    try:
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AssetError(f"Shapes asset {weights} is unreadable ({reason}); {_rebuild(name)}") from None
    return state, _json(config, name)


def _json(path: Path, name: str) -> dict:
    """A JSON object from an asset file; an AssetError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AssetError(f"Shapes asset file {path} is not valid JSON ({exc}); {_rebuild(name)}") from None
    if not isinstance(data, dict):
        raise AssetError(f"Shapes asset file {path} must hold a JSON object; {_rebuild(name)}")
    return data


def asset_info(name: str, directory: str | Path | None = None) -> dict:
    """{"base_asset": relative file name, "base_sha256": its checksum}, for adapters to name their base."""
    path = asset_path(name, directory)
    sums = json.loads((path.parent / CHECKSUMS).read_text())
    return {"base_asset": f"{path.parent.name}/{path.name}", "base_sha256": sums[path.name]}


def write_checksums(directory: str | Path | None = None) -> dict[str, str]:
    """Recompute checksums.json over every asset file present in ``directory``; returns the mapping."""
    folder = Path(directory or ASSET_DIR)
    sums = {p.name: sha256(p) for p in sorted(folder.iterdir())
            if p.suffix in (".safetensors", ".json") and p.stem in NAMES}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    return sums
