"""Reading, checking and writing clips: tensors `[N, 3, H, W]` in `[0, 1]`, frames first.

Inputs are prepared as the paper prepares DAVIS: each frame is centre-cropped to a
square and resized (bilinear, antialiased) to `size × size`. Supported inputs:

- video files `.mp4 .avi .mov .mkv .webm` (imageio's FFMPEG plugin) and `.gif` (pillow);
- a folder of frames `.png .jpg .jpeg .bmp`, in natural order (`f2` before `f10`);
- the public code's `.npy` clips `[3, N, H, W]` (also `[N, 3, H, W]` when only one
  reading is possible), float in `[0, 1]` or uint8;
- `.pt` tensors, with the same layout rules as `.npy`.

Every failure a user can cause raises `InputError` with one line naming the path.
Writers are atomic (engine.fileio): they write a temporary file or folder beside the target and
rename it into place, so a failed run leaves no half-written output.

Streaming (a video longer than memory): `stream_video` yields checked frames one at a time, and
`video_writer` / `frames_writer` take frames one at a time, holding none of them:

    with video_writer("out.mp4", fps=25) as append_mp4, frames_writer("frames") as append_png:
        for frame in stream_video("in.mp4"):          # [3, H, W] float32 in [0, 1]
            append_mp4(frame); append_png(frame)
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import InputError
from engine.fileio import atomic_file, atomic_folder

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
GIF_EXTS = (".gif",)
FRAME_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
ARRAY_EXTS = (".npy", ".pt")
RANGE_TOL = 1e-3  # values within [-tol, 1 + tol] count as in range (resampling round-off)
_MP4_QUALITY = 8  # imageio-ffmpeg scale 0..10; 8 gives libx264 crf 10 (visually lossless)
#: the mp4 encoding of every writer: H.264, yuv420p, any (even) frame size
_MP4_OPTIONS = {"codec": "libx264", "pixelformat": "yuv420p", "macro_block_size": 1, "quality": _MP4_QUALITY}
_FRAME_NAME = re.compile(r"frame_\d{4,}\.png")

__all__ = ["read_video", "iter_frames", "stream_video", "frame_files", "declared_frames", "write_video",
           "write_frames", "video_writer", "frames_writer", "validate_video", "square_frame"]


# ----------------------------------------------------------------------------- checks


def validate_video(
    x: torch.Tensor, *, min_frames: int = 1, size: int | tuple[int, int] | None = None
) -> torch.Tensor:
    """Check a clip `[N, 3, H, W]` in `[0, 1]`; raise `InputError` with one line, else return `x`.

    `size` is `S` (square) or `(H, W)`; values may leave `[0, 1]` by at most `RANGE_TOL`.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"expected a torch.Tensor clip, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"expected a clip [N, 3, H, W] (rank 4), got shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise InputError(f"expected 3 colour channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.shape[0] < min_frames:
        raise InputError(f"expected at least {min_frames} frames, got {x.shape[0]}")
    if size is not None:
        want = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[-2:]) != want:
            raise InputError(f"expected frames of {want[0]}x{want[1]}, got {x.shape[-2]}x{x.shape[-1]}")
    if not x.is_floating_point():
        raise InputError(f"expected a floating-point clip in [0, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise InputError("clip contains NaN or Inf values")
    lo, hi = x.min().item(), x.max().item()
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise InputError(f"clip values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    return x


# ----------------------------------------------------------------------------- reading


def read_video(
    path: str | os.PathLike, *, size: int | None = 256, frames: int | None = None, start: int = 0,
    at_most: int | None = None,
) -> torch.Tensor:
    """Read a clip as float32 `[N, 3, size, size]` in `[0, 1]` (centre crop, then antialiased resize).

    `frames` keeps frames `start … start + frames − 1` (fewer available is an error); without
    it, every frame after `start`, or the first `at_most` of them (fewer is fine), decoding no
    further. `size=None` keeps the frames' own size and aspect.
    """
    path = Path(path)
    if start < 0 or (frames is not None and frames < 1) or (at_most is not None and at_most < 1):
        raise InputError(f"{path}: need start >= 0 and frames, at_most >= 1, got start={start}, frames={frames}, "
                         f"at_most={at_most}")
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    count = frames if frames is not None else at_most
    stop = None if count is None else start + count
    with closing(iter_frames(path)) as decoded:
        selected = _select(decoded, start, stop, path, exact=frames is not None)
        prepared = [_prepare(frame, size) for frame in selected]
    clip = torch.stack(prepared)  # [N, 3, S, S]
    _check(clip, path)
    return clip.clamp_(0.0, 1.0)


class UnreadableError(InputError):
    """A file that is there but cannot be decoded or loaded (a damaged or mislabelled file)."""


def iter_frames(path: str | os.PathLike) -> Iterator[torch.Tensor]:
    """The frames of a clip one at a time, as stored: `[3, H, W]`, uint8 from images and videos."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    for frame in _read_frames(path):
        yield _hwc_to_chw(frame, path) if isinstance(frame, np.ndarray) else frame


def stream_video(path: str | os.PathLike, *, frames: int | None = None) -> Iterator[torch.Tensor]:
    """The frames of a clip one at a time at their own size: float32 `[3, H, W]` in `[0, 1]`.

    Each frame is checked as it is decoded (`validate_video`; the message names the path and
    the frame); `frames` keeps the first N (fewer is an `InputError`, raised at the end).
    Only the frame being yielded is held (`.npy`/`.pt` arrays are loaded whole by their readers).
    """
    path = Path(path)
    with closing(iter_frames(path)) as decoded:
        for i, frame in enumerate(_select(decoded, 0, frames, path, exact=frames is not None)):
            x = _to_unit_float(frame)  # [3, H, W]
            try:
                validate_video(x[None])
            except InputError as err:
                raise InputError(f"{path}: frame {i}: {err}") from None
            yield x.clamp(0.0, 1.0)


def declared_frames(path: str | os.PathLike) -> int | None:
    """The frame count a clip declares without decoding it (a video's duration × rate, a folder's
    images, an array's length), or None; a hint (a progress bar's total), not a promise."""
    path = Path(path)
    ext = path.suffix.lower()
    try:
        if path.is_dir():
            return len(frame_files(path)) or None
        if ext == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return shape[1] if len(shape) == 4 and shape[0] == 3 and shape[1] != 3 else shape[0]
        if ext in VIDEO_EXTS:
            meta = _imageio().immeta(path, plugin="FFMPEG")
            return round(meta["duration"] * meta["fps"]) or None
    except Exception:  # noqa: BLE001 - a clip that does not declare its length simply has no hint
        return None
    return None


def _read_frames(path: Path) -> Iterator[np.ndarray | torch.Tensor]:
    """Frames of `path` one at a time, each `[H, W]`, `[H, W, C]` (images) or `[3, H, W]` (arrays)."""
    ext = path.suffix.lower()
    if path.is_dir():
        yield from _read_folder(path)
    elif ext in ARRAY_EXTS:
        yield from _read_array(path)
    elif ext in VIDEO_EXTS + GIF_EXTS:
        plugin = "pillow" if ext in GIF_EXTS else "FFMPEG"
        yield from _guarded(_imageio().imiter(path, plugin=plugin), path)
    else:
        accepted = " ".join(VIDEO_EXTS + GIF_EXTS + ARRAY_EXTS)
        raise InputError(f"{path}: unsupported file type {ext or '(none)'}; "
                         f"accepted: {accepted}, or a folder of frames")


def _select(frames: Iterator, start: int, stop: int | None, path: Path, *, exact: bool) -> Iterator:
    """Yield frames `start … stop − 1`, decoding no further; none after `start`, or fewer than
    `stop − start` when `exact`, is an `InputError`."""
    count = 0
    for count, frame in enumerate(frames, 1):
        if count > start:
            yield frame
        if count == stop:
            return
    if count <= start or (exact and stop is not None):
        want = f"{stop - start} frames" if exact and stop is not None else "at least one frame"
        raise InputError(f"{path}: has {count} frames; asked for {want} from frame {start}")


def _guarded(frames: Iterable, path: Path) -> Iterator:
    """Re-raise any decoder failure while iterating as a one-line `InputError`."""
    try:
        yield from frames
    except Exception as err:  # decoders raise OSError, ValueError, RuntimeError, ...
        raise UnreadableError(f"{path}: cannot decode ({_first_line(err)})") from err


def frame_files(folder: Path) -> list[Path]:
    """The image files of `folder` in natural order (`f2` before `f10`), hidden files skipped."""
    files = (f for f in folder.iterdir() if f.suffix.lower() in FRAME_EXTS and not f.name.startswith("."))
    return sorted(files, key=_natural_key)


def _read_folder(folder: Path) -> Iterator[np.ndarray]:
    """Image files of `folder` in natural order, decoded one by one."""
    files = frame_files(folder)
    if not files:
        raise InputError(f"{folder}: folder has no frames ({' '.join(FRAME_EXTS)})")
    iio = _imageio()
    first_shape = None
    for f in files:
        try:
            frame = iio.imread(f)
        except Exception as err:  # pillow raises several types for broken files
            raise InputError(f"{f}: cannot decode ({_first_line(err)})") from err
        first_shape = first_shape or frame.shape[:2]
        if frame.shape[:2] != first_shape:
            raise InputError(f"{f}: frame is {frame.shape[1]}x{frame.shape[0]}, earlier frames are "
                             f"{first_shape[1]}x{first_shape[0]}")
        yield frame


def _natural_key(f: Path) -> list:
    """Sort key that orders digit runs by value: `f2.png` < `f10.png`."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", f.name)]


def _read_array(path: Path) -> torch.Tensor:
    """A `.npy` / `.pt` clip as `[N, 3, H, W]` (from `[3, N, H, W]` or `[N, 3, H, W]`)."""
    try:
        if path.suffix.lower() == ".npy":
            data = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # numpy / torch raise ValueError, UnpicklingError, RuntimeError, ...
        raise UnreadableError(f"{path}: cannot load ({_first_line(err)})") from err
    if not isinstance(data, torch.Tensor):
        raise InputError(f"{path}: expected one tensor, found {type(data).__name__}")
    if not (data.is_floating_point() or data.dtype in (torch.uint8, torch.bool)):
        raise InputError(f"{path}: expected float values in [0, 1] or uint8, got dtype {data.dtype}")
    if data.dim() != 4:
        raise InputError(f"{path}: expected [3, N, H, W] or [N, 3, H, W], got shape {tuple(data.shape)}")
    first, second = data.shape[0] == 3, data.shape[1] == 3
    if first and second:
        raise InputError(f"{path}: shape {tuple(data.shape)} is ambiguous between [3, N, H, W] and [N, 3, H, W]")
    if not (first or second):
        raise InputError(f"{path}: expected 3 colour channels in [3, N, H, W] or [N, 3, H, W], "
                         f"got shape {tuple(data.shape)}")
    return data.transpose(0, 1) if first else data


def _prepare(frame: torch.Tensor, size: int | None) -> torch.Tensor:
    """One frame `[3, H, W]` → float32 `[3, size, size]` in [0, 1]: centre crop, resize."""
    x = _to_unit_float(frame)  # [3, H, W]
    if size is None:
        return x
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top:top + side, left:left + side]
    if side == size:
        return x.contiguous()
    return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def square_frame(frame: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop a frame `[3, H, W]` to a square and resize it to `size` (antialiased): the paper's
    protocol.  → `[3, size, size]`"""
    return _prepare(frame, size)


def frame_rate(path: str | os.PathLike) -> float | None:
    """The frame rate a video file declares, or None (frame folders, arrays, files without one)."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() not in VIDEO_EXTS + GIF_EXTS:
        return None
    try:
        meta = _imageio().immeta(path, plugin="pillow" if path.suffix.lower() in GIF_EXTS else "FFMPEG")
    except Exception:  # noqa: BLE001 - a file the decoder cannot describe simply has no known rate
        return None
    if "fps" in meta:
        fps = meta["fps"]
    elif meta.get("duration"):                       # GIF: milliseconds per frame
        fps = 1000.0 / float(meta["duration"])
    else:
        return None
    return float(fps) if fps and np.isfinite(fps) and fps > 0 else None


def _hwc_to_chw(frame: np.ndarray, path: Path) -> torch.Tensor:
    """Decoded image `[H, W]` or `[H, W, C]` (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) → `[3, H, W]`."""
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3 or frame.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"{path}: unsupported frame layout {frame.shape}")
    colour = frame[..., :3] if frame.shape[-1] >= 3 else frame[..., :1]  # drop alpha
    x = torch.from_numpy(np.ascontiguousarray(colour)).permute(2, 0, 1)
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """Integer images scaled to [0, 1] by their type's maximum; floats cast to float32 as they are."""
    if x.dtype == torch.bool:
        return x.float()
    if x.is_floating_point():
        return x.float()
    return x.float() / torch.iinfo(x.dtype).max


# ----------------------------------------------------------------------------- writing


def write_video(path: str | os.PathLike, video: torch.Tensor, fps: int = 8) -> Path:
    """Write `[N, 3, H, W]` in [0, 1] as an H.264 mp4 (yuv420p) atomically; returns the path.

    yuv420p needs even sizes: an odd height or width gets its last row or column repeated.
    """
    path = Path(path)
    _check(video, path)
    frames = _to_uint8_hwc(_pad_to_even(video))  # [N, H', W', 3]
    iio = _imageio()
    with atomic_file(path) as tmp:
        _encode_mp4(iio, tmp, frames, fps)
    log.debug("wrote %s (%d frames, %dx%d, %d fps)", path, frames.shape[0], frames.shape[2], frames.shape[1], fps)
    return path


def write_frames(folder: str | os.PathLike, video: torch.Tensor) -> Path:
    """Write `[N, 3, H, W]` in [0, 1] as `frame_0000.png …` (8-bit, lossless) into `folder`, atomically.

    An existing `folder` is replaced only if it holds nothing but `frame_*.png` files.
    """
    folder = Path(folder)
    _check(video, folder)
    with frames_writer(folder, digits=max(4, len(str(len(video) - 1)))) as append:
        for frame in video:
            append(frame)
    log.debug("wrote %d frames to %s", len(video), folder)
    return folder


@contextmanager
def video_writer(path: str | os.PathLike, fps: float = 8) -> Iterator[Callable[[torch.Tensor], None]]:
    """`with video_writer(path, fps) as append: append(frame)` — an H.264 mp4 (as `write_video`) written a
    frame `[3, H, W]` in [0, 1] at a time; it appears at `path` only when the block ends without error."""
    path = Path(path)
    with atomic_file(path) as tmp:
        writer = _imageio_v2().get_writer(tmp, format="FFMPEG", fps=fps, **_MP4_OPTIONS)
        with closing(writer):
            yield lambda frame: writer.append_data(_to_uint8_hwc(_pad_to_even(_checked_frame(frame, path)))[0])
    log.debug("wrote %s (%g fps)", path, fps)


@contextmanager
def frames_writer(folder: str | os.PathLike, *, digits: int = 4) -> Iterator[Callable[[torch.Tensor], None]]:
    """`with frames_writer(folder) as append: append(frame)` — `frame_0000.png …` (as `write_frames`) written a
    frame `[3, H, W]` in [0, 1] at a time into a folder swapped in for `folder` when the block ends without error.

    An existing `folder` is replaced only if it holds nothing but `frame_*.png` files.
    """
    folder = Path(folder)
    if folder.exists() and not _is_frames_folder(folder):
        raise InputError(f"{folder}: exists and holds other files; refusing to replace it")
    iio, index = _imageio(), itertools.count()
    with atomic_folder(folder) as tmp:
        yield lambda frame: _write_png(iio, tmp / f"frame_{next(index):0{digits}d}.png",
                                       _to_uint8_hwc(_checked_frame(frame, folder))[0])


def _checked_frame(frame: torch.Tensor, path: Path) -> torch.Tensor:
    """One frame `[3, H, W]` as a one-frame clip `[1, 3, H, W]`, checked as `_check` checks a clip."""
    clip = frame[None] if isinstance(frame, torch.Tensor) else frame
    _check(clip, path)
    return clip


def _encode_mp4(iio, path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode uint8 `[N, H, W, 3]` with libx264 / yuv420p at `fps`."""
    iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, **_MP4_OPTIONS)


def _write_png(iio, path: Path, frame: np.ndarray) -> None:
    """Write one uint8 `[H, W, 3]` frame as PNG."""
    iio.imwrite(path, frame, plugin="pillow", extension=".png")


def _to_uint8_hwc(video: torch.Tensor) -> np.ndarray:
    """`[N, 3, H, W]` in [0, 1] → uint8 `[N, H, W, 3]`, rounded to the nearest level."""
    x = video.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    return (x * 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _pad_to_even(video: torch.Tensor) -> torch.Tensor:
    """Repeat the last row / column where H / W is odd: `[N, C, H, W]` → `[N, C, H + H%2, W + W%2]`."""
    h, w = video.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        return video
    return F.pad(video, (0, w % 2, 0, h % 2), mode="replicate")


def _is_frames_folder(folder: Path) -> bool:
    """True for a folder holding only `frame_NNNN.png` files (an earlier `write_frames` output)."""
    return folder.is_dir() and all(_FRAME_NAME.fullmatch(f.name) for f in folder.iterdir())


# ----------------------------------------------------------------------------- helpers


def _check(x: torch.Tensor, path: Path) -> None:
    """`validate_video`, with the path at the front of any message."""
    try:
        validate_video(x)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None


def _imageio():
    """`imageio.v3`, imported on first use (part of the `video` extra)."""
    try:
        import imageio.v3 as iio
    except ImportError as err:
        raise ImportError(
            "reading and writing videos needs imageio and imageio-ffmpeg: "
            "pip install 'video-inverse-engine[video]'"
        ) from err
    return iio


def _imageio_v2():
    """`imageio.v2` (its writers append frame by frame), imported on first use."""
    _imageio()
    import imageio.v2

    return imageio.v2


def _first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, prefixed by its type."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
