"""GenEval's real detector: Mask2Former (mmdet 2.x) + the CLIP ViT-L-14 colour classifier, as a detector and a reward.

GenEval (djghosh13/geneval@af4902f, ``evaluation/evaluate_images.py``) detects the 80 COCO classes with mmdet's
``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco`` and names each kept object's colour with a zero-shot CLIP
ViT-L-14 (OpenAI weights): the object's instance mask is composited on a ``#999`` background, the image is cropped
to the object's box, and the crop is classified among ``COLORS`` with the class-specific ``TEMPLATES`` (the text
embeddings of the three templates are normalised, averaged and normalised again per colour). Rules, thresholds and
the summary are ``evals.geneval``'s, shared with every other detector.

mmdet 2.x needs ``mmcv-full`` 1.7 with compiled CUDA ops, so this runs only in GenEval's own environment
(``nox -s reward_env-geneval``, which also starts ``driftbench serve-reward geneval-mmdet``); the main environment
reaches it as ``remote:URL``. Built anywhere mmcv/mmdet/open_clip do not import, it raises a RuntimeError naming
the missing package and the command that starts the server. Imports happen in the constructor only.

Local files only (no downloads): ``checkpoint=`` the Mask2Former ``.pth`` (GenEval's ``download_models.sh``
fetches it); ``clip=`` the OpenAI ViT-L-14 weights: a directory holding ``ViT-L-14.pt`` (open_clip's cache layout,
loaded as ``pretrained="openai"``), that file itself, or an open_clip state-dict file; ``object_names=`` GenEval's
``evaluation/object_names.txt`` (the 80 class names its metadata uses, in the detector's class order; GenEval names
some COCO classes differently from mmdet, so pass it: without it the detector's own ``CLASSES`` are used, and a
metadata class missing from them is an error, never a silent miss); ``config=`` overrides the detector config
(default: ``<mmdet>/../configs/mask2former/<name>.py``, present when mmdet 2.x is installed from source, as GenEval
requires).

As a **detector** (``detect(images)``) it returns ``{class: [Detection(box, score, colour)]}`` per image, keeping
detections above ``min(threshold, counting_threshold)`` and at most ``max_objects`` per class (a superset of what
GenEval's filter keeps for any tag, so ``evals.geneval.filter_detections`` then gives GenEval's exact selection).
As a **reward** (``score(images, prompts)``) each prompt is a GenEval metadata object as a JSON string (what
``evals.geneval_bench`` sends), or a plain prompt looked up in ``metadata=`` (an ``evaluation_metadata.jsonl``);
the score is GenEval's correctness (1.0 / 0.0) or, with ``fraction=true``, the fraction of satisfied clauses.
Options: ``device`` (cuda when available; upstream requires CUDA), ``batch`` (images per detector call, 8),
``threshold`` 0.3, ``counting_threshold`` 0.9, ``max_objects`` 16, ``max_overlap`` 1.0, ``position_threshold`` 0.1,
``bgcolor`` ``#999`` (or ``original``), ``crop`` 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evals.geneval import Detection, clause_results, filter_detections
from evals.geneval_layout import check_metadata, load_metadata
from harness.images import to_uint8
from rewards import check_images

SESSION = "reward_env-geneval"
DETECTOR = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco"
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
EXAMPLE = (f"--option checkpoint=/data/geneval/{DETECTOR}.pth --option clip=/data/clip "
           "--option object_names=/src/geneval/evaluation/object_names.txt")


def environment_error(package: str, exc: BaseException) -> RuntimeError:
    """The error raised where GenEval's packages do not import: which package, and how to serve the reward."""
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return RuntimeError(
        f"reward 'geneval-mmdet' needs the '{package}' package (GenEval's stack: mmdet 2.x from source, mmcv-full "
        f"1.7 with CUDA ops, open-clip-torch 2.20), which lives in GenEval's own environment, not this one "
        f"({type(exc).__name__}: {detail}). Build it and start the server there: `nox -s {SESSION} -- --port 8002 "
        f"{EXAMPLE}` (= `driftbench serve-reward geneval-mmdet` inside it), then score with "
        f"'remote:http://127.0.0.1:8002' (e.g. driftbench evaluate geneval --reward remote:http://127.0.0.1:8002)")


def _import_stack() -> dict[str, Any]:
    """mmcv, mmdet (2.x) and open_clip, or :func:`environment_error` naming the first that fails."""
    modules = {}
    for package in ("mmcv", "mmdet", "open_clip"):
        try:
            modules[package] = __import__(package)
        except Exception as exc:  # ImportError, or a compiled-ops failure inside mmcv
            raise environment_error(package, exc) from None
    version = getattr(modules["mmdet"], "__version__", "?")
    if not version.startswith("2."):
        raise RuntimeError(f"reward 'geneval-mmdet' needs mmdet 2.x (GenEval's result format), found mmdet {version}; "
                           f"build the environment with `nox -s {SESSION}`")
    return modules


def _local_file(value: str | None, option: str, what: str) -> str:
    if not value:
        raise FileNotFoundError(f"reward 'geneval-mmdet' needs {option}= ({what}; local files only, nothing is "
                                f"downloaded), e.g. {EXAMPLE}")
    path = os.path.expanduser(value)
    if not os.path.exists(path):
        raise FileNotFoundError(f"reward 'geneval-mmdet': {option} '{value}' does not exist")
    return path


def _flag(value: Any) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)


class GenEvalMMDet:
    """GenEval's Mask2Former + CLIP colour detector; as a reward, GenEval correctness (or clause fraction)."""

    name = "geneval-mmdet"
    version = 1
    differentiable = False
    resolution = None
    """Any size: GenEval scores images at the generator's own resolution."""
    binary = True
    """GenEval correctness is 1 or 0 (``rewards.is_binary``); False on an instance with ``fraction=true``."""
    requires = (f"GenEval's environment (mmdet 2.x, mmcv-full 1.7, open-clip-torch 2.20, CUDA; nox -s {SESSION}, then "
                "remote:URL); local checkpoint= Mask2Former .pth and clip= ViT-L-14 OpenAI weights")

    def __init__(self, checkpoint: str | None = None, clip: str | None = None, config: str | None = None,
                 object_names: str | None = None, metadata: str | None = None, fraction: Any = False, device: str | None = None,
                 batch: int | str = 8, threshold: float | str = 0.3, counting_threshold: float | str = 0.9,
                 max_objects: int | str = 16, max_overlap: float | str = 1.0, position_threshold: float | str = 0.1,
                 bgcolor: str = "#999", crop: str | int = "1"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        modules = _import_stack()
        mmdet = modules["mmdet"]
        checkpoint = _local_file(checkpoint, "checkpoint", f"the Mask2Former weights {DETECTOR}.pth")
        clip = _local_file(clip, "clip", "the OpenAI CLIP ViT-L-14 weights")
        if config is None:
            config = str(Path(mmdet.__file__).resolve().parent.parent / "configs" / "mask2former" / f"{DETECTOR}.py")
            if not os.path.isfile(config):
                raise FileNotFoundError(f"mmdet's config {config} is missing: install mmdet 2.x from source (its configs/ "
                                        "folder is not in the wheel) or pass config=/path/to/" + f"{DETECTOR}.py")
        config = _local_file(config, "config", "the Mask2Former config")
        self._configure(metadata=metadata, fraction=fraction, batch=batch, threshold=threshold,
                        counting_threshold=counting_threshold, max_objects=max_objects, max_overlap=max_overlap,
                        position_threshold=position_threshold, bgcolor=bgcolor, crop=crop)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        from mmdet.apis import init_detector

        self.detector = init_detector(config, checkpoint, device=str(self.device))
        self.classes = [str(c) for c in self.detector.CLASSES]
        if object_names:
            names = [line.strip() for line in open(_local_file(object_names, "object_names", "GenEval's "
                     "object_names.txt"), encoding="utf-8") if line.strip()]
            if len(names) != len(self.classes):
                raise ValueError(f"object_names '{object_names}' lists {len(names)} classes but the detector has "
                                 f"{len(self.classes)}")
            self.classes = names
        self._load_clip(modules["open_clip"], clip)

    def _configure(self, *, metadata: str | None = None, fraction: Any = False, batch: int | str = 8,
                   threshold: float | str = 0.3, counting_threshold: float | str = 0.9, max_objects: int | str = 16,
                   max_overlap: float | str = 1.0, position_threshold: float | str = 0.1, bgcolor: str = "#999",
                   crop: str | int = "1") -> None:
        """The rule and crop settings (every option but the model files), shared with :meth:`with_detector`."""
        self.fraction = _flag(fraction)
        self.binary = not self.fraction
        self.batch = int(batch)
        self.threshold, self.counting_threshold = float(threshold), float(counting_threshold)
        self.max_objects, self.max_overlap = int(max_objects), float(max_overlap)
        self.position_threshold = float(position_threshold)
        self.bgcolor, self.crop = bgcolor, str(crop) == "1"
        if self.batch < 1 or self.max_objects < 1:
            raise ValueError(f"reward 'geneval-mmdet' needs batch >= 1 and max_objects >= 1, got {batch}, {max_objects}")
        self._classifiers: dict[str, Tensor] = {}
        self.by_prompt = self._read_metadata(metadata) if metadata else {}

    @classmethod
    def with_detector(cls, detect: Any, **options: Any) -> GenEvalMMDet:
        """This reward's prompt handling and rules over another detector ``detect(images, need_color=None)``
        (no mmdet, no CLIP): a stand-in for tests, or GenEval's rules on a different detector."""
        self = cls.__new__(cls)
        self._configure(**options)
        self.detect = detect
        return self

    # -- loading ---------------------------------------------------------------------------------
    def _load_clip(self, open_clip: Any, clip: str) -> None:
        arch = "ViT-L-14"
        if os.path.isdir(clip) and not os.path.isfile(os.path.join(clip, f"{arch}.pt")):
            raise FileNotFoundError(f"reward 'geneval-mmdet': clip folder '{clip}' has no {arch}.pt (OpenAI's weights)")
        if os.path.isdir(clip) or os.path.basename(clip) == f"{arch}.pt":
            # open_clip's own cache layout: pretrained="openai" finds <cache_dir>/ViT-L-14.pt and does not download.
            cache = clip if os.path.isdir(clip) else os.path.dirname(clip)
            model, _, transform = open_clip.create_model_and_transforms(arch, pretrained="openai", device=self.device,
                                                                        cache_dir=cache)
        else:
            model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=clip, device=self.device)
        self.clip_model = model.eval().requires_grad_(False)
        self.transform = transform
        self.tokenizer = open_clip.get_tokenizer(arch)

    @staticmethod
    def _read_metadata(path: str) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for meta in load_metadata(_local_file(path, "metadata", "a GenEval evaluation_metadata.jsonl")):
            if out.get(meta["prompt"], meta) != meta:
                raise ValueError(f"{path}: prompt '{meta['prompt']}' has two different metadata lines")
            out[meta["prompt"]] = meta
        return out

    # -- the colour classifier ---------------------------------------------------------------------
    def _autocast(self):
        import contextlib

        return torch.autocast("cuda") if self.device.type == "cuda" else contextlib.nullcontext()

    @torch.no_grad()
    def _classifier(self, cls: str) -> Tensor:
        """(D, len(COLORS)): per colour, the normalised mean of the normalised template embeddings."""
        if cls not in self._classifiers:
            columns = []
            with self._autocast():
                for color in COLORS:
                    tokens = self.tokenizer([t.format(c=color, cls=cls) for t in TEMPLATES]).to(self.device)
                    emb = torch.nn.functional.normalize(self.clip_model.encode_text(tokens).float(), dim=-1).mean(0)
                    columns.append(emb / emb.norm())
            self._classifiers[cls] = torch.stack(columns, dim=1)
        return self._classifiers[cls]

    @torch.no_grad()
    def colors(self, image: np.ndarray, objects: Sequence[tuple[np.ndarray, np.ndarray | None]], cls: str) -> list[str]:
        """Colour names of ``objects`` (box (x1, y1, x2, y2[, score]), mask (H, W) bool or None) in ``image``
        (H, W, 3) uint8 RGB: mask composited on ``bgcolor``, cropped to the box, classified zero-shot."""
        from PIL import Image

        pil = Image.fromarray(image)
        blank = pil.copy() if self.bgcolor == "original" else Image.new("RGB", pil.size, color=self.bgcolor)
        crops = []
        for box, mask in objects:
            crop = Image.composite(pil, blank, Image.fromarray(mask)) if mask is not None else pil
            if self.crop:
                crop = crop.crop(tuple(float(v) for v in box[:4]))
            crops.append(self.transform(crop))
        with self._autocast():
            features = self.clip_model.encode_image(torch.stack(crops).to(self.device)).float()
        logits = torch.nn.functional.normalize(features, dim=-1) @ self._classifier(cls)
        return [COLORS[i] for i in logits.argmax(dim=1).tolist()]

    # -- detection -------------------------------------------------------------------------------
    @torch.no_grad()
    def detect(self, images: Tensor, need_color: Sequence[set[str] | None] | None = None) -> list[dict[str, list[Detection]]]:
        """Detections per image for images (B, 3, H, W) in [0, 1]: ``{class: [Detection(box, score, colour)]}``,
        highest score first. ``need_color[i]`` limits colour classification to those classes (None: all)."""
        from mmdet.apis import inference_detector

        pixels = to_uint8(images)  # (B, H, W, 3) RGB, the same rounding as the PNG files GenEval reads
        cut = min(self.threshold, self.counting_threshold)
        out = []
        for start in range(0, len(pixels), self.batch):
            chunk = pixels[start:start + self.batch]
            results = inference_detector(self.detector, [np.ascontiguousarray(a[..., ::-1]) for a in chunk])  # BGR
            for j, (image, result) in enumerate(zip(chunk, results)):
                wanted = need_color[start + j] if need_color is not None else None
                out.append(self._objects(image, result, cut, wanted))
        return out

    def _objects(self, image: np.ndarray, result: Any, cut: float, wanted: set[str] | None) -> dict[str, list[Detection]]:
        if isinstance(result, dict):  # panoptic-style output: {"ins_results": (bbox, segm), ...}
            result = result["ins_results"]
        bbox = result[0] if isinstance(result, tuple) else result
        segm = result[1] if isinstance(result, tuple) and len(result) > 1 else None
        found: dict[str, list[Detection]] = {}
        for index, cls in enumerate(self.classes):
            boxes = np.asarray(bbox[index])
            if boxes.size == 0:
                continue
            order = [k for k in np.argsort(-boxes[:, 4], kind="stable").tolist() if boxes[k, 4] > cut][: self.max_objects]
            if not order:
                continue
            masks = [_mask(segm[index][k], image.shape[:2]) if segm is not None else None for k in order]
            names: list[str | None] = [None] * len(order)
            if wanted is None or cls in wanted:
                names = self.colors(image, [(boxes[k], m) for k, m in zip(order, masks)], cls)
            found[cls] = [Detection(tuple(float(v) for v in boxes[k, :4]), float(boxes[k, 4]), c)
                          for k, c in zip(order, names)]
        return found

    # -- the reward ------------------------------------------------------------------------------
    def metadata_for(self, prompt: str) -> dict:
        """A prompt's GenEval metadata: the prompt itself as a JSON object, or its line in ``metadata=``."""

        if prompt.lstrip().startswith("{"):
            try:
                return check_metadata(json.loads(prompt), "prompt")
            except json.JSONDecodeError as err:
                raise ValueError(f"prompt looks like JSON but does not parse ({err.msg})") from None
        if prompt in self.by_prompt:
            return self.by_prompt[prompt]
        raise ValueError(f"prompt '{prompt[:80]}' is neither a GenEval metadata JSON object nor in the metadata= file"
                         + ("" if self.by_prompt else " (none given)"))

    def verify(self, images: Tensor, prompts: Sequence[str]) -> list[dict]:
        """Per image: ``prompt``, ``tag``, ``correct``, ``reason``, ``fraction`` under GenEval's rules."""
        check_images(images, prompts, self.name)
        metas = [self.metadata_for(p) for p in prompts]
        known = getattr(self, "classes", None)
        if known is not None:
            unknown = sorted({c["class"] for m in metas for c in m["include"] + m.get("exclude", [])} - set(known))
            if unknown:
                raise ValueError(f"metadata class(es) {unknown} are not among the detector's class names; pass "
                                 "object_names=<geneval>/evaluation/object_names.txt (GenEval's names, in COCO order)")
        need = [{c["class"] for c in m["include"] if "color" in c} for m in metas]
        rows = []
        for meta, raw in zip(metas, self.detect(images, need)):
            kept = filter_detections(raw, meta["tag"], threshold=self.threshold,
                                     counting_threshold=self.counting_threshold, max_objects=self.max_objects,
                                     max_overlap=self.max_overlap)
            results = clause_results(meta, kept, position_threshold=self.position_threshold)
            passed = [ok for ok, _ in results]
            rows.append({"prompt": meta["prompt"], "tag": meta["tag"], "correct": all(passed),
                         "reason": "; ".join(r for ok, r in results if not ok),
                         "fraction": sum(passed) / len(passed) if passed else 1.0})
        return rows

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """(B,) float32: GenEval correctness 1.0/0.0, or the fraction of satisfied clauses with ``fraction=true``."""
        key = "fraction" if self.fraction else "correct"
        return torch.tensor([float(r[key]) for r in self.verify(images, list(prompts))], dtype=torch.float32)


def _mask(value: Any, shape: tuple[int, int]) -> np.ndarray:
    """An instance mask as (H, W) bool: a dense array, or a COCO RLE dict (decoded with pycocotools)."""
    if isinstance(value, dict):
        from pycocotools import mask as mask_util

        value = mask_util.decode(value)
    mask = np.asarray(value).astype(bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"instance mask of shape {mask.shape} does not match the image {shape}")
    return mask
