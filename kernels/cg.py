"""Conjugate gradients on Triton: dot products reduced and step sizes computed on the device.

`data_consistency` runs exactly what engine.cg.data_consistency runs — `l` CG iterations
on M x = b from x₀ = x̂ in the [0, 1] range, with

    noiseless:   M = AᵀA,          b = Aᵀy,          r₀ = b − M x̂ = Aᵀy − AᵀA x̂
    regularised: M = I + γ AᵀA,    b = x̂ + γ Aᵀy,   r₀ = γ (Aᵀy − AᵀA x̂)

— in the Chronopoulos–Gear form of CG (the same iterates in exact arithmetic), whose one
reduction phase per iteration lets an iteration run in three passes over the clip:

    r₀ = c₁ (Aᵀy − AᵀA x̂),  ⟨b, b⟩                  setup: AᵀA x̂, then pass `_cg_residual_kernel`
    q = AᵀA r,  w = M r = c₀ r + c₁ q               the operator (one pass for the fused ones)
    γᵢ = ⟨r, r⟩,  δᵢ = ⟨w, r⟩                       pass `_cg_dot_kernel`: partial sums per program
    βᵢ = γᵢ / γᵢ₋₁,  αᵢ = γᵢ / (δᵢ − βᵢ γᵢ / αᵢ₋₁)   (β₀ = 0, α₀ = γ₀ / δ₀)
    p = r + βᵢ p,  s = w + βᵢ s,  x += αᵢ p,  r −= αᵢ s   pass `_cg_update_kernel`

(c₀, c₁) = (0, 1) noiseless, (1, γ) regularised. Preconditioned by P (engine.cg.preconditioner,
an N×N matrix along frames applied by kernels.temporal.frame_matmul: one more pass), the
iteration reads u = P r where it read r:

    u = P r,  q = AᵀA u,  w = M u = c₀ u + c₁ q
    γᵢ = ⟨r, u⟩,  δᵢ = ⟨w, u⟩ = c₀⟨u, u⟩ + c₁⟨u, q⟩    (and ⟨r, r⟩ for the rounding floor)
    p = u + βᵢ p,  s = w + βᵢ s,  x += αᵢ p,  r −= αᵢ s

Every program of the update pass sums
the ≤ GMAX partials itself (a fixed order: the same result in every program and run), so
no second launch and no host synchronisation is needed; a ratio whose denominator is 0
is 0, on the device. The last iteration only updates x. Sums accumulate in float32
(float64 for float64 data). Everything is capturable in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.errors import InputError
from kernels.common import ACC, BLOCK, NUM_WARPS, check, on_device, output, safe_div, scalar, split

Tensor = torch.Tensor

#: At most this many programs write partial sums (a power of two): the reduce is one tile.
GMAX = 256

#: Elements per program and step of the dot pass, and its warps.
DOT_BLOCK, DOT_WARPS = 2048, 8


@triton.jit
def _cg_residual_kernel(
    aty_ptr,                # *T    Aᵀy  [numel]
    q_ptr,                  # *T    AᵀA x̂  [numel]
    x_ptr,                  # *T    x̂  [numel] (read when REG)
    r_ptr,                  # *T    output r₀ = c·(Aᵀy − AᵀA x̂)  [numel]
    bb_ptr,                 # *ACC  output partial sums [GMAX]: ⟨b, b⟩ of each program
    numel,                  # elements of the clip
    c_hi, c_lo,             # c = 1 (noiseless) or γ, as fp32 hi + lo
    REG: tl.constexpr,      # regularised system: b = x̂ + γ Aᵀy (else b = Aᵀy)
    BLOCK: tl.constexpr,    # elements per program and step
    ACC: tl.constexpr,      # compute dtype
):
    pid = tl.program_id(0)
    c = scalar(c_hi, c_lo, ACC)
    bb = tl.zeros([BLOCK], dtype=ACC)
    for start in range(pid.to(tl.int64) * BLOCK, numel, tl.num_programs(0) * BLOCK):     # grid-stride loop
        offs = start + tl.arange(0, BLOCK)
        ok = offs < numel
        aty = tl.load(aty_ptr + offs, mask=ok, other=0).to(ACC)
        q = tl.load(q_ptr + offs, mask=ok, other=0).to(ACC)
        tl.store(r_ptr + offs, (c * (aty - q)).to(r_ptr.dtype.element_ty), mask=ok)
        b = aty
        if REG:
            b = tl.load(x_ptr + offs, mask=ok, other=0).to(ACC) + c * aty
        bb += b * b
    tl.store(bb_ptr + pid, tl.sum(bb, axis=0))


@triton.jit
def _cg_dot_kernel(
    r_ptr,                  # *T    residual r  [numel]
    u_ptr,                  # *T    u = P r  [numel] (read when PRECOND)
    q_ptr,                  # *T    q = AᵀA u  [numel] (u = r without PRECOND)
    part_ptr,               # *ACC  output partial sums [2 or 4, GMAX]: ⟨r, r⟩, ⟨u, q⟩ (, ⟨r, u⟩, ⟨u, u⟩) per program
    numel,                  # elements of the clip
    PRECOND: tl.constexpr,  # a preconditioned iteration: the last two rows too
    GMAX: tl.constexpr,     # row stride of part_ptr (≥ number of programs)
    BLOCK: tl.constexpr,    # elements per program and step
    ACC: tl.constexpr,      # accumulation dtype
):
    pid = tl.program_id(0)
    rr = tl.zeros([BLOCK], dtype=ACC)
    uq = tl.zeros([BLOCK], dtype=ACC)
    ru = tl.zeros([BLOCK], dtype=ACC)
    uu = tl.zeros([BLOCK], dtype=ACC)
    for start in range(pid.to(tl.int64) * BLOCK, numel, tl.num_programs(0) * BLOCK):     # grid-stride loop
        offs = start + tl.arange(0, BLOCK)
        ok = offs < numel
        r = tl.load(r_ptr + offs, mask=ok, other=0).to(ACC)
        q = tl.load(q_ptr + offs, mask=ok, other=0).to(ACC)
        rr += r * r
        if PRECOND:
            u = tl.load(u_ptr + offs, mask=ok, other=0).to(ACC)
            uq += u * q
            ru += r * u
            uu += u * u
        else:
            uq += r * q
    tl.store(part_ptr + pid, tl.sum(rr, axis=0))
    tl.store(part_ptr + GMAX + pid, tl.sum(uq, axis=0))
    if PRECOND:
        tl.store(part_ptr + 2 * GMAX + pid, tl.sum(ru, axis=0))
        tl.store(part_ptr + 3 * GMAX + pid, tl.sum(uu, axis=0))


@triton.jit
def _cg_update_kernel(
    x_in_ptr,               # *T    x before this iteration (x̂ at the first)
    x_out_ptr,              # *T    x after it (may alias x_in_ptr)
    r_ptr,                  # *T    residual r, updated in place (not written at the last iteration)
    u_ptr,                  # *T    u = P r (read when PRECOND; else u = r)
    p_ptr,                  # *T    direction p, updated in place (read unless FIRST, written unless LAST)
    s_ptr,                  # *T    s = M p, updated in place (as p)
    q_ptr,                  # *T    q = AᵀA u
    part_ptr,               # *ACC  this iteration's partial sums [2 or 4, GMAX] from the dot pass
    state_ptr,              # *ACC  output (αᵢ, γᵢ) of this iteration [2]
    prev_ptr,               # *ACC  (αᵢ₋₁, γᵢ₋₁) of the previous iteration [2] (unless FIRST)
    bb_ptr,                 # *ACC  partial sums [GMAX] of ⟨b, b⟩ from the residual pass
    numel,                  # elements of the clip
    G,                      # programs of the residual and dot passes (valid partials per row)
    eps2,                   # ε² of the data dtype: once ⟨r, r⟩ ≤ ε²·⟨b, b⟩ the system is solved to rounding, α = 0
    c1_hi, c1_lo,           # c₁ = 1 (noiseless) or γ, as fp32 hi + lo
    REG: tl.constexpr,      # regularised system (c₀ = 1) or not (c₀ = 0)
    PRECOND: tl.constexpr,  # preconditioned: γ = ⟨r, u⟩ and δ from ⟨u, u⟩, ⟨u, q⟩
    FIRST: tl.constexpr,    # first iteration: β = 0, p and s not read
    LAST: tl.constexpr,     # last iteration: only x is written
    GMAX: tl.constexpr,     # row stride of part_ptr
    BLOCK: tl.constexpr,    # elements per program
    ACC: tl.constexpr,      # compute dtype
):
    # the step sizes, from the partial sums (the same in every program)
    lanes = tl.arange(0, GMAX)
    rr = tl.sum(tl.load(part_ptr + lanes, mask=lanes < G, other=0), axis=0)             # ⟨r, r⟩
    uq = tl.sum(tl.load(part_ptr + GMAX + lanes, mask=lanes < G, other=0), axis=0)     # ⟨u, q⟩
    if PRECOND:
        gamma = tl.sum(tl.load(part_ptr + 2 * GMAX + lanes, mask=lanes < G, other=0), axis=0)   # ⟨r, u⟩
        uu = tl.sum(tl.load(part_ptr + 3 * GMAX + lanes, mask=lanes < G, other=0), axis=0)      # ⟨u, u⟩
    else:
        gamma = rr
        uu = rr
    c1 = scalar(c1_hi, c1_lo, ACC)
    delta = c1 * uq                                                                     # ⟨M u, u⟩
    if REG:
        delta += uu
    if FIRST:                                                                           # β₀ = 0
        den = delta
    else:
        alpha_prev = tl.load(prev_ptr)
        beta = safe_div(gamma, tl.load(prev_ptr + 1))
        den = delta - safe_div(beta * gamma, alpha_prev)
    floor = tl.cast(eps2, ACC) * tl.sum(tl.load(bb_ptr + lanes, mask=lanes < G, other=0), axis=0)
    alpha = tl.where(rr > floor, safe_div(gamma, den), 0)
    if tl.program_id(0) == 0:
        tl.store(state_ptr, alpha)
        tl.store(state_ptr + 1, gamma)
    # the vectors
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    r = tl.load(r_ptr + offs, mask=ok, other=0).to(ACC)
    if PRECOND:
        u = tl.load(u_ptr + offs, mask=ok, other=0).to(ACC)
    else:
        u = r
    p = u
    if not FIRST:
        p += beta * tl.load(p_ptr + offs, mask=ok, other=0).to(ACC)
    if not LAST:
        s = c1 * tl.load(q_ptr + offs, mask=ok, other=0).to(ACC)                        # w = M u
        if REG:
            s += u
        if not FIRST:
            s += beta * tl.load(s_ptr + offs, mask=ok, other=0).to(ACC)
        tl.store(s_ptr + offs, s.to(s_ptr.dtype.element_ty), mask=ok)
        tl.store(r_ptr + offs, (r - alpha * s).to(r_ptr.dtype.element_ty), mask=ok)
        tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=ok)
    x = tl.load(x_in_ptr + offs, mask=ok, other=0).to(ACC)
    tl.store(x_out_ptr + offs, (x + alpha * p).to(x_out_ptr.dtype.element_ty), mask=ok)


def cg_residual(aty: Tensor, q: Tensor, c: float, bb: Tensor, *, x_hat: Tensor | None = None,
                out: Tensor | None = None) -> tuple[Tensor, int]:
    """Launch `_cg_residual_kernel`: r₀ = c·(Aᵀy − AᵀA x̂), and partial sums of ⟨b, b⟩ into bb [GMAX].

    aty, q: [*] contiguous, one dtype; x_hat given: the regularised system, b = x̂ + c·Aᵀy (else b = Aᵀy).
    Returns r₀ [*] and the number of programs (valid entries of bb, the same as `cg_dot`'s).
    """
    check("cg", aty, q, *([] if x_hat is None else [x_hat]))
    if aty.shape != q.shape or (x_hat is not None and x_hat.shape != aty.shape):
        raise InputError(f"cg: Aᵀy has shape {tuple(aty.shape)}, AᵀA x̂ {tuple(q.shape)}")
    if bb.shape != (GMAX,) or not bb.is_contiguous():
        raise InputError(f"cg: partials [{GMAX}] expected, got {tuple(bb.shape)}")
    out = output("cg", out, aty.shape, aty)
    programs = _programs(aty)
    with on_device(aty):
        _cg_residual_kernel[(programs,)](aty, q, aty if x_hat is None else x_hat, out, bb, aty.numel(), *split(c),
                                         REG=x_hat is not None, BLOCK=DOT_BLOCK, ACC=ACC[aty.dtype],
                                         num_warps=DOT_WARPS)
    return out, programs


def _programs(t: Tensor) -> int:
    """Programs of the reducing passes over t: one per DOT_BLOCK elements, at most GMAX."""
    return min(GMAX, triton.cdiv(t.numel(), DOT_BLOCK))


def cg_dot(r: Tensor, q: Tensor, part: Tensor, *, u: Tensor | None = None) -> int:
    """Launch `_cg_dot_kernel`: partial sums of ⟨r, r⟩ and ⟨u, q⟩, and with u = P r given (preconditioned)
    ⟨r, u⟩ and ⟨u, u⟩, into part [2, GMAX] ([4, GMAX] with u; u = r without).

    r, q (, u): one shape, contiguous. Returns the number of programs (valid columns of part).
    """
    check("cg", r, q, *([] if u is None else [u]))
    rows = 2 if u is None else 4
    if r.shape != q.shape or (u is not None and u.shape != r.shape) or part.shape != (rows, GMAX) \
            or not part.is_contiguous():
        raise InputError(f"cg: r {tuple(r.shape)}, q {tuple(q.shape)} and partials [{rows}, {GMAX}] expected, "
                         f"got {tuple(part.shape)}")
    programs = _programs(r)
    with on_device(r):
        _cg_dot_kernel[(programs,)](r, r if u is None else u, q, part, r.numel(), PRECOND=u is not None,
                                    GMAX=GMAX, BLOCK=DOT_BLOCK, ACC=ACC[r.dtype], num_warps=DOT_WARPS)
    return programs


def cg_update(x_in: Tensor, x_out: Tensor, r: Tensor, p: Tensor, s: Tensor, q: Tensor, part: Tensor,
              programs: int, state: Tensor, prev: Tensor | None, bb: Tensor, gamma: float | None,
              last: bool, *, u: Tensor | None = None) -> None:
    """Launch `_cg_update_kernel`: one Chronopoulos–Gear update of x, r, p, s in place.

    x_in, x_out, r, p, s, q (, u): one shape, contiguous; part [2, GMAX] from `cg_dot` with `programs`
    valid columns ([4, GMAX] with u = P r: preconditioned); state [2] receives (αᵢ, γᵢ); prev is the
    previous iteration's state (None at the first); bb [GMAX]: ⟨b, b⟩'s partial sums from `cg_residual`,
    ε²·⟨b, b⟩ being the ⟨r, r⟩ at or below which α is 0 (engine.cg's rounding floor, ε of r's dtype).
    """
    check("cg", x_in, x_out, r, p, s, q, *([] if u is None else [u]))
    if not (x_in.shape == x_out.shape == r.shape == p.shape == s.shape == q.shape) or \
            (u is not None and u.shape != r.shape):
        raise InputError("cg: x, r, p, s, P r and AᵀA r must share one shape")
    with on_device(r):
        _cg_update_kernel[(triton.cdiv(r.numel(), BLOCK),)](
            x_in, x_out, r, r if u is None else u, p, s, q, part, state, state if prev is None else prev, bb,
            r.numel(), programs, torch.finfo(r.dtype).eps ** 2, *split(1.0 if gamma is None else gamma),
            REG=gamma is not None, PRECOND=u is not None, FIRST=prev is None, LAST=last, GMAX=GMAX, BLOCK=BLOCK,
            ACC=ACC[r.dtype], num_warps=NUM_WARPS)


def data_consistency(op, y: Tensor, x_hat: Tensor, iters: int, gamma: float | None = None, *,
                     aty: Tensor | None = None, precond=None) -> Tensor:
    """CG_l(x̂): `iters` CG steps from x̂ towards the measurement y, all in [0, 1] (engine.cg.data_consistency).

    gamma=None solves AᵀA x = Aᵀ y; a float γ solves (I + γ AᵀA) x = x̂ + γ Aᵀ y.
    x_hat: [N, C, H, W], y: op.out_shape; `aty` = Aᵀy when the caller has it already; `precond`:
    v ↦ P v from engine.cg.preconditioner (None: plain CG).
    The setup is AᵀA x̂ and one residual pass (which also sums ⟨b, b⟩ for the rounding floor); each
    iteration is three passes plus AᵀA's own beyond one, and P's pass when preconditioned.
    Nothing else runs over the clip.
    """
    x_hat = x_hat.contiguous()
    if iters == 0:
        return x_hat.clone()
    aty = (op.A_adjoint(y) if aty is None else aty).contiguous()
    acc = torch.float64 if x_hat.dtype == torch.float64 else torch.float32
    bb = torch.empty((GMAX,), dtype=acc, device=x_hat.device)
    part = torch.empty((iters, 2 if precond is None else 4, GMAX), dtype=acc, device=x_hat.device)
    state = torch.empty((iters, 2), dtype=acc, device=x_hat.device)
    r, programs = cg_residual(aty, op.A_adjoint_A(x_hat).contiguous(), 1.0 if gamma is None else float(gamma), bb,
                              x_hat=None if gamma is None else x_hat)
    x, p, s = torch.empty_like(x_hat), torch.empty_like(x_hat), torch.empty_like(x_hat)
    for i in range(iters):
        u = None if precond is None else precond(r).contiguous()
        q = op.A_adjoint_A(r if u is None else u).contiguous()
        cg_dot(r, q, part[i], u=u)
        cg_update(x_hat if i == 0 else x, x, r, p, s, q, part[i], programs, state[i],
                  None if i == 0 else state[i - 1], bb, gamma, last=i == iters - 1, u=u)
    return x
