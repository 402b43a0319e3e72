"""GroupNorm with ADM's scale-shift and SiLU fused on Triton: two passes over x.

For sample n and group g (channels c of the group, all pixels p, M = C/G · H·W elements):

    μ, σ² = mean and variance of x[n, c, p]                    (float32 statistics)
    y = (x − μ)/√(σ² + ε)·γ_c + β_c                            GroupNorm
    y ← y·(1 + s[n, c]) + t[n, c]                              ADM's scale-shift (optional)
    y ← y·sigmoid(y)                                           SiLU (optional)

Pass 1 (`_gn_stats_kernel`): program (n·G + g, j) sums d = x − K and d² over the j-th of S
pixel ranges of its group, K the group's first element, so that σ² = E[d²] − E[d]² does
not cancel when |μ| ≫ σ; it writes the two partial sums. Pass 2 (`_gn_apply_kernel`):
program (n·G + g, j) adds the S partials of its group and writes y over its range.
Partials rather than atomics: every run gives the same bits. Each program offsets x and y to
its group's first element x[n, g·C/G, 0, 0] in int64, so x may have 2³¹ elements or more
(ADM-256's first decoder block, [N, 512, 256, 256], has 2³¹ at N = 64); offsets within one
sample stay int32, as cheap as before (int64 tiles cost 8 more registers and spilled in some
fp32 variants on sm_90): one sample, C·H·W, must have fewer than 2³¹ elements.

x and y are contiguous or channels_last: a tile is [BP pixels, BC channels] at x's strides,
so either layout reads whole vectors. Two reads of x and one write of y, where upstream's
half-precision path (x.float(), GroupNorm, .half(), then scale-shift and SiLU each on its
own) moves about five times the bytes. Reference: engine.unet.GroupNorm32 (kernels="torch").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.errors import InputError
from kernels.common import ACC, NUM_WARPS, check_runnable, next_pow2, on_device

Tensor = torch.Tensor

#: Elements of x per tile.
TILE = 2048

#: About this many programs per pass (several per SM of a large GPU), fewer for small inputs.
PROGRAMS = 4096

#: Accumulator dtype of the partial sums, by the compute dtype.
_PARTIAL_DTYPE = {tl.float32: torch.float32, tl.float64: torch.float64}


@triton.jit
def _group_offset(ng, G, CG: tl.constexpr, stride_n, stride_c):
    """Offset of x[n, g·C/G, 0, 0] for program row ng = n·G + g, in int64 (N·C·H·W may pass 2³¹; an
    int32 n·stride_n would wrap)."""
    return (ng // G).to(tl.int64) * stride_n + (ng % G).to(tl.int64) * CG * stride_c


@triton.jit
def _gn_stats_kernel(
    x_ptr,                  # *T  x [N, C, H, W], contiguous or channels_last
    part_ptr,               # *ACC  partial sums [N·G, S, 2]: Σ d, Σ d², d = x − K
    P,                      # pixels per image, H·W
    G,                      # groups per sample
    chunk,                  # pixels per program (a multiple of BP)
    stride_n,               # element strides of x: samples,
    stride_c,               #   channels,
    stride_p,               #   pixels (H and W flattened: stride_h = W·stride_w)
    CG: tl.constexpr,       # channels per group, C/G (known to the compiler: aligned channels_last vectors)
    S: tl.constexpr,        # programs per group
    BP: tl.constexpr,       # pixels per tile
    BC: tl.constexpr,       # channels per tile, next power of two ≥ C/G
    ACC: tl.constexpr,      # compute dtype
):
    ng, j = tl.program_id(0), tl.program_id(1)
    base = x_ptr + _group_offset(ng, G, CG, stride_n, stride_c)
    c = tl.arange(0, BC)[None, :]                                       # [1, BC]
    c_ok = c < CG
    K = tl.load(base).to(ACC)                                           # x[n, g·C/G, 0, 0]
    s1 = tl.zeros((BP, BC), ACC)
    s2 = tl.zeros((BP, BC), ACC)
    start = j * chunk
    end = tl.minimum(start + chunk, P)
    for p0 in range(start, end, BP):
        p = p0 + tl.arange(0, BP)[:, None]                              # [BP, 1]
        ok = (p < end) & c_ok
        d = tl.where(ok, tl.load(base + c * stride_c + p * stride_p, mask=ok, other=0).to(ACC) - K, 0)
        s1 += d
        s2 += d * d
    out = part_ptr + (ng * S + j) * 2
    tl.store(out, tl.sum(tl.sum(s1, axis=1), axis=0))
    tl.store(out + 1, tl.sum(tl.sum(s2, axis=1), axis=0))


@triton.jit
def _gn_apply_kernel(
    x_ptr,                  # *T  x [N, C, H, W], contiguous or channels_last
    y_ptr,                  # *T  y, x's shape and strides
    part_ptr,               # *ACC  partial sums [N·G, S, 2] from _gn_stats_kernel
    w_ptr,                  # *W  γ [C]
    b_ptr,                  # *W  β [C]
    scale_ptr,              # *T  s [N, C] at sample stride ss_stride (read when SCALE_SHIFT)
    shift_ptr,              # *T  t [N, C] at sample stride ss_stride (read when SCALE_SHIFT)
    P,                      # pixels per image, H·W
    G,                      # groups per sample
    chunk,                  # pixels per program (a multiple of BP)
    stride_n,               # element strides of x and y: samples,
    stride_c,               #   channels,
    stride_p,               #   pixels
    ss_stride,              # sample stride of s and t (their channel stride is 1)
    eps,                    # ε
    CG: tl.constexpr,       # channels per group, C/G
    S: tl.constexpr,        # programs per group
    SP: tl.constexpr,       # next power of two ≥ max(S, 2) (a one-element reduction spills)
    SCALE_SHIFT: tl.constexpr,  # apply y·(1 + s) + t
    SILU: tl.constexpr,     # apply y·sigmoid(y)
    BP: tl.constexpr,       # pixels per tile
    BC: tl.constexpr,       # channels per tile, next power of two ≥ C/G
    ACC: tl.constexpr,      # compute dtype
):
    ng, j = tl.program_id(0), tl.program_id(1)
    n, g = ng // G, ng % G
    offset = _group_offset(ng, G, CG, stride_n, stride_c)
    xs, ys = x_ptr + offset, y_ptr + offset                             # the group's first element
    k = tl.arange(0, SP)
    parts = part_ptr + (ng * S + k) * 2
    m1 = tl.sum(tl.load(parts, mask=k < S, other=0), axis=0) / (CG * P)       # E[d]
    m2 = tl.sum(tl.load(parts + 1, mask=k < S, other=0), axis=0) / (CG * P)   # E[d²]
    mean = tl.load(xs).to(ACC) + m1
    rstd = 1 / tl.sqrt(tl.maximum(m2 - m1 * m1, 0) + eps)
    c = tl.arange(0, BC)[None, :]                                       # [1, BC]
    c_ok = c < CG
    channel = g * CG + c
    gain = tl.load(w_ptr + channel, mask=c_ok, other=0).to(ACC) * rstd
    bias = tl.load(b_ptr + channel, mask=c_ok, other=0).to(ACC)
    if SCALE_SHIFT:
        s = tl.load(scale_ptr + n * ss_stride + channel, mask=c_ok, other=0).to(ACC)
        t = tl.load(shift_ptr + n * ss_stride + channel, mask=c_ok, other=0).to(ACC)
        gain = gain * (1 + s)
        bias = bias * (1 + s) + t
    start = j * chunk
    end = tl.minimum(start + chunk, P)
    for p0 in range(start, end, BP):
        p = p0 + tl.arange(0, BP)[:, None]                              # [BP, 1]
        ok = (p < end) & c_ok
        offs = c * stride_c + p * stride_p                              # within the sample
        y = (tl.load(xs + offs, mask=ok, other=0).to(ACC) - mean) * gain + bias
        if SILU:
            e = tl.exp(-tl.abs(y))                                      # sigmoid without overflow
            y = y * tl.where(y >= 0, 1 / (1 + e), e / (1 + e))
        tl.store(ys + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


def _strides(x: Tensor) -> tuple[int, int, int]:
    """(sample, channel, pixel) strides of x [N, C, H, W], contiguous or channels_last; InputError otherwise."""
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        raise InputError("group_norm: x must be contiguous or channels_last")
    return x.stride(0), x.stride(1), x.stride(3)


def _scale_shift(where: str, t: Tensor, n: int, c: int, like: Tensor) -> Tensor:
    """t as an [N, C] view with unit channel stride (t may be [N, C] or [N, C, 1, 1])."""
    if t.shape not in ((n, c), (n, c, 1, 1)):
        raise InputError(f"group_norm: {where} must have shape [{n}, {c}] or [{n}, {c}, 1, 1], got {tuple(t.shape)}")
    if t.dtype not in ACC or t.device != like.device:
        raise InputError(f"group_norm: {where} must be a float tensor on {like.device}, got {t.dtype} on {t.device}")
    t = t.reshape(n, c)
    return t if t.stride(1) == 1 else t.contiguous()


def group_norm(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, *,
               scale: Tensor | None = None, shift: Tensor | None = None, silu: bool = False,
               out: Tensor | None = None) -> Tensor:
    """SiLU?(GN(x)·(1 + scale) + shift), the statistics in float32 (float64 for float64 x).

    x [N, C, H, W] contiguous or channels_last, float16/bfloat16/float32/float64; weight,
    bias [C]; scale, shift [N, C] or [N, C, 1, 1] (both or neither). Returns y in x's
    dtype, shape and memory format: `out` if given (same shape, dtype and strides as x,
    not overlapping it), else a new tensor.
    """
    _check(x, weight, bias, groups, scale, shift)
    y = _output(out, x)
    if x.numel() == 0:
        return y
    n, c, h, w = x.shape
    stride_n, stride_c, stride_p = _strides(x)
    weight, bias = weight.contiguous(), bias.contiguous()
    scale_shift = scale is not None
    if scale_shift:
        scale, shift = _scale_shift("scale", scale, n, c, x), _scale_shift("shift", shift, n, c, x)
        if scale.stride(0) != shift.stride(0):
            scale, shift = scale.contiguous(), shift.contiguous()
    else:
        scale = shift = x                                               # not read
    cg, pixels = c // groups, h * w
    bc = next_pow2(cg)
    bp = max(1, TILE // bc)
    tiles = triton.cdiv(pixels, bp)
    s = min(tiles, max(1, PROGRAMS // (n * groups)))
    chunk = triton.cdiv(tiles, s) * bp
    s = triton.cdiv(pixels, chunk)                                      # no program without pixels
    acc = ACC[x.dtype]
    partials = torch.empty((n * groups, s, 2), dtype=_PARTIAL_DTYPE[acc], device=x.device)
    grid = (n * groups, s)
    with on_device(x):
        _gn_stats_kernel[grid](x, partials, pixels, groups, chunk, stride_n, stride_c, stride_p,
                               CG=cg, S=s, BP=bp, BC=bc, ACC=acc, num_warps=NUM_WARPS)
        _gn_apply_kernel[grid](x, y, partials, weight, bias, scale, shift, pixels, groups, chunk,
                               stride_n, stride_c, stride_p, scale.stride(0), float(eps),
                               CG=cg, S=s, SP=max(2, next_pow2(s)), SCALE_SHIFT=scale_shift, SILU=bool(silu),
                               BP=bp, BC=bc, ACC=acc, num_warps=NUM_WARPS)
    return y


def _check(x: Tensor, weight: Tensor, bias: Tensor, groups: int, scale, shift) -> None:
    """InputError unless group_norm can take these (scale and shift are checked by _scale_shift)."""
    if x.ndim != 4:
        raise InputError(f"group_norm: expected x [N, C, H, W], got shape {tuple(x.shape)}")
    c = x.shape[1]
    if x.dtype not in ACC:
        raise InputError(f"group_norm: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if not (isinstance(groups, int) and groups >= 1 and c % groups == 0):
        raise InputError(f"group_norm: {c} channels do not split into {groups!r} groups")
    for name, p in (("weight", weight), ("bias", bias)):
        if p.shape != (c,) or p.dtype not in ACC or p.device != x.device:
            raise InputError(f"group_norm: {name} must be a float [{c}] tensor on {x.device}, "
                             f"got {tuple(p.shape)} {p.dtype} on {p.device}")
    if (scale is None) != (shift is None):
        raise InputError("group_norm: give both scale and shift, or neither")
    if x[0].numel() >= 2**31:
        raise InputError(f"group_norm: one sample of x must have fewer than 2³¹ elements, "
                         f"got C·H·W = {x[0].numel()}")
    check_runnable("group_norm", x)
    _strides(x)


def _output(out: Tensor | None, x: Tensor) -> Tensor:
    """`out` after checking it matches x and is not x, or a new tensor like x."""
    if out is None:
        return torch.empty_like(x)
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device or out.stride() != x.stride():
        raise InputError(f"group_norm: out must match x's shape, dtype, device and strides, got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device} with strides {out.stride()}")
    if out.data_ptr() == x.data_ptr():
        raise InputError("group_norm: out must not be x (every program of a group reads its first element)")
    return out
