"""Per-frame PSNR and SSIM for clips `[N, C, H, W]`, matching scikit-image's definitions.

- `psnr`: `10·log10(R² / MSE)` per frame, MSE over channels and pixels in float64,
  as `skimage.metrics.peak_signal_noise_ratio(ref, x, data_range=R)`. A frame equal to
  its reference has MSE 0 and PSNR `+inf` (returned as `inf`, never an error or a warning).
- `ssim`: Wang et al. (2004) as `skimage.metrics.structural_similarity(ref, x,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=R,
  channel_axis=...)`: an 11-tap Gaussian window (σ = 1.5, truncated at 3.5σ),
  K1 = 0.01, K2 = 0.03, population (co)variances, the SSIM map averaged over the
  valid region (5 pixels cropped from each border, where the window fits), then over channels.

Both compute in float64 on the inputs' device, CHUNK_FRAMES frames at a time: every value is a
function of one frame, so the chunks give the whole clip's values, and the float64 work space is
that of a chunk (five moment maps of CHUNK_FRAMES frames for SSIM), whatever the clip's length.
A uint8 clip (8-bit frames, levels k) is read as the float32 values k/255 a decoder gives.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from engine.errors import InputError

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5, as scipy.ndimage rounds it: an 11-tap window
#: frames scored at once (the float64 work space of `ssim` is about 10 float64 frames per frame of a chunk)
CHUNK_FRAMES = 4

__all__ = ["psnr", "ssim", "clip_summary", "Scores", "json_safe", "CHUNK_FRAMES"]


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, *, chunk: int = CHUNK_FRAMES) -> torch.Tensor:
    """PSNR per frame `10·log10(R² / mean((x − ref)²))`: `[N, C, H, W]` ×2 → `[N]` float64 (inf where equal)."""
    _check_pair(x, ref)
    return torch.cat([_psnr(a, b, data_range) for a, b in _chunks(x, ref, chunk)])


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, *, chunk: int = CHUNK_FRAMES) -> torch.Tensor:
    """Mean SSIM per frame (Gaussian window σ = 1.5, valid region, channel mean): → `[N]` float64."""
    _check_pair(x, ref)
    h, w = x.shape[-2:]
    if min(h, w) < 2 * SSIM_RADIUS + 1:
        raise InputError(f"SSIM needs frames of at least {2 * SSIM_RADIUS + 1}x{2 * SSIM_RADIUS + 1}, got {h}x{w}")
    return torch.cat([_ssim(a, b, data_range) for a, b in _chunks(x, ref, chunk)])


def clip_summary(x: torch.Tensor, ref: torch.Tensor, *, chunk: int = CHUNK_FRAMES,
                 progress: Optional[Callable[[int], None]] = None) -> dict:
    """PSNR / SSIM of a clip against its reference (data range 1): per-frame lists and their means.

    Returns `{"psnr": [N floats], "ssim": [N floats], "psnr_mean": float, "ssim_mean": float}`;
    `psnr_mean` is the mean of the per-frame values, `inf` if any frame equals its reference.
    Scored `chunk` frames at a time (`Scores`); `progress(n)` is called with the frames of each chunk.
    """
    _check_pair(x, ref)
    scores = Scores()
    for i in range(0, x.shape[0], chunk):
        scores.add(x[i:i + chunk], ref[i:i + chunk])
        if progress is not None:
            progress(min(chunk, x.shape[0] - i))
    return scores.summary()


class Scores:
    """`clip_summary` accumulated a chunk of frames at a time (streamed windows, chunked clips): each
    frame's PSNR and SSIM is a function of that frame alone, so the lists and means are the whole clip's."""

    def __init__(self):
        self.psnr: list[float] = []
        self.ssim: list[float] = []

    def add(self, x: torch.Tensor, ref: torch.Tensor) -> None:
        """Score frames x against ref: `[n, C, H, W]` each, or one frame `[C, H, W]` each."""
        if x.dim() == 3:
            x, ref = x[None], ref[None]
        _check_pair(x, ref)
        a, b = _float64(x), _float64(ref.to(x.device))
        self.psnr += _psnr(a, b, 1.0).tolist()
        self.ssim += _ssim(a, b, 1.0).tolist()

    def summary(self) -> dict:
        """{"psnr": [N], "ssim": [N], "psnr_mean", "ssim_mean"}."""
        p, s = torch.tensor(self.psnr, dtype=torch.float64), torch.tensor(self.ssim, dtype=torch.float64)
        return {"psnr": self.psnr, "ssim": self.ssim, "psnr_mean": p.mean().item(), "ssim_mean": s.mean().item()}


def _psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float) -> torch.Tensor:
    """PSNR of each frame of one chunk, both float64 `[n, C, H, W]`.  → `[n]`"""
    mse = (x - ref).square_().mean(dim=(1, 2, 3))  # [n]
    value = 10.0 * torch.log10(data_range**2 / mse.clamp_min(torch.finfo(torch.float64).tiny))
    return torch.where(mse == 0, math.inf, value)


def _ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float) -> torch.Tensor:
    """Mean SSIM of each frame of one chunk, both float64 `[n, C, H, W]`.  → `[n]`"""
    n, c, h, w = x.shape
    x, ref = x.reshape(n * c, 1, h, w), ref.reshape(n * c, 1, h, w)
    moments = _gaussian_filter_valid(torch.cat([x, ref, x * x, ref * ref, x * ref], dim=1))  # [nC, 5, h', w']
    ux, uy, uxx, uyy, uxy = moments.unbind(dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return ssim_map.mean(dim=(1, 2)).reshape(n, c).mean(dim=1)


def _check_pair(x: torch.Tensor, ref: torch.Tensor) -> None:
    """Two clips `[N, C, H, W]` of one shape, or one refusal in one line."""
    if x.dim() != 4 or x.shape != ref.shape:
        raise InputError(f"expected two clips [N, C, H, W] of one shape, got {tuple(x.shape)} and {tuple(ref.shape)}")


def _chunks(x: torch.Tensor, ref: torch.Tensor, chunk: int):
    """(x, ref) `chunk` frames at a time, each as float64 on x's device."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"chunk must be a positive number of frames, got {chunk!r}")
    for i in range(0, x.shape[0], chunk):
        yield _float64(x[i:i + chunk]), _float64(ref[i:i + chunk].to(x.device))


def _float64(x: torch.Tensor) -> torch.Tensor:
    """Frames as float64: uint8 levels k as the float32 k/255 a decoder gives, floats as they are."""
    return (x.to(torch.float32) / 255 if x.dtype == torch.uint8 else x).to(torch.float64)


def _gaussian_filter_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter (σ = 1.5, 11 taps), valid region only: `[B, K, H, W]` → `[B, K, H−10, W−10]`.

    out[i, j] = Σ_a Σ_b g[a]·g[b]·x[i + a, j + b], the sums over shifted views (an axpy per tap and axis:
    several times faster on the CPU than a grouped float64 convolution).
    """
    taps = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (taps / SSIM_SIGMA) ** 2)
    g = (g / g.sum()).tolist()  # [11], normalised as scipy.ndimage.gaussian_filter1d
    width, height = x.shape[-1] - 2 * SSIM_RADIUS, x.shape[-2] - 2 * SSIM_RADIUS
    rows = x[..., :width] * g[0]                                     # along W
    for k in range(1, len(g)):
        rows.add_(x[..., k:k + width], alpha=g[k])
    out = rows[..., :height, :] * g[0]                               # along H
    for k in range(1, len(g)):
        out.add_(rows[..., k:k + height, :], alpha=g[k])
    return out


def json_safe(v):
    """JSON has no Infinity: non-finite floats (a perfect frame's PSNR) become null, recursively."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_safe(x) for x in v]
    return v
