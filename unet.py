"""A compact ADM-style UNet: the velocity network v_theta(x_t, t, c) of flow matching.

The network maps a noisy image x_t, a time t in [0, 1] and a condition c to a velocity
with the same shape as the image. It follows the "ADM" UNet of Dhariwal & Nichol (2021)
that the flow-matching papers train (Lipman et al. 2023, Issachar et al. 2025):

    emb   = MLP(sinusoid(1000 t)) + enc(c)             enc: a table E[c] for class ids, a small
                                                       MLP for condition vectors (an embedding);
                                                       a learned vector for "null" (for CFG)
    block = x + conv(dropout(silu(GN(conv(silu(GN(x)))) * (1 + scale) + shift)))
            with (scale, shift) = Linear(silu(emb))    "adaptive group norm"
    attn  = x + proj(softmax(q k^T / sqrt(d)) v)        multi-head, at chosen resolutions

Encoder levels halve the resolution (strided 3x3 conv), the decoder doubles it again
(nearest upsample + 3x3 conv) and concatenates the matching encoder activation
(skip connection) before each block. This down/up choice is simpler than ADM's
resblock_updown; it changes the parameter count slightly (see PRESETS).

The last conv of every residual block, every attention output projection and the
output conv start at zero, as in ADM: each block starts as the identity and a fresh
network outputs exactly v = 0, so early training is stable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# t lives in [0, 1] for flow matching, but the sinusoid frequencies run from 1 down to
# 1/10000 radian per unit of time (the DDPM/ADM convention, made for steps 0..999).
# Unscaled, the fastest frequency would turn by one radian over the whole path and the
# slow half of the embedding would be nearly constant; scaling by 1000 gives the
# embedding the same resolution in t as ADM has over its 1000 diffusion steps.
TIME_SCALE = 1000.0

# Named configurations, passed as keyword arguments to UNet. attention_downsample lists
# the downsampling factors (1 = input resolution, 2 = half, ...) whose levels get
# self-attention, so a preset works at any image size.
PRESETS: dict[str, dict] = {
    # Tests and the CPU default (shapes in ~15 min on 2 cores): 301,219 parameters at 3
    # channels, 10 classes; 16 channels at full resolution keep a 32x32 step cheap.
    "tiny": dict(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                 attention_downsample=(4,), num_head_channels=32, dropout=0.0),
    # 32x32 data sets (CIFAR-10, ImageNet-32): 6,952,003 parameters at 3 channels, 10
    # classes; attention at the 16x16 level. Too slow to train on CPU (about 0.6 TFLOP per
    # step at batch 64): a GPU model.
    "small": dict(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                  attention_downsample=(2,), num_head_channels=64, dropout=0.1),
    # ImageNet 64x64, class-conditional: the ADM ImageNet-64 model (Dhariwal & Nichol 2021,
    # guided-diffusion flags: num_channels 192, num_res_blocks 3, attention_resolutions
    # 32,16,8, num_head_channels 64, dropout 0.1, use_scale_shift_norm, new attention
    # order, channel_mult (1,2,3,4) for 64x64), which Lipman et al. 2023 (Flow Matching,
    # appendix E hyper-parameter table) also use for ImageNet-64 (about 296M parameters).
    # Here: 277,189,827 parameters at 3 channels and 1000 classes (+ the null embedding). The
    # ~19M gap is ADM's residual blocks for down/upsampling (resblock_updown), where we
    # use one conv each: 3 + 3 fewer blocks of two 3x3 convs plus an embedding projection.
    "imagenet64": dict(base_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                       attention_downsample=(2, 4, 8), num_head_channels=64, dropout=0.1),
}


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[cos(1000 t w_i), sin(1000 t w_i)] with w_i = max_period^(-i / (dim/2)); (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) / half * torch.arange(half, device=t.device, dtype=torch.float32))
    angles = (TIME_SCALE * t.float())[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ConditionEncoder(nn.Module):
    """The one place that knows what a condition is: (N,) int64 class ids through a table, or
    (N, E) float vectors through a two-layer MLP. Rows with null=True get a learned "null"
    embedding instead (the unconditional field of classifier-free guidance)."""

    def __init__(self, emb_dim: int, num_classes: int = 0, cond_dim: int = 0):
        super().__init__()
        if (num_classes > 0) == (cond_dim > 0):
            raise ValueError(f"a condition is class ids (num_classes > 0) or vectors (cond_dim > 0), "
                             f"got num_classes={num_classes}, cond_dim={cond_dim}")
        self.num_classes, self.cond_dim = num_classes, cond_dim
        if cond_dim:
            self.mlp = nn.Sequential(nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        else:
            self.table = nn.Embedding(num_classes, emb_dim)
        self.null = nn.Parameter(torch.randn(emb_dim))  # N(0, 1), like a table row

    def forward(self, cond: Tensor, null: Tensor) -> Tensor:
        if self.cond_dim:
            embedding = self.mlp(cond.float())
        else:  # a null row's id may be anything (its embedding is replaced below): look up row 0
            embedding = self.table(torch.where(null, 0, cond))
        return torch.where(null[:, None], self.null.to(embedding.dtype), embedding)


def group_norm(channels: int) -> nn.GroupNorm:
    # ADM uses 32 groups; narrow layers (tiny/small) keep at least 4 channels per group.
    return nn.GroupNorm(min(32, channels // 4), channels)


def zero_init(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over the H*W positions, with a residual."""

    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.num_heads = channels // head_channels
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        # Split into q, k, v first, then into heads (ADM's "new attention order").
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, height * width)
        # each (N, heads, H*W, head_channels), made contiguous: with a strided last dimension
        # CUDA's SDPA falls back to its math kernel (fp32 GEMMs and a softmax over the full
        # H*W x H*W matrix); contiguous inputs get the flash / memory-efficient kernels
        q, k, v = (part.contiguous() for part in qkv.transpose(-1, -2).unbind(1))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, height, width))


class ResBlock(nn.Module):
    """Residual block with adaptive group norm, optionally followed by self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float,
                 head_channels: int | None = None):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.attention = SelfAttention(out_channels, head_channels) if head_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.attention(self.skip(x) + h)


class UNet(nn.Module):
    """forward(x (N,C,H,W), t (N,) in [0,1], cond, null (N,) bool) -> velocity (N,C,H,W).

    cond: (N,) class ids in 0..num_classes-1, or (N, cond_dim) vectors; null marks the rows
    to treat as unconditional (classifier-free guidance); None means no row is null.
    """

    def __init__(self, image_size: int, channels: int, num_classes: int = 0, base_channels: int = 64,
                 channel_mult: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_downsample: tuple[int, ...] = (2,), num_head_channels: int = 64,
                 dropout: float = 0.0, cond_dim: int = 0):
        super().__init__()
        check_architecture(image_size, channels, base_channels, channel_mult, attention_downsample, num_head_channels)
        levels, widths = len(channel_mult), [base_channels * mult for mult in channel_mult]
        self.image_size, self.channels, self.num_classes, self.cond_dim = image_size, channels, num_classes, cond_dim
        self.base_channels = base_channels
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.cond_encoder = ConditionEncoder(emb_dim, 0 if cond_dim else num_classes, cond_dim)
        self.input_conv = nn.Conv2d(channels, base_channels, 3, padding=1)

        def block(cin: int, cout: int, level: int) -> ResBlock:
            heads = num_head_channels if 2 ** level in attention_downsample else None
            return ResBlock(cin, cout, emb_dim, dropout, heads)

        # Encoder: num_res_blocks blocks per level, then a strided conv (except at the
        # bottom). Every output is kept for the decoder, so record its width.
        skip_widths, width = [base_channels], base_channels
        self.down_blocks, self.downsamplers = nn.ModuleList(), nn.ModuleList()
        for level, out_width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(block(width, out_width, level))
                width = out_width
                skip_widths.append(width)
            self.down_blocks.append(blocks)
            if level < levels - 1:
                self.downsamplers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skip_widths.append(width)

        self.middle1 = ResBlock(width, width, emb_dim, dropout, num_head_channels)
        self.middle2 = ResBlock(width, width, emb_dim, dropout)

        # Decoder: num_res_blocks + 1 blocks per level, each eating one skip (the extra
        # one takes the downsampler's output), then upsample (except at the top).
        self.up_blocks, self.upsamplers = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(levels)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(block(width + skip_widths.pop(), widths[level], level))
                width = widths[level]
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsamplers.append(nn.Conv2d(width, width, 3, padding=1))

        self.output = nn.Sequential(group_norm(width), nn.SiLU(),
                                    zero_init(nn.Conv2d(width, channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, null: Tensor | None = None) -> Tensor:
        if null is None:
            null = torch.zeros(len(cond), dtype=torch.bool, device=cond.device)
        emb = self.time_mlp(timestep_embedding(t, self.base_channels)) + self.cond_encoder(cond, null)
        emb = F.silu(emb)  # ADM applies SiLU before every block's projection; do it once here
        h = self.input_conv(x)
        skips = [h]
        for level, blocks in enumerate(self.down_blocks):
            for res_block in blocks:
                h = res_block(h, emb)
                skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
                skips.append(h)
        h = self.middle2(self.middle1(h, emb), emb)
        for level, blocks in enumerate(self.up_blocks):
            for res_block in blocks:
                h = res_block(torch.cat([h, skips.pop()], dim=1), emb)
            if level < len(self.upsamplers):
                h = self.upsamplers[level](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        # Under autocast the conv returns bf16; hand back the input dtype so the caller's
        # loss is computed in full precision.
        return self.output(h).to(x.dtype)


def build_unet(preset: str, image_size: int, channels: int, num_classes: int = 0, cond_dim: int = 0) -> UNet:
    """A preset network for class ids (num_classes) or condition vectors (cond_dim)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    return UNet(image_size, channels, num_classes, cond_dim=cond_dim, **PRESETS[preset])


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def check_architecture(image_size: int, channels: int, base_channels: int, channel_mult: tuple[int, ...],
                       attention_downsample: tuple[int, ...], num_head_channels: int) -> None:
    """A UNet these numbers can build, else one line saying which number to change."""
    levels = len(channel_mult)
    if image_size < 1 or image_size % 2 ** (levels - 1) != 0:
        raise ValueError(f"image_size {image_size} must be divisible by {2 ** (levels - 1)} "
                         f"for {levels} resolution levels; resize the images or pick another preset")
    if channels < 1:
        raise ValueError(f"channels ({channels}) must be at least 1")
    if base_channels < 16 or any(w % 4 or w % min(32, w // 4) for w in [base_channels * m for m in channel_mult]):
        raise ValueError(f"base_channels {base_channels} times each of channel_mult {tuple(channel_mult)} must "
                         f"split into group-norm groups (min(32, width/4)): use a multiple of 16 or 32")
    if any(factor not in [2 ** level for level in range(levels)] for factor in attention_downsample):
        raise ValueError(f"attention_downsample {tuple(attention_downsample)} must list factors among "
                         f"{[2 ** level for level in range(levels)]} (one per resolution level)")
    widths = [base_channels * mult for mult in channel_mult]
    attended = [width for level, width in enumerate(widths) if 2 ** level in attention_downsample]
    if any(width % num_head_channels != 0 for width in attended + widths[-1:]):
        raise ValueError(f"num_head_channels {num_head_channels} must divide the channel count "
                         f"of every attention layer {sorted(set(attended + widths[-1:]))}")
