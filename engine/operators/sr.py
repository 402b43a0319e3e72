"""Super-resolution: s×s average pooling of every frame and channel (docs/design.md, "Operators").

    A:    y[i, j] = (1/s²) Σ_{a,b < s} x[s·i + a, s·j + b]
    Aᵀ:   x[h, w] = y[h // s, w // s] / s²                 (nearest upsampling / s²)
    AᵀA:  x ↦ (block mean of x, broadcast over its block) / s²
"""

from __future__ import annotations

import torch

from engine.errors import InputError
from engine.operators.base import LinearOperator
from engine.operators.common import Arithmetic, lazy, pick_kernels

Tensor = torch.Tensor


# ── arithmetic (the reference for the other kernels) ──────────────────────

def _blocks(x: Tensor, s: int) -> Tensor:
    """View the s×s blocks of x.  [..., H, W] → [..., H/s, s, W/s, s]"""
    *lead, h, w = x.shape
    return x.reshape(*lead, h // s, s, w // s, s)


def avg_pool(x: Tensor, s: int) -> Tensor:
    """A x: the mean of every s×s block.  [..., H, W] → [..., H/s, W/s]"""
    return _blocks(x, s).mean(dim=(-3, -1))


def avg_pool_adjoint(y: Tensor, s: int) -> Tensor:
    """Aᵀ y: nearest upsampling by s, divided by s².  [..., h, w] → [..., s·h, s·w]"""
    *lead, h, w = y.shape
    up = (y / (s * s))[..., :, None, :, None].expand(*lead, h, s, w, s)
    return up.reshape(*lead, h * s, w * s)


def avg_pool_normal(x: Tensor, s: int) -> Tensor:
    """AᵀA x: every s×s block replaced by its mean / s².  [..., H, W] → [..., H, W]"""
    blocks = _blocks(x, s)
    return (blocks.mean(dim=(-3, -1), keepdim=True) / (s * s)).expand_as(blocks).reshape(x.shape)


#: SuperResolution's arithmetic by kernels: forward(x, s), adjoint(y, s), normal(x, s).
KERNELS = {
    "torch": Arithmetic(avg_pool, avg_pool_adjoint, avg_pool_normal),
    "triton": Arithmetic(lazy("kernels.pool", "avg_pool"), lazy("kernels.pool", "avg_pool_adjoint"),
                         lazy("kernels.pool", "avg_pool_normal")),
}


# ── the operator ─────────────────────────────────────────────────────────────

class SuperResolution(LinearOperator):
    """A = s×s average pooling (the paper's s = 4).  [N, C, H, W] → [N, C, H/s, W/s]"""

    def __init__(self, shape, s: int, *, kernels: str = "torch"):
        self.in_shape = tuple(int(v) for v in shape)
        *lead, h, w = self.in_shape
        if not (isinstance(s, int) and s >= 1):
            raise InputError(f"the super-resolution factor must be an integer ≥ 1, got {s!r}")
        if h % s or w % s:
            raise InputError(f"super-resolution by {s} needs H and W divisible by {s}, got H={h}, W={w}")
        self.s = s
        #: the largest eigenvalue of AᵀA (a block mean / s²): CG preconditioners scale by it
        self.normal_gain = 1.0 / (s * s)
        self.out_shape = (*lead, h // s, w // s)
        self.kernels = kernels
        self._fn = pick_kernels(KERNELS, kernels, "SuperResolution")

    def A(self, x: Tensor) -> Tensor:
        """y = s×s block means.  [N, C, H, W] → [N, C, H/s, W/s]"""
        return self._fn.forward(x, self.s)

    def A_adjoint(self, y: Tensor) -> Tensor:
        """x = nearest upsampling of y / s².  [N, C, H/s, W/s] → [N, C, H, W]"""
        return self._fn.adjoint(y, self.s)

    def A_adjoint_A(self, x: Tensor) -> Tensor:
        """AᵀA x = block means broadcast back / s².  [N, C, H, W] → [N, C, H, W]"""
        return self._fn.normal(x, self.s)
