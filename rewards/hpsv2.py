"""HPSv2.1 (Wu et al. 2023): an OpenCLIP ViT-H/14 fine-tuned on human preferences, served from its own environment.

``hpsv2`` 1.2.0 pins protobuf<4 and pytest==7.2.0 and needs torchvision, so it is not installed beside the
harness: inside its environment ``driftbench serve-reward hpsv2`` serves it, and runs use ``remote:URL``.
Built where the package is not installed, this reward raises a RuntimeError with the command that starts
its server; where it is installed but fails to import, the error names what is missing.

The model is built once (``hpsv2.score`` would reload the checkpoint on every call) with the package's
bundled OpenCLIP and **no pretrained download**, then loaded from ``checkpoint=`` (the local
``HPS_v2.1_compressed.pt``). ``hps_version`` is recorded for clarity (default ``v2.1``, unlike the
package's v2.0 default); the checkpoint decides the weights. Score = cos(image, text) of the normalised
OpenCLIP features (about 0.2-0.35), under ``torch.no_grad``, preprocessed by the package's own validation
transform; not differentiable. The 1.2.0 wheel lacks OpenCLIP's ``bpe_simple_vocab_16e6.txt.gz``, without
which the package fails at import; ``nox -s reward_env-hpsv2`` copies it in from the open-clip-torch wheel.
Options: ``device`` (cuda when available), ``batch`` (images per forward, 16), ``arch`` (the OpenCLIP
architecture, ``ViT-H-14`` as HPSv2.1's checkpoint has, or a model-config JSON file registered under its
file stem, which ``python -m rewards.envcheck hpsv2`` uses for a tiny random model).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from harness.safe_load import torch_file
from harness.serving.wire import to_uint8
from rewards import check_images
from rewards.clip_rewards import default_device
from rewards.remote import isolated_env_error

SESSION = "reward_env-hpsv2"


class HPSv2:
    name = "hpsv2"
    version = 1
    differentiable = False
    resolution = 224
    requires = (f"the hpsv2 environment (hpsv2==1.2.0; nox -s {SESSION}, then remote:URL); local checkpoint= "
                "HPS_v2.1_compressed.pt")

    def __init__(self, checkpoint: str | None = None, hps_version: str = "v2.1", device: str | None = None,
                 batch: int | str = 16, arch: str = "ViT-H-14"):

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from hpsv2.src.open_clip import add_model_config, create_model_and_transforms, get_tokenizer
        except Exception as exc:
            raise isolated_env_error("hpsv2", "hpsv2", SESSION, "--option checkpoint=/data/HPS_v2.1_compressed.pt",
                                     exc, module="hpsv2") from None
        if not checkpoint:
            raise FileNotFoundError("reward 'hpsv2' needs a local checkpoint (no Hub downloads): pass "
                                    "checkpoint=/path/to/HPS_v2.1_compressed.pt")
        checkpoint = os.path.expanduser(checkpoint)
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"reward 'hpsv2': checkpoint file '{checkpoint}' does not exist")
        if hps_version not in ("v2.0", "v2.1"):
            raise ValueError(f"hps_version must be v2.0 or v2.1, got '{hps_version}'")
        self.hps_version = hps_version
        self.device = default_device(device)
        self.batch = int(batch)
        if arch.endswith(".json"):
            if not os.path.isfile(os.path.expanduser(arch)):
                raise FileNotFoundError(f"reward 'hpsv2': arch file '{arch}' does not exist")
            add_model_config(os.path.expanduser(arch))
            arch = os.path.basename(arch)[: -len(".json")]
        model, _, self.preprocess = create_model_and_transforms(
            arch, pretrained=None, precision="amp" if self.device.type == "cuda" else "fp32",
            device=self.device, jit=False, force_quick_gelu=False, force_custom_text=False,
            force_patch_dropout=False, force_image_size=None, pretrained_image=False, image_mean=None,
            image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True, with_score_predictor=False,
            with_region_predictor=False)
        state = torch_file(checkpoint, "reward 'hpsv2': checkpoint")
        model.load_state_dict(state["state_dict"] if "state_dict" in state else state)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = get_tokenizer(arch)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str]) -> list[float]:
        """images (B, 3, H, W) in [0, 1] -> B floats, cos(image, text) per pair."""
        from PIL import Image

        check_images(images, prompts, self.name)
        arrays = to_uint8(images)
        out: list[float] = []
        for i in range(0, len(prompts), self.batch):
            pixels = torch.stack([self.preprocess(Image.fromarray(a)) for a in arrays[i:i + self.batch]])
            text = self.tokenizer(list(prompts[i:i + self.batch]))
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                result = self.model(pixels.to(self.device), text.to(self.device))
            image, txt = result["image_features"].float(), result["text_features"].float()
            out += (image * txt).sum(-1).cpu().tolist()
        return out
