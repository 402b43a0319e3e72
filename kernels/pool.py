"""s×s average pooling (super-resolution) on Triton: A, Aᵀ and AᵀA, one pass each.

    A:    y[q] = (1/s²) Σ_{a,b < s} x[block q, a, b]          [N, C, H, W] → [N, C, H/s, W/s]
    Aᵀ:   x[block q, a, b] = y[q] / s²                         [N, C, H/s, W/s] → [N, C, H, W]
    AᵀA:  x[block q, a, b] ↦ ((1/s²) Σ_{a,b} x[block q]) / s²  [N, C, H, W] → [N, C, H, W]

A program owns BQ blocks q of one plane n·C + c (flattened over block rows and columns),
its pointers offset to the plane in int64 (N·C·H·W may pass 2³¹; offsets within a plane are
int32). Block q's s×s window is padded to SP×SP, SP = next power of two ≥ s, lanes a ≥ s or
b ≥ s masked. Its tile is [BQ, L] with L = min(SP², TILE) lanes: small windows fit whole (BQ·SP² =
TILE), a window of more than TILE lanes (s > 32) is one program's, walked in SP²/L chunks of
L/SP window rows, so registers do not grow with s.
References: engine.operators.sr.avg_pool, avg_pool_adjoint, avg_pool_normal.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.errors import InputError
from kernels.common import ACC, NUM_WARPS, check, check_frame, next_pow2, on_device, output

Tensor = torch.Tensor

#: What the kernel computes (constexpr: Triton kernels may read them).
FORWARD, ADJOINT, NORMAL = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)

#: Elements of a program's tile [BQ, L]: BQ blocks, L lanes of their windows.
TILE = 2048


@triton.jit
def block_offsets(q, hb, wb, W, S: tl.constexpr, SP: tl.constexpr):
    """Offsets of the s×s pixels of blocks q inside a stack of [H, W] planes, and their mask.

    q: [BQ] block indices, plane-major (plane, block row, block column) with hb × wb blocks
    per plane; returns offsets [BQ, SP²] and the mask of the SP² lanes that exist (a, b < s).
    """
    offs, lane_ok = window_offsets(q % (hb * wb), wb, W, 0, S, SP, SP * SP)
    return (q // (hb * wb) * (hb * S) * W)[:, None] + offs, lane_ok


@triton.jit
def window_offsets(q, wb, W, k, S: tl.constexpr, SP: tl.constexpr, L: tl.constexpr):
    """Offsets of lanes k … k + L − 1 of the SP×SP windows of blocks q of one [H, W] plane (block row q // wb,
    column q % wb; lane a·SP + b is pixel (a, b) of the block), and the mask of those that exist (a, b < s).
    q: [BQ] → [BQ, L], [1, L]"""
    base = (q // wb) * S * W + (q % wb) * S                             # first pixel of each block
    ab = k + tl.arange(0, L)
    a, b = ab // SP, ab % SP
    return base[:, None] + (a * W + b)[None, :], ((a < S) & (b < S))[None, :]


@triton.jit
def _pool_kernel(
    src_ptr,            # *T  x [N, C, H, W] (FORWARD, NORMAL) or y [N, C, H/s, W/s] (ADJOINT)
    dst_ptr,            # *T  y (FORWARD) or x-shaped output (ADJOINT, NORMAL)
    QP,                 # blocks per plane, (H/s)·(W/s)
    CHUNKS,             # programs per plane, ⌈QP / BQ⌉
    hb,                 # blocks per plane column, H/s
    wb,                 # blocks per plane row, W/s
    W,                  # image width
    MODE: tl.constexpr,     # FORWARD, ADJOINT or NORMAL
    S: tl.constexpr,        # s, the pooling factor
    SP: tl.constexpr,       # next power of two ≥ s
    BQ: tl.constexpr,       # blocks per program
    L: tl.constexpr,        # window lanes per chunk, min(SP², TILE): SP² / L chunks per window
    ACC: tl.constexpr,      # compute dtype
):
    plane = (tl.program_id(0) // CHUNKS).to(tl.int64)                  # n·C + c, int64: N·C·H·W may pass 2³¹
    q = (tl.program_id(0) % CHUNKS) * BQ + tl.arange(0, BQ)             # blocks of the plane [BQ], int32
    q_ok = q < QP
    src = src_ptr + plane * QP * (1 if MODE == ADJOINT else S * S)     # the plane of y (ADJOINT) or x
    dst = dst_ptr + plane * QP * (1 if MODE == FORWARD else S * S)     # the plane of y (FORWARD) or x
    if MODE == ADJOINT:
        mean = tl.load(src + q, mask=q_ok, other=0).to(ACC) / (S * S)
    else:
        total = tl.zeros((BQ, L), ACC)
        for k in range(0, SP * SP, L):                                  # Σ over the window, a chunk at a time
            offs, lane_ok = window_offsets(q, wb, W, k, S, SP, L)       # [BQ, L]
            total += tl.load(src + offs, mask=q_ok[:, None] & lane_ok, other=0).to(ACC)
        mean = tl.sum(total, axis=1) / (S * S)
    if MODE == FORWARD:
        tl.store(dst + q, mean.to(dst_ptr.dtype.element_ty), mask=q_ok)
    else:
        if MODE == NORMAL:
            mean = mean / (S * S)
        value = tl.broadcast_to(mean[:, None], (BQ, L)).to(dst_ptr.dtype.element_ty)
        for k in range(0, SP * SP, L):                                  # the mean broadcast back, a chunk at a time
            offs, lane_ok = window_offsets(q, wb, W, k, S, SP, L)
            tl.store(dst + offs, value, mask=q_ok[:, None] & lane_ok)


def pool(x: Tensor, s: int, mode: int, *, out: Tensor | None = None) -> Tensor:
    """Launch `_pool_kernel`: `mode` FORWARD (x [N, C, H, W] → [N, C, H/s, W/s]),
    ADJOINT (y [N, C, h, w] → [N, C, h·s, w·s]) or NORMAL ([N, C, H, W] → [N, C, H, W])."""
    check("pool", x, ndim=4)
    if not (isinstance(s, int) and 1 <= s <= 512):
        raise InputError(f"pool: the factor must be an integer in [1, 512], got {s!r}")
    n, c, h, w = x.shape
    if mode == ADJOINT:
        hb, wb, shape = h, w, (n, c, h * s, w * s)
    else:
        if h % s or w % s:
            raise InputError(f"pool: H and W must be divisible by {s}, got H={h}, W={w}")
        hb, wb = h // s, w // s
        shape = (n, c, hb, wb) if mode == FORWARD else (n, c, h, w)
    check_frame("pool", hb * wb * s * s, "plane")
    out = output("pool", out, shape, x)
    sp = next_pow2(s)
    lanes = min(sp * sp, TILE)
    bq = min(TILE // lanes, next_pow2(hb * wb))                         # a program's blocks lie in one plane
    chunks = triton.cdiv(hb * wb, bq)
    with on_device(x):
        _pool_kernel[(n * c * chunks,)](x, out, hb * wb, chunks, hb, wb, wb * s, MODE=int(mode), S=s, SP=sp, BQ=bq,
                                        L=lanes, ACC=ACC[x.dtype], num_warps=NUM_WARPS)
    return out


def avg_pool(x: Tensor, s: int) -> Tensor:
    """A x: the mean of every s×s block.  [N, C, H, W] → [N, C, H/s, W/s]"""
    return pool(x.contiguous(), s, FORWARD)


def avg_pool_adjoint(y: Tensor, s: int) -> Tensor:
    """Aᵀ y: nearest upsampling by s, divided by s².  [N, C, h, w] → [N, C, s·h, s·w]"""
    return pool(y.contiguous(), s, ADJOINT)


def avg_pool_normal(x: Tensor, s: int) -> Tensor:
    """AᵀA x: every s×s block replaced by its mean / s².  [N, C, H, W] → [N, C, H, W]"""
    return pool(x.contiguous(), s, NORMAL)
