"""The ADM UNet of openai/guided-diffusion (Dhariwal & Nichol 2021), for inference.

Weight-compatible with upstream `UNetModel`: `state_dict()` has upstream's key names
and shapes, so `256x256_diffusion_uncond.pt` and DPS's `ffhq_10m.pt` load with
`strict=True` (`engine.checkpoint.load_adm`). It computes the same function; the
differences are in how:

- attention runs through `F.scaled_dot_product_attention` on token-major tensors
  (flash / memory-efficient kernels on GPU; free of copies under channels_last);
- no gradient checkpointing (upstream hard-wires it into every attention block,
  which breaks the TorchScript ONNX exporter);
- a class-conditional model holds its class label (`set_class_label`), so the ε model
  keeps the signature ε(x, t) of every backend, export and captured graph;
- float64 stays float64 everywhere. In fp16/bf16, GroupNorm and the sinusoidal
  timestep features run in fp32 as upstream, and SDPA's kernels keep the softmax in
  fp32; the linears and convolutions (the time MLP included) run in the model's dtype.

Notation: N batch (frames), C channels, H×W pixels, T = H·W tokens,
mc = `num_channels`, E = 4·mc the timestep-embedding width, c the head width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

IN_CHANNELS = 3
GROUPS = 32
NUM_CLASSES = 1000                          # upstream's label embedding (ImageNet classes)
MAX_PERIOD = 10000
_HALF_DTYPES = (torch.float16, torch.bfloat16)

# Upstream's `channel_mult` when the flag is "" (script_util.create_model).
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}

# Flags that differ from ADMConfig's defaults (upstream's `model_and_diffusion_defaults`).
PRESETS: dict[str, dict] = {
    # openai/guided-diffusion 256x256_diffusion_uncond.pt: 552,814,086 parameters.
    "adm256_uncond": dict(
        image_size=256, num_channels=256, num_res_blocks=2, attention_resolutions=(32, 16, 8),
        num_head_channels=64, learn_sigma=True, resblock_updown=True,
    ),
    # DPS ffhq_10m.pt: 93,563,910 parameters.
    "ffhq_dps": dict(
        image_size=256, num_channels=128, num_res_blocks=1, attention_resolutions=(16,),
        num_head_channels=64, learn_sigma=True, resblock_updown=True,
    ),
    # The published class-conditional ImageNet models (guided-diffusion README's MODEL_FLAGS;
    # 128x128_diffusion.pt, 256x256_diffusion.pt, 512x512_diffusion.pt). Their shapes do not say
    # the head layout: these entries supply it when a checkpoint's shapes match one of them.
    "adm128_cond": dict(
        image_size=128, num_channels=256, num_res_blocks=2, attention_resolutions=(32, 16, 8),
        num_heads=4, learn_sigma=True, resblock_updown=True, class_cond=True,
    ),
    "adm256_cond": dict(
        image_size=256, num_channels=256, num_res_blocks=2, attention_resolutions=(32, 16, 8),
        num_head_channels=64, learn_sigma=True, resblock_updown=True, class_cond=True,
    ),
    "adm512_cond": dict(
        image_size=512, num_channels=256, num_res_blocks=2, attention_resolutions=(32, 16, 8),
        num_head_channels=64, learn_sigma=True, resblock_updown=True, class_cond=True,
    ),
    # Every block type (down/up ResBlocks, skip convs, attention in input, middle and
    # output blocks) at 32×32: for tests and CPU benchmarks, not a trained model.
    "tiny": dict(
        image_size=32, num_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2),
        attention_resolutions=(16,), num_head_channels=16, learn_sigma=True, resblock_updown=True,
    ),
}


def _int_tuple(value, name: str) -> tuple:
    """A flag given as "32,16,8", 16 or (32, 16, 8) → a tuple of numbers."""
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(",") if v.strip())
    if isinstance(value, (int, float)):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a comma-separated string or a sequence, "
                         f"got {value!r}") from None


@dataclass(frozen=True)
class ADMConfig:
    """The guided-diffusion UNet flags (defaults: upstream's `model_and_diffusion_defaults`).

    `attention_resolutions` are feature-map sizes in pixels (upstream: `image_size // r`
    is the downsample factor at which attention is inserted); an empty `channel_mult`
    is derived from `image_size` as upstream does. `class_cond` adds upstream's label
    embedding of `num_classes` rows (`UNetModel`'s num_classes; 1000 in every published
    model). `use_checkpoint` and `use_fp16` are not fields: inference only, and the
    dtype is `.to()` / `ADMUNet.convert_to`.
    """

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: tuple[float, ...] = ()
    attention_resolutions: tuple[int, ...] = (16, 8)
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    learn_sigma: bool = False
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    dropout: float = 0.0
    use_new_attention_order: bool = False
    class_cond: bool = False
    num_classes: int = NUM_CLASSES

    @classmethod
    def preset(cls, name: str) -> ADMConfig:
        """A named configuration (a key of PRESETS)."""
        if name not in PRESETS:
            raise ValueError(f"unknown ADM preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**PRESETS[name])

    def __post_init__(self):
        # Canonicalise the two list-valued flags (strings as on upstream's command line).
        object.__setattr__(self, "attention_resolutions",
                           _int_tuple(self.attention_resolutions, "attention_resolutions"))
        mult = _int_tuple(self.channel_mult, "channel_mult")
        if not mult:
            if self.image_size not in DEFAULT_CHANNEL_MULT:
                raise ValueError(
                    f"channel_mult must be given for image_size {self.image_size}; it is derived "
                    f"only for {sorted(DEFAULT_CHANNEL_MULT)}")
            mult = DEFAULT_CHANNEL_MULT[self.image_size]
        object.__setattr__(self, "channel_mult", mult)
        self._validate()

    def _validate(self):
        """Raise ValueError naming the first flag that upstream's UNetModel cannot build."""
        if self.num_channels < 1 or self.num_channels % 2:
            raise ValueError(f"num_channels must be a positive even number (the timestep "
                             f"embedding width), got {self.num_channels}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be ≥ 1, got {self.num_res_blocks}")
        if self.class_cond and self.num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1 for a class-conditional model, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for m in self.channel_mult:
            if m <= 0 or m * self.num_channels != int(m * self.num_channels):
                raise ValueError(f"channel_mult entry {m} × num_channels {self.num_channels} "
                                 f"is not a positive whole number of channels")
        for ch in self.level_channels:
            if ch % GROUPS:
                raise ValueError(f"every level's channel count must be divisible by {GROUPS} "
                                 f"(GroupNorm groups); got {self.level_channels}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size < 1 or self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be divisible by {factor} "
                             f"(2^(levels−1) for {len(self.channel_mult)} levels)")
        sizes = [self.image_size // 2 ** level for level in range(len(self.channel_mult))]
        for r in self.attention_resolutions:
            if r not in sizes:
                raise ValueError(f"attention resolution {r} px is not a feature-map size of this "
                                 f"UNet (sizes {sizes})")
        if self.num_head_channels == -1 and (self.num_heads < 1 or self.num_heads_upsample == 0
                                             or self.num_heads_upsample < -1):
            raise ValueError("num_heads must be ≥ 1 and num_heads_upsample ≥ 1 or -1 "
                             "when num_head_channels is -1")
        if self.num_head_channels != -1 and self.num_head_channels < 1:
            raise ValueError(f"num_head_channels must be ≥ 1 or -1, got {self.num_head_channels}")
        for level in self.attention_levels:
            ch = self.level_channels[level]
            self.heads(ch)
            self.heads(ch, upsample=True)
        self.heads(self.level_channels[-1])  # the middle block always has attention

    @property
    def out_channels(self) -> int:
        """6 with learned Σ (ε in channels 0–2, the variance interpolant in 3–5), else 3."""
        return 2 * IN_CHANNELS if self.learn_sigma else IN_CHANNELS

    @property
    def time_embed_dim(self) -> int:
        """E = 4·mc, the width of the timestep embedding fed to every ResBlock."""
        return 4 * self.num_channels

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels at each resolution level: int(mult·mc)."""
        return tuple(int(m * self.num_channels) for m in self.channel_mult)

    @property
    def attention_levels(self) -> frozenset[int]:
        """Levels (0 = full resolution) whose blocks carry attention."""
        return frozenset(level for level in range(len(self.channel_mult))
                         if self.image_size // 2 ** level in self.attention_resolutions)

    def heads(self, channels: int, upsample: bool = False) -> int:
        """Number of attention heads at `channels` (num_head_channels overrides num_heads)."""
        if self.num_head_channels != -1:
            heads = channels // self.num_head_channels if channels % self.num_head_channels == 0 else 0
        elif upsample and self.num_heads_upsample != -1:
            heads = self.num_heads_upsample
        else:
            heads = self.num_heads
        if heads < 1 or channels % heads:
            raise ValueError(f"{channels} channels do not split into whole attention heads "
                             f"(num_heads={self.num_heads}, num_heads_upsample="
                             f"{self.num_heads_upsample}, num_head_channels={self.num_head_channels})")
        return heads

    def as_flags(self) -> dict:
        """The fields as a plain dict (for logs and JSON)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def timestep_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoidal timestep features, cos first: [cos(t·f_i), sin(t·f_i)], f_i = P^(−i/half).

    P = 10000, half = dim/2, i = 0 … half−1; t may be fractional. Computed in `dtype`
    with upstream's order of operations. [N] → [N, dim]
    """
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=dtype, device=t.device) / half)
    args = t.to(dtype)[:, None] * freqs[None]  # [N, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm, 32 groups, ε = 1e-5: y = (x − μ_g)/√(σ²_g + ε)·γ + β. [N, C, *] → same.

    fp16/bf16 inputs are normalised in fp32 and cast back (upstream's GroupNorm32);
    float32 and float64 run in their own precision. The statistics are per sample, so
    in eager mode a large half input is normalised a few samples at a time: the same
    numbers, with fp32 copies of at most FP32_CHUNK_BYTES instead of two of the whole
    batch (at batch 16 the top decoder level would otherwise hold 4.3 GB of them).

    `kernels` = "triton" (see ADMUNet.use_kernels) runs `norm` as one fused Triton
    GroupNorm + scale-shift + SiLU (kernels.groupnorm) in eager mode; traces, exports
    and torch.compile always see the plain ops.
    """

    kernels = "torch"                       # or "triton": set by ADMUNet.use_kernels

    def __init__(self, channels: int):
        super().__init__(GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def norm(self, x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
             silu: bool = False) -> torch.Tensor:
        """SiLU?(GN(x)·(1 + scale) + shift): x [N, C, H, W]; scale, shift [N, C, 1, 1] in x's dtype."""
        if self.kernels == "triton" and not _tracing():
            from kernels.groupnorm import group_norm

            if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
                x = x.contiguous()                                      # the kernel's two layouts
            return group_norm(x, self.weight, self.bias, self.num_groups, self.eps,
                              scale=scale, shift=shift, silu=silu)
        h = self._group_norm(x)
        if scale is not None:
            h = h.mul_(1 + scale).add_(shift)                           # in place on the norm's fresh output
        return F.silu(h, inplace=True) if silu else h

    def _group_norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in _HALF_DTYPES:
            return super().forward(x)
        weight, bias = self.weight.float(), self.bias.float()
        step = max(1, FP32_CHUNK_BYTES // (4 * x[0].numel()))
        if _tracing() or step >= x.shape[0]:
            return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)
        out = torch.empty_like(x)
        for i in range(0, x.shape[0], step):
            out[i:i + step] = F.group_norm(x[i:i + step].float(), self.num_groups, weight, bias, self.eps)
        return out


#: Largest fp32 copy a half-precision GroupNorm makes in eager mode (see GroupNorm32).
FP32_CHUNK_BYTES = 256 * 2**20


def _tracing() -> bool:
    """Inside torch.compile, torch.export or a TorchScript/ONNX trace: graphs keep one batch-wide op."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _resample(x: torch.Tensor, mode: Literal["up", "down"]) -> torch.Tensor:
    """2× nearest-neighbour upsampling or 2×2 average pooling.

    [N, C, H, W] → [N, C, 2H, 2W] ("up") or [N, C, H/2, W/2] ("down")
    """
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResBlock(nn.Module):
    """The ADM residual block with timestep conditioning (and optional up/down resampling).

    h = Conv3x3(R(SiLU(GN(x))));  e = Linear(SiLU(emb))
    scale-shift: h = GN(h)·(1 + e_scale) + e_shift   (scale = first half of e)
    otherwise:   h = GN(h + e)
    out = skip(R(x)) + Conv3x3(Dropout(SiLU(h)))
    R is the identity, 2× nearest upsampling or 2×2 average pooling; skip is the
    identity when the channel count is kept, else a 1×1 conv.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int, *, dropout: float,
                 use_scale_shift_norm: bool, resample: Literal["up", "down"] | None = None):
        super().__init__()
        self.resample = resample
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(inplace=True), nn.Conv2d(channels, out_channels, 3, padding=1))
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(inplace=True), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x [N, C_in, H, W], emb [N, E] → [N, C_out, H', W']

        The SiLU modules of in_layers and out_layers keep upstream's layer indices (and so
        its state_dict keys); the activation itself runs inside GroupNorm32.norm.
        """
        in_norm, _, in_conv = self.in_layers
        h = in_norm.norm(x, silu=True)
        if self.resample is not None:
            h, x = _resample(h, self.resample), _resample(x, self.resample)
        h = in_conv(h)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # [N, 2·C_out or C_out, 1, 1]
        out_norm, _, dropout, out_conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = out_norm.norm(h, scale, shift, silu=True)
        else:
            h = out_norm.norm(h + e, silu=True)
        h = out_conv(dropout(h))                                    # frees the norm's output before the skip
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Strided 3×3 conv (resblock_updown=False). [N, C, H, W] → [N, C, H/2, W/2]"""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """2× nearest upsampling, then a 3×3 conv (resblock_updown=False). [N, C, H, W] → [N, C, 2H, 2W]"""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_resample(x, "up"))


def split_qkv(qkv: torch.Tensor, num_heads: int, head_channels: int, legacy: bool):
    """Split token-major qkv into heads. [N, T, 3C] → q, k, v each [N, heads, T, c]

    Legacy order (QKVAttentionLegacy): channel = head·3c + {q,k,v}·c + i (heads first).
    New order (QKVAttention):          channel = {q,k,v}·C + head·c + i.
    """
    if legacy:
        parts = qkv.unflatten(-1, (num_heads, 3, head_channels)).unbind(dim=-2)
    else:
        parts = qkv.unflatten(-1, (3, num_heads, head_channels)).unbind(dim=-3)
    return tuple(p.transpose(1, 2) for p in parts)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels with a residual connection.

    out = x + W_o·Attn(W_qkv·GN(x)),  Attn = softmax(q kᵀ/√c) v per head.
    `qkv` and `proj_out` are Conv1d(k=1) as upstream (weights [3C, C, 1], [C, C, 1]);
    they are applied as linear maps on token-major [N, T, C] tensors.
    """

    def __init__(self, channels: int, num_heads: int, *, legacy_order: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_channels = channels // num_heads
        self.legacy_order = legacy_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] → [N, C, H, W] (in x's memory format)"""
        height, width = x.shape[-2:]
        tokens = self.norm(x).permute(0, 2, 3, 1).flatten(1, 2)                # [N, T, C]
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)     # [N, T, 3C]
        q, k, v = split_qkv(qkv, self.num_heads, self.head_channels, self.legacy_order)
        a = F.scaled_dot_product_attention(q, k, v)                            # [N, heads, T, c]
        a = a.transpose(1, 2).flatten(2)                                       # [N, T, C]
        out = F.linear(a, self.proj_out.weight.squeeze(-1), self.proj_out.bias)
        return x + out.unflatten(1, (height, width)).permute(0, 3, 1, 2)


class TimestepEmbedSequential(nn.Sequential):
    """A Sequential that passes the timestep embedding to its ResBlocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """The guided-diffusion UNet, upstream's module tree and state_dict.

    forward(x [N, 3, H, W], t [N]) → [N, out_channels, H, W]: ε in channels 0–2 and,
    with learn_sigma, the variance interpolant v in 3–5. A class-conditional model
    (config.class_cond) adds the label's embedding to the timestep embedding; the label
    is the one held by `set_class_label` for every frame, or per frame `y` [N].
    Weights start at PyTorch's default initialisation (upstream zero-initialises some
    convs for training).
    """

    def __init__(self, config: ADMConfig):
        super().__init__()
        self.config = config
        self.class_label: int | None = None
        mc, emb = config.num_channels, config.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        if config.class_cond:
            self.label_emb = self._label_embedding_table(config.num_classes, emb)
        self.input_blocks, skip_channels = self._input_blocks()
        ch = config.level_channels[-1]
        self.middle_block = TimestepEmbedSequential(
            self._resblock(ch, ch), self._attention(ch), self._resblock(ch, ch))
        self.output_blocks = self._output_blocks(skip_channels)
        ch = config.level_channels[0]
        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(inplace=True), nn.Conv2d(ch, config.out_channels, 3, padding=1))

    @staticmethod
    def _label_embedding_table(num_classes: int, width: int) -> nn.Embedding:
        """nn.Embedding [num_classes, E] with PyTorch's default N(0, 1) weights; left empty on the meta
        device, where load_adm builds models (torch's first normal_ there takes seconds)."""
        table = nn.Embedding(num_classes, width, _weight=torch.empty(num_classes, width))
        if not table.weight.is_meta:
            nn.init.normal_(table.weight)
        return table

    def _resblock(self, channels: int, out_channels: int, resample=None) -> ResBlock:
        cfg = self.config
        return ResBlock(channels, cfg.time_embed_dim, out_channels, dropout=cfg.dropout,
                        use_scale_shift_norm=cfg.use_scale_shift_norm, resample=resample)

    def _attention(self, channels: int, upsample: bool = False) -> AttentionBlock:
        cfg = self.config
        return AttentionBlock(channels, cfg.heads(channels, upsample),
                              legacy_order=not cfg.use_new_attention_order)

    def _input_blocks(self) -> tuple[nn.ModuleList, list[int]]:
        """Stem conv, then per level num_res_blocks ResBlocks (+ attention) and a downsampler.

        Returns the blocks and the channel count of each block's output (the skips).
        """
        cfg = self.config
        ch = cfg.level_channels[0]
        blocks = [TimestepEmbedSequential(nn.Conv2d(IN_CHANNELS, ch, 3, padding=1))]
        skips = [ch]
        last = len(cfg.level_channels) - 1
        for level, level_ch in enumerate(cfg.level_channels):
            for _ in range(cfg.num_res_blocks):
                layers = [self._resblock(ch, level_ch)]
                ch = level_ch
                if level in cfg.attention_levels:
                    layers.append(self._attention(ch))
                blocks.append(TimestepEmbedSequential(*layers))
                skips.append(ch)
            if level != last:
                down = self._resblock(ch, ch, "down") if cfg.resblock_updown else Downsample(ch)
                blocks.append(TimestepEmbedSequential(down))
                skips.append(ch)
        return nn.ModuleList(blocks), skips

    def _output_blocks(self, skip_channels: list[int]) -> nn.ModuleList:
        """Per level, coarse to fine, num_res_blocks + 1 ResBlocks on [h, skip] (+ attention),
        the last of each level but the finest ending in an upsampler."""
        cfg = self.config
        skips = list(skip_channels)
        ch = cfg.level_channels[-1]
        blocks = []
        for level in reversed(range(len(cfg.level_channels))):
            level_ch = cfg.level_channels[level]
            for i in range(cfg.num_res_blocks + 1):
                layers = [self._resblock(ch + skips.pop(), level_ch)]
                ch = level_ch
                if level in cfg.attention_levels:
                    layers.append(self._attention(ch, upsample=True))
                if level and i == cfg.num_res_blocks:
                    layers.append(self._resblock(ch, ch, "up") if cfg.resblock_updown else Upsample(ch))
                blocks.append(TimestepEmbedSequential(*layers))
        return nn.ModuleList(blocks)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the blocks compute in (that of their convolutions)."""
        return self.input_blocks[0][0].weight.dtype

    def convert_to(self, dtype: torch.dtype) -> "ADMUNet":
        """Upstream's `convert_to_fp16` for any dtype: only the convolutions (and attention's
        1×1 convs) of input_blocks, middle_block and output_blocks take `dtype`; the time MLP,
        the emb Linears, every GroupNorm and the `out` head stay float32. In place; returns self.
        """
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            for module in blocks.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                    module.to(dtype)
        return self

    def use_kernels(self, kernels: Literal["torch", "triton"]) -> "ADMUNet":
        """Run every GroupNorm (with the scale-shift and SiLU after it) as plain torch ops or as
        the fused Triton kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1). Returns self."""
        if kernels not in ("torch", "triton"):
            raise ValueError(f"kernels must be 'torch' or 'triton', got {kernels!r}")
        for module in self.modules():
            if isinstance(module, GroupNorm32):
                module.kernels = kernels
        return self

    def set_class_label(self, label: int | None) -> "ADMUNet":
        """Condition every later forward on class `label` (0 ≤ label < num_classes); None clears it.

        Only a class-conditional model takes a label. Returns self.
        """
        if label is not None:
            if not self.config.class_cond:
                raise ValueError(f"class label {label} given, but this ADM model is unconditional")
            if isinstance(label, bool) or not isinstance(label, int):
                raise ValueError(f"the class label must be a whole number, got {label!r}")
            if not 0 <= label < self.config.num_classes:
                raise ValueError(f"class label {label} is out of range: this model has "
                                 f"{self.config.num_classes} classes (0 … {self.config.num_classes - 1})")
        self.class_label = label
        return self

    def _label_embedding(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """The class term of the embedding: [N, E] from y [N], [E] from the held label, None without a class."""
        if not self.config.class_cond:
            if y is not None:
                raise ValueError("class labels y given, but this ADM model is unconditional")
            return None
        if y is not None:
            return self.label_emb(y)
        if self.class_label is None:
            raise ValueError(f"this ADM model is class-conditional ({self.config.num_classes} classes) and "
                             f"has no unconditional mode: set_class_label(k) or pass y")
        return self.label_emb.weight[self.class_label]           # a view: no host sync, graph-safe

    def num_parameters(self) -> int:
        """Total number of parameter elements."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """ADM's raw output. x [N, 3, H, W], t [N] integer or float timesteps → [N, out_channels, H, W]

        emb = MLP(features(t)) + label_emb(class), the class being y [N] (int64) when given,
        else the held label (`set_class_label`); unconditional models take no class.
        x is cast to the blocks' dtype and the output back to x's dtype. The sinusoidal
        features of t run in float64 for a float64 model, else in float32; the time MLP,
        the label embedding, the emb Linears and the `out` head run in their own weights'
        dtype (float32 after `convert_to`, as upstream's fp16 mode).
        """
        dtype, emb_dtype = self.dtype, self.time_embed[0].weight.dtype
        features = timestep_embedding(t, self.config.num_channels,
                                      torch.float64 if emb_dtype == torch.float64 else torch.float32)
        emb = self.time_embed(features.to(emb_dtype))  # [N, E]
        label = self._label_embedding(y)
        if label is not None:
            emb = emb + label.to(emb.dtype)
        h = x.to(dtype)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)                     # the old h is freed before the block runs
            h = block(h, emb)
        norm, _, conv = self.out
        return conv(norm.norm(h.to(conv.weight.dtype), silu=True)).to(x.dtype)
