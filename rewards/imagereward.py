"""ImageReward v1.0 (Xu et al., NeurIPS 2023): BLIP-based human-preference reward, served from its own environment.

``image-reward`` 1.5 pins timm 0.6.13 and fairscale and needs torchvision, so it is not installed beside the
harness: inside its environment ``driftbench serve-reward imagereward`` serves it, and runs use
``remote:URL``. Built where the package is not installed, this reward raises a RuntimeError with the
command that starts its server; where it is installed but fails to import, the error names what is missing.
The package imports OpenAI's ``clip`` without declaring it (its environment installs ``clip-anytorch``).

Local files only: ``checkpoint=`` the ``ImageReward.pt`` state dict and ``med_config=`` its
``med_config.json`` (both from THUDM/ImageReward; without them the package would download). Its BLIP text
side loads the ``bert-base-uncased`` tokenizer, which must be in the local Hugging Face cache
(``HF_HUB_OFFLINE=1`` is set before the import). Scores are the package's standardised output
(``(r - 0.167) / 1.033``), computed under ``torch.no_grad`` per prompt group; not differentiable.
Options: ``device`` (cuda when available).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from harness.safe_load import weights_only
from harness.serving.wire import to_uint8
from rewards import check_images
from rewards.clip_rewards import default_device
from rewards.remote import isolated_env_error

SESSION = "reward_env-imagereward"


class ImageReward:
    name = "imagereward"
    version = 1
    differentiable = False
    resolution = 224
    requires = (f"the imagereward environment (image-reward==1.5; nox -s {SESSION}, then remote:URL); local "
                "checkpoint= ImageReward.pt, med_config= med_config.json, bert-base-uncased in the HF cache")

    def __init__(self, checkpoint: str | None = None, med_config: str | None = None, device: str | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import ImageReward as RM
        except Exception as exc:
            raise isolated_env_error("imagereward", "image-reward", SESSION,
                                     "--option checkpoint=/data/ImageReward.pt --option med_config=/data/med_config.json",
                                     exc, module="ImageReward") from None
        for option, path in (("checkpoint", checkpoint), ("med_config", med_config)):
            if not path:
                raise FileNotFoundError(f"reward 'imagereward' needs a local {option} (no Hub downloads): pass "
                                        f"{option}=/path/to/{'ImageReward.pt' if option == 'checkpoint' else 'med_config.json'}")
            if not os.path.isfile(os.path.expanduser(path)):
                raise FileNotFoundError(f"reward 'imagereward': {option} file '{path}' does not exist")
        self.device = default_device(device)
        with weights_only():  # RM.load calls torch.load itself; the checkpoint is a plain state dict
            self.model = RM.load(os.path.expanduser(checkpoint), device=str(self.device),
                                 med_config=os.path.expanduser(med_config))
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str]) -> list[float]:
        """images (B, 3, H, W) in [0, 1] -> B floats (one ``model.score(prompt, images)`` call per prompt)."""
        from PIL import Image

        check_images(images, prompts, self.name)
        pil = [Image.fromarray(a) for a in to_uint8(images)]
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(prompt, []).append(i)
        out = [0.0] * len(pil)
        for prompt, index in groups.items():
            values = self.model.score(prompt, [pil[i] for i in index])
            values = values if isinstance(values, (list, tuple)) else [values]
            if len(values) != len(index):
                raise RuntimeError(f"ImageReward returned {len(values)} scores for {len(index)} images")
            for i, v in zip(index, values):
                out[i] = float(v)
        return out
