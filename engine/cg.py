"""Fixed-iteration conjugate gradients in video space (the CG step of DDS).

Solves `M x = b` for a symmetric positive semi-definite `M`, given as a
callable, with inner products over the whole clip: one step size per clip,
not per frame. The loop never synchronises with the host: a zero denominator
(an exact solution reached early) gives a zero step, computed on the device,
so the iteration can be captured in a CUDA graph.

The two systems of the paper (DESIGN.md §2), in the [0, 1] data range:

- noiseless:  AᵀA x = Aᵀ y
- noisy:      (I + γ AᵀA) x = x̂ + γ Aᵀ y
"""

from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨a, b⟩ over every element, as a 0-d tensor on the device.

    fp32/fp64: one dot per frame plane (rows of H·W elements, `torch.linalg.vecdot` in the data's
    dtype), the row sums added in float64 — float64 accumulation across the clip without a float64
    copy of it. Half types: the elementwise products in float32, summed in float32.
    """
    if a.dtype in (torch.float32, torch.float64):
        row = a.shape[-1] * a.shape[-2] if a.ndim >= 2 else a.numel()
        return torch.linalg.vecdot(a.reshape(-1, row), b.reshape(-1, row)).sum(dtype=torch.float64)
    return torch.sum(a.float() * b.float())


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, or 0 where den == 0 (no host sync)."""
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(num))


def conjugate_gradient(M: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor, iters: int) -> Tensor:
    """`iters` CG iterations on M x = b from x0.  x0, b: [N, C, H, W] → x: [N, C, H, W]

        r = b − M x,  p = r
        α = ⟨r, r⟩ / ⟨p, M p⟩;  x += α p;  r −= α M p
        β = ⟨r', r'⟩ / ⟨r, r⟩;  p = r' + β p

    Once ⟨r, r⟩ ≤ (ε_dtype)²·⟨b, b⟩ the system is solved to rounding and α is 0: on a
    singular M, rounding noise would otherwise make ⟨p, M p⟩ tiny and α huge.
    """
    x = x0.clone()
    r = b - M(x)
    p = r.clone()
    rs = _dot(r, r)
    floor = torch.finfo(x.dtype).eps ** 2 * _dot(b, b)
    for _ in range(iters):
        Mp = M(p)
        alpha = torch.where(rs > floor, _safe_div(rs, _dot(p, Mp)), torch.zeros_like(rs)).to(x.dtype)
        x.add_(alpha * p)
        r.sub_(alpha * Mp)
        rs_new = _dot(r, r)
        beta = _safe_div(rs_new, rs).to(x.dtype)
        p = r + beta * p
        rs = rs_new
    return x


def data_consistency(op, y: Tensor, x_hat: Tensor, iters: int, gamma: float | None = None, *,
                     aty: Tensor | None = None) -> Tensor:
    """CG_l(x̂): `iters` CG steps from x̂ towards the measurement y, all in [0, 1].

    gamma=None solves AᵀA x = Aᵀ y; a float γ solves (I + γ AᵀA) x = x̂ + γ Aᵀ y.
    x_hat: [N, C, H, W], y: op.out_shape; `aty` = Aᵀy when the caller has it already
    (the sampler computes it once per clip, not once per step).
    """
    Aty = op.A_adjoint(y) if aty is None else aty
    if gamma is None:
        return conjugate_gradient(op.A_adjoint_A, Aty, x_hat, iters)
    return conjugate_gradient(lambda v: v + gamma * op.A_adjoint_A(v), x_hat + gamma * Aty, x_hat, iters)
