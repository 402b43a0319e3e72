"""Composition of operators, applied left to right (docs/design.md, "Operators": spatial ∘ temporal).

For ops = [A₁, …, A_m] (A₁ applied first):

    A   = A_m ∘ … ∘ A₁
    Aᵀ  = A₁ᵀ ∘ … ∘ A_mᵀ
    AᵀA = Pᵀ (A_mᵀA_m) P,   P = A_{m−1} ∘ … ∘ A₁   (the last op's closed-form normal operator)

All operators of a composition run on the same kernels (torch ops or Triton; InputError
otherwise), and so does the composition. On the Triton kernels a temporal PSF T composed
with one per-frame operator S (the paper's compositions, either order) acts on other axes
than S, so A = T ⊗ S and AᵀA = (TᵀT) ⊗ (SᵀS): one fused pass for pooling or a mask
(kernels.compose), and TᵀT followed by SᵀS, without T and Tᵀ, for a blur.

The same Kronecker structure gives the preconditioner of CG (`frame_preconditioner`):
φ(g·TᵀT) along frames, g the largest eigenvalue of SᵀS (1/s² for pooling, 1 for a mask
or a normalised blur), from the composition's one temporal PSF.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from engine.errors import InputError
from engine.operators.base import LinearOperator
from engine.operators.blur import SpatialBlur
from engine.operators.inpaint import Inpainting
from engine.operators.sr import SuperResolution
from engine.operators.temporal import TemporalPSF

Tensor = torch.Tensor


class Composition(LinearOperator):
    """A = ops[-1] ∘ … ∘ ops[0].  [*ops[0].in_shape] → [*ops[-1].out_shape]"""

    def __init__(self, ops: Sequence[LinearOperator]):
        self.ops = tuple(ops)
        if not self.ops:
            raise InputError("a composition needs at least one operator")
        for first, then in zip(self.ops, self.ops[1:]):
            if tuple(first.out_shape) != tuple(then.in_shape):
                raise InputError(
                    f"cannot compose: {type(first).__name__} gives shape {tuple(first.out_shape)} "
                    f"but {type(then).__name__} expects {tuple(then.in_shape)}")
        self.in_shape = tuple(self.ops[0].in_shape)
        self.out_shape = tuple(self.ops[-1].out_shape)
        self.kernels = _common_kernels(self.ops)
        self._normal = _triton_normal(self.ops) if self.kernels == "triton" else None
        #: the largest eigenvalue of AᵀA = Π of the parts' (each acts on its own axes)
        self.normal_gain = 1.0
        for op in self.ops:
            self.normal_gain *= getattr(op, "normal_gain", 1.0)

    def A(self, x: Tensor) -> Tensor:
        """y = A_m(…A₁(x)).  [*in_shape] → [*out_shape]"""
        for op in self.ops:
            x = op.A(x)
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:
        """x = A₁ᵀ(…A_mᵀ(y)).  [*out_shape] → [*in_shape]"""
        for op in reversed(self.ops):
            y = op.A_adjoint(y)
        return y

    def A_adjoint_A(self, x: Tensor) -> Tensor:
        """AᵀA x = Pᵀ(A_mᵀA_m(P x)), or the fused form above.  [*in_shape] → [*in_shape]"""
        if self._normal is not None:
            return self._normal(x)
        *prefix, last = self.ops
        for op in prefix:
            x = op.A(x)
        x = last.A_adjoint_A(x)
        for op in reversed(prefix):
            x = op.A_adjoint(x)
        return x


    def frame_preconditioner(self, phi, *, device=None, dtype=None):
        """v ↦ φ(g·TᵀT) v along frames (T the one temporal PSF, g = Π of the other operators'
        `normal_gain`), or None without exactly one temporal PSF.  [*in_shape] → [*in_shape]"""
        temporal = [op for op in self.ops if isinstance(op, TemporalPSF)]
        if len(temporal) != 1:
            return None
        gain = 1.0
        for op in self.ops:
            if op is not temporal[0]:
                gain *= op.normal_gain
        return temporal[0].frame_preconditioner(phi, gain=gain, device=device, dtype=dtype)


def _common_kernels(ops) -> str:
    """The kernels all of `ops` run on; InputError naming each operator's when they differ."""
    kernels = {op.kernels for op in ops}
    if len(kernels) != 1:
        each = ", ".join(f"{type(op).__name__} on {op.kernels}" for op in ops)
        raise InputError(f"cannot compose operators on different kernels ({each}); build them all on one")
    return kernels.pop()


def _triton_normal(ops) -> Callable[[Tensor], Tensor] | None:
    """AᵀA = (TᵀT) ⊗ (SᵀS) of a temporal PSF and one per-frame operator on Triton, or None."""
    if len(ops) != 2 or sum(isinstance(op, TemporalPSF) for op in ops) != 1:
        return None
    t, s = ops if isinstance(ops[0], TemporalPSF) else ops[::-1]
    tc = t.constants
    if isinstance(s, SuperResolution):
        def normal(x):
            from kernels.compose import temporal_pool_normal
            return temporal_pool_normal(x, tc.like("kernel", x), tc.like("autocorr", x), t.boundary, s.s,
                                        normal=tc.like("normal", x))
    elif isinstance(s, Inpainting):
        def normal(x):
            from kernels.compose import temporal_mask_normal
            return temporal_mask_normal(x, tc.like("kernel", x), tc.like("autocorr", x), t.boundary,
                                        s.constants.like("mask", x), normal=tc.like("normal", x))
    elif isinstance(s, SpatialBlur):
        def normal(x):
            return s.A_adjoint_A(t.A_adjoint_A(x))
    else:
        return None
    return normal
