"""The paper's Algorithm 1: batch-consistent DDIM sampling with CG data consistency.

Notation (docs/design.md, "The sampler"; the paper's symbols):

    X      x      the noisy clip at step t, model range [−1, 1]      [N, 3, H, W]
    ε      eps    the network's noise estimate (first 3 channels)     [N, 3, H, W]
    X̂      x0     Tweedie's denoised estimate, frame by frame,        [N, 3, H, W]
                  kept in the data range [0, 1] where CG runs
    X̄      xbar   X̂ after l CG steps in video space, in [0, 1]       [N, 3, H, W]
    E_b    E[k]   the noise of step k: one image shared by all frames [1, 3, H, W]
                  ("shared", the paper) or one per frame ("independent", its ablation)
    y      y      the measurement, data range [0, 1]                  op.out_shape
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch

from engine.cg import DEFAULT_DELTA, conjugate_gradient, data_consistency, preconditioner
from engine.errors import InputError
from engine.profiling import nvtx_range
from engine.schedule import DDIMStep, WarmStart, ddim_steps, warm_start

Tensor = torch.Tensor
EpsModel = Callable[[Tensor, Tensor], Tensor]
NOISE_MODES = ("shared", "independent")


def draw_noise(seed: int, nfe: int, shape: tuple[int, ...], mode: str = "shared", *, pin: bool = False) -> Tensor:
    """All the sampler's Gaussian noise, drawn up front on the CPU from `seed`.

    Returns [nfe + 1, B, C, H, W] float32 with B = 1 ("shared") or N ("independent"):
    E[0] initialises X, E[k + 1] re-noises after step k. Drawing on the CPU makes a
    seed give the same clip on every device, and a static buffer is what a captured
    CUDA graph replays.

    Each draw is kept (the last few, by seed, sizes, mode and `pin`), so a solver called
    again with a seed it has seen copies the same numbers instead of drawing (nfe + 1)·B·C·H·W
    of them again (0.3–0.6 s for a 720p clip). The result is shared: read it, never write into
    it. `pin`: in page-locked memory (needs CUDA), so its copy to a GPU is one asynchronous
    DMA at full bandwidth instead of a staged pageable copy.
    """
    if mode not in NOISE_MODES:
        raise InputError(f"noise must be one of {NOISE_MODES}, got {mode!r}")
    return _drawn(int(seed), int(nfe), tuple(int(s) for s in shape), mode, bool(pin))


@functools.lru_cache(maxsize=2)
def _drawn(seed: int, nfe: int, shape: tuple[int, ...], mode: str, pin: bool) -> Tensor:
    n, c, h, w = shape
    b = 1 if mode == "shared" else n
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((nfe + 1, b, c, h, w), generator=gen, dtype=torch.float32)
    return noise.pin_memory() if pin else noise


def tweedie(x: Tensor, eps: Tensor, s: DDIMStep) -> Tensor:
    """X̂ = (X − √(1−ᾱ_t)·ε) / √ᾱ_t, returned in the data range [0, 1] where CG runs (one new clip-sized
    buffer and one temporary: the divisions and the shift run in place)."""
    return (x - s.sqrt_1m_ab * eps).div_(s.sqrt_ab).add_(1).div_(2)


def ddim_update(xbar: Tensor, noise: Tensor, eps: Tensor, s: DDIMStep) -> Tensor:
    """X_next = √ᾱ_next·X̄ + c1·E_b + c2·ε, with X̄ given in [0, 1] (E_b broadcast over frames when shared;
    one new clip-sized buffer and one temporary, the sums in place in the order written)."""
    return to_model(xbar).mul_(s.sqrt_ab_next).add_(s.c1 * noise).add_(s.c2 * eps)


def take_eps(out: Tensor, dtype: torch.dtype) -> Tensor:
    """ε from the network's output [N, 3 or 6, H, W]: its first 3 channels, in the step's dtype (a copy of
    them when there are 6, so that the learned σ's channels are not held through the step)."""
    return out[:, :3].to(dtype, copy=out.shape[1] != 3)


def to_data(x: Tensor) -> Tensor:
    """[−1, 1] → [0, 1]."""
    return (x + 1) / 2


def to_model(x: Tensor) -> Tensor:
    """[0, 1] → [−1, 1]."""
    return (2 * x).sub_(1)


@dataclass(frozen=True)
class StepKernels:
    """The non-network arithmetic of one step. The defaults, torch ops, are the reference;
    step_kernels("triton") swaps in fused Triton kernels."""

    take_eps: Callable = take_eps
    tweedie: Callable = tweedie
    ddim_update: Callable = ddim_update
    data_consistency: Callable = data_consistency


@functools.cache
def step_kernels(kernels: str) -> StepKernels:
    """The step arithmetic on `kernels`, resolved ("torch" or "triton"; one table each)."""
    if kernels == "triton":
        from engine import triton_steps
        from kernels.cg import data_consistency as triton_data_consistency

        return StepKernels(take_eps=triton_steps.take_eps, tweedie=triton_steps.tweedie,
                           ddim_update=triton_steps.ddim_update, data_consistency=triton_data_consistency)
    return StepKernels()


def check_measurement(y: Tensor, op) -> None:
    """One clear error for a measurement that does not fit the operator or is not finite."""
    if tuple(y.shape) != tuple(op.out_shape):
        raise InputError(f"measurement has shape {tuple(y.shape)}, the operator expects {tuple(op.out_shape)}")
    if not torch.isfinite(y).all():
        raise InputError("measurement contains NaN or Inf values")


def sample(
    eps_model: EpsModel,
    y: Tensor,
    op,
    *,
    nfe: int = 20,
    eta: float = 0.15,
    cg_iters: int = 5,
    gamma: Optional[float] = None,
    precond_delta: Optional[float] = DEFAULT_DELTA,
    noise: str = "shared",
    seed: int = 0,
    start: Optional[int] = None,
    callback: Optional[Callable[[int, int, Tensor], None]] = None,
) -> Tensor:
    """Restore the clip behind `y = op.A(x)`; returns [N, 3, H, W] in [0, 1].

    eps_model(x_t [N, 3, H, W], t [N] int64) → [N, 3 or 6, H, W]. gamma=None runs the
    noiseless CG on AᵀA x = Aᵀy; a float γ runs (I + γAᵀA) x = x̂ + γAᵀy. precond_delta=δ
    preconditions it from op's temporal part (engine.cg.preconditioner; None: plain CG).
    start: t₀ of a warm start (engine.schedule.warm_start; None: T, the cold start).
    callback(k, t, x̂ in [0, 1]) sees every step's Tweedie estimate. The steps run on op's kernels
    (`step_kernels(op.kernels)`).
    """
    check_measurement(y, op)
    E = draw_noise(seed, nfe, tuple(op.in_shape), noise).to(device=y.device, dtype=y.dtype)
    precond = preconditioner(op, gamma, precond_delta, device=y.device, dtype=y.dtype)
    return reverse_process(eps_model, y, op, E, ddim_steps(nfe, eta, start=start), cg_iters=cg_iters,
                           gamma=gamma, callback=callback, kernels=step_kernels(op.kernels),
                           precond=precond, warm=warm_start(start, cg_iters))


def reverse_process(
    eps_model: EpsModel,
    y: Tensor,
    op,
    E: Tensor,
    steps: list[DDIMStep],
    *,
    cg_iters: int,
    gamma: Optional[float],
    callback: Optional[Callable[[int, int, Tensor], None]] = None,
    kernels: StepKernels = StepKernels(),
    nvtx: bool = False,
    stage: Optional[Callable[[str], ContextManager]] = None,
    precond: Optional[Callable[[Tensor], Tensor]] = None,
    warm: Optional[WarmStart] = None,
) -> Tensor:
    """The loop of Algorithm 1 on static inputs (no host sync: a CUDA graph can capture it).

    E: [K + 1, B, 3, H, W] noise from `draw_noise`; returns clamp(X̄) in [0, 1], [N, 3, H, W].
    `kernels`: the step arithmetic (`step_kernels`); the default, torch ops, is the reference,
    whatever `op` runs on (the caller passes the kernels it resolved). `nvtx` puts each stage
    of each step in an NVTX range (UNet, Tweedie, CG, update; "warm start" once) for Nsight; `stage`, called with
    those names, replaces the ranges with contexts of the caller's (bench/fps.py's stage clock).
    `precond`: CG's preconditioner (engine.cg.preconditioner, built once; None: plain CG).
    `warm`: start at t₀ from X_{t₀} = √ᾱ_{t₀}·X_init + √(1−ᾱ_{t₀})·E_b, X_init = CG on AᵀA x = Aᵀy from Aᵀy
    (`steps` must then be the schedule from t₀); None: X_T = E_b.
    """
    n = op.in_shape[0]
    aty = op.A_adjoint(y)                                                   # Aᵀy, once per clip
    x = E[0].expand(op.in_shape).clone()                                    # batch-consistent init
    stage = stage or functools.partial(nvtx_range, enabled=nvtx)
    if warm is not None:                                                    # X_t0 = √ᾱ·X_init + √(1−ᾱ)·E_b
        with stage("warm start"):
            x_init = conjugate_gradient(op.A_adjoint_A, aty, aty, warm.cg_iters, dot=op.inner).clamp(0, 1)
            x = warm.sqrt_ab * to_model(x_init) + warm.sqrt_1m_ab * x
    for k, s in enumerate(steps):
        t = torch.full((n,), s.t, dtype=torch.long, device=y.device)
        with stage("UNet"):
            eps = kernels.take_eps(eps_model(x, t), y.dtype)                # ε_θ(X, t)
        with stage("Tweedie"):
            x0 = kernels.tweedie(x, eps, s)                                 # X̂ (in [0, 1])
            x = xbar = None                                                 # X and the last X̄: not needed any more
        if callback is not None:
            callback(k, s.t, x0)
        with stage("CG"):
            xbar = kernels.data_consistency(op, y, x0, cg_iters, gamma, aty=aty, precond=precond)  # X̄ = CG_l(X̂)
        with stage("update"):
            x = kernels.ddim_update(xbar, E[k + 1], eps, s)                 # re-noise with E_b
    return xbar.clamp(0, 1)
