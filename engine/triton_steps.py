"""The sampler's step arithmetic on the Triton launchers of `kernels.steps`: a schedule step
(engine.schedule.DDIMStep) becomes the launchers' float arguments.

Same signatures as engine.sampler.take_eps / tweedie / ddim_update, which are their references;
engine.sampler.step_kernels("triton") collects them with kernels.cg.data_consistency.
"""

from __future__ import annotations

import torch

from engine.schedule import DDIMStep
from kernels.common import frames_contiguous
from kernels.steps import ddim_step, tweedie_step

Tensor = torch.Tensor


def take_eps(out: Tensor, dtype: torch.dtype) -> Tensor:
    """ε as the network leaves it: its first 3 channels, a view in the network's dtype (the kernels
    convert as they load, so no pass over the clip casts it).  out: [N, 3 or 6, H, W]; dtype: unused"""
    return out[:, :3]


def tweedie(x: Tensor, eps: Tensor, s: DDIMStep) -> Tensor:
    """X̂ = (X − √(1−ᾱ_t)·ε) / √ᾱ_t, returned in the data range [0, 1] where CG runs."""
    return tweedie_step(x.contiguous(), frames_contiguous(eps), s.sqrt_ab, s.sqrt_1m_ab)


def ddim_update(xbar: Tensor, noise: Tensor, eps: Tensor, s: DDIMStep) -> Tensor:
    """X_next = √ᾱ_next·X̄ + c1·E_b + c2·ε, with X̄ given in [0, 1] (E_b broadcast over frames when shared)."""
    return ddim_step(xbar.contiguous(), noise.contiguous(), frames_contiguous(eps), s.sqrt_ab_next, s.c1, s.c2)
