"""Blind temporal deblurring, the paper's Algorithm 2 (docs/design.md, "Blind deblurring").

The temporal PSF is unknown. From a first reconstruction X⁰ of the clip:

    k̂₁ = argmin_{k ∈ F} ‖A_k X⁰ − Y‖² / ‖Y‖²        least squares over a PSF family F
    X¹ = Algorithm 1 with A_{k̂₁}                     stage 1
    k̂₂ = argmin_{k ∈ F} ‖A_k X¹ − Y‖² / ‖Y‖²
    X² = Algorithm 1 with A_{k̂₂}                     stage 2 (skipped when k̂₂ = k̂₁: it would repeat stage 1)

The paper takes X⁰ from a pretrained video deblurring network. None ships here, and a
reconstruction made with an assumed PSF cannot stand in for it: it fits Y under that
PSF, so the fit would return the PSF it assumed. X⁰ is therefore the caller's: their
network's output, or any estimate of the clip made without a PSF.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import torch

from engine.errors import InputError
from engine.operators import from_spec
from engine.runtime import Solver, SolverConfig

log = logging.getLogger("engine.blind")
Tensor = torch.Tensor

#: The PSF family F: uniform widths 1 (no blur) … 15 and Gaussian σ, each where it fits the clip.
UNIFORM_WIDTHS = tuple(range(1, 16))
GAUSSIAN_SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


def psf_family(frames: int, boundary: str = "circular") -> list[str]:
    """Specs of the candidate PSFs for a clip of `frames` frames.

    With the circular boundary a kernel may not be wider than the clip (it would wrap onto
    itself); Gaussians have width 2⌈3σ⌉ + 1.
    """
    def fits(width: int) -> bool:
        return boundary == "zero" or width <= frames

    specs = [f"temporal:uniform:{w}:{boundary}" for w in UNIFORM_WIDTHS if fits(w)]
    specs += [f"temporal:gaussian:{s}:{boundary}" for s in GAUSSIAN_SIGMAS if fits(2 * math.ceil(3 * s) + 1)]
    return specs


@dataclass(frozen=True)
class Fit:
    """One candidate PSF and its relative residual ‖A_k X − Y‖² / ‖Y‖²."""

    spec: str
    residual: float


def fit_psf(x: Tensor, y: Tensor, family: Sequence[str]) -> list[Fit]:
    """Every candidate's residual on (x, y), best first.  x, y: [N, 3, H, W] (a temporal PSF keeps the shape)"""
    if x.shape != y.shape:
        raise InputError(f"the first reconstruction has shape {tuple(x.shape)}, the measurement {tuple(y.shape)}: "
                         f"a temporal PSF keeps the clip's shape")
    for name, t in (("first reconstruction", x), ("measurement", y)):
        if not torch.isfinite(t).all():
            raise InputError(f"the {name} holds NaN or infinite values")
    if not family:
        raise InputError("the PSF family is empty")
    x = x.to(y.device, torch.float64 if y.dtype == torch.float64 else torch.float32)
    y = y.to(x.dtype)
    norm = y.square().sum().clamp_min(torch.finfo(y.dtype).tiny)
    fits = []
    for spec in family:
        op = from_spec(spec, tuple(x.shape), device=x.device, dtype=x.dtype)
        fits.append(Fit(spec, float((op.A(x) - y).square().sum() / norm)))     # outside the sampler: a sync is fine
    return sorted(fits, key=lambda f: f.residual)


@dataclass
class BlindResult:
    """What Algorithm 2 returns."""

    clip: Tensor                        # the last stage's restoration [N, 3, H, W] in [0, 1]
    psf: str                            # the spec of the PSF it used
    stages: list[dict] = field(default_factory=list)   # per stage: the PSF fitted, the best fits, skipped or not


def blind_deblur(model, y: Tensor, init: Tensor, config: SolverConfig, *, family: Sequence[str] | None = None,
                 seed: int = 0, top: int = 5, callback: Callable | None = None) -> BlindResult:
    """Algorithm 2: fit the PSF to `init`, restore, fit again to the restoration, restore again.

    model: as for Solver (an ADMUNet, a weight-free prior or a TensorRT engine path);
    y: the measurement, init: the first reconstruction, both [N, 3, H, W] in [0, 1];
    config: the Solver's settings, whose spec each stage replaces with the PSF it fits
    (frames and size are y's); family: PSF specs (default `psf_family(N)`).
    `callback(stage, ...)` follows each sampler step.
    """
    n, _, h, w = y.shape
    if (h, w) != config.frame:
        raise InputError(f"the measurement has {h}x{w} frames; the settings restore {config.frame[0]}x{config.frame[1]}")
    family = list(family) if family is not None else psf_family(n)
    clip, used, stages = init, None, []
    for stage in (1, 2):
        fits = fit_psf(clip, y, family)
        spec = fits[0].spec
        stages.append({"stage": stage, "psf": spec, "fits": [asdict(f) for f in fits[:top]], "skipped": spec == used})
        log.info("stage %d: PSF %s (relative residual %.3g)", stage, spec, fits[0].residual)
        if spec == used:
            log.info("stage %d skipped: the fit returns the PSF of stage %d", stage, stage - 1)
            break
        solver = Solver(model, replace(config, spec=spec, frames=n))
        step = (lambda *a, stage=stage: callback(stage, *a)) if callback is not None else None
        clip, used = solver.solve(y, seed=seed, callback=step), spec
    return BlindResult(clip=clip, psf=used, stages=stages)
