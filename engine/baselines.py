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

The x-update is exact when A is a temporal PSF alone (AᵀA = TᵀT along frames, any boundary):
DᵀD = L_N ⊕ L_H ⊕ L_W is a Kronecker sum of 1-D Neumann Laplacians L = D₁ᵀD₁, so with
TᵀT + ρL_N = V Λ Vᵀ (an N×N eigendecomposition) and L_H, L_W diagonal in the DCT-II basis
(eigenvalues μ_k = 4 sin²(πk / 2n)), the system is diagonal in V ⊗ DCT_H ⊗ DCT_W with
eigenvalues Λ_n + ρ(μ_h + μ_w). Any other operator solves it with warm-started CG.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from engine.cg import conjugate_gradient
from engine.errors import InputError
from engine.operators.temporal import TemporalPSF, frames_matmul

Tensor = torch.Tensor

#: the video dimensions D differentiates along: frames, rows, columns of [N, C, H, W]
TV_DIMS = (0, 2, 3)

#: admm_tv's x-update: "exact" (the eigenbasis solve, a temporal PSF alone), "cg" (`inner` CG
#: iterations, any operator), "auto" (exact where it applies, CG elsewhere)
X_UPDATES = ("auto", "exact", "cg")


def finite_difference(x: Tensor, out: Tensor | None = None) -> Tensor:
    """D x: forward differences along frames, rows and columns.  [N, C, H, W] → [3, N, C, H, W]

    (D_d x)[i] = x[i+1] − x[i] for i < n−1 along dim d; the last slice is 0 (Neumann boundary).
    `out`: a [3, N, C, H, W] buffer to write into (no other memory is allocated).
    """
    out = x.new_empty((len(TV_DIMS), *x.shape)) if out is None else out
    for out_d, d in zip(out, TV_DIMS):
        n = x.shape[d]
        torch.sub(x.narrow(d, 1, n - 1), x.narrow(d, 0, n - 1), out=out_d.narrow(d, 0, n - 1))
        out_d.narrow(d, n - 1, 1).zero_()
    return out


def finite_difference_adjoint(v: Tensor, out: Tensor | None = None) -> Tensor:
    """Dᵀ v, the exact adjoint of `finite_difference` (a negative divergence).  [3, N, C, H, W] → [N, C, H, W]

    (D_dᵀ v)[i] = v[i−1] − v[i], with v[−1] = 0 and the unused last slice v[n−1] read as 0.
    `out`: an [N, C, H, W] buffer to write into.
    """
    out = torch.zeros_like(v[0]) if out is None else out.zero_()
    for v_d, d in zip(v, TV_DIMS):
        n = v_d.shape[d]
        inner = v_d.narrow(d, 0, n - 1)
        out.narrow(d, 0, n - 1).sub_(inner)
        out.narrow(d, 1, n - 1).add_(inner)
    return out


def soft_threshold(v: Tensor, tau: float, out: Tensor | None = None) -> Tensor:
    """S_τ(v) = sign(v)·max(|v| − τ, 0) = v − clamp(v, −τ, τ), elementwise (`out` may not be v)."""
    clamped = torch.clamp(v, -tau, tau, out=out)
    return torch.sub(v, clamped, out=clamped)


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


def neumann_laplacian(n: int) -> Tensor:
    """L = D₁ᵀD₁ for the 1-D forward difference D₁ with its last row 0 (Neumann).  → [n, n] float64

    Tridiagonal: diagonal (1, 2, …, 2, 1) (0 for n = 1), off-diagonals −1.
    """
    diagonal = torch.full((n,), 2.0, dtype=torch.float64)
    diagonal[0] -= 1
    diagonal[-1] -= 1
    off = -torch.ones(n - 1, dtype=torch.float64)
    return torch.diag(diagonal) + torch.diag(off, 1) + torch.diag(off, -1)


def dct_basis(n: int) -> tuple[Tensor, Tensor]:
    """The eigenpairs of `neumann_laplacian(n)`: the orthonormal DCT-II basis.  → (μ [n], V [n, n]) float64

    μ_k = 4 sin²(πk / 2n),  V[i, k] = c_k cos(πk (i + ½) / n),  c_0 = 1/√n, c_k = √(2/n).
    """
    k = torch.arange(n, dtype=torch.float64)
    V = torch.cos(math.pi * torch.outer(k + 0.5, k) / n) * math.sqrt(2 / n)
    V[:, 0] = 1 / math.sqrt(n)
    return 4 * torch.sin(math.pi * k / (2 * n)) ** 2, V


def tv_exact_solver(op: TemporalPSF, rho: float, like: Tensor) -> Callable[[Tensor], Tensor]:
    """b ↦ (AᵀA + ρDᵀD)⁻¹ b for a temporal PSF alone, in the eigenbasis of the module docstring.

    Built once (float64 on the CPU, then cast to `like`'s dtype and device); each call is three
    transforms and their inverses (matrix products along frames, rows and columns) and one division,
    no host sync. Eigenvalues ≤ 1e-12 of the largest (a common null vector of A and D, i.e. a
    kernel summing to 0) are dropped: the minimum-norm solution.  b: [N, C, H, W] → [N, C, H, W]
    """
    n, _, h, w = op.in_shape
    lam, V_n = torch.linalg.eigh(op.normal_matrix + rho * neumann_laplacian(n))
    mu_h, V_h = dct_basis(h)
    mu_w, V_w = dct_basis(w)
    eig = lam[:, None, None, None] + rho * (mu_h[:, None] + mu_w[None, :])  # [N, 1, H, W]
    inverse = torch.where(eig > 1e-12 * eig.max(), 1 / eig, torch.zeros_like(eig))
    inverse, V_n, V_h, V_w = (t.to(like.device, like.dtype) for t in (inverse, V_n, V_h, V_w))
    V_nT, V_hT, V_wT = V_n.T.contiguous(), V_h.T.contiguous(), V_w.T.contiguous()

    def solve(b: Tensor) -> Tensor:
        c = torch.matmul(V_hT, frames_matmul(V_nT, b) @ V_w)      # coefficients Vᵀ b  [N, C, H, W]
        c.mul_(inverse)
        return frames_matmul(V_n, torch.matmul(V_h, c @ V_wT))

    return solve


def tv_normal(op, rho: float, like: Tensor) -> Callable[[Tensor], Tensor]:
    """v ↦ (AᵀA + ρDᵀD) v for CG, with DᵀD through buffers shaped like `like` (allocated once).

    Each result is written into one buffer: valid until the next call (as CG uses it).  [N, C, H, W] → [N, C, H, W]
    """
    Dv = torch.empty((len(TV_DIMS), *like.shape), dtype=like.dtype, device=like.device)
    DtDv, out = torch.empty_like(like), torch.empty_like(like)

    def normal(v: Tensor) -> Tensor:
        finite_difference_adjoint(finite_difference(v, out=Dv), out=DtDv)
        return torch.add(op.A_adjoint_A(v), DtDv, alpha=rho, out=out)

    return normal


def admm_tv(
    op,
    y: Tensor,
    *,
    outer: int = 30,
    inner: int = 20,
    rho: float = 1.0,
    lam: float = 1e-3,
    x0: Tensor | None = None,
    x_update: str = "auto",
) -> Tensor:
    """ADMM for ½‖y − A x‖² + λ‖D x‖₁ (the paper's eq. 22), clamped to [0, 1].  → [N, C, H, W]

    `outer` ADMM iterations from x = x0 (default 0), z = u = 0. The x-update (X_UPDATES) solves
    (AᵀA + ρDᵀD) x = Aᵀy + ρDᵀ(z − u) exactly for a temporal PSF alone ("auto", "exact"),
    otherwise ("auto", "cg") with `inner` CG iterations warm-started from the previous x
    (so x0 matters only there). Buffers are allocated once; the loop works in place.
    """
    if x_update not in X_UPDATES:
        raise InputError(f"unknown ADMM x-update {x_update!r}; accepted: {', '.join(X_UPDATES)}")
    exact = x_update == "exact" or (x_update == "auto" and isinstance(op, TemporalPSF))
    if exact and not isinstance(op, TemporalPSF):
        raise InputError(f"the exact ADMM x-update needs a temporal PSF alone, not {type(op).__name__}")
    Aty = op.A_adjoint(y)
    x = torch.zeros_like(Aty) if x0 is None else x0
    z = torch.zeros((len(TV_DIMS), *x.shape), dtype=x.dtype, device=x.device)  # [3, N, C, H, W]
    u, Dx = torch.zeros_like(z), torch.empty_like(z)
    rhs = torch.empty_like(Aty)
    solve = tv_exact_solver(op, rho, Aty) if exact else None
    normal = None if exact else tv_normal(op, rho, Aty)

    for _ in range(outer):
        torch.sub(z, u, out=Dx)                                   # z − u, in Dx's buffer
        torch.add(Aty, finite_difference_adjoint(Dx, out=rhs), alpha=rho, out=rhs)
        x = solve(rhs) if exact else conjugate_gradient(normal, rhs, x, inner)
        finite_difference(x, out=Dx)
        u.add_(Dx)                                                # D x + u
        soft_threshold(u, lam / rho, out=z)
        u.sub_(z)
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
