"""A job's INPUT as frames: decoded one at a time, changed only as the job says, made a clip when whole.

    frames, notes = input_frames(job)              # [3, H, W] in [0, 1], each checked; notes: the changes
    clean, y = whole_clip(job, list(frames))       # [N, 3, H, W]: the clean clip or the measurement

A run that may stream reads the first W + 1 frames first (`split_head`): more than W frames is a
video restored in windows. A clean clip of 8-bit levels is held as uint8 (a quarter of float32's
memory) and made float32 only to be measured (`unit_float`).
"""

from __future__ import annotations

import logging
from itertools import chain, islice
from typing import Iterator, Optional

import torch

from engine.errors import InputError
from engine.job import DEFAULT_FRAMES, MIN_SCORED_SIZE, Job

log = logging.getLogger(__name__)

__all__ = ["input_frames", "whole_clip", "split_head", "longer_than_a_window", "declared_frames", "frames_and_size",
           "unit_float", "is_8bit", "compact"]


def input_frames(job: Job) -> tuple[Iterator[torch.Tensor], list[str]]:
    """(INPUT's frames [3, H, W] in [0, 1], one at a time, each checked; notes): every change made to them.

    Every frame at its own size, unless --frames keeps the first N, or --size centre-crops and
    resizes a clean clip to a square (the paper's protocol). Each change is logged and noted.
    """
    from engine.video_io import square_frame, stream_video

    if job.input is None:
        from engine.testclips import demo_clip

        return iter(demo_clip(frames=job.frames or DEFAULT_FRAMES, size=job.size or 256)), []
    frames = stream_video(job.input, frames=job.frames)
    if job.measured:
        return frames, []
    first = next(frames)
    h, w = first.shape[-2:]
    frames, notes = chain([first], frames), []
    if job.size is not None and (h, w) != (job.size, job.size):
        side = min(h, w)
        crop = f"centre-cropped {w}x{h} frames to {side}x{side} and " if h != w else f"{w}x{h} frames "
        notes.append(f"{crop}resized to {job.size}x{job.size} (--size)")
        frames, (h, w) = (square_frame(frame, job.size) for frame in frames), (job.size, job.size)
    if min(h, w) < MIN_SCORED_SIZE:
        raise InputError(f"frames of {w}x{h} are too small to score (SSIM needs "
                         f"{MIN_SCORED_SIZE}x{MIN_SCORED_SIZE}); pass --measured to restore without scoring")
    return frames, _logged(notes)


def whole_clip(job: Job, frames: list) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(clean clip, None), or (None, measurement) with --measured: INPUT's frames as one clip [N, 3, H, W].

    The list is emptied as the clip fills (each frame released once copied: the frames are held once).
    A clean clip whose frames are all 8-bit levels (k/255, as decoded from a video or image) is kept as
    uint8: it is only measured (`unit_float`), scored and shown. A measurement is float32.
    """
    from engine.video_io import validate_video

    if not frames:
        raise InputError(f"{job.input}: no frames")
    validate_video(frames[0][None])
    eight_bit = not job.measured and all(is_8bit(frame) for frame in frames)
    clip = frames[0].new_empty((len(frames), *frames[0].shape), dtype=torch.uint8 if eight_bit else torch.float32)
    for i in range(len(frames)):
        clip[i] = (frames[i] * 255).round_() if eight_bit else frames[i]
        frames[i] = None
    if not eight_bit:
        validate_video(clip)
    return (None, clip) if job.measured else (clip, None)


def split_head(job: Job) -> tuple[list, Iterator, list[str]]:
    """(INPUT's first W + 1 frames with --max-frames W, else none; the frames after them; the input changes)."""
    frames, notes = input_frames(job)
    return ([] if job.max_frames is None else list(islice(frames, job.max_frames + 1))), frames, notes


def longer_than_a_window(job: Job, head: list) -> bool:
    """Whether `split_head` found more than --max-frames frames: the video is restored in windows."""
    return job.max_frames is not None and len(head) > job.max_frames


def declared_frames(job: Job) -> Optional[int]:
    """The frame count INPUT declares (capped by --frames), for the progress bar; None if unknown."""
    if job.input is None:
        return job.frames or DEFAULT_FRAMES
    from engine.video_io import declared_frames as declared_by

    declared = declared_by(job.input)
    return min(declared, job.frames) if declared and job.frames else (declared or job.frames)


def frames_and_size(job: Job) -> tuple[int, tuple[int, int]]:
    """(INPUT's frame count, declared or counted a frame at a time; its frames' (H, W), from the first)."""
    frames = iter(input_frames(job)[0])
    first = next(frames, None)
    if first is None:
        raise InputError(f"{job.input}: no frames")
    count = declared_frames(job)
    if count is None:
        count = 1 + sum(1 for _ in frames)
    return count, tuple(first.shape[-2:])


def unit_float(clip: torch.Tensor) -> torch.Tensor:
    """A clip in [0, 1] as float32: uint8 levels k as k/255 (the decoder's values), floats as they are."""
    return clip.to(torch.float32).div_(255) if clip.dtype == torch.uint8 else clip


def is_8bit(frame: torch.Tensor) -> bool:
    """Whether a frame in [0, 1] holds 8-bit levels only: exactly the float32 k/255 of integers k."""
    return bool(frame.amin() >= 0) and bool(frame.amax() <= 1) and torch.equal((frame * 255).round_().div_(255), frame)


def compact(frame: torch.Tensor) -> torch.Tensor:
    """A frame [3, H, W] in [0, 1] as uint8 when it holds 8-bit levels only (`unit_float` gives it back
    exactly), else as it is."""
    return (frame * 255).round_().to(torch.uint8) if is_8bit(frame) else frame


def _logged(notes: list[str]) -> list[str]:
    for note in notes:
        log.warning("input changed: %s", note)
    return notes
