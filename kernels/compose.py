"""One-pass AᵀA for the paper's compositions of a temporal PSF T with a per-frame operator S.

T mixes frames and S acts inside each frame, so A = T ⊗ S (in either order of
application) and AᵀA = (TᵀT) ⊗ (SᵀS): the frame mixing of kernels.temporal with
SᵀS applied to each source frame on the fly.

    S = s×s average pooling:  AᵀA x = TᵀT (block means of x / s² broadcast back)   one pass
    S = inpainting mask m:    AᵀA x = m · TᵀT x                                     one pass

Every temporal boundary fuses: the replicate one reads TᵀT (`normal`) as a matrix.

References: engine.operators.Composition.A_adjoint_A of the same operators.
"""

from __future__ import annotations

import torch

from kernels.common import next_pow2
from kernels.pool import avg_pool_normal
from kernels.temporal import NORMAL, TILE, frame_mix

Tensor = torch.Tensor


def temporal_pool_normal(x: Tensor, kernel: Tensor, autocorr: Tensor, boundary: str, s: int, *,
                         normal: Tensor | None = None) -> Tensor:
    """AᵀA of temporal ∘ s×s pooling (either order).  x: [N, C, H, W], kernel: [w], autocorr: [2w − 1],
    normal: TᵀT [N, N] (the replicate boundary reads it) → [N, C, H, W]

    One pass; for factors so large that one block of every frame does not fit a program's
    tile, the frame mixing and the pooling run as two passes.
    """
    x = x.contiguous()
    k, a, g = kernel.to(x).contiguous(), autocorr.to(x).contiguous(), _matrix(normal, x)
    if next_pow2(x.shape[0]) * next_pow2(s) ** 2 > TILE:
        return avg_pool_normal(frame_mix(x, k, NORMAL, boundary, autocorr=a, matrix=g), s)
    return frame_mix(x, k, NORMAL, boundary, autocorr=a, matrix=g, pool=s)


def temporal_mask_normal(x: Tensor, kernel: Tensor, autocorr: Tensor, boundary: str, mask: Tensor, *,
                         normal: Tensor | None = None) -> Tensor:
    """AᵀA of temporal ∘ mask (either order), one pass.  x: [N, C, H, W], kernel: [w], autocorr: [2w − 1],
    mask: [1, 1, H, W], normal: TᵀT [N, N] (the replicate boundary reads it) → [N, C, H, W]"""
    x = x.contiguous()
    return frame_mix(x, kernel.to(x).contiguous(), NORMAL, boundary, autocorr=autocorr.to(x).contiguous(),
                     matrix=_matrix(normal, x), mask=mask.to(x).contiguous())


def _matrix(normal: Tensor | None, like: Tensor) -> Tensor | None:
    """TᵀT in like's dtype, contiguous, or None."""
    return None if normal is None else normal.to(like).contiguous()
