"""The diffusion schedule and the DDIM step pairs of the paper's Algorithm 1.

Notation (docs/design.md, "The sampler"): β_t linear in [1e-4, 0.02] over T = 1000 steps,
ᾱ_t = Π_{s≤t} (1 − β_s), ᾱ_{−1} = 1. For K network evaluations the sampler
visits t = (K−1)·skip, …, skip, 0 with skip = T // K, each paired with the next
(t_next = −1 after 0).

Warm start (Chung, Sim & Ye, CVPR 2022, "come closer, diffuse faster"): the reverse
process starts at t₀ ≤ T instead of T, from X_{t₀} = √ᾱ_{t₀}·X_init + √(1−ᾱ_{t₀})·E_b,
and visits t = (K−1)·skip, …, 0 with skip = t₀ // K. With ᾱ_T = 0 (the pure-noise end,
as ᾱ_{−1} = 1 is the clean end) t₀ = T is the cold start: X_T = E_b, skip = T // K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NUM_TRAIN_STEPS = 1000


def linear_betas(num_steps: int = NUM_TRAIN_STEPS, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """β_t, t = 0 … T−1, linear from `start` to `end` (float64). [T]"""
    return torch.linspace(start, end, num_steps, dtype=torch.float64)


def alphas_cumprod(num_steps: int = NUM_TRAIN_STEPS) -> torch.Tensor:
    """ᾱ_t = Π_{s≤t} (1 − β_s) in float64. [T]"""
    return torch.cumprod(1.0 - linear_betas(num_steps), dim=0)


def check_start(start: int | None, nfe: int, num_steps: int = NUM_TRAIN_STEPS) -> int:
    """t₀ (None → T, the cold start); ValueError unless nfe ≤ t₀ ≤ T (every step a distinct timestep)."""
    start = num_steps if start is None else start
    if not 1 <= nfe <= start <= num_steps:
        raise ValueError(f"need 1 <= nfe <= start <= {num_steps}, got nfe={nfe}, start={start}")
    return start


def ddim_timesteps(nfe: int, num_steps: int = NUM_TRAIN_STEPS, start: int | None = None) -> list[tuple[int, int]]:
    """The (t, t_next) pairs for `nfe` evaluations from t₀ = `start` (None: T): K=20 → (950, 900), …, (0, −1)."""
    if not 1 <= nfe <= num_steps:
        raise ValueError(f"nfe must be in [1, {num_steps}], got {nfe}")
    skip = check_start(start, nfe, num_steps) // nfe
    ts = [k * skip for k in range(nfe - 1, -1, -1)]
    return list(zip(ts, ts[1:] + [-1]))


@dataclass(frozen=True)
class DDIMStep:
    """Scalar coefficients of one reverse step, all from float64 ᾱ.

    Tweedie:  X̂ = (X − √(1−ᾱ_t)·ε) / √ᾱ_t = a·X − b·ε
    Update:   X' = √ᾱ_next·X̄ + c1·E_b + c2·ε,
              c1 = η·√(1−ᾱ_next),  c2 = √(1−η²)·√(1−ᾱ_next)
    """

    t: int
    t_next: int
    sqrt_ab: float       # √ᾱ_t
    sqrt_1m_ab: float    # √(1−ᾱ_t)
    sqrt_ab_next: float  # √ᾱ_next
    c1: float
    c2: float


def ddim_steps(nfe: int, eta: float, num_steps: int = NUM_TRAIN_STEPS, start: int | None = None) -> list[DDIMStep]:
    """Every step's coefficients for `nfe` evaluations from t₀ = `start` (None: T) and stochasticity `eta` ∈ [0, 1]."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    ab = alphas_cumprod(num_steps)
    steps = []
    for t, t_next in ddim_timesteps(nfe, num_steps, start):
        ab_t = float(ab[t])
        ab_next = float(ab[t_next]) if t_next >= 0 else 1.0
        sigma_next = math.sqrt(1.0 - ab_next)
        steps.append(DDIMStep(
            t=t, t_next=t_next,
            sqrt_ab=math.sqrt(ab_t), sqrt_1m_ab=math.sqrt(1.0 - ab_t),
            sqrt_ab_next=math.sqrt(ab_next),
            c1=eta * sigma_next,
            c2=math.sqrt(1.0 - eta * eta) * sigma_next,
        ))
    return steps


@dataclass(frozen=True)
class WarmStart:
    """X_{t₀} = √ᾱ_{t₀}·X_init + √(1−ᾱ_{t₀})·E_b, X_init from `cg_iters` CG iterations on AᵀA x = Aᵀy."""

    start: int           # t₀
    sqrt_ab: float       # √ᾱ_{t₀}  (0 at t₀ = T: the cold start)
    sqrt_1m_ab: float    # √(1−ᾱ_{t₀})
    cg_iters: int


def warm_start(start: int | None, cg_iters: int = 5, num_steps: int = NUM_TRAIN_STEPS) -> WarmStart | None:
    """The initialisation for t₀ = `start`; None for the cold start (start None or T: X_T = E_b)."""
    if start is None or start == num_steps:
        return None
    if not 1 <= start < num_steps or cg_iters < 0:
        raise ValueError(f"start must be in [1, {num_steps}] and cg_iters >= 0, got {start}, {cg_iters}")
    ab = float(alphas_cumprod(num_steps)[start])
    return WarmStart(start=start, sqrt_ab=math.sqrt(ab), sqrt_1m_ab=math.sqrt(1.0 - ab), cg_iters=cg_iters)
