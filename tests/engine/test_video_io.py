"""engine.video_io: round trips, crop/resize, and every bad-input case (one-line InputError, no output left)."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import video_io
from engine.errors import InputError
from engine.metrics import psnr
from engine.testclips import camera_clip
from engine.video_io import read_video, validate_video, write_frames, write_video

iio = pytest.importorskip("imageio.v3")


def quantised_clip(n=5, h=24, w=24, seed=0):
    """A random clip on the 8-bit grid `k / 255`, so PNG round trips are exact: `[n, 3, h, w]`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g).float() / 255


def assert_one_line(err, *parts):
    message = str(err.value)
    assert "\n" not in message, message
    for part in parts:
        assert str(part) in message, message


# ----------------------------------------------------------------------------- round trips


def test_npy_public_layout_round_trip(tmp_path):
    x = quantised_clip()
    np.save(tmp_path / "clip.npy", x.permute(1, 0, 2, 3).numpy())  # [3, N, H, W] as the public code
    y = read_video(tmp_path / "clip.npy", size=24)
    assert y.dtype == torch.float32 and torch.equal(y, x)


def test_npy_frames_first_and_uint8(tmp_path):
    x = quantised_clip(n=4)
    np.save(tmp_path / "clip.npy", (x * 255).round().to(torch.uint8).numpy())  # [N, 3, H, W] uint8
    assert torch.equal(read_video(tmp_path / "clip.npy", size=24), x)


def test_pt_round_trip_and_frame_window(tmp_path):
    x = quantised_clip(n=6)
    torch.save(x, tmp_path / "clip.pt")
    assert torch.equal(read_video(tmp_path / "clip.pt", size=24, start=1, frames=3), x[1:4])
    assert torch.equal(read_video(tmp_path / "clip.pt", size=24, start=4), x[4:])


def test_png_folder_round_trip_is_exact(tmp_path):
    x = quantised_clip(n=11)
    out = write_frames(tmp_path / "frames", x)
    assert sorted(os.listdir(out))[:2] == ["frame_0000.png", "frame_0001.png"]
    assert torch.equal(read_video(out, size=24), x)
    assert os.listdir(tmp_path) == ["frames"]  # no temporary left beside it
    # off the 8-bit grid values round to the nearest level: (k + 0.6) / 255 → k + 1, (k + 0.4) / 255 → k
    k = torch.arange(255.0).reshape(1, 3, 5, 17)                        # levels 0 … 254
    off_grid = torch.cat([(k + 0.6) / 255, (k + 0.4) / 255])
    assert torch.equal(read_video(write_frames(out, off_grid), size=None), torch.cat([(k + 1) / 255, k / 255]))


def test_folder_natural_order_grey_and_rgba(tmp_path):
    x = quantised_clip(n=3)
    frames = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]
    iio.imwrite(tmp_path / "f10.png", frames[2])
    iio.imwrite(tmp_path / "f2.png", np.dstack([frames[1], np.full((24, 24), 7, np.uint8)]))  # RGBA
    iio.imwrite(tmp_path / "f1.png", frames[0][..., 0])  # greyscale
    (tmp_path / "notes.txt").write_text("ignored")
    y = read_video(tmp_path, size=24)
    assert torch.equal(y[0], x[0, :1].expand(3, -1, -1))
    assert torch.equal(y[1:], x[1:])


def test_mp4_round_trip_within_psnr_bound(tmp_path):
    x = camera_clip("astronaut", frames=6, size=64)
    write_video(tmp_path / "clip.mp4", x)
    y = read_video(tmp_path / "clip.mp4", size=64)
    assert y.shape == x.shape
    assert psnr(y, x).min() > 30
    assert os.listdir(tmp_path) == ["clip.mp4"]


def test_mp4_overwrite_and_odd_size_padded(tmp_path, monkeypatch):
    x = camera_clip("chelsea", frames=4, size=64)[:, :, :33, :35]
    encoded, encode = [], video_io._encode_mp4

    def recording_encoder(iio, path, frames, fps):
        encoded.append(frames)
        encode(iio, path, frames, fps)

    monkeypatch.setattr(video_io, "_encode_mp4", recording_encoder)
    write_video(tmp_path / "clip.mp4", x)
    write_video(tmp_path / "clip.mp4", x)
    assert iio.imread(tmp_path / "clip.mp4", plugin="FFMPEG", index=0).shape == (34, 36, 3)
    # the encoder gets the last real row and column repeated (replicate padding, not black)
    frames = encoded[-1]                                                # uint8 [N, 34, 36, 3]
    assert np.array_equal(frames[:, 33], frames[:, 32]) and np.array_equal(frames[:, :, 35], frames[:, :, 34])
    y = read_video(tmp_path / "clip.mp4", size=None)
    assert psnr(y[:, :, :33, :35], x).min() > 30
    # lossy, yet the decoded padding stays close to the last real row / column (black padding is far off)
    assert (y[:, :, 33] - y[:, :, 32]).abs().mean() < 0.03 and (y[..., 35] - y[..., 34]).abs().mean() < 0.03


def test_gif_round_trip(tmp_path):
    levels = torch.tensor([0, 85, 170, 255]) / 255  # 64 colours: a GIF palette holds them exactly
    g = torch.Generator().manual_seed(1)
    x = levels[torch.randint(0, 4, (4, 3, 16, 16), generator=g)]
    iio.imwrite(tmp_path / "clip.gif", (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(),
                plugin="pillow", duration=100, loop=0)
    assert torch.equal(read_video(tmp_path / "clip.gif", size=16), x)


# ----------------------------------------------------------------------------- crop and resize


def test_centre_crop_then_antialiased_resize(tmp_path):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 21, 40, generator=g, dtype=torch.float64)
    np.save(tmp_path / "wide.npy", x.numpy())
    left = (40 - 21) // 2
    crop = x[..., left:left + 21].float()
    expected = F.interpolate(crop, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(read_video(tmp_path / "wide.npy", size=16), expected)
    assert torch.equal(read_video(tmp_path / "wide.npy", size=21), crop)
    assert torch.equal(read_video(tmp_path / "wide.npy", size=None), x.float())


def test_tall_frames_keep_the_middle(tmp_path):
    x = torch.zeros(1, 3, 30, 10)
    x[:, :, 10:20] = 1.0  # only the centre 10x10 square is white
    torch.save(x, tmp_path / "tall.pt")
    assert torch.equal(read_video(tmp_path / "tall.pt", size=10), torch.ones(1, 3, 10, 10))


# ----------------------------------------------------------------------------- bad input


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(InputError) as err:
        read_video(tmp_path / "missing.mp4")
    assert_one_line(err, "missing.mp4", "no such file")
    (tmp_path / "clip.txt").write_text("hello")
    with pytest.raises(InputError) as err:
        read_video(tmp_path / "clip.txt")
    assert_one_line(err, "clip.txt", "unsupported", ".mp4")


@pytest.mark.parametrize("name", ["clip.mp4", "clip.npy", "clip.pt", "clip.gif"])
def test_corrupt_files(tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(InputError) as err:
        read_video(tmp_path / name)
    assert_one_line(err, name)


def test_corrupt_png_in_folder(tmp_path):
    write_frames(tmp_path / "frames", quantised_clip(n=3))
    (tmp_path / "frames" / "frame_0001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(InputError) as err:
        read_video(tmp_path / "frames", size=24)
    assert_one_line(err, "frame_0001.png", "cannot decode")


def test_empty_folder_and_mixed_sizes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        read_video(tmp_path / "empty")
    assert_one_line(err, "empty", "no frames")
    iio.imwrite(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    iio.imwrite(tmp_path / "b.png", np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(InputError) as err:
        read_video(tmp_path, size=8)
    assert_one_line(err, "b.png", "9x8")


@pytest.mark.parametrize("shape, words", [
    ((3, 3, 8, 8), "ambiguous"),
    ((5, 4, 8, 8), "3 colour channels"),
    ((3, 8, 8), "[3, N, H, W]"),
])
def test_bad_array_layouts(tmp_path, shape, words):
    np.save(tmp_path / "clip.npy", np.zeros(shape, np.float32))
    with pytest.raises(InputError) as err:
        read_video(tmp_path / "clip.npy", size=8)
    assert_one_line(err, "clip.npy", words)


@pytest.mark.parametrize("value, words", [(np.nan, "NaN"), (np.inf, "Inf"), (1.5, "[0, 1]")])
def test_bad_values_in_file(tmp_path, value, words):
    x = np.zeros((3, 2, 8, 8), np.float32)
    x[0, 1, 2, 3] = value
    np.save(tmp_path / "clip.npy", x)
    with pytest.raises(InputError) as err:
        read_video(tmp_path / "clip.npy", size=8)
    assert_one_line(err, "clip.npy", words)


def test_integer_arrays_other_than_uint8_rejected(tmp_path):
    np.save(tmp_path / "clip.npy", np.zeros((2, 3, 8, 8), np.int64))
    with pytest.raises(InputError) as err:
        read_video(tmp_path / "clip.npy", size=8)
    assert_one_line(err, "clip.npy", "int64")


def test_at_most_caps_without_decoding_further(tmp_path, monkeypatch):
    x = quantised_clip(n=6)
    write_frames(tmp_path / "frames", x)
    decoded = []
    read = video_io._read_folder
    monkeypatch.setattr(video_io, "_read_folder", lambda folder: (decoded.append(f) or f for f in read(folder)))
    assert torch.equal(read_video(tmp_path / "frames", size=24, at_most=3), x[:3])
    assert len(decoded) == 3                                            # frames 4 … 6 never decoded
    assert torch.equal(read_video(tmp_path / "frames", size=24, at_most=10), x)       # fewer is fine
    assert torch.equal(read_video(tmp_path / "frames", size=24, start=4, at_most=10), x[4:])
    assert torch.equal(read_video(tmp_path / "frames", size=24, frames=2, at_most=10), x[:2])   # frames wins


def test_frame_window_out_of_range(tmp_path):
    torch.save(quantised_clip(n=4), tmp_path / "clip.pt")
    for kwargs in (dict(frames=5), dict(start=4), dict(start=2, frames=3), dict(start=-1), dict(frames=0),
                   dict(at_most=0), dict(start=4, at_most=2)):
        with pytest.raises(InputError) as err:
            read_video(tmp_path / "clip.pt", size=24, **kwargs)
        assert_one_line(err, "clip.pt")


# ----------------------------------------------------------------------------- validate_video


def test_validate_accepts_a_clip_and_tolerates_round_off():
    x = quantised_clip(n=2)
    assert validate_video(x, min_frames=2, size=24) is x
    validate_video(x * (1 + 1e-5) - 1e-5, size=(24, 24))


@pytest.mark.parametrize("x, kwargs, words", [
    (torch.zeros(3, 8, 8), {}, "rank 4"),
    (torch.zeros(2, 4, 8, 8), {}, "3 colour channels"),
    (torch.zeros(2, 3, 8, 8), dict(min_frames=3), "at least 3 frames"),
    (torch.zeros(2, 3, 8, 8), dict(size=16), "16x16"),
    (torch.zeros(2, 3, 8, 6), dict(size=(8, 8)), "8x6"),
    (torch.full((1, 3, 4, 4), float("nan")), {}, "NaN"),
    (torch.full((1, 3, 4, 4), float("-inf")), {}, "Inf"),
    (torch.full((1, 3, 4, 4), -0.01), {}, "[0, 1]"),
    (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), {}, "floating-point"),
    (np.zeros((1, 3, 4, 4)), {}, "torch.Tensor"),
])
def test_validate_rejects(x, kwargs, words):
    with pytest.raises(InputError) as err:
        validate_video(x, **kwargs)
    assert_one_line(err, words)


# ----------------------------------------------------------------------------- writes that fail leave nothing


@pytest.mark.parametrize("writer, name", [(write_video, "out.mp4"), (write_frames, "frames")])
@pytest.mark.parametrize("bad", [torch.full((2, 3, 8, 8), float("nan")), torch.zeros(2, 4, 8, 8)])
def test_rejected_writes_leave_nothing(tmp_path, writer, name, bad):
    with pytest.raises(InputError) as err:
        writer(tmp_path / name, bad)
    assert_one_line(err, name)
    assert os.listdir(tmp_path) == []


def test_interrupted_mp4_leaves_old_file(tmp_path, monkeypatch):
    x = quantised_clip(n=2, h=16, w=16)
    write_video(tmp_path / "out.mp4", x)
    before = (tmp_path / "out.mp4").read_bytes()

    def broken_encoder(iio, path, frames, fps):
        path.write_bytes(b"half a video")
        raise KeyboardInterrupt

    monkeypatch.setattr(video_io, "_encode_mp4", broken_encoder)
    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / "out.mp4", x)
    assert os.listdir(tmp_path) == ["out.mp4"]
    assert (tmp_path / "out.mp4").read_bytes() == before


def test_interrupted_frames_leave_old_folder(tmp_path, monkeypatch):
    old, new = quantised_clip(n=3, seed=1), quantised_clip(n=5, seed=2)
    write_frames(tmp_path / "frames", old)
    real_write_png = video_io._write_png

    def failing_write_png(iio, path, frame):
        if path.name == "frame_0003.png":
            raise OSError("disk full")
        real_write_png(iio, path, frame)

    monkeypatch.setattr(video_io, "_write_png", failing_write_png)
    with pytest.raises(OSError):
        write_frames(tmp_path / "frames", new)
    assert os.listdir(tmp_path) == ["frames"]
    assert torch.equal(read_video(tmp_path / "frames", size=24), old)
    monkeypatch.undo()
    write_frames(tmp_path / "frames", new)  # a later good run replaces the old frames
    assert torch.equal(read_video(tmp_path / "frames", size=24), new)


def test_write_frames_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(InputError) as err:
        write_frames(tmp_path / "photos", quantised_clip(n=1))
    assert_one_line(err, "photos", "refusing")
    assert os.listdir(tmp_path / "photos") == ["holiday.jpg"]


# ----------------------------------------------------------------------------- streaming


def test_stream_video_yields_checked_frames_one_at_a_time(tmp_path):
    x = quantised_clip(n=4, h=16, w=24)
    write_frames(tmp_path / "frames", x)
    frames = video_io.stream_video(tmp_path / "frames")
    first = next(frames)                                                # [3, H, W] float32, own size
    assert first.dtype == torch.float32 and torch.equal(first, x[0])
    assert torch.equal(torch.stack([first, *frames]), x)
    assert torch.equal(torch.stack(list(video_io.stream_video(tmp_path / "frames", frames=2))), x[:2])
    with pytest.raises(InputError) as err:
        list(video_io.stream_video(tmp_path / "frames", frames=5))
    assert_one_line(err, "frames", "has 4 frames")


def test_stream_video_names_the_bad_frame(tmp_path):
    x = quantised_clip(n=4)
    x[2, 0, 0, 0] = float("nan")
    np.save(tmp_path / "clip.npy", x.numpy())
    frames = video_io.stream_video(tmp_path / "clip.npy")
    next(frames), next(frames)                                          # the frames before it come through
    with pytest.raises(InputError) as err:
        next(frames)
    assert_one_line(err, "clip.npy", "frame 2", "NaN")


def test_streamed_writers_write_what_the_clip_writers_write(tmp_path):
    x = quantised_clip(n=6, h=16, w=22)
    write_video(tmp_path / "whole.mp4", x, fps=12)
    write_frames(tmp_path / "whole", x)
    with video_io.video_writer(tmp_path / "streamed.mp4", fps=12) as mp4, \
            video_io.frames_writer(tmp_path / "streamed") as png:
        for frame in x:
            mp4(frame)
            png(frame)
    assert torch.equal(read_video(tmp_path / "streamed.mp4", size=None), read_video(tmp_path / "whole.mp4", size=None))
    assert sorted(os.listdir(tmp_path / "streamed")) == sorted(os.listdir(tmp_path / "whole"))
    assert torch.equal(read_video(tmp_path / "streamed", size=None), x)
    assert video_io.frame_rate(tmp_path / "streamed.mp4") == pytest.approx(12)


def test_a_failed_stream_writes_nothing(tmp_path):
    x = quantised_clip(n=3, h=16, w=16)
    with pytest.raises(RuntimeError, match="mid-stream"):
        with video_io.video_writer(tmp_path / "out.mp4", fps=8) as mp4, video_io.frames_writer(tmp_path / "f") as png:
            for frame in x:
                mp4(frame)
                png(frame)
            raise RuntimeError("mid-stream")
    assert os.listdir(tmp_path) == []
    with pytest.raises(InputError) as err:
        with video_io.frames_writer(tmp_path / "f") as png:
            png(torch.full((3, 8, 8), float("nan")))
    assert_one_line(err, "NaN")
    assert os.listdir(tmp_path) == []


def test_declared_frames_reads_no_frame(tmp_path):
    x = quantised_clip(n=7, h=16, w=16)
    write_video(tmp_path / "clip.mp4", x, fps=10)
    write_frames(tmp_path / "frames", x)
    np.save(tmp_path / "public.npy", x.permute(1, 0, 2, 3).numpy())       # [3, N, H, W]
    for name in ("clip.mp4", "frames", "public.npy"):
        assert video_io.declared_frames(tmp_path / name) == 7, name
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    assert video_io.declared_frames(tmp_path / "broken.mp4") is None
