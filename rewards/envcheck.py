"""``python -m rewards.envcheck NAME``: check an isolated reward environment without real weights.

Run inside the environment by ``nox -s reward_env-NAME -- --check`` (and for every environment by
``nox -s reward_envs_check``). In a temporary directory it writes a tiny randomly initialised model of the
reward's real architecture class, built in code, in the files the real model comes in; then

1. builds the harness's reward from those files (``rewards.build``: the same code path as real weights) and
   scores a batch of images, checking the scores against the package's own scoring code on the same model;
2. starts ``driftbench serve-reward NAME`` on a free loopback port with the same options, waits for
   ``/health`` and checks the served scores equal the in-process ones.

The tiny models:

* **hpsv3**: a Qwen2-VL (text 64 wide x 2 layers, vision 32 x 2) saved with a byte-level BPE tokenizer, the
  Qwen2-VL image processor and chat template, loaded by ``HPSv3RewardInferencer`` through ``_PackagePath``
  (``qwen=`` the directory, ``checkpoint=`` the package's own reward model state dict);
* **imagereward**: ImageReward's BLIP (its fixed ViT-L/16) with a one-layer BERT ``med_config.json``, a
  ``bert-base-uncased`` vocabulary in a temporary Hugging Face cache, and a checkpoint of its reward head;
* **hpsv2**: an OpenCLIP ViT (64 wide, 2 layers) registered from a model-config JSON (``arch=``) and loaded
  from a checkpoint in HPSv2's format.

**geneval** has no weight-free model check: Mask2Former's config and GenEval's colour classifier need their
real checkpoints. On a CUDA machine its check imports the stack (``_import_stack``: mmcv, mmdet 2.x,
open_clip) and runs one of mmcv's compiled CUDA ops, which is what its environment build can get wrong.

Writes ``results/reward_envs/NAME.json`` (package versions, scores, differences, seconds) and exits 1 with
the failing check's message.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from harness.safe_load import torch_file
from harness.serving.wire import to_uint8
from rewards import build
from rewards.geneval_mmdet import _import_stack
from rewards.hpsv3 import _local_config
from rewards.remote import RemoteReward

PROMPTS = ["a red cat on a blue car", "two dogs in the snow", "a red cat on a blue car"]
PACKAGES = {"hpsv3": ("hpsv3", "transformers", "torch", "torchvision", "diffusers"),
            "imagereward": ("image-reward", "transformers", "timm", "clip-anytorch", "torch", "torchvision"),
            "hpsv2": ("hpsv2", "torch", "torchvision", "protobuf"),
            "geneval": ("mmcv-full", "mmdet", "open-clip-torch", "torch", "torchvision")}
HEALTH_TIMEOUT = 600.0
"""Seconds to wait for a server's /health (it loads the model first)."""


def images(n: int, size: int, seed: int = 0):
    """(n, 3, size, size) images on the uint8 grid (k / 255), so PNG files and tensors hold the same pixels."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


def pil(batch) -> list:
    from PIL import Image

    return [Image.fromarray(a) for a in to_uint8(batch)]


# ---------------------------------------------------------------------------------------------------
# hpsv3: a tiny Qwen2-VL through HPSv3RewardInferencer
# ---------------------------------------------------------------------------------------------------

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""Qwen2-VL-Instruct's chat template for image and text messages (the real directory ships its own)."""


def tiny_qwen(path: Path) -> None:
    """Save a tiny random Qwen2VLForConditionalGeneration with its processor (tokenizer trained here)."""
    import torch
    from hpsv3.dataset.data_collator_qwen import INSTRUCTION, prompt_with_special_token
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Qwen2TokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [INSTRUCTION, prompt_with_special_token, *PROMPTS, "system user assistant You are a helpful assistant."]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=QWEN_SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None, errors="replace")
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL[1:]})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                 chat_template=QWEN_CHAT_TEMPLATE)
    processor.save_pretrained(path)
    config = Qwen2VLConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False)
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)


def hpsv3_files(tmp: Path) -> dict[str, str]:
    """The tiny Qwen2-VL directory and a checkpoint of the package's reward model built on it."""
    import hpsv3
    import torch
    from hpsv3.train import create_model_and_processor
    from hpsv3.utils.parser import (
        DataConfig,
        ModelConfig,
        PEFTLoraConfig,
        TrainingConfig,
        parse_args_with_yaml,
    )

    tiny_qwen(tmp / "qwen")
    package_yaml = os.path.join(os.path.dirname(hpsv3.__file__), "config", "HPSv3_7B.yaml")
    (tmp / "yaml").mkdir()
    (_, training_args, model_config, lora), _ = parse_args_with_yaml(
        (DataConfig, TrainingConfig, ModelConfig, PEFTLoraConfig), _local_config(package_yaml, str(tmp / "qwen"),
                                                                                   str(tmp / "yaml")), is_train=False)
    torch.manual_seed(1)  # the rm_head the checkpoint holds
    model, _, _ = create_model_and_processor(model_config=model_config, peft_lora_config=lora,
                                             training_args=training_args, differentiable=True)
    torch.save(model.state_dict(), tmp / "HPSv3.pt")
    return {"checkpoint": str(tmp / "HPSv3.pt"), "qwen": str(tmp / "qwen"), "device": "cpu", "batch": "2"}


def hpsv3_check(tmp: Path, options: dict[str, str], report: dict[str, Any]) -> Any:
    """Harness scores (no grad and with grad) against the package's reward() on PNG files of the same images."""
    import torch

    reward = build("hpsv3", options)
    x = images(len(PROMPTS), 448)
    with torch.no_grad():
        ours = reward.score(x, PROMPTS)
    paths = []
    for i, image in enumerate(pil(x)):
        image.save(tmp / f"image{i}.png")
        paths.append(str(tmp / f"image{i}.png"))
    with torch.no_grad():
        package = reward.path.inferencer.reward(image_paths=paths, prompts=PROMPTS)[:, 0].float()
    xg = x.clone().requires_grad_(True)
    graded = reward.score(xg, PROMPTS)
    graded.sum().backward()
    report["gradient_norm"] = float(xg.grad.norm())
    close(report, "package (PNG files)", ours, package, 1e-4)
    close(report, "with grad", ours, graded.detach(), 1e-4)
    if not (torch.isfinite(xg.grad).all() and report["gradient_norm"] > 0):
        raise AssertionError(f"hpsv3: no usable gradient reached the images (norm {report['gradient_norm']})")
    return x, ours


# ---------------------------------------------------------------------------------------------------
# imagereward: BLIP with a one-layer BERT
# ---------------------------------------------------------------------------------------------------

BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def imagereward_files(tmp: Path) -> dict[str, str]:
    """med_config.json, a bert-base-uncased vocabulary in the (temporary) HF cache, and a checkpoint."""
    import ImageReward as RM
    import torch

    words = sorted({w for p in PROMPTS for w in p.lower().split()} | set("abcdefghijklmnopqrstuvwxyz"))
    snapshot = Path(os.environ["HF_HUB_CACHE"]) / "models--bert-base-uncased"
    revision = "0" * 40
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text(revision)
    files = snapshot / "snapshots" / revision
    files.mkdir(parents=True)
    (files / "vocab.txt").write_text("\n".join(BERT_VOCAB + words) + "\n")
    (files / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    (files / "config.json").write_text(json.dumps({"model_type": "bert"}))
    med = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 256,
           "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 4,
           "num_hidden_layers": 1, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(BERT_VOCAB) + len(words) + 2,
           "encoder_width": 1024, "add_cross_attention": True}
    (tmp / "med_config.json").write_text(json.dumps(med))
    torch.manual_seed(0)
    model = RM.ImageReward(med_config=str(tmp / "med_config.json"), device="cpu")
    # The reward head and the text side; ImageReward loads with strict=False, and the check below confirms
    # the head came from the file.
    keep = {k: v for k, v in model.state_dict().items() if not k.startswith("blip.visual_encoder.")}
    torch.save(keep, tmp / "ImageReward.pt")
    return {"checkpoint": str(tmp / "ImageReward.pt"), "med_config": str(tmp / "med_config.json"), "device": "cpu"}


def imagereward_check(tmp: Path, options: dict[str, str], report: dict[str, Any]) -> Any:
    """Harness scores against the package's own one-image ``score(prompt, image)``."""
    import torch

    reward = build("imagereward", options)
    saved = torch_file(options["checkpoint"], "imagereward checkpoint")
    loaded = reward.model.state_dict()
    if not all(torch.equal(saved[k], loaded[k]) for k in saved if k.startswith("mlp.")):
        raise AssertionError("imagereward: the reward head did not load from the checkpoint")
    x = images(len(PROMPTS), 64)
    ours = torch.tensor(reward.score(x, PROMPTS))
    with torch.no_grad():
        package = torch.tensor([float(reward.model.score(p, im)) for p, im in zip(PROMPTS, pil(x))])
    close(report, "package score(prompt, image)", ours, package, 1e-5)
    return x, ours


# ---------------------------------------------------------------------------------------------------
# hpsv2: a tiny OpenCLIP ViT through the package's bundled open_clip
# ---------------------------------------------------------------------------------------------------

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32,
                                             "patch_size": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def hpsv2_files(tmp: Path) -> dict[str, str]:
    import torch
    from hpsv2.src.open_clip import add_model_config, create_model_and_transforms

    arch = tmp / "driftbench-tiny-ViT.json"
    arch.write_text(json.dumps(TINY_CLIP))
    add_model_config(arch)
    torch.manual_seed(0)
    model, _, _ = create_model_and_transforms(arch.stem, pretrained=None, output_dict=True)
    torch.save({"state_dict": model.state_dict()}, tmp / "HPS_tiny.pt")
    return {"checkpoint": str(tmp / "HPS_tiny.pt"), "arch": str(arch), "device": "cpu"}


def hpsv2_check(tmp: Path, options: dict[str, str], report: dict[str, Any]) -> Any:
    """Harness scores against the package's own ``hpsv2.img_score.score`` with the same weights."""
    import torch
    from hpsv2 import img_score

    reward = build("hpsv2", options)
    x = images(len(PROMPTS), 64)
    ours = torch.tensor(reward.score(x, PROMPTS))
    # img_score builds ViT-H-14 with pretrained weights from the Hub on first use; give it the tiny model
    # instead (it then loads the checkpoint into it itself).
    from hpsv2.src.open_clip import create_model_and_transforms

    model, _, preprocess_val = create_model_and_transforms(Path(options["arch"]).stem, pretrained=None,
                                                           output_dict=True, light_augmentation=True)
    img_score.model_dict.update(model=model, preprocess_val=preprocess_val)
    package = torch.tensor([float(img_score.score(im, p, cp=options["checkpoint"])[0])
                            for p, im in zip(PROMPTS, pil(x))])
    close(report, "package hpsv2.img_score.score", ours, package, 1e-5)
    return x, ours


# ---------------------------------------------------------------------------------------------------
# Shared: comparisons, the server, the record
# ---------------------------------------------------------------------------------------------------

def close(report: dict[str, Any], what: str, ours, theirs, tol: float) -> None:
    import torch

    ours, theirs = torch.as_tensor(ours).float().flatten(), torch.as_tensor(theirs).float().flatten()
    diff = float((ours - theirs).abs().max())
    report.setdefault("max_abs_diff", {})[what] = diff
    if ours.shape != theirs.shape or not diff <= tol:
        raise AssertionError(f"scores differ from {what}: {ours.tolist()} vs {theirs.tolist()} (max {diff:.3g} > {tol})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_check(name: str, options: dict[str, str], x, expected, report: dict[str, Any], log: Path) -> None:
    """Start serve-reward with ``options``, wait for /health, score ``x`` remotely and compare."""

    port = free_port()
    cmd = [sys.executable, "-m", "harness", "serve-reward", name, "--port", str(port)]
    cmd += [a for k, v in options.items() for a in ("--option", f"{k}={v}")]
    started = time.perf_counter()
    with log.open("w") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            if server.poll() is not None:
                raise AssertionError(f"serve-reward {name} exited with {server.returncode}: {log.read_text()[-1500:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    report["health"] = json.loads(answer.read())
                break
            except OSError:
                if time.perf_counter() - started > HEALTH_TIMEOUT:
                    raise AssertionError(f"serve-reward {name} gave no /health in {HEALTH_TIMEOUT:.0f} s") from None
                time.sleep(1.0)
        report["seconds_to_health"] = round(time.perf_counter() - started, 1)
        if report["health"].get("name") != name:
            raise AssertionError(f"/health names '{report['health'].get('name')}', expected '{name}'")
        remote = RemoteReward(url, timeout=600)
        close(report, "served scores", remote.score(x, PROMPTS), expected, 1e-5)
    finally:
        server.terminate()
        server.wait(timeout=30)


CHECKS: dict[str, tuple[Callable, Callable]] = {"hpsv3": (hpsv3_files, hpsv3_check),
                                                "imagereward": (imagereward_files, imagereward_check),
                                                "hpsv2": (hpsv2_files, hpsv2_check)}


def versions(name: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for package in PACKAGES[name]:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def geneval_build_check(report: dict[str, Any]) -> None:
    """GenEval's stack imports, is mmdet 2.x, and mmcv's compiled CUDA ops run (no model: see the docstring)."""
    import torch
    from mmcv.ops import nms

    _import_stack()
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]], device="cuda")
    kept, index = nms(boxes, torch.tensor([0.9, 0.8, 0.7], device="cuda"), iou_threshold=0.5)
    report["mmcv_cuda_nms_kept"] = index.tolist()
    if index.tolist() != [0, 2]:
        raise AssertionError(f"mmcv's CUDA nms kept {index.tolist()}, expected [0, 2]")


def check(name: str, out_dir: Path = Path("results/reward_envs")) -> dict[str, Any]:
    """Run every check of environment ``name``; writes and returns the record (``passed`` true or false)."""
    report: dict[str, Any] = {"env": name, "date": time.strftime("%Y-%m-%d"), "versions": versions(name),
                              "passed": False, "seconds": {}}
    out_dir.mkdir(parents=True, exist_ok=True)
    if name == "geneval":
        try:
            geneval_build_check(report)
            report["passed"] = True
        except Exception as exc:  # noqa: BLE001 - recorded, printed, and the exit code says it failed
            report["error"] = f"{type(exc).__name__}: {exc}"
        (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        return report
    make_files, compare = CHECKS[name]
    try:
        with tempfile.TemporaryDirectory(prefix=f"driftbench-envcheck-{name}-") as tmp:
            os.environ["HF_HUB_CACHE"] = str(Path(tmp) / "hf")  # read by the server too; nothing is downloaded
            t = time.perf_counter()
            options = make_files(Path(tmp))
            report["seconds"]["tiny model files"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            x, scores = compare(Path(tmp), options, report)
            report["scores"] = [float(s) for s in scores]
            report["seconds"]["in-process scores"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            serve_check(name, options, x, scores, report, out_dir / f"{name}-server.log")
            report["seconds"]["server"] = round(time.perf_counter() - t, 1)
        report["passed"] = True
    except Exception as exc:  # noqa: BLE001 - recorded, printed, and the exit code says it failed
        import traceback

        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc().splitlines()[-12:]
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in (*CHECKS, "geneval"):
        print(f"usage: python -m rewards.envcheck NAME, NAME one of {', '.join(CHECKS)}, geneval", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = check(argv[0])
    print(json.dumps(report, indent=2))
    print(f"envcheck {argv[0]}: {'passed' if report['passed'] else 'FAILED: ' + report['error']}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
