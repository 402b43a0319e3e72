"""The interface every degradation implements: A, Aᵀ and AᵀA on videos.

Videos are frames-first tensors `[N, C, H, W]`, values in the data range [0, 1].
An operator is linear, so `⟨A x, y⟩ = ⟨x, Aᵀ y⟩` for all x, y (checked by the
relative dot test in tests/engine/operators/test_properties.py for every registered operator).
"""

from __future__ import annotations

import torch


def inner_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ over every element, as a 0-d tensor on the device.

    fp32/fp64: one dot per frame plane (rows of H·W elements, `torch.linalg.vecdot` in the data's
    dtype), the row sums added in float64 — float64 accumulation across the clip without a float64
    copy of it. Half types: the elementwise products in float32, summed in float32.
    """
    if a.dtype in (torch.float32, torch.float64):
        row = a.shape[-1] * a.shape[-2] if a.ndim >= 2 else a.numel()
        return torch.linalg.vecdot(a.reshape(-1, row), b.reshape(-1, row)).sum(dtype=torch.float64)
    return torch.sum(a.float() * b.float())


class LinearOperator:
    """A linear map `A: R^{in_shape} → R^{out_shape}` with its exact adjoint.

    Subclasses implement `A` and `A_adjoint`; they override `A_adjoint_A`
    when the normal operator has a cheaper closed form than AᵀA.
    """

    #: shape of the clean video x, [N, C, H, W]
    in_shape: tuple[int, ...]
    #: shape of the measurement y = A x
    out_shape: tuple[int, ...]
    #: the arithmetic it runs on: "torch" ops (the reference) or our "triton" kernels (engine.operators.KERNELS)
    kernels: str = "torch"

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """y = A x.  [*in_shape] → [*out_shape]"""
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """x = Aᵀ y.  [*out_shape] → [*in_shape]"""
        raise NotImplementedError

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        """AᵀA x, the normal operator of the CG system.  [*in_shape] → [*in_shape]"""
        return self.A_adjoint(self.A(x))

    def inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """⟨a, b⟩ on the operator's domain or range, the inner product CG uses (`inner_product`); a
        frame-sharded operator (engine.operators.kronecker) sums it over the processes.  → []"""
        return inner_product(a, b)

    def frame_preconditioner(self, phi, *, device=None, dtype=None):
        """v ↦ φ(g·TᵀT) v along frames from the operator's temporal part T, AᵀA ≈ (g·TᵀT) ⊗ (SᵀS / g)
        (engine.cg's preconditioner; phi maps eigenvalues [N] → [N]), or None when it has none (the default)."""
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)
