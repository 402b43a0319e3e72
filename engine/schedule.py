"""The diffusion schedule and the DDIM step pairs of the paper's Algorithm 1.

Notation (DESIGN.md §2): β_t linear in [1e-4, 0.02] over T = 1000 steps,
ᾱ_t = Π_{s≤t} (1 − β_s), ᾱ_{−1} = 1. For K network evaluations the sampler
visits t = (K−1)·skip, …, skip, 0 with skip = T // K, each paired with the next
(t_next = −1 after 0).
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


def ddim_timesteps(nfe: int, num_steps: int = NUM_TRAIN_STEPS) -> list[tuple[int, int]]:
    """The (t, t_next) pairs for `nfe` evaluations: K=20 → (950, 900), …, (50, 0), (0, −1)."""
    if not 1 <= nfe <= num_steps:
        raise ValueError(f"nfe must be in [1, {num_steps}], got {nfe}")
    skip = num_steps // nfe
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


def ddim_steps(nfe: int, eta: float, num_steps: int = NUM_TRAIN_STEPS) -> list[DDIMStep]:
    """Every step's coefficients for `nfe` evaluations and stochasticity `eta` ∈ [0, 1]."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    ab = alphas_cumprod(num_steps)
    steps = []
    for t, t_next in ddim_timesteps(nfe, num_steps):
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
