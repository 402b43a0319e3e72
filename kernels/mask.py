"""The inpainting mask on Triton: A = Aᵀ = AᵀA, y[n, c, h, w] = m[h, w] · x[n, c, h, w], one pass.

A program owns BLOCK pixels of one plane n·C + c, its pointers offset to the plane in int64
(N·C·H·W may pass 2³¹; offsets within a plane are int32).
Reference: engine.operators.inpaint.apply_mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.errors import InputError
from kernels.common import ACC, BLOCK, NUM_WARPS, check, check_frame, on_device, output

Tensor = torch.Tensor


@triton.jit
def _mask_kernel(
    x_ptr,                  # *T  clip, contiguous [N, C, H, W]
    m_ptr,                  # *T  keep-mask [H, W] (0 or 1)
    out_ptr,                # *T  output [N, C, H, W]
    HW,                     # H·W, elements per plane (≤ MAX_FRAME)
    CHUNKS,                 # programs per plane, ⌈HW / BLOCK⌉
    BLOCK: tl.constexpr,    # elements per program
    ACC: tl.constexpr,      # compute dtype
):
    plane = tl.program_id(0) // CHUNKS                                  # n·C + c
    pix = (tl.program_id(0) % CHUNKS) * BLOCK + tl.arange(0, BLOCK)     # pixels of the plane, int32
    ok = pix < HW
    first = plane.to(tl.int64) * HW                                     # int64: N·C·H·W may pass 2³¹
    x = tl.load(x_ptr + first + pix, mask=ok, other=0).to(ACC)
    m = tl.load(m_ptr + pix, mask=ok, other=0).to(ACC)
    tl.store(out_ptr + first + pix, (x * m).to(out_ptr.dtype.element_ty), mask=ok)


def masked(x: Tensor, mask: Tensor, *, out: Tensor | None = None) -> Tensor:
    """Launch `_mask_kernel`.  x: [N, C, H, W], mask: H·W elements ([1, 1, H, W]), both contiguous → [N, C, H, W]"""
    check("mask", x, mask, ndim=4)
    hw = mask.numel()
    if hw != x.shape[-2] * x.shape[-1]:
        raise InputError(f"mask: {hw} mask elements for frames of {x.shape[-2]}×{x.shape[-1]}")
    check_frame("mask", hw, "plane")
    out = output("mask", out, x.shape, x)
    chunks = triton.cdiv(hw, BLOCK)
    with on_device(x):
        _mask_kernel[(x.shape[0] * x.shape[1] * chunks,)](x, mask, out, hw, chunks, BLOCK=BLOCK,
                                                          ACC=ACC[x.dtype], num_warps=NUM_WARPS)
    return out


def apply_mask(x: Tensor, mask: Tensor) -> Tensor:
    """m · x, the mask broadcast over frames and channels.  x: [N, C, H, W], mask: [1, 1, H, W] → [N, C, H, W]"""
    x = x.contiguous()
    return masked(x, mask.to(x).contiguous())
