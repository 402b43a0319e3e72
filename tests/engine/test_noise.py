"""engine.noise: σ_y from measured frames (synthetic and real frames of known σ, the floor, the stream form)."""

import json
import logging
import math

import pytest
import torch

from engine.errors import InputError
from engine.noise import (MIN_SIDE, ROUNDING_FLOOR, estimate_noise, estimate_noise_stream, frame_noise,
                          spread_indices)
from engine.operators import from_spec
from engine.testclips import camera_clip


def noisy(clean: torch.Tensor, sigma: float, seed: int = 0, *, eight_bit: bool = False) -> torch.Tensor:
    y = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    return torch.round(y.clamp(0, 1) * 255) / 255 if eight_bit else y


def textured(frames: int = 8, size: int = 96) -> torch.Tensor:
    """Frames with a ramp, a sharp edge, a disc and a fine stripe texture over a quarter: [N, 3, S, S] in [0.1, 0.9]."""
    i, j = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    out = []
    for n in range(frames):
        jj = j + 1.5 * n                                         # a pan along the rows
        base = 0.3 + 0.3 * jj / size + 0.2 * (jj > size / 2)
        base = base + 0.15 * (((i - size / 2) ** 2 + (jj - size / 3) ** 2) < (size / 5) ** 2)
        stripes = 0.08 * torch.sin(jj * 2.2) * ((i < size / 2) & (j < size / 2))
        out.append(torch.stack([base + stripes, 0.9 * base, 1.1 * base - stripes]).clamp(0.1, 0.9))
    return torch.stack(out)


@pytest.mark.parametrize("sigma", [0.004, 0.02, 0.08])
def test_pure_noise_is_unbiased(sigma):
    est = estimate_noise(noisy(torch.full((6, 3, 80, 80), 0.5), sigma))
    assert est.sigma == pytest.approx(sigma, rel=0.05)
    assert not est.floored and len(est.per_frame) == 6


@pytest.mark.parametrize("sigma", [0.01, 0.03])
def test_edges_and_texture_are_not_noise(sigma):
    clean = textured()
    y = noisy(clean, sigma)
    assert estimate_noise(y).sigma == pytest.approx(sigma, rel=0.15)
    # the frames are hard: the plain second difference over every pixel (no flat blocks) is far off
    lap = (y[..., 1:-1, 2:] - 2 * y[..., 1:-1, 1:-1] + y[..., 1:-1, :-2]) / math.sqrt(6)
    assert lap.square().mean().sqrt() > 1.3 * sigma


@pytest.mark.parametrize("spec", ["temporal:uniform:7:replicate", "temporal:uniform:7:replicate+blur:gaussian:1.5:9",
                                  "temporal:uniform:7:replicate+sr:2"])
def test_blurred_frames(spec):
    clean = textured(frames=12, size=128)
    blurred = from_spec(spec, tuple(clean.shape)).A(clean)
    assert estimate_noise(noisy(blurred, 0.015, eight_bit=True)).sigma == pytest.approx(0.015, rel=0.15)


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_real_photo_with_known_noise(sigma):
    clip = camera_clip("astronaut", frames=6, size=128, pan=(1.0, 0.5))
    blurred = from_spec("temporal:uniform:7:replicate", tuple(clip.shape)).A(clip)
    for frames in (clip, blurred):
        assert estimate_noise(noisy(frames, sigma, eight_bit=True)).sigma == pytest.approx(sigma, rel=0.2)


def test_the_rounding_floor():
    assert ROUNDING_FLOOR == pytest.approx(1 / (255 * math.sqrt(12)))
    assert ROUNDING_FLOOR == pytest.approx(0.0011320, abs=1e-7)
    flat = torch.full((4, 3, 64, 64), 100 / 255)                 # an 8-bit grey clip: no noise to see
    est = estimate_noise(flat)
    assert est.floored and est.sigma == ROUNDING_FLOOR and max(est.per_frame) < 1e-6
    assert estimate_noise(flat, floor=0.003).sigma == 0.003
    assert not estimate_noise(noisy(flat, 0.01)).floored


def test_clipped_regions_are_left_out():
    """Black borders and saturated areas carry no noise; they must not pull the estimate down."""
    y = noisy(torch.full((4, 3, 96, 96), 0.5), 0.02)
    y[..., :, :40] = 0.0                                          # a black bar over 40 % of every frame
    y[..., :20, 40:] = 1.0                                        # and a white one
    assert estimate_noise(y).sigma == pytest.approx(0.02, rel=0.05)


def test_all_clipped_gives_the_floor_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="engine.noise"):
        est = estimate_noise(torch.zeros(3, 3, 64, 64))
    assert est.floored and est.sigma == ROUNDING_FLOOR and est.per_frame == (None,) * 3
    assert "clipped" in caplog.text


def test_median_over_frames():
    clean = torch.full((5, 3, 64, 64), 0.5)
    sigmas = [0.01, 0.01, 0.01, 0.2, 0.01]                         # one very noisy frame (a flash)
    y = torch.stack([noisy(clean[n], s, seed=n) for n, s in enumerate(sigmas)])
    est = estimate_noise(y)
    assert est.sigma == pytest.approx(0.01, rel=0.05)
    assert est.per_frame[3] == pytest.approx(0.2, rel=0.05)


def test_uint8_frames_equal_their_float_values():
    y = noisy(textured(frames=3, size=64), 0.02, eight_bit=True)
    as_bytes = (y * 255).round().to(torch.uint8)
    assert estimate_noise(as_bytes) == estimate_noise(y)


def test_grey_frames():
    y = noisy(torch.full((3, 1, 64, 64), 0.4), 0.02)
    assert estimate_noise(y).sigma == pytest.approx(0.02, rel=0.05)


def test_spread_indices():
    assert spread_indices(5, 16) == (0, 1, 2, 3, 4)
    spread = spread_indices(250, 16)
    assert len(spread) == 16 and spread[0] == 0 and spread[-1] == 249
    assert all(b - a in (16, 17) for a, b in zip(spread, spread[1:]))
    assert spread_indices(10, 1) == (0,)


def test_stream_equals_whole_clip():
    clean = textured(frames=20, size=64)
    y = torch.stack([noisy(clean[n], 0.005 * (1 + n % 4), seed=n) for n in range(20)])   # σ varies over frames
    whole = estimate_noise(y, max_frames=7)
    assert whole.frames == spread_indices(20, 7)
    assert estimate_noise_stream(iter(y), count=20, max_frames=7) == whole
    # a stream of unknown length: its first frames, as the whole form on those frames
    assert estimate_noise_stream(iter(y), max_frames=7) == estimate_noise(y[:7], max_frames=7)
    assert estimate_noise_stream(iter(y[:5])) == estimate_noise(y[:5])


def test_stream_reads_no_further_than_needed():
    def frames():
        for n in range(4):
            yield noisy(torch.full((3, 32, 32), 0.5), 0.01, seed=n)
        raise AssertionError("read past the frames needed")

    assert estimate_noise_stream(frames(), max_frames=4).frames == (0, 1, 2, 3)


def test_stream_shorter_than_declared_uses_the_frames_that_came():
    """A declared count is a hint (a container's duration × rate): a shorter stream gives the frames it has."""
    y = torch.stack([noisy(torch.full((3, 32, 32), 0.5), 0.01, seed=n) for n in range(6)])
    est = estimate_noise_stream(iter(y), count=30, max_frames=4)        # wants frames 0, 10, 19, 29
    assert est.frames == (0,) and est.per_frame == estimate_noise(y[:1]).per_frame
    with pytest.raises(InputError, match="no frames"):
        estimate_noise_stream(iter([]))


def test_record_is_json():
    est = estimate_noise(noisy(torch.full((2, 3, 32, 32), 0.5), 0.01))
    record = json.loads(json.dumps(est.to_dict()))
    assert record["sigma"] == est.sigma and record["frames"] == [0, 1] and record["method"] == est.method
    with pytest.raises(Exception):
        est.sigma = 0.0                                          # frozen


@pytest.mark.parametrize("bad, message", [
    (torch.full((2, 3, 32, 32), float("nan")), "NaN"),
    (torch.zeros(0, 3, 32, 32), "no frames"),
    (torch.zeros(3, 32, 32), r"\[N, C, H, W\]"),
    (torch.zeros(2, 2, 32, 32), "1 or 3 channels"),
    (torch.zeros(2, 3, MIN_SIDE - 1, 64), "too small"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.int32), "dtype"),
    ([[0.5]], "torch.Tensor"),
])
def test_bad_input(bad, message):
    with pytest.raises(InputError, match=message):
        estimate_noise(bad)


def test_bad_settings():
    y = torch.full((2, 3, 32, 32), 0.5)
    with pytest.raises(InputError, match="max_frames"):
        estimate_noise(y, max_frames=0)
    with pytest.raises(InputError, match="floor"):
        estimate_noise(y, floor=float("nan"))
    with pytest.raises(InputError, match="count"):
        estimate_noise_stream(iter(y), count=0)
    with pytest.raises(InputError, match=r"\[C, H, W\]"):
        frame_noise(y)


def test_a_streamed_video_file_equals_its_decoded_clip(tmp_path):
    """What a streamed run does with an mp4 (engine.video_io): the stream form over the decoded frames, its
    declared count as the hint, equals the whole form over the same frames read at once."""
    from engine.video_io import declared_frames, read_video, stream_video, write_video

    clip = noisy(textured(frames=10, size=64), 0.03, eight_bit=True)
    path = write_video(tmp_path / "noisy.mp4", clip, fps=10)
    whole = estimate_noise(read_video(path, size=None), max_frames=4)
    streamed = estimate_noise_stream(stream_video(path), count=declared_frames(path), max_frames=4)
    assert streamed == whole and whole.frames == (0, 3, 6, 9)
    assert 0.01 < whole.sigma < 0.04                      # the noise the encoder (crf 10) kept
