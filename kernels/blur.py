"""Separable spatial blur on Triton: A, its exact adjoint Aᵀ and AᵀA, one banded pass per image axis.

Along an axis of length L the 1-D blur with odd taps k (w = 2p + 1) is a matrix B
(engine.operators.blur: pad by p — reflect, circular or zero — then a valid convolution):

    (B u)[i] = Σ_j k[j] · u[ext(i + p − j)],   ext: the boundary's extension of [0, L).

B, Bᵀ and BᵀB are banded (half bandwidth R = p, p and 2p), so each is applied as

    out[t] = Σ_{d=−R}^{R} M[t, d] · u[t + d]        (t + d taken modulo L for circular)

with a table M [L, 2R + 1] of its diagonals, built on the device from the taps by
`_band_table_kernel` (one small launch; the taps never leave the device):

    circular (the same for every t):  B: k[p − d];  Bᵀ: k[p + d];  BᵀB: a[d] = Σ_j k[j] k[j + d]
    reflect, zero:  B[t, t + d], B[t + d, t] and Σ_i B[i, t] B[i, t + d] from the dense entries
                    B[i, s] = Σ_j k[j] · [ext(i + p − j) = s]  (0 where t + d ∉ [0, L)).

The 2-D operator is B ⊗ B (rows, then columns), so A = B_W B_H, Aᵀ = B_Hᵀ B_Wᵀ and
AᵀA = (B_HᵀB_H)(B_WᵀB_W): two passes over the clip each. A program of a pass owns lines of one
group of G consecutive planes [G, H, W] (G > 1 only for planes with fewer lines than a tile), its
pointers offset to the group in int64 (N·C·H·W may pass 2³¹; offsets within a group, G·H·W ≤
MAX_FRAME, are int32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.errors import InputError
from kernels.common import ACC, MAX_FRAME, NUM_WARPS, check, check_frame, next_pow2, on_device, output, wrap

Tensor = torch.Tensor

#: Which banded matrix: B, Bᵀ or BᵀB (constexpr: Triton kernels may read them).
FORWARD, ADJOINT, NORMAL = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)

#: Boundary codes of the kernels.
BOUNDARIES = {"reflect": 0, "circular": 1, "zero": 2}
REFLECT, CIRCULAR = tl.constexpr(0), tl.constexpr(1)

#: Elements per program of a band pass: BL lines × BT positions along the axis.
TILE = 2048

#: Table entries per program of `_band_table_kernel`.
TABLE_TILE = 1024


@triton.jit
def _b_entry(
    k_ptr,                  # *T  taps [w]
    i,                      # row indices of B, in [0, L)  [BT, DP]
    s,                      # column indices of B, in [0, L)  [BT, DP]
    ok,                     # where (i, s) is wanted  [BT, DP]
    L,                      # axis length
    P,                      # p = (w − 1) / 2
    BOUNDARY: tl.constexpr, # REFLECT or zero (not CIRCULAR)
    ACC: tl.constexpr,      # compute dtype
):
    """B[i, s] = Σ_j k[j]·[ext(i + p − j) = s]: the padded positions u with ext(u) = s are
    u = s, and for reflect also −s (s ≥ 1) and 2(L − 1) − s (s ≤ L − 2); j = i + p − u."""
    j = i + P - s
    v = tl.load(k_ptr + j, mask=ok & (j >= 0) & (j <= 2 * P), other=0).to(ACC)
    if BOUNDARY == REFLECT:
        j = i + P + s
        v += tl.load(k_ptr + j, mask=ok & (s >= 1) & (j >= 0) & (j <= 2 * P), other=0).to(ACC)
        j = i + P - 2 * (L - 1) + s
        v += tl.load(k_ptr + j, mask=ok & (s <= L - 2) & (j >= 0) & (j <= 2 * P), other=0).to(ACC)
    return v


@triton.jit
def _band_table_kernel(
    k_ptr,                  # *T    taps k [w], w = 2p + 1
    tab_ptr,                # *ACC  output diagonals M [L, 2R + 1], tab[t, R + d] = M[t, t + d]
    L,                      # axis length
    P,                      # p
    R,                      # half bandwidth: p (FORWARD, ADJOINT) or 2p (NORMAL)
    MODE: tl.constexpr,     # FORWARD (M = B), ADJOINT (M = Bᵀ) or NORMAL (M = BᵀB)
    BOUNDARY: tl.constexpr, # REFLECT, CIRCULAR or zero
    BT: tl.constexpr,       # rows t per program
    DP: tl.constexpr,       # next power of two ≥ 2R + 1
    ACC: tl.constexpr,      # compute dtype
):
    t = tl.program_id(0) * BT + tl.arange(0, BT)[:, None] + 0 * tl.arange(0, DP)[None, :]   # rows [BT, DP]
    d = tl.arange(0, DP)[None, :] - R + 0 * t                                # offsets [BT, DP] (see kernels.common)
    ok = (t < L) & (d <= R)
    if BOUNDARY == CIRCULAR:                                            # shift-invariant: per-offset taps
        if MODE == FORWARD:
            m = tl.load(k_ptr + P - d, mask=ok & (P - d >= 0) & (P - d <= 2 * P), other=0).to(ACC)
        elif MODE == ADJOINT:
            m = tl.load(k_ptr + P + d, mask=ok & (P + d >= 0) & (P + d <= 2 * P), other=0).to(ACC)
        else:
            m = tl.zeros([BT, DP], dtype=ACC)
            for j in range(0, 2 * P + 1):
                l = j + d
                m += tl.load(k_ptr + j).to(ACC) * tl.load(k_ptr + l, mask=ok & (l >= 0) & (l <= 2 * P),
                                                          other=0).to(ACC)
    else:                                                               # dense entries, exact at the borders
        s = t + d
        s_ok = ok & (s >= 0) & (s < L)
        if MODE == FORWARD:
            m = _b_entry(k_ptr, t, s, s_ok, L, P, BOUNDARY, ACC)
        elif MODE == ADJOINT:
            m = _b_entry(k_ptr, s, t, s_ok, L, P, BOUNDARY, ACC)
        else:
            m = tl.zeros([BT, DP], dtype=ACC)
            for e in range(0, 2 * P + 1):                               # the rows i of B that touch t
                i = t - P + e
                i_ok = s_ok & (i >= 0) & (i < L)
                m += _b_entry(k_ptr, i, t, i_ok, L, P, BOUNDARY, ACC) * _b_entry(k_ptr, i, s, i_ok, L, P,
                                                                                  BOUNDARY, ACC)
    tl.store(tab_ptr + t * (2 * R + 1) + R + d, m, mask=ok)


@triton.jit
def _band_pass_kernel(
    x_ptr,                  # *T    input, contiguous planes [planes, H, W]
    tab_ptr,                # *ACC  diagonals [L, 2R + 1] of the banded matrix along the axis (L = H or W)
    out_ptr,                # *T    output [planes, H, W]
    H,                      # plane height
    W,                      # plane width
    PLANES,                 # planes in the clip, N·C
    G,                      # planes per group (G·H·W ≤ MAX_FRAME)
    CHUNKS,                 # programs per group along its lines, ⌈G·(W (AXIS 0) or H (AXIS 1)) / BL⌉
    R,                      # half bandwidth
    AXIS: tl.constexpr,     # 0: along H, 1: along W
    WRAP: tl.constexpr,     # circular: t + d modulo L (else masked outside [0, L))
    BL: tl.constexpr,       # lines per program, all in one group of planes
    BT: tl.constexpr,       # positions t along the axis per program
    ACC: tl.constexpr,      # compute dtype
):
    group = tl.program_id(0) // CHUNKS
    first = group.to(tl.int64) * G * H * W                              # the group's first pixel, int64
    xs, outs = x_ptr + first, out_ptr + first                           # offsets within the group are int32
    planes = tl.minimum(G, PLANES - group * G)                          # the last group may be short
    line = (tl.program_id(0) % CHUNKS) * BL + tl.arange(0, BL)          # [BL]
    t = tl.program_id(1) * BT + tl.arange(0, BT)                        # [BT]
    if AXIS == 0:                                                       # line = (plane, column), t = row
        length = H
        lines = planes * W
        base = (line // W) * H * W + line % W
        step = W
    else:                                                               # line = (plane, row), t = column
        length = W
        lines = planes * H
        base = line * W
        step = 1
    ok = (line < lines)[:, None] & (t < length)[None, :]
    # each element's int32 offset is summed before the one pointer add: two adds cost 8 registers (fp16, AXIS 1)
    acc = tl.zeros([BL, BT], dtype=ACC)
    for e in range(0, 2 * R + 1):
        src = t + e - R
        if WRAP:
            src = wrap(src, length)
        src_ok = (src >= 0) & (src < length)
        coef = tl.load(tab_ptr + t * (2 * R + 1) + e, mask=t < length, other=0)
        v = tl.load(xs + (base[:, None] + src[None, :] * step), mask=ok & src_ok[None, :], other=0)
        acc += coef[None, :] * v.to(ACC)
    tl.store(outs + (base[:, None] + t[None, :] * step), acc.to(out_ptr.dtype.element_ty), mask=ok)


def band_table(kernel: Tensor, length: int, mode, boundary: str) -> Tensor:
    """Launch `_band_table_kernel`: the diagonals of B, Bᵀ or BᵀB along an axis of `length`.

    kernel: [w] odd, contiguous → [length, 2R + 1] in the compute dtype (R = p, or 2p for NORMAL).
    """
    check("blur", kernel, ndim=1)
    w = kernel.numel()
    if w % 2 == 0:
        raise InputError(f"blur: the taps must have odd width, got {w}")
    if boundary not in BOUNDARIES:
        raise InputError(f"blur: unknown boundary {boundary!r}; accepted: {', '.join(BOUNDARIES)}")
    p = w // 2
    if boundary == "reflect" and p > length - 1:
        raise InputError(f"blur: reflect padding by {p} needs at least {p + 1} pixels per side, got {length}")
    r = 2 * p if mode == NORMAL else p
    acc = ACC[kernel.dtype]
    tab = torch.empty((length, 2 * r + 1), dtype=torch.float64 if acc == tl.float64 else torch.float32,
                      device=kernel.device)
    dp = next_pow2(2 * r + 1)
    bt = max(1, min(next_pow2(length), TABLE_TILE // dp))
    with on_device(kernel):
        _band_table_kernel[(triton.cdiv(length, bt),)](kernel, tab, length, p, r, MODE=int(mode),
                                                       BOUNDARY=BOUNDARIES[boundary], BT=bt, DP=dp, ACC=acc,
                                                       num_warps=NUM_WARPS)
    return tab


def band_pass(x: Tensor, tab: Tensor, axis: int, boundary: str, *, out: Tensor | None = None) -> Tensor:
    """Launch `_band_pass_kernel`: apply the banded matrix of `tab` along H (axis 0) or W (axis 1).

    x: [N, C, H, W] contiguous; tab: [H or W, 2R + 1] from `band_table` → [N, C, H, W].
    """
    check("blur", x, ndim=4)
    n, c, h, w = x.shape
    length = (h, w)[axis]
    if tab.ndim != 2 or tab.shape[0] != length or tab.shape[1] % 2 == 0 or tab.device != x.device:
        raise InputError(f"blur: a table [{length}, 2R + 1] on {x.device} expected, got {tuple(tab.shape)}")
    check_frame("blur", h * w, "plane")
    out = output("blur", out, x.shape, x)
    lines = w if axis == 0 else h                   # per plane
    if axis == 0:                                   # lines are contiguous: at least 64 of them per tile
        bt = min(TILE // 64, next_pow2(length))
    else:                                           # positions are contiguous: up to 128 per tile
        bt = min(128, next_pow2(length))
    # small planes go G to a program (the interpreter pays per program); a group's offsets stay int32
    g = max(1, min(n * c, TILE // bt // lines, MAX_FRAME // (h * w)))
    bl = min(TILE // bt, next_pow2(g * lines))
    chunks = triton.cdiv(g * lines, bl)
    grid = (triton.cdiv(n * c, g) * chunks, triton.cdiv(length, bt))
    with on_device(x):
        _band_pass_kernel[grid](x, tab, out, h, w, n * c, g, chunks, tab.shape[1] // 2, AXIS=axis,
                                WRAP=boundary == "circular", BL=bl, BT=bt, ACC=ACC[x.dtype], num_warps=NUM_WARPS)
    return out


def _tables(kernel: Tensor, h: int, w: int, mode, boundary: str) -> tuple[Tensor, Tensor]:
    """The tables along H and W (one launch when H = W)."""
    tab_h = band_table(kernel, h, mode, boundary)
    return tab_h, tab_h if w == h else band_table(kernel, w, mode, boundary)


def spatial_blur(x: Tensor, kernel: Tensor, boundary: str) -> Tensor:
    """A x = B_W (B_H x).  x: [N, C, H, W], kernel: [w] (odd) → [N, C, H, W]"""
    x = x.contiguous()
    tab_h, tab_w = _tables(kernel.to(x).contiguous(), x.shape[-2], x.shape[-1], FORWARD, boundary)
    return band_pass(band_pass(x, tab_h, 0, boundary), tab_w, 1, boundary)


def spatial_blur_adjoint(y: Tensor, kernel: Tensor, boundary: str) -> Tensor:
    """Aᵀ y = B_Hᵀ (B_Wᵀ y).  y: [N, C, H, W], kernel: [w] → [N, C, H, W]"""
    y = y.contiguous()
    tab_h, tab_w = _tables(kernel.to(y).contiguous(), y.shape[-2], y.shape[-1], ADJOINT, boundary)
    return band_pass(band_pass(y, tab_w, 1, boundary), tab_h, 0, boundary)


def spatial_blur_normal(x: Tensor, kernel: Tensor, boundary: str) -> Tensor:
    """AᵀA x = (B_HᵀB_H)(B_WᵀB_W) x: two passes.  x: [N, C, H, W], kernel: [w] → [N, C, H, W]"""
    x = x.contiguous()
    tab_h, tab_w = _tables(kernel.to(x).contiguous(), x.shape[-2], x.shape[-1], NORMAL, boundary)
    return band_pass(band_pass(x, tab_h, 0, boundary), tab_w, 1, boundary)
