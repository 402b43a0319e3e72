"""Conjugate gradients on Triton: dot products reduced and step sizes computed on the device.

`data_consistency` runs exactly what engine.cg.data_consistency runs — `l` CG iterations
on M x = b from x₀ = x̂ in the [0, 1] range, with

    noiseless:   M = AᵀA,          b = Aᵀy,          r₀ = b − M x̂ = Aᵀy − AᵀA x̂
    regularised: M = I + γ AᵀA,    b = x̂ + γ Aᵀy,   r₀ = γ (Aᵀy − AᵀA x̂)

— in the Chronopoulos–Gear form of CG (the same iterates in exact arithmetic), whose one
reduction phase per iteration lets an iteration run in three passes over the clip:

    q = AᵀA r,  w = M r = c₀ r + c₁ q               the operator (one pass for the fused ones)
    γᵢ = ⟨r, r⟩,  δᵢ = ⟨w, r⟩                       pass `_cg_dot_kernel`: partial sums per program
    βᵢ = γᵢ / γᵢ₋₁,  αᵢ = γᵢ / (δᵢ − βᵢ γᵢ / αᵢ₋₁)   (β₀ = 0, α₀ = γ₀ / δ₀)
    p = r + βᵢ p,  s = w + βᵢ s,  x += αᵢ p,  r −= αᵢ s   pass `_cg_update_kernel`

(c₀, c₁) = (0, 1) noiseless, (1, γ) regularised. Every program of the update pass sums
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
from kernels.common import ACC, BLOCK, NUM_WARPS, check, output, safe_div, scalar, split

Tensor = torch.Tensor

#: At most this many programs write partial sums (a power of two): the reduce is one tile.
GMAX = 256

#: Elements per program and step of the dot pass, and its warps.
DOT_BLOCK, DOT_WARPS = 2048, 8


@triton.jit
def _cg_residual_kernel(
    b_ptr,                  # *T  Aᵀy  [numel]
    q_ptr,                  # *T  AᵀA x̂  [numel]
    r_ptr,                  # *T  output r₀ = c·(Aᵀy − AᵀA x̂)  [numel]
    numel,                  # elements of the clip
    c_hi, c_lo,             # c = 1 (noiseless) or γ, as fp32 hi + lo
    BLOCK: tl.constexpr,    # elements per program
    ACC: tl.constexpr,      # compute dtype
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    b = tl.load(b_ptr + offs, mask=ok, other=0).to(ACC)
    q = tl.load(q_ptr + offs, mask=ok, other=0).to(ACC)
    tl.store(r_ptr + offs, (scalar(c_hi, c_lo, ACC) * (b - q)).to(r_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _cg_dot_kernel(
    r_ptr,                  # *T    residual r  [numel]
    q_ptr,                  # *T    q = AᵀA r  [numel]
    part_ptr,               # *ACC  output partial sums [2, GMAX]: ⟨r, r⟩ and ⟨r, q⟩ of each program
    numel,                  # elements of the clip
    GMAX: tl.constexpr,     # row stride of part_ptr (≥ number of programs)
    BLOCK: tl.constexpr,    # elements per program and step
    ACC: tl.constexpr,      # accumulation dtype
):
    pid = tl.program_id(0)
    rr = tl.zeros([BLOCK], dtype=ACC)
    rq = tl.zeros([BLOCK], dtype=ACC)
    for start in range(pid * BLOCK, numel, tl.num_programs(0) * BLOCK):     # grid-stride loop
        offs = start + tl.arange(0, BLOCK)
        ok = offs < numel
        r = tl.load(r_ptr + offs, mask=ok, other=0).to(ACC)
        q = tl.load(q_ptr + offs, mask=ok, other=0).to(ACC)
        rr += r * r
        rq += r * q
    tl.store(part_ptr + pid, tl.sum(rr, axis=0))
    tl.store(part_ptr + GMAX + pid, tl.sum(rq, axis=0))


@triton.jit
def _cg_update_kernel(
    x_in_ptr,               # *T    x before this iteration (x̂ at the first)
    x_out_ptr,              # *T    x after it (may alias x_in_ptr)
    r_ptr,                  # *T    residual r, updated in place (not written at the last iteration)
    p_ptr,                  # *T    direction p, updated in place (read unless FIRST, written unless LAST)
    s_ptr,                  # *T    s = M p, updated in place (as p)
    q_ptr,                  # *T    q = AᵀA r
    part_ptr,               # *ACC  this iteration's partial sums [2, GMAX]
    state_ptr,              # *ACC  output (αᵢ, γᵢ) of this iteration [2]
    prev_ptr,               # *ACC  (αᵢ₋₁, γᵢ₋₁) of the previous iteration [2] (unless FIRST)
    floor_ptr,              # *ACC  ε²·⟨b, b⟩ [1]: once ⟨r, r⟩ ≤ this the system is solved to rounding, α = 0
    numel,                  # elements of the clip
    G,                      # programs of the dot pass (valid partials per row)
    c1_hi, c1_lo,           # c₁ = 1 (noiseless) or γ, as fp32 hi + lo
    REG: tl.constexpr,      # regularised system (c₀ = 1) or not (c₀ = 0)
    FIRST: tl.constexpr,    # first iteration: β = 0, p and s not read
    LAST: tl.constexpr,     # last iteration: only x is written
    GMAX: tl.constexpr,     # row stride of part_ptr
    BLOCK: tl.constexpr,    # elements per program
    ACC: tl.constexpr,      # compute dtype
):
    # the step sizes, from the partial sums (the same in every program)
    lanes = tl.arange(0, GMAX)
    gamma = tl.sum(tl.load(part_ptr + lanes, mask=lanes < G, other=0), axis=0)          # ⟨r, r⟩
    rq = tl.sum(tl.load(part_ptr + GMAX + lanes, mask=lanes < G, other=0), axis=0)     # ⟨r, q⟩
    c1 = scalar(c1_hi, c1_lo, ACC)
    delta = c1 * rq                                                                     # ⟨M r, r⟩
    if REG:
        delta += gamma
    if FIRST:                                                                           # β₀ = 0
        den = delta
    else:
        alpha_prev = tl.load(prev_ptr)
        beta = safe_div(gamma, tl.load(prev_ptr + 1))
        den = delta - safe_div(beta * gamma, alpha_prev)
    alpha = tl.where(gamma > tl.load(floor_ptr), safe_div(gamma, den), 0)
    if tl.program_id(0) == 0:
        tl.store(state_ptr, alpha)
        tl.store(state_ptr + 1, gamma)
    # the vectors
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    r = tl.load(r_ptr + offs, mask=ok, other=0).to(ACC)
    p = r
    if not FIRST:
        p += beta * tl.load(p_ptr + offs, mask=ok, other=0).to(ACC)
    if not LAST:
        s = c1 * tl.load(q_ptr + offs, mask=ok, other=0).to(ACC)                        # w = M r
        if REG:
            s += r
        if not FIRST:
            s += beta * tl.load(s_ptr + offs, mask=ok, other=0).to(ACC)
        tl.store(s_ptr + offs, s.to(s_ptr.dtype.element_ty), mask=ok)
        tl.store(r_ptr + offs, (r - alpha * s).to(r_ptr.dtype.element_ty), mask=ok)
        tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=ok)
    x = tl.load(x_in_ptr + offs, mask=ok, other=0).to(ACC)
    tl.store(x_out_ptr + offs, (x + alpha * p).to(x_out_ptr.dtype.element_ty), mask=ok)


def cg_residual(aty: Tensor, q: Tensor, c: float, *, out: Tensor | None = None) -> Tensor:
    """Launch `_cg_residual_kernel`: r₀ = c·(Aᵀy − AᵀA x̂).  aty, q: [*] contiguous, one dtype → [*]"""
    check("cg", aty, q)
    if aty.shape != q.shape:
        raise InputError(f"cg: Aᵀy has shape {tuple(aty.shape)}, AᵀA x̂ {tuple(q.shape)}")
    out = output("cg", out, aty.shape, aty)
    _cg_residual_kernel[(triton.cdiv(aty.numel(), BLOCK),)](aty, q, out, aty.numel(), *split(c), BLOCK=BLOCK,
                                                           ACC=ACC[aty.dtype], num_warps=NUM_WARPS)
    return out


def cg_dot(r: Tensor, q: Tensor, part: Tensor) -> int:
    """Launch `_cg_dot_kernel`: partial sums of ⟨r, r⟩ and ⟨r, q⟩ into part [2, GMAX].

    r, q: one shape, contiguous. Returns the number of programs (valid columns of part).
    """
    check("cg", r, q)
    if r.shape != q.shape or part.shape != (2, GMAX) or not part.is_contiguous():
        raise InputError(f"cg: r {tuple(r.shape)}, q {tuple(q.shape)} and partials [2, {GMAX}] expected, "
                         f"got {tuple(part.shape)}")
    programs = min(GMAX, triton.cdiv(r.numel(), DOT_BLOCK))
    _cg_dot_kernel[(programs,)](r, q, part, r.numel(), GMAX=GMAX, BLOCK=DOT_BLOCK, ACC=ACC[r.dtype],
                                num_warps=DOT_WARPS)
    return programs


def cg_update(x_in: Tensor, x_out: Tensor, r: Tensor, p: Tensor, s: Tensor, q: Tensor, part: Tensor,
              programs: int, state: Tensor, prev: Tensor | None, floor: Tensor, gamma: float | None,
              last: bool) -> None:
    """Launch `_cg_update_kernel`: one Chronopoulos–Gear update of x, r, p, s in place.

    x_in, x_out, r, p, s, q: one shape, contiguous; part [2, GMAX] from `cg_dot` with `programs`
    valid columns; state [2] receives (αᵢ, γᵢ); prev is the previous iteration's state (None at the first);
    floor [1]: the ⟨r, r⟩ at or below which α is 0 (engine.cg's rounding floor).
    """
    check("cg", x_in, x_out, r, p, s, q)
    if not (x_in.shape == x_out.shape == r.shape == p.shape == s.shape == q.shape):
        raise InputError("cg: x, r, p, s and AᵀA r must share one shape")
    _cg_update_kernel[(triton.cdiv(r.numel(), BLOCK),)](
        x_in, x_out, r, p, s, q, part, state, state if prev is None else prev, floor, r.numel(), programs,
        *split(1.0 if gamma is None else gamma), REG=gamma is not None, FIRST=prev is None, LAST=last,
        GMAX=GMAX, BLOCK=BLOCK, ACC=ACC[r.dtype], num_warps=NUM_WARPS)


def data_consistency(op, y: Tensor, x_hat: Tensor, iters: int, gamma: float | None = None, *,
                     aty: Tensor | None = None) -> Tensor:
    """CG_l(x̂): `iters` CG steps from x̂ towards the measurement y, all in [0, 1] (engine.cg.data_consistency).

    gamma=None solves AᵀA x = Aᵀ y; a float γ solves (I + γ AᵀA) x = x̂ + γ Aᵀ y.
    x_hat: [N, C, H, W], y: op.out_shape; `aty` = Aᵀy when the caller has it already.
    Three passes per iteration plus AᵀA's own beyond one.
    """
    x_hat = x_hat.contiguous()
    if iters == 0:
        return x_hat.clone()
    aty = (op.A_adjoint(y) if aty is None else aty).contiguous()
    r = cg_residual(aty, op.A_adjoint_A(x_hat).contiguous(), 1.0 if gamma is None else float(gamma))
    x, p, s = torch.empty_like(x_hat), torch.empty_like(x_hat), torch.empty_like(x_hat)
    acc = torch.float64 if x_hat.dtype == torch.float64 else torch.float32
    b = aty if gamma is None else x_hat + gamma * aty
    floor = (torch.finfo(x_hat.dtype).eps ** 2 * b.to(acc).square().sum()).reshape(1)
    part = torch.empty((iters, 2, GMAX), dtype=acc, device=x_hat.device)
    state = torch.empty((iters, 2), dtype=acc, device=x_hat.device)
    for i in range(iters):
        q = op.A_adjoint_A(r).contiguous()
        programs = cg_dot(r, q, part[i])
        cg_update(x_hat if i == 0 else x, x, r, p, s, q, part[i], programs, state[i],
                  None if i == 0 else state[i - 1], floor, gamma, last=i == iters - 1)
    return x
