"""The inpainting mask on Triton: A = Aᵀ = AᵀA, y[n, c, h, w] = m[h, w] · x[n, c, h, w], one pass.

Reference: engine.operators.inpaint.apply_mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.errors import InputError
from kernels.common import ACC, BLOCK, NUM_WARPS, check, on_device, output

Tensor = torch.Tensor


@triton.jit
def _mask_kernel(
    x_ptr,                  # *T  clip, contiguous [N, C, H, W]
    m_ptr,                  # *T  keep-mask [H, W] (0 or 1)
    out_ptr,                # *T  output [N, C, H, W]
    HW,                     # H·W, elements per plane
    BLOCK: tl.constexpr,    # elements per program
    ACC: tl.constexpr,      # compute dtype
):
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)               # pixels of one plane
    ok = pix < HW
    offs = tl.program_id(1).to(tl.int64) * HW + pix                     # plane n·C + c
    x = tl.load(x_ptr + offs, mask=ok, other=0).to(ACC)
    m = tl.load(m_ptr + pix, mask=ok, other=0).to(ACC)
    tl.store(out_ptr + offs, (x * m).to(out_ptr.dtype.element_ty), mask=ok)


def masked(x: Tensor, mask: Tensor, *, out: Tensor | None = None) -> Tensor:
    """Launch `_mask_kernel`.  x: [N, C, H, W], mask: H·W elements ([1, 1, H, W]), both contiguous → [N, C, H, W]"""
    check("mask", x, mask, ndim=4)
    if mask.numel() != x.shape[-2] * x.shape[-1]:
        raise InputError(f"mask: {mask.numel()} mask elements for frames of {x.shape[-2]}×{x.shape[-1]}")
    planes = x.shape[0] * x.shape[1]
    if planes > 65535:
        raise InputError(f"mask: at most 65535 planes (N·C), got {planes}")
    out = output("mask", out, x.shape, x)
    with on_device(x):
        _mask_kernel[(triton.cdiv(mask.numel(), BLOCK), planes)](x, mask, out, mask.numel(), BLOCK=BLOCK,
                                                                ACC=ACC[x.dtype], num_warps=NUM_WARPS)
    return out


def apply_mask(x: Tensor, mask: Tensor) -> Tensor:
    """m · x, the mask broadcast over frames and channels.  x: [N, C, H, W], mask: [1, 1, H, W] → [N, C, H, W]"""
    x = x.contiguous()
    return masked(x, mask.to(x).contiguous())
