"""One-pass AᵀA for the paper's compositions of a temporal PSF T with a per-frame operator S.

T mixes frames and S acts inside each frame, so A = T ⊗ S (in either order of
application) and AᵀA = (TᵀT) ⊗ (SᵀS): the frame mixing of kernels.temporal with
SᵀS applied to each source frame on the fly.

    S = s×s average pooling:  AᵀA x = TᵀT (block means of x / s² broadcast back)   one pass
    S = inpainting mask m:    AᵀA x = m · TᵀT x                                     one pass

References: engine.operators.Composition.A_adjoint_A of the same operators.
"""

from __future__ import annotations

import torch

from kernels.common import next_pow2
from kernels.pool import avg_pool_normal
from kernels.temporal import NORMAL, TILE, frame_mix

Tensor = torch.Tensor


def temporal_pool_normal(x: Tensor, kernel: Tensor, autocorr: Tensor, boundary: str, s: int) -> Tensor:
    """AᵀA of temporal ∘ s×s pooling (either order).  x: [N, C, H, W], kernel: [w], autocorr: [2w − 1] → [N, C, H, W]

    One pass; for factors so large that one block of every frame does not fit a program's
    tile, the frame mixing and the pooling run as two passes.
    """
    x = x.contiguous()
    k, a = kernel.to(x).contiguous(), autocorr.to(x).contiguous()
    if next_pow2(x.shape[0]) * next_pow2(s) ** 2 > TILE:
        return avg_pool_normal(frame_mix(x, k, NORMAL, boundary, autocorr=a), s)
    return frame_mix(x, k, NORMAL, boundary, autocorr=a, pool=s)


def temporal_mask_normal(x: Tensor, kernel: Tensor, autocorr: Tensor, boundary: str, mask: Tensor) -> Tensor:
    """AᵀA of temporal ∘ mask (either order), one pass.  x: [N, C, H, W], kernel: [w], autocorr: [2w − 1],
    mask: [1, 1, H, W] → [N, C, H, W]"""
    x = x.contiguous()
    return frame_mix(x, kernel.to(x).contiguous(), NORMAL, boundary, autocorr=autocorr.to(x).contiguous(),
                     mask=mask.to(x).contiguous())
