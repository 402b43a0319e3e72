"""The paper's comparison methods that need no network: stand-alone CG and ADMM-TV.

Both work in the data range [0, 1] on videos x [N, C, H, W] with a linear
operator `op` (engine.operators.base.LinearOperator) and a measurement
y = A x [*op.out_shape]. Their loops never synchronise with the host.

Notation (the paper's appendix, eq. 22):

    min_x ½‖y − A x‖² + λ‖D x‖₁,   D = (D_n, D_h, D_w) forward differences
    along frames, rows and columns (anisotropic spatio-temporal TV),

split as z = D x with scaled dual u and penalty ρ:

    x ← argmin ½‖y − A x‖² + ρ/2 ‖D x − z + u‖²   i.e. (AᵀA + ρ DᵀD) x = Aᵀy + ρ Dᵀ(z − u)
    z ← S_{λ/ρ}(D x + u),   S_τ(v) = sign(v)·max(|v| − τ, 0)
    u ← u + D x − z
"""

from __future__ import annotations

import math

import torch

from engine.cg import conjugate_gradient

Tensor = torch.Tensor

#: the video dimensions D differentiates along: frames, rows, columns of [N, C, H, W]
TV_DIMS = (0, 2, 3)


def finite_difference(x: Tensor) -> Tensor:
    """D x: forward differences along frames, rows and columns.  [N, C, H, W] → [3, N, C, H, W]

    (D_d x)[i] = x[i+1] − x[i] for i < n−1 along dim d; the last slice is 0 (Neumann boundary).
    """
    return torch.stack([torch.diff(x, dim=d, append=x.narrow(d, -1, 1)) for d in TV_DIMS])


def finite_difference_adjoint(v: Tensor) -> Tensor:
    """Dᵀ v, the exact adjoint of `finite_difference` (a negative divergence).  [3, N, C, H, W] → [N, C, H, W]

    (D_dᵀ v)[i] = v[i−1] − v[i], with v[−1] = 0 and the unused last slice v[n−1] read as 0.
    """
    out = torch.zeros_like(v[0])
    for v_d, d in zip(v, TV_DIMS):
        inner = v_d.narrow(d, 0, v_d.shape[d] - 1)
        edge = list(inner.shape)
        edge[d] = 1
        zero = inner.new_zeros(edge)
        out = out - torch.diff(inner, dim=d, prepend=zero, append=zero)
    return out


def soft_threshold(v: Tensor, tau: float) -> Tensor:
    """S_τ(v) = sign(v)·max(|v| − τ, 0), elementwise."""
    return torch.sign(v) * torch.clamp(v.abs() - tau, min=0)


def tv_objective(op, y: Tensor, x: Tensor, lam: float) -> Tensor:
    """½‖y − A x‖² + λ‖D x‖₁ as a 0-d tensor (float64 accumulation)."""
    residual = (y - op.A(x)).double()
    return 0.5 * residual.square().sum() + lam * finite_difference(x).double().abs().sum()


def cg_baseline(op, y: Tensor, iters: int, x0: Tensor | None = None, gamma: float | None = None) -> Tensor:
    """Stand-alone CG from x0 (default Aᵀy), clamped to [0, 1].  → [N, C, H, W]

    gamma=None: `iters` iterations on AᵀA x = Aᵀy. A float γ: the sampler's regularised system
    with Aᵀy in the place of the Tweedie estimate, (I + γAᵀA) x = Aᵀy + γAᵀy, for noisy y.
    """
    Aty = op.A_adjoint(y)
    start = Aty if x0 is None else x0
    if gamma is None:
        x = conjugate_gradient(op.A_adjoint_A, Aty, start, iters)
    else:
        x = conjugate_gradient(lambda v: v + gamma * op.A_adjoint_A(v), (1 + gamma) * Aty, start, iters)
    return x.clamp(0, 1)


def admm_tv(
    op,
    y: Tensor,
    *,
    outer: int = 30,
    inner: int = 20,
    rho: float = 1.0,
    lam: float = 1e-3,
    x0: Tensor | None = None,
) -> Tensor:
    """ADMM for ½‖y − A x‖² + λ‖D x‖₁ (the paper's eq. 22), clamped to [0, 1].  → [N, C, H, W]

    `outer` ADMM iterations; each x-update is `inner` CG iterations on
    (AᵀA + ρDᵀD) x = Aᵀy + ρDᵀ(z − u), warm-started from the previous x.
    Starts from x = x0 (default 0), z = u = 0.
    """
    Aty = op.A_adjoint(y)
    x = torch.zeros_like(Aty) if x0 is None else x0
    z = torch.zeros((len(TV_DIMS), *x.shape), dtype=x.dtype, device=x.device)  # [3, N, C, H, W]
    u = torch.zeros_like(z)

    def normal(v: Tensor) -> Tensor:  # (AᵀA + ρDᵀD) v
        return op.A_adjoint_A(v) + rho * finite_difference_adjoint(finite_difference(v))

    for _ in range(outer):
        x = conjugate_gradient(normal, Aty + rho * finite_difference_adjoint(z - u), x, inner)
        Dx = finite_difference(x)
        z = soft_threshold(Dx + u, lam / rho)
        u = u + Dx - z
    return x.clamp(0, 1)


#: cg_converged checks its residual every CG_CHUNK iterations (CG restarts there), stops when a
#: chunk shrinks it by less than 1 % (CG_STALL) or when ‖Aᵀy − AᵀA x‖ / ‖Aᵀy‖ reaches CG_RTOL.
CG_CHUNK, CG_STALL, CG_RTOL = 50, 0.99, 1e-6


def cg_converged(op, y: Tensor, max_iters: int) -> tuple[Tensor, int, float]:
    """Stand-alone CG on AᵀA x = Aᵀy from Aᵀy until the relative residual reaches CG_RTOL or stalls.

    Runs restarted CG in chunks of CG_CHUNK iterations (this is the baseline, so the
    residual check may sync with the host). Returns (x clamped to [0, 1], iterations, relative residual).
    """
    Aty = op.A_adjoint(y)
    scale = torch.linalg.vector_norm(Aty).item() or 1.0
    x, done, best, residual = Aty, 0, math.inf, math.inf
    while done < max_iters:
        steps = min(CG_CHUNK, max_iters - done)
        x = conjugate_gradient(op.A_adjoint_A, Aty, x, steps)
        done += steps
        residual = torch.linalg.vector_norm(Aty - op.A_adjoint_A(x)).item() / scale
        if residual <= CG_RTOL or residual > CG_STALL * best:
            break
        best = residual
    return x.clamp(0, 1), done, residual
