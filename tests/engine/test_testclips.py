"""engine.testclips: shape, range, determinism, and that frames move by the known camera motion."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.errors import InputError
from engine.testclips import TEST_IMAGES, _camera_path, _sampling_grid, camera_clip, demo_clip

registration = pytest.importorskip("skimage.registration")
filters = pytest.importorskip("skimage.filters")


def estimated_shift(a, b):
    """Phase-correlation shift (x, y) that maps frame `b` back onto frame `a`, Hann-windowed: `[3, H, W]` ×2."""
    window = filters.window("hann", a.shape[-2:])
    shift, _, _ = registration.phase_cross_correlation(
        a.mean(0).numpy() * window, b.mean(0).numpy() * window, upsample_factor=50)
    return shift[::-1]


@pytest.mark.parametrize("image", TEST_IMAGES)
def test_every_test_image_renders(image):
    clip = camera_clip(image, frames=2, size=24, pan=(1.0, -1.0), zoom=1.02)
    assert clip.shape == (2, 3, 24, 24) and clip.dtype == torch.float32
    assert clip.min() >= 0 and clip.max() <= 1
    assert clip.std() > 0.01  # a picture, not a flat border


def test_demo_clip_shape_range_and_motion():
    clip = demo_clip(frames=4, size=48)
    assert clip.shape == (4, 3, 48, 48) and clip.dtype == torch.float32
    assert 0 <= clip.min() and clip.max() <= 1
    assert (clip[1:] - clip[:-1]).abs().mean() > 0.01  # the camera moves


def test_deterministic_and_dtype():
    a = camera_clip("coffee", frames=3, size=32, pan=(0.7, 1.9), zoom=0.98)
    b = camera_clip("coffee", frames=3, size=32, pan=(0.7, 1.9), zoom=0.98)
    assert torch.equal(a, b)
    c = camera_clip("coffee", frames=3, size=32, pan=(0.7, 1.9), zoom=0.98, dtype=torch.float64)
    assert c.dtype == torch.float64 and torch.equal(c.float(), a)


@pytest.mark.parametrize("image", ["grass", "gravel", "astronaut"])
@pytest.mark.parametrize("pan", [(1.3, -0.7), (-3.0, 0.5)])
def test_pure_pan_moves_frames_by_pan(image, pan):
    clip = camera_clip(image, frames=3, size=64, pan=pan, zoom=1.0, dtype=torch.float64)
    for k in range(2):
        np.testing.assert_allclose(estimated_shift(clip[k], clip[k + 1]), pan, atol=0.5)


def test_integer_pan_is_an_exact_shift():
    clip = camera_clip("brick", frames=3, size=32, pan=(2.0, -1.0), dtype=torch.float64)
    torch.testing.assert_close(clip[1, :, 1:, :-2], clip[0, :, :-1, 2:])  # frame1(u) = frame0(u + pan)


def test_zoom_magnifies_about_the_centre():
    zoom, size = 1.05, 64
    clip = camera_clip("astronaut", frames=2, size=size, pan=(0.0, 0.0), zoom=zoom, dtype=torch.float64)
    u = torch.linspace(-1, 1, size, dtype=torch.float64)

    def warped(factor):  # frame 0 sampled at centre + (u − centre) / factor
        grid = torch.stack(torch.broadcast_tensors(u[None, :] / factor, u[:, None] / factor), dim=-1)
        return F.grid_sample(clip[:1], grid[None], mode="bilinear", align_corners=True)[0]

    inner = (slice(None), slice(8, -8), slice(8, -8))
    error = {f: (warped(f)[inner] - clip[1][inner]).square().mean().item() for f in (1.0, zoom, 1 / zoom)}
    assert error[zoom] < 0.2 * error[1.0] and error[zoom] < 0.2 * error[1 / zoom]


@pytest.mark.parametrize("pan, zoom", [((2.0, 1.0), 1.0), ((-9.0, 4.0), 1.03), ((0.5, 0.0), 0.95)])
def test_samples_stay_inside_the_photo(pan, zoom):
    photo_hw, frames, size = (300, 451), 8, 64
    centres, steps = _camera_path(photo_hw, frames, size, pan, zoom)
    grid = _sampling_grid(photo_hw, centres, steps, size)  # normalised, [−1, 1] = pixel centres
    assert grid.abs().max() <= 1 + 1e-12
    assert grid.abs().amax(dim=(0, 1, 2)).max() > 1 - 1e-9  # the motion fills the photo: largest scale
    torch.testing.assert_close(steps[1:] / steps[:-1], torch.full((frames - 1,), 1 / zoom, dtype=torch.float64))


@pytest.mark.parametrize("kwargs", [dict(image="lena"), dict(frames=0), dict(size=1), dict(zoom=0.0)])
def test_bad_arguments(kwargs):
    with pytest.raises(InputError):
        camera_clip(**kwargs)
