"""engine.metrics against scikit-image's reference implementations, on real textures and edge cases."""
import math
import re

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.metrics import clip_summary, psnr, ssim
from engine.testclips import camera_clip

skm = pytest.importorskip("skimage.metrics")


def reference_psnr(x, ref):
    return [skm.peak_signal_noise_ratio(r.numpy(), f.numpy(), data_range=1.0) for f, r in zip(x, ref)]


def reference_ssim(x, ref):
    return [skm.structural_similarity(r.numpy(), f.numpy(), gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=1.0, channel_axis=0)
            for f, r in zip(x, ref)]


def degraded_pair(image, size=(40, 53), seed=0):
    """A real texture and a blurred, noisy copy of it, float64 `[3, 3, H, W]` each."""
    clean = camera_clip(image, frames=3, size=64, pan=(1.5, 0.5), dtype=torch.float64)[..., :size[0], :size[1]]
    g = torch.Generator().manual_seed(seed)
    blurred = 0.5 * clean + 0.25 * (clean.roll(1, -1) + clean.roll(1, -2))
    noisy = (blurred + 0.03 * torch.randn(clean.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return noisy, clean


@pytest.mark.parametrize("image", ["astronaut", "grass", "coffee"])
def test_against_skimage_on_real_textures(image):
    x, ref = degraded_pair(image)
    np.testing.assert_allclose(psnr(x, ref).numpy(), reference_psnr(x, ref), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ssim(x, ref).numpy(), reference_ssim(x, ref), rtol=0, atol=1e-4)


def test_float32_inputs_are_measured_in_float64():
    x, ref = degraded_pair("gravel", size=(11, 17), seed=3)
    got = ssim(x.float(), ref.float())
    assert got.dtype == torch.float64 and psnr(x.float(), ref.float()).dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), reference_ssim(x.float().double(), ref.float().double()), atol=1e-6)


def test_data_range_scales_like_skimage():
    x, ref = degraded_pair("chelsea")
    want_psnr = [skm.peak_signal_noise_ratio(r.numpy() * 255, f.numpy() * 255, data_range=255) for f, r in zip(x, ref)]
    np.testing.assert_allclose(psnr(x * 255, ref * 255, data_range=255).numpy(), want_psnr, atol=1e-6)
    np.testing.assert_allclose(ssim(x * 255, ref * 255, data_range=255).numpy(), ssim(x, ref).numpy(), atol=1e-9)


def test_identical_frames_give_inf_psnr_and_unit_ssim():
    _, ref = degraded_pair("astronaut")
    x = ref.clone()
    x[1] += 0.01
    p = psnr(x, ref)
    assert math.isinf(p[0]) and p[0] > 0 and math.isinf(p[2])
    assert p[1] == pytest.approx(40.0)
    torch.testing.assert_close(ssim(ref, ref), torch.ones(3, dtype=torch.float64))


def test_constant_frames():
    ref = torch.full((1, 3, 12, 12), 0.5, dtype=torch.float64)
    x = ref + 0.1
    assert psnr(x, ref).item() == pytest.approx(20.0)
    np.testing.assert_allclose(ssim(x, ref).numpy(), reference_ssim(x, ref), atol=1e-12)


def test_clip_summary():
    x, ref = degraded_pair("rocket")
    summary = clip_summary(x, ref)
    assert set(summary) == {"psnr", "ssim", "psnr_mean", "ssim_mean"}
    assert len(summary["psnr"]) == len(summary["ssim"]) == 3
    assert summary["psnr_mean"] == pytest.approx(np.mean(reference_psnr(x, ref)), abs=1e-6)
    assert summary["ssim_mean"] == pytest.approx(np.mean(reference_ssim(x, ref)), abs=1e-4)
    assert math.isinf(clip_summary(ref, ref)["psnr_mean"])


@pytest.mark.parametrize("x, ref, words", [
    (torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 15), "one shape"),
    (torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), "[N, C, H, W]"),
])
def test_shape_errors(x, ref, words):
    for metric in (psnr, ssim):
        with pytest.raises(InputError, match=re.escape(words)):
            metric(x, ref)


def test_ssim_needs_the_window_to_fit():
    with pytest.raises(InputError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 10, 32), torch.zeros(1, 3, 10, 32))
