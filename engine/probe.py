"""What INPUT is, learned before any work: readable, its frame count, its frame size.

A run checks every setting against INPUT before the model (or a 2 GB checkpoint) is loaded:

    facts = probe_input(path, frames=args.frames)      # decodes the first frame only
    check_spec(spec, clean_shape(spec, facts, ...))     # the spec against that frame size

`probe_input` decodes one frame (a file that is missing, not a video, or damaged fails here),
reads the frame count the container declares (a video's duration × rate, a folder's images, an
array's length) and checks `frames` (--frames) against it. `check_spec` builds the degradation on
a few frames of the clean size, so a bad term or a size the spec cannot take is refused in the
words the user typed.
"""

from __future__ import annotations

import logging
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from engine.errors import InputError

log = logging.getLogger(__name__)

#: frames the spec is built on for its check: enough for any temporal kernel's band, cheap at any length
SPEC_CHECK_FRAMES = 64

__all__ = ["InputFacts", "probe_input", "check_spec", "temporal_width", "is_grey", "SPEC_CHECK_FRAMES"]


@dataclass(frozen=True)
class InputFacts:
    """INPUT as its first frame and its container tell it."""

    path: Path
    frame: tuple[int, int]          # (H, W) of INPUT's frames as stored
    declared: Optional[int]         # the frame count the container declares, None when it does not say
    frames: Optional[int]           # the frames a run restores: --frames, else `declared`

    @property
    def odd(self) -> bool:
        """An odd height or width (H.264's yuv420p needs even sides)."""
        return self.frame[0] % 2 == 1 or self.frame[1] % 2 == 1


def probe_input(path: Path, *, frames: Optional[int] = None) -> InputFacts:
    """Facts of INPUT from its first frame and its container, refused in one line when it is missing,
    undecodable, empty, or shorter than `frames`."""
    from engine.video_io import declared_frames, stream_video

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    with closing(stream_video(path)) as decoded:
        first = next(decoded, None)
    if first is None:
        raise InputError(f"{path}: holds no frames")
    declared = declared_frames(path)
    if frames is not None and declared is not None and frames > declared:
        raise InputError(f"{path} has {declared} frames; --frames {frames} asks for more")
    return InputFacts(path=path, frame=tuple(first.shape[-2:]), declared=declared,
                      frames=frames if frames is not None else declared)


def check_spec(spec: str, clean: tuple[int, int], *, frames: Optional[int], measured: Optional[tuple[int, int]] = None,
               mask_seed: int = 0):
    """The operator of `spec` (as the user typed it) for clean frames of `clean` (H, W), on at most
    SPEC_CHECK_FRAMES frames; with `measured`, also checked to map them onto the measurement's frame
    size. Refused in one line quoting `spec`."""
    from engine.operators import from_spec

    n = min(frames or SPEC_CHECK_FRAMES, SPEC_CHECK_FRAMES)
    op = from_spec(spec, (n, 3, *clean), seed=mask_seed, kernels="torch")
    if measured is not None and tuple(op.out_shape[-2:]) != tuple(measured):
        raise InputError(f"{spec} maps {clean[1]}x{clean[0]} frames to {op.out_shape[-1]}x{op.out_shape[-2]}, "
                         f"not to the measurement's {measured[1]}x{measured[0]}")
    return op


def temporal_width(op) -> int:
    """The width w of the temporal PSF in operator `op` (a term or a composition), 1 without one."""
    from engine.operators.temporal import TemporalPSF

    widths = [term.kernel.numel() for term in getattr(op, "ops", (op,)) if isinstance(term, TemporalPSF)]
    return max(widths, default=1)


def is_grey(clip: torch.Tensor) -> bool:
    """Whether every frame of `clip` [N, 3, H, W] has three equal channels (a grey video decoded as RGB)."""
    return bool((clip[:, 0] == clip[:, 1]).all() and (clip[:, 1] == clip[:, 2]).all())
