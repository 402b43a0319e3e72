"""The last denoise (engine.polish): one Tweedie step of the loop's prior at the step nearest σ_p."""

import pytest
import torch
import torch.nn.functional as F

from engine.metrics import psnr
from engine.polish import POLISH_SPAN, polish, polish_record, polish_sigma, polish_step
from engine.priors import DenoiserPrior, GaussianPrior, step_sigma
from engine.schedule import alphas_cumprod
from engine.testclips import camera_clip

F64 = torch.float64


class SmoothingDenoiser(torch.nn.Module):
    """D(z, σ) = z + 10σ·(3×3 mean of z − z): a plain denoiser whose output depends on σ."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros((), dtype=F64))     # DenoiserPrior reads the weights' dtype

    def forward(self, z, sigma):
        mean = F.avg_pool2d(z, 3, stride=1, padding=1, count_include_pad=False)
        return z + 10 * sigma[:, None, None, None] * (mean - z)


def test_the_step_is_the_one_whose_noise_is_nearest():
    levels = step_sigma(torch.arange(1000), alphas_cumprod())
    for sigma in (0.004, 0.015, 0.0213, 0.1, 0.5):
        t = polish_step(sigma)
        assert all(abs(levels[t] - sigma) <= abs(levels[s] - sigma) for s in (max(t - 1, 0), min(t + 1, 999)))
    with pytest.raises(ValueError, match="noise level > 0"):
        polish_step(0.0)


def test_with_a_denoiser_prior_it_is_the_denoiser_at_that_step():
    """polish(DenoiserPrior(D), x, σ) = clamp(D(x, σ_t*), 0, 1): the Tweedie step undoes the prior's own, in fp64."""
    x = camera_clip(frames=3, size=24).to(F64)
    sigma = 0.015
    level = step_sigma(torch.tensor([polish_step(sigma)]), alphas_cumprod()).to(F64)
    expected = SmoothingDenoiser()(x, level.expand(3)).clamp(0, 1)
    got = polish(DenoiserPrior(SmoothingDenoiser()), x, sigma)
    assert got.dtype == F64 and torch.allclose(got, expected, atol=1e-10)


def test_it_removes_noise_with_the_weight_free_prior():
    clean = camera_clip(frames=4, size=32)
    noisy = (clean + 0.03 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    polished = polish(GaussianPrior(), noisy, 0.03)
    assert polished.min() >= 0 and polished.max() <= 1
    assert psnr(polished, clean).mean() > psnr(noisy, clean).mean() + 1


def test_no_noise_weighed_for_means_no_step():
    x = torch.rand(2, 3, 8, 8)
    assert polish_sigma(0.0) == 0.0 and polish_record(0.0) is None
    assert polish(GaussianPrior(), x, 0.0) is x
    assert polish_sigma(0.01) == pytest.approx(POLISH_SPAN * 0.01)
    assert polish_record(0.015) == {"sigma": 0.015, "step": polish_step(0.015)}


def test_it_does_not_depend_on_its_chunk():
    x = camera_clip(frames=5, size=16)
    assert torch.allclose(polish(GaussianPrior(), x, 0.02, chunk=2), polish(GaussianPrior(), x, 0.02, chunk=5), atol=1e-6)
