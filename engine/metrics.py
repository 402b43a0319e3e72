"""Per-frame PSNR and SSIM for clips `[N, C, H, W]`, matching scikit-image's definitions.

- `psnr`: `10·log10(R² / MSE)` per frame, MSE over channels and pixels in float64,
  as `skimage.metrics.peak_signal_noise_ratio(ref, x, data_range=R)`. A frame equal to
  its reference has MSE 0 and PSNR `+inf` (returned as `inf`, never an error or a warning).
- `ssim`: Wang et al. (2004) as `skimage.metrics.structural_similarity(ref, x,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=R,
  channel_axis=...)`: an 11-tap Gaussian window (σ = 1.5, truncated at 3.5σ),
  K1 = 0.01, K2 = 0.03, population (co)variances, the SSIM map averaged over the
  valid region (5 pixels cropped from each border, where the window fits), then over channels.

Both compute in float64 on the inputs' device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.errors import InputError

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5, as scipy.ndimage rounds it: an 11-tap window

__all__ = ["psnr", "ssim", "clip_summary", "json_safe"]


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR per frame `10·log10(R² / mean((x − ref)²))`: `[N, C, H, W]` ×2 → `[N]` float64 (inf where equal)."""
    x, ref = _pair(x, ref)
    mse = (x - ref).square().mean(dim=(1, 2, 3))  # [N]
    value = 10.0 * torch.log10(data_range**2 / mse.clamp_min(torch.finfo(torch.float64).tiny))
    return torch.where(mse == 0, math.inf, value)


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per frame (Gaussian window σ = 1.5, valid region, channel mean): → `[N]` float64."""
    x, ref = _pair(x, ref)
    n, c, h, w = x.shape
    if min(h, w) < 2 * SSIM_RADIUS + 1:
        raise InputError(f"SSIM needs frames of at least {2 * SSIM_RADIUS + 1}x{2 * SSIM_RADIUS + 1}, got {h}x{w}")
    x, ref = x.reshape(n * c, 1, h, w), ref.reshape(n * c, 1, h, w)
    moments = _gaussian_filter_valid(torch.cat([x, ref, x * x, ref * ref, x * ref], dim=1))  # [NC, 5, h', w']
    ux, uy, uxx, uyy, uxy = moments.unbind(dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return ssim_map.mean(dim=(1, 2)).reshape(n, c).mean(dim=1)


def clip_summary(x: torch.Tensor, ref: torch.Tensor) -> dict:
    """PSNR / SSIM of a clip against its reference (data range 1): per-frame lists and their means.

    Returns `{"psnr": [N floats], "ssim": [N floats], "psnr_mean": float, "ssim_mean": float}`;
    `psnr_mean` is the mean of the per-frame values, `inf` if any frame equals its reference.
    """
    p, s = psnr(x, ref), ssim(x, ref)
    return {
        "psnr": p.tolist(),
        "ssim": s.tolist(),
        "psnr_mean": p.mean().item(),
        "ssim_mean": s.mean().item(),
    }


def _pair(x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two clips `[N, C, H, W]` of one shape; return both as float64."""
    if x.dim() != 4 or x.shape != ref.shape:
        raise InputError(f"expected two clips [N, C, H, W] of one shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    return x.to(torch.float64), ref.to(x.device, torch.float64)


def _gaussian_filter_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter (σ = 1.5, 11 taps), valid region only: `[B, K, H, W]` → `[B, K, H−10, W−10]`."""
    taps = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-0.5 * (taps / SSIM_SIGMA) ** 2)
    g = g / g.sum()  # [11], normalised as scipy.ndimage.gaussian_filter1d
    k = x.shape[1]
    rows = F.conv2d(x, g.view(1, 1, 1, -1).expand(k, 1, 1, -1), groups=k)  # along W
    return F.conv2d(rows, g.view(1, 1, -1, 1).expand(k, 1, -1, 1), groups=k)  # along H


def json_safe(v):
    """JSON has no Infinity: non-finite floats (a perfect frame's PSNR) become null, recursively."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_safe(x) for x in v]
    return v
