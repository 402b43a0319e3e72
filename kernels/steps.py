"""Tweedie and the DDIM update on Triton, one pass each (launchers take tensors and floats).

    Tweedie:  X̂₀₁ = ((X − √(1−ᾱ_t)·ε) / √ᾱ_t + 1) / 2              (returned in the data range [0, 1])
    update:   X_next = √ᾱ_next·(2·X̄₀₁ − 1) + c1·E_b + c2·ε          (E_b [1 or N, 3, H, W], broadcast over frames)

References: engine.sampler.tweedie and engine.sampler.ddim_update; engine.triton_steps adapts a
schedule step (engine.schedule.DDIMStep) to these launchers' arguments. ε may
be the first 3 channels of a 6-channel (learned-σ) output, in the network's dtype, without a
copy: only each frame must be contiguous, and the kernels convert it as they load. The step's coefficients are Python floats, passed as fp32 hi + lo so
that float64 data gets them to float64 accuracy. A program owns BLOCK elements of one frame, its
pointers offset to the frame in int64 (a clip may pass 2³¹ elements; offsets within a frame are int32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.errors import InputError
from kernels.common import (ACC, BLOCK, NUM_WARPS, check, check_frame, frame_stride, on_device, output, scalar,
                            split)

Tensor = torch.Tensor


@triton.jit
def _frame_and_inner(CHUNKS, BLOCK: tl.constexpr):
    """This program's frame n (int64: n·P may pass 2³¹) and its BLOCK element indices inside the frame (int32)."""
    frame = tl.program_id(0) // CHUNKS
    return frame.to(tl.int64), (tl.program_id(0) % CHUNKS) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _tweedie_kernel(
    x_ptr,                  # *T  X, model range  [N, P]
    eps_ptr,                # *E  ε  [N, P] with frame stride eps_stride, E the network's dtype
    out_ptr,                # *T  X̂ in [0, 1]  [N, P]
    P,                      # elements per frame, 3·H·W (≤ MAX_FRAME)
    CHUNKS,                 # programs per frame, ⌈P / BLOCK⌉
    eps_stride,             # frame stride of ε (≥ P: a channel slice of the network's output)
    a_hi, a_lo,             # √ᾱ_t
    b_hi, b_lo,             # √(1 − ᾱ_t)
    BLOCK: tl.constexpr,    # elements per program
    ACC: tl.constexpr,      # compute dtype
):
    frame, inner = _frame_and_inner(CHUNKS, BLOCK)
    ok = inner < P
    x = tl.load(x_ptr + frame * P + inner, mask=ok, other=0).to(ACC)
    eps = tl.load(eps_ptr + frame * eps_stride + inner, mask=ok, other=0).to(ACC)
    x0 = (x - scalar(b_hi, b_lo, ACC) * eps) / scalar(a_hi, a_lo, ACC)
    tl.store(out_ptr + frame * P + inner, ((x0 + 1) / 2).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _ddim_update_kernel(
    xbar_ptr,               # *T  X̄ in [0, 1]  [N, P]
    noise_ptr,              # *T  E_b  [1 or N, P]
    eps_ptr,                # *E  ε  [N, P] with frame stride eps_stride, E the network's dtype
    out_ptr,                # *T  X_next, model range  [N, P]
    P,                      # elements per frame, 3·H·W (≤ MAX_FRAME)
    CHUNKS,                 # programs per frame, ⌈P / BLOCK⌉
    noise_stride,           # 0 (one noise image shared by all frames) or P (one per frame)
    eps_stride,             # frame stride of ε (≥ P)
    a_hi, a_lo,             # √ᾱ_next
    c1_hi, c1_lo,           # c1 = η·√(1 − ᾱ_next)
    c2_hi, c2_lo,           # c2 = √(1 − η²)·√(1 − ᾱ_next)
    BLOCK: tl.constexpr,    # elements per program
    ACC: tl.constexpr,      # compute dtype
):
    frame, inner = _frame_and_inner(CHUNKS, BLOCK)
    ok = inner < P
    xbar = tl.load(xbar_ptr + frame * P + inner, mask=ok, other=0).to(ACC)
    noise = tl.load(noise_ptr + frame * noise_stride + inner, mask=ok, other=0).to(ACC)
    eps = tl.load(eps_ptr + frame * eps_stride + inner, mask=ok, other=0).to(ACC)
    out = scalar(a_hi, a_lo, ACC) * (2 * xbar - 1) + scalar(c1_hi, c1_lo, ACC) * noise \
        + scalar(c2_hi, c2_lo, ACC) * eps
    tl.store(out_ptr + frame * P + inner, out.to(out_ptr.dtype.element_ty), mask=ok)


def _chunks(x: Tensor, where: str) -> int:
    """Programs per frame, ⌈C·H·W / BLOCK⌉ (the grid is N times as many)."""
    if x.ndim != 4:
        raise InputError(f"{where}: a clip [N, C, H, W] expected, got {tuple(x.shape)}")
    check_frame(where, x[0].numel())
    return triton.cdiv(x[0].numel(), BLOCK)


def tweedie_step(x: Tensor, eps: Tensor, sqrt_ab: float, sqrt_1m_ab: float, *, out: Tensor | None = None) -> Tensor:
    """Launch `_tweedie_kernel`.  x: [N, 3, H, W] contiguous; eps: the same shape, each frame contiguous
    (the first 3 channels of a 6-channel output are), in its own float dtype → X̂ in [0, 1], [N, 3, H, W]"""
    check("tweedie", x)
    eps_stride = frame_stride("tweedie", eps, x)
    out = output("tweedie", out, x.shape, x)
    chunks = _chunks(x, "tweedie")
    with on_device(x):
        _tweedie_kernel[(x.shape[0] * chunks,)](x, eps, out, x[0].numel(), chunks, eps_stride, *split(sqrt_ab),
                                                *split(sqrt_1m_ab), BLOCK=BLOCK, ACC=ACC[x.dtype],
                                                num_warps=NUM_WARPS)
    return out


def ddim_step(xbar: Tensor, noise: Tensor, eps: Tensor, sqrt_ab_next: float, c1: float, c2: float, *,
              out: Tensor | None = None) -> Tensor:
    """Launch `_ddim_update_kernel`.  xbar: [N, 3, H, W] and noise: [1 or N, 3, H, W] contiguous; eps: shaped like
    xbar, each frame contiguous, in its own float dtype → X_next [N, 3, H, W]"""
    check("ddim_update", xbar, noise)
    if noise.shape[1:] != xbar.shape[1:] or noise.shape[0] not in (1, xbar.shape[0]):
        raise InputError(f"ddim_update: noise [1 or N, ...] for X̄ {tuple(xbar.shape)} expected, "
                         f"got {tuple(noise.shape)}")
    eps_stride = frame_stride("ddim_update", eps, xbar)
    out = output("ddim_update", out, xbar.shape, xbar)
    frame, chunks = xbar[0].numel(), _chunks(xbar, "ddim_update")
    with on_device(xbar):
        _ddim_update_kernel[(xbar.shape[0] * chunks,)](
            xbar, noise, eps, out, frame, chunks, 0 if noise.shape[0] == 1 else frame, eps_stride, *split(sqrt_ab_next),
            *split(c1), *split(c2), BLOCK=BLOCK, ACC=ACC[xbar.dtype], num_warps=NUM_WARPS)
    return out
