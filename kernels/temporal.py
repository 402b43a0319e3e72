"""Temporal PSF on Triton: A, Aᵀ and AᵀA along frames, each in one pass over the clip.

For taps k of width w and centre c = (w − 1) // 2 on frames 0 … N−1 (engine.operators.temporal),
each operator is a sum over diagonals d of the frame matrix G (source frame n = m + d):

    A = T:      z[m] = Σ_{d = c−w+1}^{c}  k[c − d] · x[m + d]
    Aᵀ = Tᵀ:    z[m] = Σ_{d = −c}^{w−1−c} k[c + d] · x[m + d]
    AᵀA = TᵀT:  z[m] = Σ_{d = −(w−1)}^{w−1} g_d[m] · x[m + d],
                g_d = a[w − 1 + d] (circular; a the autocorrelation of k),
                g_d[m] = Σ_j k[j] · k[j − d] · [0 ≤ m − c + j < N] (zero: exact near the ends)

with m + d taken modulo N (circular) or read as 0 outside [0, N) (zero). For the replicate
boundary (a frame index clamped to [0, N − 1]) T is still banded with the same diagonals, but
its coefficients near the ends are sums of taps: the launcher passes T (A, Aᵀ) or TᵀT (AᵀA)
as an N×N matrix and the kernel reads g_d[m] = G[m, m + d] from it (MATRIX). A dense N×N
matrix P (the CG preconditioner, `frame_matmul`) is applied as z[m] = Σ_n P[m, n] · x[n]
(mode DENSE): one row of x per source frame, every element still read from DRAM once.
A program owns
BQ pixels in all N frames: the first diagonal reads its [N, BQ] block from memory, the
others re-read it from L1 with the frames permuted, so every element of x comes from
DRAM once and every output element is written once. A per-pixel operator S acts on
other axes than T, so AᵀA of their composition is (TᵀT) ⊗ (SᵀS) and fuses into the same
pass (kernels.compose): with s×s pooling each block is replaced by its mean / s² (SᵀS)
before the frame mixing and the result broadcast back over the block; with a mask, the
result is multiplied by it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.errors import InputError
from kernels.common import ACC, NUM_WARPS, check, check_frame, next_pow2, on_device, output, wrap_once
from kernels.pool import block_offsets

Tensor = torch.Tensor

#: Which frame matrix G the kernel applies (constexpr: Triton kernels may read them).
FORWARD, ADJOINT, NORMAL, DENSE = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2), tl.constexpr(3)

BOUNDARIES = ("circular", "zero", "replicate")

#: A program keeps a [next_pow2(N), BQ] accumulator in registers: at most this many frames.
MAX_FRAMES = 256

#: Accumulator elements per program (NP · BQ, and NP · BQ · SP² for the pooled store).
TILE = 4096


@triton.jit
def _diagonal(
    k_ptr,                  # *T  taps k [w]
    a_ptr,                  # *T  autocorrelation a [2w − 1] (circular NORMAL only)
    m,                      # [NP] output frames 0 … NP−1
    d,                      # the diagonal: source frame m + d
    N,                      # frames
    WIDTH,                  # w
    CENTER,                 # c = (w − 1) // 2
    MODE: tl.constexpr,     # FORWARD (G = T), ADJOINT (G = Tᵀ) or NORMAL (G = TᵀT)
    CIRCULAR: tl.constexpr, # boundary: circular (True) or zero (False)
    NP: tl.constexpr,       # next power of two ≥ N
    ACC: tl.constexpr,      # compute dtype
):
    """g_d[m] = G[m, m + d] for every output frame m (see the module docstring).  [NP]"""
    g = tl.zeros([NP], dtype=ACC)
    if MODE == FORWARD:
        g += tl.load(k_ptr + CENTER - d).to(ACC)
    elif MODE == ADJOINT:
        g += tl.load(k_ptr + CENTER + d).to(ACC)
    elif CIRCULAR:
        g += tl.load(a_ptr + WIDTH - 1 + d).to(ACC)
    else:
        for j in range(0, WIDTH):
            i = m - CENTER + j                                          # the row of T that k[j] sits in
            l = j - d + 0 * m                                           # a vector: see kernels.common
            ok = (i >= 0) & (i < N) & (l >= 0) & (l < WIDTH)
            g += tl.load(k_ptr + j).to(ACC) * tl.load(k_ptr + l, mask=ok, other=0).to(ACC)
    return g


@triton.jit
def _frame_mix_kernel(
    x_ptr,                  # *T  input clip, contiguous [N, C, H, W]
    k_ptr,                  # *T  taps k [w]
    a_ptr,                  # *T  autocorrelation of k [2w − 1] (circular NORMAL; else any valid pointer)
    g_ptr,                  # *T  frame matrix G [N, N] (MATRIX: T, or TᵀT for NORMAL; DENSE: P; else any valid pointer)
    mask_ptr,               # *T  keep-mask [H, W] (MASKED; else any valid pointer)
    out_ptr,                # *T  output clip [N, C, H, W]
    N,                      # frames
    P,                      # elements per frame, C·H·W (≤ MAX_FRAME; frame offsets n·P are int64)
    Q,                      # work items per frame: elements (POOL = 1) or s×s blocks (C·H/s·W/s)
    HW,                     # H·W, the mask's size
    hb,                     # H/s (POOL > 1)
    wb,                     # W/s (POOL > 1)
    W,                      # image width
    WIDTH,                  # w, number of taps
    CENTER,                 # c = (w − 1) // 2
    MODE: tl.constexpr,     # FORWARD, ADJOINT, NORMAL or DENSE
    CIRCULAR: tl.constexpr, # boundary: circular (True) or zero / replicate (False)
    MATRIX: tl.constexpr,   # read the diagonals' coefficients from g_ptr (replicate)
    POOL: tl.constexpr,     # s > 1: fuse s×s pooling's normal operator (NORMAL only); 1: none
    MASKED: tl.constexpr,   # fuse the inpainting mask (NORMAL, POOL = 1 only)
    NP: tl.constexpr,       # next power of two ≥ N
    BQ: tl.constexpr,       # work items per program
    SP: tl.constexpr,       # next power of two ≥ s
    ACC: tl.constexpr,      # compute dtype
):
    q = tl.program_id(0) * BQ + tl.arange(0, BQ)                        # [BQ]
    q_ok = q < Q
    m = tl.arange(0, NP)                                                # output frames [NP]
    m_ok = m < N
    if POOL > 1:
        offs, lane_ok = block_offsets(q, hb, wb, W, POOL, SP)           # [BQ, SP²] within a frame
        ok = q_ok[:, None] & lane_ok
    if MODE == FORWARD:                                                 # the diagonals d0 … d0 + nd − 1
        d0 = CENTER - WIDTH + 1
        nd = WIDTH
    elif MODE == ADJOINT:
        d0 = -CENTER
        nd = WIDTH
    elif MODE == NORMAL:
        d0 = 1 - WIDTH
        nd = 2 * WIDTH - 1
    else:                                                               # DENSE: one source frame per step
        d0 = 0
        nd = N
    z = tl.zeros([NP, BQ], dtype=ACC)                                   # Z = G X
    for e in range(0, nd):
        d = d0 + e
        if MODE == DENSE:
            src = e + 0 * m                                             # source frame e, as a vector
            src_ok = m_ok
            g = tl.load(g_ptr + m * N + e, mask=m_ok, other=0).to(ACC)  # P[m, e]
        else:
            src = m + d                                                 # source frames [NP]
            if CIRCULAR:
                src = wrap_once(src, N)                                 # |d| < w ≤ N
                src_ok = m_ok
            else:
                src_ok = m_ok & (src >= 0) & (src < N)
            if MATRIX:
                if MODE == ADJOINT:
                    g = tl.load(g_ptr + src * N + m, mask=src_ok, other=0).to(ACC)   # Tᵀ[m, src] = T[src, m]
                else:
                    g = tl.load(g_ptr + m * N + src, mask=src_ok, other=0).to(ACC)   # G[m, src]
            else:
                g = _diagonal(k_ptr, a_ptr, m, d, N, WIDTH, CENTER, MODE, CIRCULAR, NP, ACC)
        if POOL > 1:
            block = tl.load(x_ptr + src.to(tl.int64)[:, None, None] * P + offs[None, :, :],
                            mask=src_ok[:, None, None] & ok[None, :, :], other=0).to(ACC)
            v = tl.sum(block, axis=2) / (POOL * POOL) / (POOL * POOL)   # SᵀS x[src] on each block
        else:
            v = tl.load(x_ptr + src.to(tl.int64)[:, None] * P + q[None, :], mask=src_ok[:, None] & q_ok[None, :],
                        other=0).to(ACC)
        z += g[:, None] * v
    if POOL > 1:
        value = tl.broadcast_to(z[:, :, None], (NP, BQ, SP * SP))
        dst = out_ptr + m.to(tl.int64)[:, None, None] * P + offs[None, :, :]
        tl.store(dst, value.to(out_ptr.dtype.element_ty), mask=m_ok[:, None, None] & ok[None, :, :])
    else:
        if MASKED:
            z *= tl.load(mask_ptr + q % HW, mask=q_ok, other=0).to(ACC)[None, :]
        dst = out_ptr + m.to(tl.int64)[:, None] * P + q[None, :]
        tl.store(dst, z.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & q_ok[None, :])


def frame_mix(x: Tensor, kernel: Tensor, mode, boundary: str, *, autocorr: Tensor | None = None,
              matrix: Tensor | None = None, pool: int = 1, mask: Tensor | None = None,
              out: Tensor | None = None) -> Tensor:
    """Launch `_frame_mix_kernel`: Z = G X along frames, G = T, Tᵀ or TᵀT (`mode`), optionally
    fused with s×s pooling's normal operator (`pool` = s) or a keep-mask [H, W] (`mask`).

    x: [N, C, H, W]; kernel: [w]; autocorr: [2w − 1] (needed by the circular normal operator);
    matrix: [N, N], T (FORWARD, ADJOINT) or TᵀT (NORMAL), needed by the replicate boundary;
    all contiguous, one dtype → [N, C, H, W].
    """
    tensors = [x, kernel] + [t for t in (autocorr, matrix, mask) if t is not None]
    check("temporal", *tensors, ndim=4)
    n, c, h, w = x.shape
    width = kernel.numel()
    if boundary not in BOUNDARIES:
        raise InputError(f"temporal: unknown boundary {boundary!r}; accepted: {', '.join(BOUNDARIES)}")
    if kernel.ndim != 1 or width == 0:
        raise InputError(f"temporal: taps must be a non-empty 1-D tensor, got shape {tuple(kernel.shape)}")
    if mode not in (FORWARD, ADJOINT, NORMAL):
        raise InputError("temporal: mode must be FORWARD, ADJOINT or NORMAL (frame_matmul applies a dense matrix)")
    if mode == NORMAL and boundary == "circular" and (autocorr is None or autocorr.numel() != 2 * width - 1):
        raise InputError(f"temporal: the circular normal operator needs the autocorrelation [{2 * width - 1}]")
    if boundary == "replicate" and (matrix is None or tuple(matrix.shape) != (n, n)):
        raise InputError(f"temporal: the replicate boundary needs the frame matrix [{n}, {n}] "
                         f"(T, or TᵀT for the normal operator: engine.operators.temporal.temporal_matrix)")
    if boundary == "circular" and width > n:
        raise InputError(f"temporal: a circular kernel of width {width} needs at least {width} frames, got {n}")
    return _launch(x, kernel, int(mode), boundary, autocorr=autocorr, matrix=matrix, pool=pool, mask=mask, out=out)


def frame_matmul(P: Tensor, x: Tensor, *, out: Tensor | None = None) -> Tensor:
    """Launch `_frame_mix_kernel` in mode DENSE: z[m] = Σ_n P[m, n] · x[n] along frames.

    P: [N, N], x: [N, C, H, W], contiguous, one dtype → [N, C, H, W].
    """
    x = x.contiguous()
    P = P.to(x).contiguous()
    check("temporal", x, P, ndim=4)
    n = x.shape[0]
    if tuple(P.shape) != (n, n):
        raise InputError(f"temporal: a frame matrix [{n}, {n}] expected for {n} frames, got {tuple(P.shape)}")
    return _launch(x, P.new_zeros(1), int(DENSE), "zero", matrix=P, out=out)


def _launch(x: Tensor, kernel: Tensor, mode: int, boundary: str, *, autocorr: Tensor | None = None,
            matrix: Tensor | None = None, pool: int = 1, mask: Tensor | None = None,
            out: Tensor | None = None) -> Tensor:
    """The checks every mode shares, the tile, and the launch (see `frame_mix` for the arguments)."""
    n, c, h, w = x.shape
    width = kernel.numel()
    if n > MAX_FRAMES:
        raise InputError(f"temporal: the Triton kernels take at most {MAX_FRAMES} frames, got {n}; "
                         f"use the torch kernels")
    if (pool > 1 or mask is not None) and mode != NORMAL:
        raise InputError("temporal: pooling and masks fuse into the normal operator only")
    if pool > 1 and (mask is not None or h % pool or w % pool):
        raise InputError(f"temporal: pooling by {pool} needs H and W divisible by it, and no mask")
    if mask is not None and mask.numel() != h * w:
        raise InputError(f"temporal: the mask has {mask.numel()} elements, the frames {h}×{w}")
    check_frame("temporal", c * h * w)
    out = output("temporal", out, x.shape, x)
    np2, sp = next_pow2(n), next_pow2(pool)
    if pool > 1:
        q = c * (h // pool) * (w // pool)
        bq = max(1, TILE // (np2 * sp * sp))
    else:
        q = c * h * w
        bq = min(1024, max(16, TILE // np2))
    with on_device(x):
        _frame_mix_kernel[(triton.cdiv(q, bq),)](
            x, kernel, kernel if autocorr is None else autocorr, kernel if matrix is None else matrix,
            x if mask is None else mask, out,
            n, c * h * w, q, h * w, h // pool, w // pool, w, width, (width - 1) // 2,
            MODE=mode, CIRCULAR=boundary == "circular", MATRIX=boundary == "replicate", POOL=pool,
            MASKED=mask is not None, NP=np2, BQ=bq, SP=sp, ACC=ACC[x.dtype], num_warps=NUM_WARPS)
    return out


def temporal_conv(x: Tensor, kernel: Tensor, boundary: str, matrix: Tensor | None = None) -> Tensor:
    """A x: y[n] = Σ_j k[j] · x[n + c − j].  x: [N, C, H, W], kernel: [w], matrix: T [N, N] (replicate) → [N, C, H, W]"""
    x = x.contiguous()
    return frame_mix(x, kernel.to(x).contiguous(), FORWARD, boundary, matrix=_cast(matrix, x, boundary))


def temporal_conv_adjoint(y: Tensor, kernel: Tensor, boundary: str, matrix: Tensor | None = None) -> Tensor:
    """Aᵀ y: x[m] = Σ_j k[j] · y[m − c + j].  y: [N, C, H, W], kernel: [w], matrix: T [N, N] (replicate) → [N, C, H, W]"""
    y = y.contiguous()
    return frame_mix(y, kernel.to(y).contiguous(), ADJOINT, boundary, matrix=_cast(matrix, y, boundary))


def temporal_conv_normal(x: Tensor, kernel: Tensor, autocorr: Tensor, boundary: str,
                         normal: Tensor | None = None) -> Tensor:
    """AᵀA x in one pass, any boundary.  x: [N, C, H, W], kernel: [w], autocorr: [2w − 1],
    normal: TᵀT [N, N] (replicate) → [N, C, H, W]"""
    x = x.contiguous()
    return frame_mix(x, kernel.to(x).contiguous(), NORMAL, boundary, autocorr=autocorr.to(x).contiguous(),
                     matrix=_cast(normal, x, boundary))


def _cast(matrix: Tensor | None, like: Tensor, boundary: str) -> Tensor | None:
    """The frame matrix in like's dtype, contiguous, when the boundary reads it (else None)."""
    return matrix.to(like).contiguous() if matrix is not None and boundary == "replicate" else None
