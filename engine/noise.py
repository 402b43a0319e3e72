"""The measurement's noise σ_y, estimated from the measured frames themselves.

Model: each measured frame is y = A x + w, w white with standard deviation σ_y per pixel and
channel, in [0, 1] intensity units. The content A x is smooth at the finest scale (it is
blurred, or a natural image), the noise is not, so σ_y is read off the finest detail:

    r_d = D_d ∗ y                 D_d a 4th difference along direction d (unit ℓ2 norm):
                                  (1, −4, 6, −4, 1)/√70 along rows, columns and both diagonals

For white noise every r_d is N(0, σ_y²) per pixel (‖D_d‖ = 1), and D_d annihilates cubic
intensity ramps, so smooth content adds little. Edges and texture add a lot, but only in some
places and some directions, so the estimate is taken where the frame is flattest:

    s_d(b) = √(mean over block b of r_d²)            blocks of 8×8 response pixels, every channel
    σ_d    = quantile_p{ s_d(b) } / c_p(d)            p = 0.1, over the blocks of the frame
    σ̂      = min_d σ_d                                the direction along which the frame is smoothest

c_p(d) is the same quantile for unit white noise (computed once by simulation, seeded), so σ_d
is unbiased on pure noise; a motion-blurred frame is smoothest along its motion, which the
minimum over directions finds. Blocks touching a clipped pixel (0 or 1 in 8 bit: black
borders, saturated sky) are left out, since clipping removes noise there. Per-frame
estimates are pooled by their median; the result is never below the 8-bit rounding floor
`ROUNDING_FLOOR` = 1/(255·√12), the σ of rounding to 256 levels, which every 8-bit frame carries.

What it measures is the *white* part of the noise. Measured by bench/noise_check.py on 8 real
clips of 16 frames at 128×128 (3 videos, 5 photos panned), blurred over 7 frames, σ from 0.005
to 0.05, 8 bit: σ̂/σ within ±30 % in 31 of 32 cases (median 1.03; grass at σ = 0.005: 1.82),
and 20 of 20 with a spatial blur added; 2× super-resolved frames (64×64, sharp at their
scale) overestimate small σ on textured photos. A lossy codec (H.264) removes fine detail,
noise included, and leaves errors at coarser scales that no single-frame estimator can tell
from content; on such input σ̂ is the noise the codec left (x264 at CRF 23: 0.001–0.004 for
σ ≤ 0.02), and restoring with it did as well as or better than with the true σ on 3 of 4
clips (a flat sky lost 1–2 dB to larger σ_y; a static street gained 3 dB over them).

    est = estimate_noise(y)                 # y: [N, C, H, W] in [0, 1] (uint8 frames scaled by 1/255)
    est.sigma, est.per_frame, est.floored   # record est.to_dict() in metrics.json

    est = estimate_noise_stream(stream_video(path), count=declared_frames(path))   # a frame at a time
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.errors import InputError

log = logging.getLogger(__name__)

#: σ of rounding a uniform value to 256 levels: 1/(255·√12) ≈ 0.00113; no 8-bit measurement has less noise
ROUNDING_FLOOR = 1.0 / (255.0 * math.sqrt(12.0))
METHOD = "min-direction 4th-difference, 8x8-block 10% quantile, median over frames"
#: frames an estimate looks at, spread over the clip (the estimate is a median: more adds little)
MAX_FRAMES = 16
BLOCK = 8           # block side, in response pixels
QUANTILE = 0.1      # p: the flattest 10 % of the blocks decide
_TAPS = (1.0, -4.0, 6.0, -4.0, 1.0)
#: a pixel within half a level of 0 or 1 is taken as clipped
_CLIP = 0.5 / 255
#: the smallest frame side with one block of responses
MIN_SIDE = len(_TAPS) - 1 + BLOCK
_CALIBRATION_SIZE, _CALIBRATION_SEED = 512, 0

__all__ = ["ROUNDING_FLOOR", "MAX_FRAMES", "MIN_SIDE", "NoiseEstimate", "estimate_noise",
           "estimate_noise_stream", "frame_noise", "spread_indices"]


@dataclass(frozen=True)
class NoiseEstimate:
    """σ_y of a measurement (in [0, 1] units) and how it was found."""

    sigma: float                              # max(median of per_frame, floor)
    per_frame: tuple[Optional[float], ...]    # the estimate of each frame looked at; None: no unclipped block
    frames: tuple[int, ...]                   # the indices of those frames in the clip
    floored: bool                             # the floor applied (the frames' own estimate was below it)
    floor: float
    method: str = METHOD

    def to_dict(self) -> dict:
        """A JSON-ready record (metrics.json)."""
        return asdict(self) | {"per_frame": list(self.per_frame), "frames": list(self.frames)}


def estimate_noise(frames: Tensor, *, max_frames: int = MAX_FRAMES, floor: float = ROUNDING_FLOOR) -> NoiseEstimate:
    """σ_y of a clip `[N, C, H, W]` in [0, 1] (module docstring), from at most `max_frames` frames
    spread evenly over it (`spread_indices`); never below `floor`."""
    _check_count(max_frames, floor)
    clip = _checked(frames, rank=4)
    indices = spread_indices(clip.shape[0], max_frames)
    return _pooled([frame_noise(clip[i]) for i in indices], indices, floor)


def estimate_noise_stream(frames: Iterable[Tensor], *, count: Optional[int] = None, max_frames: int = MAX_FRAMES,
                          floor: float = ROUNDING_FLOOR) -> NoiseEstimate:
    """σ_y from frames `[C, H, W]` given one at a time, holding none of them.

    With the clip's frame `count`, the frames looked at are `spread_indices(count, max_frames)`, as
    `estimate_noise` picks them: the two agree on the same clip (a count that is only a hint, such as
    engine.video_io.declared_frames, may be too large: the frames that came are used). Without it (a
    stream of unknown length), the first `max_frames` frames (a streamed run's first window). The
    iterable is read no further than the last frame needed.
    """
    _check_count(max_frames, floor)
    if count is not None and (not isinstance(count, int) or count < 1):
        raise InputError(f"count must be a frame count >= 1, got {count!r}")
    wanted = spread_indices(count, max_frames) if count is not None else tuple(range(max_frames))
    values, seen = [], []
    for i, frame in enumerate(frames):
        if i in wanted:
            values.append(frame_noise(_checked(frame, rank=3)))
            seen.append(i)
        if i == wanted[-1]:
            break
    if not seen:
        raise InputError("no frames to estimate the noise from")
    if len(seen) < len(wanted) and count is not None:
        log.debug("the stream ended before frame %d of the %d declared: σ_y from the %d frames seen",
                  wanted[-1], count, len(seen))
    return _pooled(values, tuple(seen), floor)


def frame_noise(frame: Tensor) -> Optional[float]:
    """The unfloored estimate σ̂ = min_d quantile_p{s_d(b)} / c_p(d) of one frame `[C, H, W]` in [0, 1]
    (module docstring); None when every block touches a clipped pixel."""
    frame = _checked(frame, rank=3).to(torch.float32)
    responses = _responses(frame)                                  # [D, C, H − 4, W − 4]
    usable = _unclipped(frame)                                     # [C, H − 4, W − 4]
    rms, whole = _block_rms(responses, usable)                     # [D, C, Hb, Wb], [C, Hb, Wb]
    if not whole.any():
        return None
    return min(torch.quantile(rms[d][whole], QUANTILE).item() / c for d, c in enumerate(_calibration()))


def spread_indices(count: int, at_most: int) -> tuple[int, ...]:
    """At most `at_most` frame indices spread evenly over `count` frames, first and last included."""
    if count <= at_most:
        return tuple(range(count))
    return tuple(sorted({round(i * (count - 1) / (at_most - 1)) for i in range(at_most)})) if at_most > 1 else (0,)


# ----------------------------------------------------------------------------- the arithmetic


def _responses(frame: Tensor) -> Tensor:
    """r_d = D_d ∗ y over the valid region, every channel, for d = rows, columns, ↘, ↙ (each a sum of 5
    shifted copies of the frame).  [C, H, W] → [D, C, H − 4, W − 4]"""
    taps = torch.tensor(_TAPS, dtype=frame.dtype)
    taps = (taps / taps.norm()).tolist()
    k = len(taps)
    h, w = frame.shape[-2] - k + 1, frame.shape[-1] - k + 1
    centre = k // 2
    offsets = {"rows": lambda i: (centre, i), "columns": lambda i: (i, centre),
               "diagonal": lambda i: (i, i), "antidiagonal": lambda i: (i, k - 1 - i)}
    out = frame.new_zeros(len(offsets), frame.shape[0], h, w)
    for d, offset in enumerate(offsets.values()):
        for i, tap in enumerate(taps):
            di, dj = offset(i)
            out[d].add_(frame[:, di:di + h, dj:dj + w], alpha=tap)
    return out


def _unclipped(frame: Tensor) -> Tensor:
    """Whether no pixel under the 5×5 footprint of a response is clipped (≤ 0 or ≥ 1 to half a level).
    [C, H, W] → bool [C, H − 4, W − 4]"""
    clipped = ((frame <= _CLIP) | (frame >= 1 - _CLIP)).to(frame.dtype)[:, None]
    return F.max_pool2d(clipped, len(_TAPS), stride=1)[:, 0] == 0


def _block_rms(responses: Tensor, usable: Tensor) -> tuple[Tensor, Tensor]:
    """(s_d(b) = √(mean of r_d² over block b), whether block b is wholly usable) over BLOCK×BLOCK blocks.
    responses [D, C, H', W'], usable [C, H', W'] → [D, C, H'//BLOCK, W'//BLOCK], [C, H'//BLOCK, W'//BLOCK]"""
    h, w = (s // BLOCK * BLOCK for s in responses.shape[-2:])
    rms = F.avg_pool2d(responses[..., :h, :w].square(), BLOCK).sqrt()
    whole = F.avg_pool2d(usable[:, :h, :w].to(responses.dtype)[None], BLOCK)[0] == 1
    return rms, whole


@lru_cache(maxsize=1)
def _calibration() -> tuple[float, ...]:
    """c_p(d): the p-quantile of s_d(b) for unit white noise, per direction d (a seeded simulation on one
    512×512 single-channel frame: 3969 blocks, its own sampling error ≈ 0.3 %)."""
    generator = torch.Generator().manual_seed(_CALIBRATION_SEED)
    noise = torch.randn(1, _CALIBRATION_SIZE, _CALIBRATION_SIZE, generator=generator)
    responses = _responses(noise)                                  # [D, 1, H', W']
    rms, _ = _block_rms(responses, torch.ones(responses.shape[1:], dtype=torch.bool))
    return tuple(torch.quantile(rms[d].flatten(), QUANTILE).item() for d in range(rms.shape[0]))


def _pooled(values: list[Optional[float]], indices, floor: float) -> NoiseEstimate:
    """The median of the per-frame estimates that exist, floored; a warning when no frame had one."""
    found = [v for v in values if v is not None]
    if not found:
        log.warning("no frame has a region free of clipped (black or white) pixels: σ_y is taken as the floor %.4g",
                    floor)
    raw = float(np.median(found)) if found else 0.0
    sigma = max(raw, floor)
    log.info("estimated measurement noise σ_y = %.4g (%d frames%s)", sigma, len(values),
             ", the floor" if raw < floor else "")
    return NoiseEstimate(sigma=sigma, per_frame=tuple(values), frames=tuple(int(i) for i in indices),
                         floored=raw < floor, floor=floor)


def _check_count(max_frames: int, floor: float) -> None:
    if not isinstance(max_frames, int) or max_frames < 1:
        raise InputError(f"max_frames must be an integer >= 1, got {max_frames!r}")
    if not (math.isfinite(floor) and floor >= 0):
        raise InputError(f"floor must be a finite number >= 0, got {floor!r}")


def _checked(x, *, rank: int) -> Tensor:
    """`x` as floating point in [0, 1] (uint8 scaled by 1/255), with `rank` dims and a channel axis of 1 or 3."""
    layout = "[N, C, H, W]" if rank == 4 else "[C, H, W]"
    if not isinstance(x, Tensor):
        raise InputError(f"expected frames as a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != rank or x.shape[-3] not in (1, 3):
        raise InputError(f"expected frames {layout} with 1 or 3 channels, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise InputError(f"no frames to estimate the noise from (shape {tuple(x.shape)})")
    if min(x.shape[-2:]) < MIN_SIDE:
        raise InputError(f"frames of {x.shape[-1]}x{x.shape[-2]} are too small to estimate noise "
                         f"(at least {MIN_SIDE}x{MIN_SIDE})")
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255
    if not x.is_floating_point():
        raise InputError(f"expected float frames in [0, 1] or uint8, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise InputError("frames contain NaN or Inf values")
    return x
