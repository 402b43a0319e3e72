"""Fixed-iteration conjugate gradients in video space (the CG step of DDS).

Solves `M x = b` for a symmetric positive semi-definite `M`, given as a
callable, with inner products over the whole clip: one step size per clip,
not per frame. The loop never synchronises with the host: a zero denominator
(an exact solution reached early) gives a zero step, computed on the device,
so the iteration can be captured in a CUDA graph.

The two systems of the paper (docs/design.md, "CG and its preconditioner"), in the [0, 1] data range:

- noiseless:  AᵀA x = Aᵀ y
- noisy:      (I + γ AᵀA) x = x̂ + γ Aᵀ y

Preconditioned: the paper's normal operators are Kronecker products of a temporal
and a per-frame part, AᵀA = (g TᵀT) ⊗ (SᵀS / g) with g the per-frame part's largest
eigenvalue, so a function of the temporal part alone, P = φ(g TᵀT) along frames (the
operator's `frame_preconditioner`), is cheap (an N×N matrix applied per pixel) and
commutes with AᵀA: PCG from x̂ moves only inside range(AᵀA), so x̂'s null-space
component is kept, and l = 5 steps converge at any clip length up to the data type's
rounding (bench/cg_length.py). `preconditioner` picks φ (μ an eigenvalue of g TᵀT,
so max μ = ‖AᵀA‖ = op.normal_gain):

    noiseless  M = AᵀA:          φ(μ) = μ / (μ² + (δ‖AᵀA‖)²)   ≈ 1/μ above δ‖AᵀA‖, → 0 at μ = 0
    noisy      M = I + γ AᵀA:    φ(μ) = 1 / (1 + γ μ)          (exact for a temporal PSF alone)

The noiseless filter is 0 on TᵀT's null space and small on its near-null modes, whose
measurement is rounding: 1/(μ + δ) would amplify that rounding by 1/δ into x̂'s null
component (docs/results.md, "CG against clip length", measures the loss).
DEFAULT_DELTA is chosen by bench/cg_length.py.

γ weighs the measurement against the step's estimate x̂. With a diffusion checkpoint its default
is DDS's γ = 1 (the paper's setting); with the plug-and-play priors (engine.priors) it falls as
the noise grows, γ = GAMMA_NOISE / σ_y (`default_gamma`), because the best γ measured on real clips
falls about as 1/σ_y (bench/prior_quality.py; docs/results.md, "The default prior"), up to
GAMMA_MAX: below σ_y = 0.01, where a real video's estimated noise lies (8-bit rounding, what a
codec leaves), a larger γ fits the measurement's codec errors (measured on real H.264 clips with
bench/real_targets.py; docs/results.md, "Real videos, end to end").
"""

from __future__ import annotations

from typing import Callable

import torch

from engine.operators.base import inner_product

Tensor = torch.Tensor

#: δ of the noiseless preconditioner, relative to ‖AᵀA‖ (module docstring); measured by bench/cg_length.py.
DEFAULT_DELTA = 1e-5
#: DDS's γ, the default with a diffusion checkpoint (the paper's method)
DDS_GAMMA = 1.0
#: the plug-and-play priors' default γ times σ_y (module docstring; measured with bench/prior_quality.py)
GAMMA_NOISE = 0.04
#: the plug-and-play priors' largest default γ (module docstring; measured with bench/real_targets.py)
GAMMA_MAX = 4.0


def default_gamma(sigma_y: float, *, diffusion: bool = False) -> float | None:
    """γ for measurement noise σ_y > 0: DDS_GAMMA with a diffusion checkpoint, else
    min(GAMMA_NOISE / σ_y, GAMMA_MAX) (rounded to 6 digits); None (the noiseless CG) at σ_y = 0."""
    if sigma_y <= 0:
        return None
    return DDS_GAMMA if diffusion else round(min(GAMMA_NOISE / sigma_y, GAMMA_MAX), 6)


def gamma_at(gamma: float | None, sigma_y: float, *, diffusion: bool = False) -> float | None:
    """The γ a run at noise σ_y uses: None (noiseless CG) at σ_y = 0, else `gamma`, or the default for None."""
    if sigma_y <= 0:
        return None
    return gamma if gamma is not None else default_gamma(sigma_y, diffusion=diffusion)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, or 0 where den == 0 (no host sync)."""
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(num))


def conjugate_gradient(M: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor, iters: int,
                       precond: Callable[[Tensor], Tensor] | None = None,
                       dot: Callable[[Tensor, Tensor], Tensor] = inner_product) -> Tensor:
    """`iters` (preconditioned) CG iterations on M x = b from x0.  x0, b: [N, C, H, W] → x: [N, C, H, W]

        r = b − M x,  z = P r,  p = z
        α = ⟨r, z⟩ / ⟨p, M p⟩;  x += α p;  r −= α M p;  z' = P r
        β = ⟨r', z'⟩ / ⟨r, z⟩;  p = z' + β p

    P (`precond`, symmetric positive definite; None: P = I, plain CG) approximates M⁻¹.
    Once ⟨r, r⟩ ≤ (ε_dtype)²·⟨b, b⟩ the system is solved to rounding and α is 0: on a
    singular M, rounding noise would otherwise make ⟨p, M p⟩ tiny and α huge. `dot`: the inner
    product (a 0-d float64 tensor; the operator's `inner`, all-reduced over processes when sharded).
    """
    P = precond or (lambda v: v)
    x = x0.clone()
    r = b - M(x)
    z = P(r)
    p = z.clone()
    rz = dot(r, z)
    rr = rz if precond is None else dot(r, r)
    floor = torch.finfo(x.dtype).eps ** 2 * dot(b, b)
    for _ in range(iters):
        Mp = M(p)
        alpha = torch.where(rr > floor, _safe_div(rz, dot(p, Mp)), torch.zeros_like(rz)).to(x.dtype)
        x.add_(alpha * p)
        r.sub_(alpha * Mp)
        del Mp, z                                 # x, r, p and one new vector at a time: the updates run in place
        z = P(r)
        rz_new = dot(r, z)
        rr = rz_new if precond is None else dot(r, r)
        beta = _safe_div(rz_new, rz).to(x.dtype)
        p.mul_(beta).add_(z)
        rz = rz_new
    return x


def preconditioner(op, gamma: float | None, delta: float | None = DEFAULT_DELTA, *, device=None,
                   dtype=None) -> Callable[[Tensor], Tensor] | None:
    """P ≈ M⁻¹ for `data_consistency`'s system, from op's temporal part, or None (no temporal part,
    or delta=None: plain CG).  Built once per clip, outside any captured loop.

        noiseless  M = AᵀA:          P = φ(g TᵀT),  φ(μ) = μ / (μ² + (δ‖AᵀA‖)²)
        noisy      M = I + γ AᵀA:    P = (I + γ g TᵀT)⁻¹

    (the module docstring says why); ‖AᵀA‖ = op.normal_gain.
    """
    frame_preconditioner = getattr(op, "frame_preconditioner", None)
    if delta is None or frame_preconditioner is None:
        return None
    if gamma is None:
        floor2 = (delta * getattr(op, "normal_gain", 1.0)) ** 2
        return frame_preconditioner(lambda mu: mu / (mu * mu + floor2), device=device, dtype=dtype)
    return frame_preconditioner(lambda mu: 1 / (1 + gamma * mu), device=device, dtype=dtype)


def data_consistency(op, y: Tensor, x_hat: Tensor, iters: int, gamma: float | None = None, *,
                     aty: Tensor | None = None, precond: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """CG_l(x̂): `iters` CG steps from x̂ towards the measurement y, all in [0, 1].

    gamma=None solves AᵀA x = Aᵀ y; a float γ solves (I + γ AᵀA) x = x̂ + γ Aᵀ y.
    x_hat: [N, C, H, W], y: op.out_shape; `aty` = Aᵀy when the caller has it already
    (the sampler computes it once per clip, not once per step); `precond` from
    `preconditioner(op, gamma, …)` (None: plain CG).
    """
    Aty = op.A_adjoint(y) if aty is None else aty
    if gamma is None:
        return conjugate_gradient(op.A_adjoint_A, Aty, x_hat, iters, precond, op.inner)
    return conjugate_gradient(lambda v: torch.add(v, op.A_adjoint_A(v), alpha=gamma), torch.add(x_hat, Aty, alpha=gamma),
                              x_hat, iters, precond, op.inner)
