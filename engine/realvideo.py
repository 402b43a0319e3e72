"""What a real (measured) video needs beyond the paper's protocol: its noise level, a check of the
result against it, and the changes its format forces on the output.

A user's video y is 8-bit and usually codec-compressed, so it always carries noise. The noiseless
CG (γ = 0) fits that noise and amplifies it in the blur's near-null modes by up to 1/δ; the run
therefore takes σ_y from the user (--sigma-y) or estimates it from y (engine.noise) and runs the
regularised CG with γ(σ_y). After the run the data residual

    ρ = ‖A x − y‖ / √(numel y)

of the restoration (before the guard below) is compared with σ_y: a restoration consistent with y
leaves ρ ≈ σ_y. ρ far below σ_y means the result reproduces y's noise (it is noisier than it should
be); ρ far above means it does not explain y (a wrong --degrade, or too few steps). "Far above" is
UNDERFIT·σ_y, or σ_w where that is larger: the noise level the CG's γ weighs the data for (with the
learned prior γ = GAMMA_NOISE/σ_w, capped, so a low-noise video is fitted to about σ_w, not σ_y).
A --degrade wider than the video's blur is the common case: its restoration is worse than the input
everywhere the guard below trusts it, and only this check sees it. Either case gets a warning naming
the fix; metrics.json's `residual.explained` is false past the upper bound.

Where the blur barely changed the video (static content: A y ≈ y within the noise) the input is
already about as good as it gets and the prior can only cost detail, so a guard compares, per
frame t, how well the input and the restoration x̂ explain the measurement:

    e_in[t]  = ‖(A y − y)_t‖ / √n_t          e_out[t] = ‖(A x̂ − y)_t‖ / √n_t
    q[t]     = log(e_in[t] / max(e_out[t], NOISE_SPAN·σ_y)) / log GUARD_SPAN
    α[t]     = clamp(1 − q[t], 0, 1),         x_t ← x̂_t + α[t] (y_t − x̂_t)

α = 1 (the frame kept as given) where the input explains y as well as x̂ does or within the noise,
α = 0 (the restoration kept) where its residual is GUARD_SPAN times x̂'s or more; the frames it
touches are recorded and warned about (`input_guard`; `StreamGuard` for a video restored in windows).

A y ≈ y says less than it seems: the box blur keeps whatever is straight in time, so a frame in steady
motion, whose blurred input changes evenly from frame to frame, explains itself too (on 120 frames of
an H.264 clip such frames were kept 1–2 dB below their restoration). So α is also held under a cap
that asks the input frame itself to be still, by its slope v[t] = ‖y[t+1] − y[t−1]‖ / (2√n_t) (the
ends held) against the noise (σ = max(σ_y, 8-bit rounding)):

    α[t] ← min(α[t], c[t]),   c[t] = 1 while v[t] ≤ STILL·σ, MOVING_CAP from MOVING·σ on, linear between

(a small share of the input still helps a moving frame: the two estimates' errors differ).

x̂ is judged before the last denoise (engine.polish), and both sides of the blend get that step:
it removes noise the measurement holds, so its own residual says nothing about the restoration,
and the input's noise is no more wanted than the restoration's (a frame "kept as given" is the
input denoised as the restoration is; on noisy lossless clips the undenoised input kept 0.7–1.7 dB
of the gain away, on H.264 clips this gains up to 0.17 dB: docs/results.md, "The last denoise").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import torch

from engine.noise import MIN_SIDE, ROUNDING_FLOOR, estimate_noise

log = logging.getLogger(__name__)

#: ρ / σ_y outside [OVERFIT, UNDERFIT] gets a warning, and so does ρ above WEIGHED_SPAN·σ_w (module docstring);
#: WEIGHED_SPAN measured with bench/real_targets.py --blur on real H.264 clips (ρ/σ_w 0.35–0.6 with the right
#: --degrade, 0.46–6.2 with a wider one: docs/results.md)
OVERFIT, UNDERFIT, WEIGHED_SPAN = 0.5, 3.0, 1.0
#: a video restored with --register (engine.registration) whose ρ/σ_y passes REGISTER_SPAN is warned about: its
#: errors are not white noise alone and may mislead the fit (bench/real_targets.py rows: white noise, no codec
#: 0.83–1.06; H.264 at CRF 23 1.10–2.2, where the fit put a frame 1.1–2.1 dB below INPUT: docs/results.md)
REGISTER_SPAN = 1.1
#: the guard (module docstring): e_in / max(e_out, NOISE_SPAN·σ_y) from 1 (input kept) to GUARD_SPAN (restoration
#: kept); chosen with bench/real_targets.py on six real H.264 clips with the last denoise (engine.polish) after it:
#: static crops keep their input, moving ones their restoration (docs/results.md, "The last denoise")
GUARD_SPAN, NOISE_SPAN = 1.5, 1.0
#: the still cap (module docstring): α ≤ 1 up to a slope of STILL·σ, ≤ MOVING_CAP from MOVING·σ on; static crops'
#: frames have slopes of 1–3σ, carphone's 3–8σ; chosen with the saved restorations of nine real clips (docs/results.md,
#: "A still input, not a straight one")
STILL, MOVING, MOVING_CAP = 3.0, 5.0, 0.25

__all__ = ["NoiseLevel", "noise_level", "residual_record", "grey_clip", "OVERFIT", "UNDERFIT", "WEIGHED_SPAN",
           "input_guard", "frame_residuals", "frame_slopes", "guard_weights", "guard_record", "StreamGuard", "GUARD_SPAN",
           "NOISE_SPAN", "STILL", "MOVING", "MOVING_CAP"]


@dataclass(frozen=True)
class NoiseLevel:
    """The σ_y a measured run uses, and where it came from."""

    sigma_y: float
    estimated: bool                  # True: from the measurement (engine.noise); False: --sigma-y
    estimate: Optional[dict]         # the estimator's record (method, per-frame values, floor), if it ran

    def as_dict(self) -> dict:
        return {"sigma_y": self.sigma_y, "estimated": self.estimated, "estimate": self.estimate}


def noise_level(y: torch.Tensor, stated: Optional[float]) -> NoiseLevel:
    """σ_y for the measurement y [N, 3, H', W']: `stated` when given, else estimated from y and logged.

    A stated 0 on a measurement whose estimated noise is above 8-bit rounding is warned about: the
    noiseless CG then amplifies that noise (the user asked for it, so it runs)."""
    if min(y.shape[-2:]) < MIN_SIDE:                  # too small a frame to tell noise from detail
        if stated is None:
            log.warning("frames of %dx%d are too small to estimate their noise (at least %dx%d): assuming 8-bit "
                        "rounding, σ_y = %.5f; give --sigma-y to state it", y.shape[-1], y.shape[-2], MIN_SIDE,
                        MIN_SIDE, ROUNDING_FLOOR)
        return NoiseLevel(ROUNDING_FLOOR if stated is None else stated, stated is None, None)
    estimate = estimate_noise(y)
    record = estimate.to_dict()
    if stated is None:
        log.info("noise of INPUT estimated at σ_y = %.4f (%.2f of 255, %s); give --sigma-y to set it",
                 estimate.sigma, 255 * estimate.sigma, estimate.method)
        return NoiseLevel(estimate.sigma, True, record)
    if stated == 0 and not estimate.floored:
        log.warning("--sigma-y 0 runs the noiseless CG, but INPUT carries noise of about σ_y = %.4f (%.2f of 255): "
                    "the result will amplify it; leave out --sigma-y to use the estimate", estimate.sigma,
                    255 * estimate.sigma)
    return NoiseLevel(stated, False, record)


def residual_record(residuals: torch.Tensor, sigma_y: float, *, weighed: float = 0.0,
                    registered: bool = False) -> dict:
    """{"rms": ρ, "sigma_y", "ratio": ρ/σ_y, "weighed": σ_w, "explained": bool}: the data residual of a restoration
    pooled from its per-frame residuals [N] (`frame_residuals`: frames of equal size), logged; a warning when
    ρ/σ_y falls below OVERFIT or ρ rises above max(UNDERFIT·σ_y, WEIGHED_SPAN·σ_w), σ_w = `weighed` the noise
    level the CG's γ weighs the data for (module docstring; 0: γ is not from the noise), and one when the frames
    were `registered` (--register) and ρ/σ_y passes REGISTER_SPAN."""
    rms = float(residuals.double().square().mean()) ** 0.5
    explained = not (sigma_y > 0 and rms > max(UNDERFIT * sigma_y, WEIGHED_SPAN * weighed))
    record = {"rms": rms, "sigma_y": sigma_y, "ratio": rms / sigma_y if sigma_y > 0 else None, "weighed": weighed,
              "explained": explained}
    if sigma_y > 0 and rms < OVERFIT * sigma_y:
        log.warning("the restoration reproduces INPUT's noise (data residual %.4f, noise σ_y %.4f): it is noisier "
                    "than it should be; give a larger --sigma-y", rms, sigma_y)
    elif not explained:
        log.warning("the restoration does not explain INPUT (data residual %.4f against noise σ_y %.4f, the data "
                    "weighed for %.4f): it may be worse than INPUT; check that --degrade is how INPUT was degraded "
                    "(a blur wider or stronger than INPUT's makes it worse), or give more --nfe",
                    rms, sigma_y, weighed)
    else:
        log.info("data residual %.4f (noise σ_y %.4f)", rms, sigma_y)
    if registered and sigma_y > 0 and rms > REGISTER_SPAN * sigma_y:
        log.warning("--register moved the frames by INPUT, whose errors are not white noise alone (data residual "
                    "%.4f, %.1f times its noise σ_y %.4f: a lossy codec's?); a codec's errors mislead the fit and "
                    "frames may come out worse than INPUT: drop --register for a compressed video",
                    rms, rms / sigma_y, sigma_y)
    return record


def frame_residuals(op, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖(A x − y)_t‖ / √n_t for every frame t, float64.  x: op.in_shape, y: op.out_shape → [N]"""
    r = op.A(x.to(y.device, y.dtype)) - y                                 # [N, 3, H', W']
    return r.double().square().mean(dim=tuple(range(1, r.dim()))).sqrt()


def input_guard(op, restored: torch.Tensor, y: torch.Tensor, sigma_y: float, *,
                e_out: Optional[torch.Tensor] = None,
                finish: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> tuple[torch.Tensor, Optional[dict]]:
    """(x, record): the restoration [N, 3, H, W] with every frame whose input explains the measurement as well
    blended toward that input (module docstring), and what was done; (finish(restored), None) when y is not in
    video space (an operator that changes the frame shape: its input is no candidate).  y: op.out_shape, σ_y ≥ 0;
    e_out: the restoration's `frame_residuals` [N] when the caller has them; `finish` [B, 3, H, W] → [B, 3, H, W]
    (the last denoise, engine.polish): applied after the judging to the restoration and to the input frames it is
    blended with (those with α > 0 only).

    Frames kept (α ≥ ½) are warned about (the result there is mostly INPUT, not a restoration); blended ones logged."""
    finish = finish or (lambda v: v)
    if tuple(op.out_shape) != tuple(op.in_shape):
        return finish(restored), None
    y = y.to(restored.device, restored.dtype)
    e_in = frame_residuals(op, y, y)                                                    # [N]
    e_out = frame_residuals(op, restored, y) if e_out is None else e_out                # [N]
    alpha = guard_weights(e_in, e_out, frame_slopes(y), sigma_y)
    x = finish(restored)
    x = x.clone() if x is restored else x                                               # the caller's stays as it is
    touched = torch.nonzero(alpha > 0).flatten()                                        # host: after the loop
    if touched.numel():
        a = alpha[touched].to(x.dtype)[:, None, None, None]
        x[touched] = torch.lerp(x[touched], finish(y[touched]), a)                      # α = 1: finish(y) exactly
    return x, guard_record(alpha, e_in, e_out)


def frame_slopes(y: torch.Tensor) -> torch.Tensor:
    """v[t] = ‖y[t+1] − y[t−1]‖ / (2√n_t), y[−1] = y[0] and y[N] = y[N−1]: how fast the input itself changes
    at frame t, float64, a frame pair at a time.  [N, C, H, W] → [N]"""
    n = y.shape[0]
    return torch.stack([slope(y[max(t - 1, 0)], y[min(t + 1, n - 1)]) for t in range(n)])


def slope(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """‖after − before‖ / (2√n): `frame_slopes` of the frame between the two.  [C, H, W], [C, H, W] → [] float64"""
    return (after - before).double().square().mean().sqrt() / 2


def guard_weights(e_in: torch.Tensor, e_out: torch.Tensor, slopes: torch.Tensor, sigma_y: float) -> torch.Tensor:
    """α[t] = min(clamp(1 − log(e_in / max(e_out, NOISE_SPAN·σ_y)) / log GUARD_SPAN, 0, 1), c[t]), c the still cap
    of the slopes v (`frame_slopes`): 1 up to STILL·σ, MOVING_CAP from MOVING·σ on, σ = max(σ_y, 8-bit rounding)
    (module docstring).  [N], [N], [N] → [N] float64"""
    floor = max(NOISE_SPAN * sigma_y, torch.finfo(torch.float64).tiny)
    q = torch.log(e_in.double() / e_out.double().clamp_min(floor)) / math.log(GUARD_SPAN)
    still = ((MOVING - slopes.double() / max(sigma_y, ROUNDING_FLOOR)) / (MOVING - STILL)).clamp(0, 1)
    return torch.minimum((1 - q).clamp(0, 1), MOVING_CAP + (1 - MOVING_CAP) * still)   # e_in = 0 gives the cap


def guard_record(alpha: torch.Tensor, e_in: torch.Tensor, e_out: torch.Tensor) -> dict:
    """What the guard did (α, e_in, e_out: [N]), logged: a warning when it kept frames as given."""
    kept = [int(t) for t in torch.nonzero(alpha >= 0.5).flatten()]
    blended = int(((alpha > 0) & (alpha < 0.5)).sum())
    if kept or blended:
        log.log(logging.WARNING if kept else logging.INFO,
                "%d of %d frames of INPUT already explain the measurement about as well as their restoration (the "
                "blur barely changed them: A·INPUT ≈ INPUT within the noise): %d kept as given or nearly (α ≥ ½), %d "
                "blended toward it (metrics.json 'guard')", len(kept) + blended, alpha.numel(), len(kept), blended)
    return {"alpha_mean": float(alpha.mean()), "frames_kept": kept, "frames_blended": blended,
            "input_residual_median": float(e_in.median()), "restored_residual_median": float(e_out.median())}


class StreamGuard:
    """`input_guard` on a video streamed a frame at a time (engine.windows): frame t is guarded once the
    restored frames up to t + r are in (r: the temporal PSF's reach), each residual taken on the 2r + 1
    frames around t, padded at the video's ends as its time boundary pads them (so equal to the whole clip's).

        guard = StreamGuard(spec, (H, W), sigma_y)      # spec with its time boundary (:replicate or :zero)
        y = guard.tap(measured_frames)                  # [3, H, W] each, passed on, kept while needed
        for x in guard.frames(restored_frames, finish): ...  # [3, H, W] each, in order → guarded, in order
        record = guard.record()                         # after the last frame: as input_guard's (None: inactive)

    Inactive (frames passed through) when the operator changes the frame shape, as `input_guard`.
    Holds 2r + 1 frames of each stream.
    """

    def __init__(self, spec: str, frame: tuple[int, int], sigma_y: float):
        from engine.operators import from_spec
        from engine.operators.kronecker import split_spec

        term = split_spec(spec)[0]
        self.reach, self.boundary, self.sigma_y = term.reach, term.boundary, sigma_y
        shape = (2 * self.reach + 1, 3, *frame)
        self.op = from_spec(spec, shape)
        self.active = tuple(self.op.out_shape) == shape
        self.y, self.x = {}, {}                          # frame index → [3, H, W], the frames still needed
        self.e_in, self.e_out, self.alpha = [], [], []

    def tap(self, y: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The measurement frames, passed on as they are pulled and kept for the residuals."""
        for t, frame in enumerate(y):
            if self.active:
                self.y[t] = frame
            yield frame

    def frames(self, restored: Iterable[torch.Tensor],
               finish: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> Iterator[torch.Tensor]:
        """The restored frames, guarded, in order (each r frames after it comes in; the last r at the end).
        `finish` [B, 3, H, W] → [B, 3, H, W] (the last denoise) is applied after the judging to each frame and
        to the input frame it is blended with (module docstring); inactive, to each frame passed through."""
        count = 0
        for count, x in enumerate(restored, 1):
            if not self.active:
                yield finish(x[None])[0]
                continue
            self.x[count - 1] = x
            if count - 1 >= self.reach:
                yield self._guarded(count - 1 - self.reach, None, finish)
        if self.active:
            for t in range(max(0, count - self.reach), count):
                yield self._guarded(t, count - 1, finish)

    def record(self) -> Optional[dict]:
        """input_guard's record of the frames guarded so far (None when inactive or none came)."""
        if not self.active or not self.alpha:
            return None
        return guard_record(torch.stack(self.alpha), torch.stack(self.e_in), torch.stack(self.e_out))

    def residuals(self) -> Optional[torch.Tensor]:
        """The restoration's `frame_residuals` [N] of the frames guarded so far, before the guard (None as `record`)."""
        return torch.stack(self.e_out) if self.active and self.e_out else None

    def _around(self, store: dict, t: int, last: Optional[int]) -> torch.Tensor:
        """Frames t − r … t + r of a stream [2r + 1, 3, H, W], those beyond its ends padded by the boundary."""
        picked = []
        for i in range(t - self.reach, t + self.reach + 1):
            outside = i < 0 or (last is not None and i > last)
            frame = store[max(i, 0) if last is None else min(max(i, 0), last)]
            picked.append(torch.zeros_like(frame) if outside and self.boundary == "zero" else frame)
        return torch.stack(picked)

    def _guarded(self, t: int, last: Optional[int], finish: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Frame t, judged as it came, finished, then blended toward its input by α[t] (module docstring); frames
        no later frame needs dropped."""
        x, y = self.x[t], self.y[t].to(self.x[t].device, self.x[t].dtype)
        ys = self._around(self.y, t, last).to(x.device, x.dtype)
        r = self.reach
        e_in = (self.op.A(ys)[r] - y).double().square().mean().sqrt()
        e_out = (self.op.A(self._around(self.x, t, last))[r] - y).double().square().mean().sqrt()
        after = self.y[t + 1] if last is None or t < last else y                      # the ends held
        v = slope(self.y[max(t - 1, 0)].to(y.device, y.dtype), after.to(y.device, y.dtype))
        alpha = guard_weights(e_in[None], e_out[None], v[None], self.sigma_y)[0]
        self.e_in.append(e_in), self.e_out.append(e_out), self.alpha.append(alpha)
        for store in (self.x, self.y):                 # frame t + 1 needs frames from t + 1 − r on
            store.pop(t - r, None)
        if not alpha > 0:                                # the restoration alone (no input frame to finish)
            return finish(x[None])[0]
        return torch.lerp(finish(x[None])[0], finish(y[None])[0], alpha.to(x.dtype))


def grey_clip(clip: torch.Tensor) -> torch.Tensor:
    """A colour clip [N, 3, H, W] made grey: each pixel's channel mean in all three channels."""
    return clip.mean(dim=1, keepdim=True).expand_as(clip).contiguous()
