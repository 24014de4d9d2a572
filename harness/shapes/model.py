"""The Shapes world's one-step text-to-image generator, split the way SD-Turbo is split.

    prompt --[frozen TextEncoder]--> tokens (B, L, d), mask (B, L), pooled (B, d)
    noise eps (B, 4, 16, 16) --> u = 4 * avg_pool(eps, 4) (B, 64), exactly N(0, I_64), and a uniform ``pick``
    [trainable ShapesNet]  z = mu_k(text) + sigma_k(text) * u, k the prior component ``pick`` selects  -->  FiLM + cross-attention conv decoder
                           4x4 -> 8x8 -> 16x16  -->  latent x0 (B, 4, 16, 16) (times ``scaling_factor``)
    [frozen LatentDecoder] latent (B, 4, 16, 16) --> image (B, 3, 64, 64) in [0, 1]

It was pretrained as a conditional VAE whose decoder is ShapesNet followed by LatentDecoder and whose
Gaussian prior p(z | prompt) is learned (``harness/shapes/pretrain.py``; shapes-probe.md's recipe). The
latent is the activation between the two halves; like SD's 0.18215 a stored ``scaling_factor`` gives it
roughly unit std. ShapesNet's attention projections are named ``to_q``, ``to_k``, ``to_v``, ``to_out.0``
(the prior's attention pooling and every cross-attention block) so ``harness.lora.DEFAULT_TARGETS`` reach
it as they reach SD's UNet. The generator object around these nets, and the asset loaders, are in
``harness/shapes/generator.py``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LATENT_SHAPE = (4, 16, 16)
CODE_POOL = 4
"""u = CODE_POOL * avg_pool2d(eps, CODE_POOL): a mean of 16 iid N(0,1) has std 1/4, so u is N(0, I)."""
LOGVAR_RANGE = (-8.0, 4.0)
SPECIALS = ("<pad>",)


@dataclass(frozen=True)
class TextConfig:
    vocab: tuple[str, ...] = ()
    """Word-level vocabulary, index = token id; ``<pad>`` first. Built from the world's prompts."""
    width: int = 128
    """Token state size d."""
    layers: int = 2
    """Transformer layers (pre-LN)."""
    heads: int = 4
    """Attention heads per layer."""
    max_len: int = 12
    """Tokens per prompt after padding (the longest Shapes prompt has 10 words)."""


@dataclass(frozen=True)
class NetConfig:
    code_dim: int = 64
    """Size of the Gaussian code z (= numel of the pooled noise: 4 x 4 x 4)."""
    cond_dim: int = 256
    """Width of the FiLM conditioning vector made from z and the pooled text."""
    channels: tuple[int, int, int] = (96, 64, 32)
    """Decoder channels at 4x4, 8x8 and 16x16."""
    attn_dim: int = 64
    """Inner width of the cross-attention blocks (heads x head size)."""
    attn_heads: int = 4
    """Heads of the cross-attention blocks and of the prior's attention pooling."""
    prior_queries: int = 4
    """Learned queries of the prior's attention pooling over the text tokens."""
    prior_components: int = 1
    """Components of the Gaussian-mixture prior p(z | text); 1 is a single Gaussian (edition 1). A prompt whose
    objects take one of several colours or places has a multi-modal code; one Gaussian puts mass between the
    modes, which decodes to blended colours and faint spurious objects."""


@dataclass(frozen=True)
class DecoderConfig:
    channels: tuple[int, int] = (32, 16)
    """Channels at 16x16 and 32x32."""
    full_res: int = 0
    """Channels of a conv stage at 64x64; 0 makes the last 2x step a pixel shuffle (a 64x64 conv costs as
    much as the rest of the decoder)."""


@dataclass(frozen=True)
class ModelConfig:
    text: TextConfig = field(default_factory=TextConfig)
    net: NetConfig = field(default_factory=NetConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    scaling_factor: float = 1.0
    """Latent = raw net output x scaling_factor (unit-std latents, like SD's 0.18215); set after pretraining."""

    @staticmethod
    def from_dict(d: Mapping) -> "ModelConfig":
        text = dict(d["text"], vocab=tuple(d["text"]["vocab"]))
        net = dict(d["net"], channels=tuple(d["net"]["channels"]))
        dec = dict(d["decoder"], channels=tuple(d["decoder"]["channels"]))
        return ModelConfig(TextConfig(**text), NetConfig(**net), DecoderConfig(**dec), d["scaling_factor"])

    def to_dict(self) -> dict:
        return asdict(self)


def build_vocab(prompts: Sequence[str]) -> tuple[str, ...]:
    """The sorted word set of ``prompts`` after the special tokens (deterministic for a prompt set)."""
    words = sorted({w for p in prompts for w in tokenize_words(p)})
    return SPECIALS + tuple(words)


def tokenize_words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _groups(c: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0)


# -- text -----------------------------------------------------------------------------------------------


class TextEncoder(nn.Module):
    """Word-level transformer: prompts -> token states (B, L, d), mask (B, L) bool, pooled (B, d)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        if not cfg.vocab:
            raise ValueError("TextConfig.vocab is empty; build it with build_vocab(prompts)")
        self.cfg = cfg
        self.index = {w: i for i, w in enumerate(cfg.vocab)}
        self.embed = nn.Embedding(len(cfg.vocab), cfg.width)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, cfg.width) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)

    def ids(self, prompts: Sequence[str]) -> Tensor:
        """(B, L) token ids, 0-padded; unknown words and over-long prompts raise."""
        rows = []
        for p in prompts:
            words = tokenize_words(p)
            unknown = [w for w in words if w not in self.index]
            if unknown:
                raise ValueError(f"word '{unknown[0]}' in prompt '{p}' is not in the Shapes vocabulary")
            if not words or len(words) > self.cfg.max_len:
                raise ValueError(f"prompt '{p}' has {len(words)} words; the text encoder takes 1..{self.cfg.max_len}")
            rows.append([self.index[w] for w in words] + [0] * (self.cfg.max_len - len(words)))
        return torch.tensor(rows, dtype=torch.long, device=self.pos.device)

    def forward(self, ids: Tensor) -> dict[str, Tensor]:
        mask = ids != 0
        h = self.embed(ids) + self.pos
        h = self.norm(self.blocks(h, src_key_padding_mask=~mask))
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return {"tokens": h, "mask": mask, "pooled": pooled}


# -- trainable net -----------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention from queries (B, Q, c_q) to text tokens (B, L, c_kv) -> (B, Q, c_q).

    Projections are named as in diffusers' ``Attention`` (``to_out`` is a list: projection, dropout) so
    LoRA's default targets match them.
    """

    def __init__(self, c_q: int, c_kv: int, inner: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(c_q, inner, bias=False)
        self.to_k = nn.Linear(c_kv, inner, bias=False)
        self.to_v = nn.Linear(c_kv, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, c_q), nn.Dropout(0.0)])

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
        b, q_len, _ = x.shape

        def split(t: Tensor) -> Tensor:
            return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(tokens)), split(self.to_v(tokens))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        out = out.transpose(1, 2).reshape(b, q_len, -1)
        return self.to_out[1](self.to_out[0](out))


class CrossAttnBlock(nn.Module):
    """Residual cross-attention of every pixel of (B, C, h, w) to the text tokens."""

    def __init__(self, channels: int, d_text: int, inner: int, heads: int, size: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        # Pixels need to know where they are to resolve "left of" / "above" from the text.
        self.pos = nn.Parameter(torch.randn(size * size, channels) * 0.02)
        self.attn = Attention(channels, d_text, inner, heads)

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.norm(x).flatten(2).transpose(1, 2) + self.pos
        return x + self.attn(q, tokens, mask).transpose(1, 2).reshape(b, c, h, w)


def coords(x: Tensor) -> Tensor:
    """Two channels (B, 2, h, w) holding each pixel's x and y in [-1, 1], for CoordConv."""
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype),
                            torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype), indexing="ij")
    return torch.stack([xs, ys]).expand(b, -1, -1, -1)


class FiLMResBlock(nn.Module):
    """GroupNorm-FiLM-SiLU-conv twice with a residual: (B, c_in, h, w), cond (B, D) -> (B, c_out, h, w).

    The first conv also sees the pixel coordinates (CoordConv): drawing a shape at a position that a code
    vector names is what plain up-convolutions learn slowly (Liu et al. 2018).
    """

    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.film = nn.Linear(cond_dim, 2 * c_in)
        self.conv1 = nn.Conv2d(c_in + 2, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.conv1(torch.cat([F.silu(self.norm1(x) * (1 + scale) + shift), coords(x)], dim=1))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ShapesNet(nn.Module):
    """The trainable "UNet" analog: (u (B, 64), text) -> raw latent (B, 4, 16, 16).

    ``prior`` gives the learned conditional Gaussian p(z | text); ``decode_code`` maps a code z to the
    latent. Sampling is ``decode_code(mu + sigma * u)``.
    """

    def __init__(self, cfg: NetConfig, d_text: int):
        super().__init__()
        self.cfg = cfg
        c4, c8, c16 = cfg.channels
        self.queries = nn.Parameter(torch.randn(cfg.prior_queries, d_text) * 0.02)
        self.prior_pool = Attention(d_text, d_text, d_text, cfg.attn_heads)
        # One component keeps edition 1's head (2 * code_dim outputs) bit for bit; more add one logit each.
        n_out = 2 * cfg.code_dim * cfg.prior_components + (cfg.prior_components if cfg.prior_components > 1 else 0)
        self.prior_head = nn.Sequential(nn.LayerNorm(cfg.prior_queries * d_text),
                                        nn.Linear(cfg.prior_queries * d_text, 256), nn.SiLU(),
                                        nn.Linear(256, n_out))
        self.cond_mlp = nn.Sequential(nn.Linear(cfg.code_dim + d_text, cfg.cond_dim), nn.SiLU(),
                                      nn.Linear(cfg.cond_dim, cfg.cond_dim))
        self.to_map = nn.Linear(cfg.cond_dim, c4 * 16)
        self.res4, self.res8, self.res16 = (FiLMResBlock(c4, c4, cfg.cond_dim), FiLMResBlock(c4, c8, cfg.cond_dim),
                                            FiLMResBlock(c8, c16, cfg.cond_dim))
        self.attn4, self.attn8, self.attn16 = (CrossAttnBlock(c, d_text, cfg.attn_dim, cfg.attn_heads, s)
                                               for c, s in ((c4, 4), (c8, 8), (c16, 16)))
        self.out_norm = nn.GroupNorm(_groups(c16), c16)
        self.out = nn.Conv2d(c16, LATENT_SHAPE[0], 3, padding=1)

    def prior(self, text: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(logits (B, C), mu (B, C, code_dim), logvar (B, C, code_dim)) of the mixture prior, C =
        ``prior_components``; logvar clamped to LOGVAR_RANGE, logits all 0 when C is 1."""
        tokens = text["tokens"]
        q = self.queries.expand(tokens.shape[0], -1, -1)
        pooled = self.prior_pool(q, tokens, text["mask"]).flatten(1)
        b, c, d = tokens.shape[0], self.cfg.prior_components, self.cfg.code_dim
        out = self.prior_head(pooled)
        logits = out[:, 2 * c * d:] if c > 1 else out.new_zeros(b, 1)
        mu, logvar = out[:, :2 * c * d].reshape(b, c, 2 * d).chunk(2, dim=2)
        return logits, mu, logvar.clamp(*LOGVAR_RANGE)

    def decode_code(self, z: Tensor, text: Mapping[str, Tensor]) -> Tensor:
        """Code z (B, code_dim) -> raw latent (B, 4, 16, 16)."""
        tokens, mask = text["tokens"], text["mask"]
        c = self.cond_mlp(torch.cat([z, text["pooled"]], dim=1))
        h = self.to_map(c).reshape(z.shape[0], -1, 4, 4)
        h = self.attn4(self.res4(h, c), tokens, mask)
        h = self.attn8(self.res8(F.interpolate(h, scale_factor=2.0), c), tokens, mask)
        h = self.attn16(self.res16(F.interpolate(h, scale_factor=2.0), c), tokens, mask)
        return self.out(F.silu(self.out_norm(h)))

    def forward(self, u: Tensor, text: Mapping[str, Tensor], pick: Tensor | None = None) -> Tensor:
        """u (B, code_dim) standard normal and ``pick`` (B,) uniform in [0, 1) -> raw latent (B, 4, 16, 16).
        ``pick`` chooses the prior's component by inverse CDF of its weights (ignored with one component), so a
        sample is one deterministic function of the noise."""
        logits, mu, logvar = self.prior(text)
        if logits.shape[1] == 1:
            k = torch.zeros(u.shape[0], dtype=torch.long, device=u.device)
        else:
            cdf = logits.softmax(dim=1).cumsum(dim=1)
            k = (cdf < pick[:, None]).sum(dim=1).clamp(max=logits.shape[1] - 1)
        rows = torch.arange(u.shape[0], device=u.device)
        return self.decode_code(mu[rows, k] + (0.5 * logvar[rows, k]).exp() * u, text)


# -- frozen decoder ----------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """Unconditional GroupNorm-SiLU-conv residual block, (B, C, h, w) -> same."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class LatentDecoder(nn.Module):
    """The "VAE decoder" analog: latent (B, 4, 16, 16) -> image (B, 3, 64, 64) in [0, 1]."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        c16, c32 = cfg.channels
        layers = [nn.Conv2d(LATENT_SHAPE[0], c16, 3, padding=1), ResBlock(c16),
                  nn.Upsample(scale_factor=2.0), nn.Conv2d(c16, c32, 3, padding=1), ResBlock(c32),
                  nn.GroupNorm(_groups(c32), c32), nn.SiLU()]
        if cfg.full_res:
            layers += [nn.Upsample(scale_factor=2.0), nn.Conv2d(c32, cfg.full_res, 3, padding=1),
                       nn.GroupNorm(_groups(cfg.full_res), cfg.full_res), nn.SiLU(),
                       nn.Conv2d(cfg.full_res, 3, 3, padding=1)]
        else:
            layers += [nn.Conv2d(c32, 3 * 4, 3, padding=1), nn.PixelShuffle(2)]
        self.body = nn.Sequential(*layers)
        # Start at the flat grey background (logit of 215/255): otherwise the first hundreds of steps go to it.
        nn.init.constant_(layers[-2 if not cfg.full_res else -1].bias, math.log(215 / 40))

    def forward(self, latent: Tensor) -> Tensor:
        return torch.sigmoid(self.body(latent))


class ImageEncoder(nn.Module):
    """The "VAE encoder" analog: image (B, 3, 64, 64) in [0, 1] -> raw latent (B, 4, 16, 16), by two stride-2
    convs with residual blocks. Trained with the decoder in the generator job's first phase (and dropped
    there); the ``encoder`` job trains the committed one against the frozen decoder, for offline DrPO's
    rendered anchors."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1), ResBlock(width), nn.Conv2d(width, 2 * width, 4, 2, 1),
            ResBlock(2 * width), nn.GroupNorm(8, 2 * width), nn.SiLU(), nn.Conv2d(2 * width, LATENT_SHAPE[0], 3, padding=1))

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images * 2 - 1)
