"""A real video's last step: one denoise at the noise level its data was weighed for.

The regularised CG weighs the measurement for a noise σ_w (engine.job.weighed_noise: GAMMA_NOISE/γ).
A real video's errors are a codec's: structured, far above the white residue that σ̂ measures, and
the data term carries them into the restoration x̂ wherever the blur sees the clip well (on 120 frames
of an H.264 clip x̂'s error in those modes is the codec's own). One Tweedie step of the prior the loop
used (any ε model) removes them, reading x̂ as an image under Gaussian noise σ_p = POLISH_SPAN·σ_w:

    t* = argmin_t |σ_t − σ_p|,   σ_t = ½·√((1 − ᾱ_t)/ᾱ_t)          (engine.priors.step_sigma)
    x_t = √ᾱ_t* · (2x̂ − 1)                                         (no noise added: x̂ holds its own)
    x̂ ← clamp(((x_t − √(1 − ᾱ_t*)·ε(x_t, t*)) / √ᾱ_t* + 1) / 2, 0, 1)

With a denoiser prior D (engine.priors.DenoiserPrior) this is D(x̂, σ_t*). The input guard
(engine.realvideo) judges x̂ before this step: its data residual there is the restoration's, while the
step removes, by design, noise the measurement holds. POLISH_SPAN was measured with
bench/real_targets.py on six real H.264 clips (docs/results.md, "The last denoise").

    x = polish(solver.eps_model, x, polish_sigma(weighed_noise(job, cfg)))     # [N, 3, H, W] in [0, 1]
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from engine.priors import step_sigma
from engine.sampler import take_eps, to_model, tweedie
from engine.schedule import DDIMStep, alphas_cumprod

Tensor = torch.Tensor

#: σ_p / σ_w (module docstring)
POLISH_SPAN = 1.5
#: frames denoised at once (the work space; the result does not depend on it)
POLISH_CHUNK = 8


def polish_sigma(weighed: float) -> float:
    """σ_p = POLISH_SPAN·σ_w; 0 (no step) where the data was weighed for no noise (σ_w = 0: the noiseless CG,
    or the paper's checkpoint, whose γ follows another rule)."""
    return POLISH_SPAN * weighed if weighed > 0 else 0.0


@functools.lru_cache(maxsize=None)
def polish_step(sigma: float) -> int:
    """t* = argmin_t |σ_t − σ|: the diffusion step whose noise (data range) is nearest σ > 0."""
    if not sigma > 0:
        raise ValueError(f"the polish needs a noise level > 0, got {sigma}")
    table = alphas_cumprod()
    levels = step_sigma(torch.arange(table.numel()), table)
    return int((levels - sigma).abs().argmin())


def last_step(sigma: float) -> DDIMStep:
    """The reverse step from t* = polish_step(σ) straight to the clean image, as the loop's last step is."""
    t = polish_step(sigma)
    ab = float(alphas_cumprod()[t])
    return DDIMStep(t=t, t_next=-1, sqrt_ab=math.sqrt(ab), sqrt_1m_ab=math.sqrt(1 - ab), sqrt_ab_next=1.0,
                    c1=0.0, c2=0.0)


def polish(eps_model: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: float, *,
           chunk: int = POLISH_CHUNK) -> Tensor:
    """x̂ denoised by one Tweedie step at the step nearest σ (module docstring), `chunk` frames at a time (its work
    space is a chunk's); x itself (the same tensor) when σ = 0.  eps_model(x_t [B, 3, H, W], t [B]) →
    [B, 3 or 6, H, W]; x: [N, 3, H, W] in [0, 1] → a new [N, 3, H, W] in x's dtype."""
    if sigma == 0:
        return x
    step = last_step(sigma)
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], chunk):
        x_t = to_model(x[start:start + chunk]).mul_(step.sqrt_ab)
        t = torch.full((x_t.shape[0],), step.t, dtype=torch.long, device=x.device)
        with torch.no_grad():
            eps = take_eps(eps_model(x_t, t), x_t.dtype)
        out[start:start + chunk] = tweedie(x_t, eps, step).clamp_(0, 1)
    return out


def polish_record(sigma: float) -> dict | None:
    """metrics.json's `polish`: the noise level and step of the last denoise (None: none ran)."""
    return {"sigma": sigma, "step": polish_step(sigma)} if sigma > 0 else None
