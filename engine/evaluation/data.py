"""Evaluation data: video sequences cut into clips as the paper prepares DAVIS, cached on disk.

The paper (Kwon & Ye, ICLR 2025, §5) evaluates on DAVIS 2017 at 480p: every frame is
centre-cropped to 480×480, resized to 256×256 (bilinear), mapped to [0, 1], and every
sequence is cut into non-overlapping 16-frame clips, the remainder dropped (338 clips
for train + val). `Prep()` is that recipe: `crop=None` takes the largest centred
square, which on DAVIS 480p frames (854×480 and the like) is exactly 480×480.

Sources (`find_sequences`), every entry of the folder being one sequence:

- a DAVIS root (`DAVIS/JPEGImages/480p/<seq>/00000.jpg …` is found by itself), or any
  folder whose sub-folders hold frames (`.jpg .jpeg .png .bmp`, in natural order);
- the public code's `.npy` clips `[3, N, H, W]` (and `.pt`), and video files
  (`.mp4 .avi .mov .mkv .webm .gif`), side by side in one folder;
- a single folder of frames (one sequence).

Cache: `<cache>/clips/<clip>.npy`, float32 `[3, N, S, S]` (the public code's layout, so
`<cache>/clips` is itself a valid source), and `<cache>/manifest.json`, rewritten
atomically after each sequence: an interrupted preparation resumes at the sequence it
was in, and a finished one is never decoded again.

    python -m engine.data DAVIS/ --cache prepared/       # prepare everything ahead of time
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Container, Iterator, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.errors import InputError
from engine.evaluation.report import plural
from engine.fileio import atomic_file, atomic_write_json
from engine.video_io import (ARRAY_EXTS, FRAME_EXTS, GIF_EXTS, VIDEO_EXTS, UnreadableError, frame_files,
                             iter_frames)

log = logging.getLogger(__name__)
Tensor = torch.Tensor

MANIFEST_FORMAT = 1
DAVIS_FRAMES = Path("JPEGImages", "480p")  # where a DAVIS root keeps its 480p sequences
FILE_EXTS = VIDEO_EXTS + GIF_EXTS + ARRAY_EXTS

__all__ = ["Clip", "Dataset", "Prep", "find_sequences", "prepare_frames"]


@dataclass(frozen=True)
class Prep:
    """How sequences become clips: centre crop `crop` (None: the largest square), resize to `size`, cut every `frames`."""

    size: int = 256
    crop: Optional[int] = None
    frames: int = 16

    def __post_init__(self):
        if self.size < 1 or self.frames < 1 or (self.crop is not None and self.crop < 1):
            raise InputError(f"bad preparation: size={self.size}, crop={self.crop}, frames={self.frames}")


class Clip(NamedTuple):
    """One evaluation clip: its name (`<sequence>_<k>`) and frames `[N, 3, S, S]` float32 in [0, 1]."""

    name: str
    video: Tensor


# ----------------------------------------------------------------------------- sources


def find_sequences(root: str | os.PathLike) -> list[tuple[str, Path]]:
    """(name, path) of every sequence under `root`, sorted by name; see the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    if (root / DAVIS_FRAMES).is_dir():
        root = root / DAVIS_FRAMES
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    found = [p for p in entries if (p.is_dir() and frame_files(p)) or p.suffix.lower() in FILE_EXTS]
    if not found and frame_files(root):
        found = [root]
    if not found:
        raise InputError(f"{root}: no sequences (folders of {' '.join(FRAME_EXTS)} frames, or "
                         f"{' '.join(FILE_EXTS)} files)")
    names = [p.name if p.is_dir() else p.stem for p in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"{root}: several sequences named {', '.join(duplicates)} (e.g. a.mp4 and a.npy)")
    return sorted(zip(names, found))


# ----------------------------------------------------------------------------- preparation


def prepare_frames(frames: Tensor, prep: Prep, path: Path | str = "") -> Tensor:
    """Centre crop and bilinear (antialiased) resize: `[N, 3, H, W]` (uint8 or [0, 1]) → float32 `[N, 3, S, S]` in [0, 1]."""
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    h, w = x.shape[-2:]
    side = min(h, w) if prep.crop is None else prep.crop
    if side > min(h, w):
        raise InputError(f"{path}: frames of {w}x{h} are smaller than the {side}x{side} crop")
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top:top + side, left:left + side]
    if side != prep.size:
        x = F.interpolate(x, size=(prep.size, prep.size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0.0, 1.0).contiguous()


def cut_clips(path: Path, prep: Prep) -> Iterator[Tensor]:
    """Non-overlapping clips `[frames, 3, S, S]` of one sequence, the remainder dropped (decoded frame by frame)."""
    buffer: list[Tensor] = []
    for frame in iter_frames(path):
        if buffer and frame.shape != buffer[0].shape:
            raise InputError(f"{path}: frame {len(buffer)} is {tuple(frame.shape)}, earlier frames {tuple(buffer[0].shape)}")
        buffer.append(frame)
        if len(buffer) == prep.frames:
            yield prepare_frames(torch.stack(buffer), prep, path)
            buffer = []


def _count_frames(path: Path) -> int | None:
    """Frames of a sequence without decoding it (folders and .npy), None where that needs decoding."""
    if path.is_dir():
        return len(frame_files(path))
    if path.suffix.lower() == ".npy":
        shape = np.load(path, mmap_mode="r").shape
        return shape[1] if shape[0] == 3 else shape[0]
    return None


# ----------------------------------------------------------------------------- the cache


class Dataset:
    """The clips of every sequence under `source`, prepared by `prep` and cached under `cache`.

    `clips()` yields `Clip`s in a fixed order (sequences by name, then time), preparing
    and caching each sequence the first time it is reached.
    """

    def __init__(self, source: str | os.PathLike, cache: str | os.PathLike, prep: Prep = Prep()):
        self.source = Path(source).resolve()
        self.cache = Path(cache)
        self.prep = prep
        self.sequences = find_sequences(self.source)
        self.manifest = self._load_manifest()
        self.skipped: dict[str, str] = {}       # sequence → why it could not be read (tried again next run)

    def _load_manifest(self) -> dict:
        """The cache's manifest (a new one for an empty cache); InputError if it was made differently."""
        fresh = {"format": MANIFEST_FORMAT, "source": str(self.source), "prep": asdict(self.prep), "sequences": {}}
        path = self.cache / "manifest.json"
        if not path.exists():
            return fresh
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: unreadable manifest ({err}); delete the cache folder to start again") from err
        for key in ("format", "source", "prep"):
            if manifest.get(key) != fresh[key]:
                raise InputError(f"{self.cache}: cache made with {key}={manifest.get(key)!r}, not {fresh[key]!r}; "
                                 "use another cache folder")
        return manifest

    def count(self) -> int | None:
        """Number of clips, when it is known without decoding (None otherwise)."""
        total = 0
        for name, path in self.sequences:
            done = self.manifest["sequences"].get(name)
            try:
                frames = len(done["clips"]) * self.prep.frames if done else _count_frames(path)
            except (OSError, ValueError):    # unreadable: counted (and skipped) when it is reached
                frames = 0
            if frames is None:
                return None
            total += frames // self.prep.frames
        return total

    def clips(self, limit: int | None = None, skip: Container[str] = ()) -> Iterator[Clip]:
        """Every clip in order, preparing sequences on the way: the first `limit` only (if given),
        of which those named in `skip` are counted but neither loaded nor yielded. A sequence that
        cannot be read is logged, listed in `skipped` and passed over."""
        served = 0
        for name, path in self.sequences:
            for clip_name in self._prepared(name, path):
                if limit is not None and served >= limit:
                    return
                served += 1
                if clip_name not in skip:
                    yield Clip(clip_name, self.load(clip_name))

    def prepare(self) -> int:
        """Prepare every sequence not yet cached, with a progress bar; returns the number of clips."""
        bar = tqdm(self.sequences, desc="preparing", unit="seq", disable=None)
        return sum(len(self._prepared(name, path)) for name, path in bar)

    def load(self, clip_name: str) -> Tensor:
        """A cached clip `[N, 3, S, S]` float32 in [0, 1]."""
        return torch.from_numpy(np.load(self._clip_path(clip_name))).transpose(0, 1).contiguous()

    def _clip_path(self, clip_name: str) -> Path:
        return self.cache / "clips" / f"{clip_name}.npy"

    def _prepared(self, name: str, path: Path) -> list[str]:
        """Clip names of sequence `name`, cutting and caching it first unless the cache has it whole."""
        done = self.manifest["sequences"].get(name)
        if done and all(self._clip_path(c).exists() for c in done["clips"]):
            return done["clips"]
        names = []
        try:
            for k, clip in enumerate(cut_clips(path, self.prep)):
                names.append(f"{name}_{k:03d}")
                with atomic_file(self._clip_path(names[-1])) as tmp:
                    np.save(tmp, clip.transpose(0, 1).numpy())                     # [3, N, S, S]
        except UnreadableError as err:      # one damaged file must not stop the others
            log.warning("skipped %s: %s", name, err)
            self.skipped[name] = str(err)
            return []
        if not names:
            log.warning("%s: fewer than %d frames, no clip", path, self.prep.frames)
        self.manifest["sequences"][name] = {"path": str(path), "clips": names}
        atomic_write_json(self.cache / "manifest.json", self.manifest)
        log.info("prepared %s: %s", name, plural(len(names), "clip"))
        return names





# ----------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    """`python -m engine.data SOURCE --cache DIR`: prepare (or finish preparing) every clip."""
    p = argparse.ArgumentParser(prog="python -m engine.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="DAVIS root, a folder of sequences, .npy clips or videos")
    p.add_argument("--cache", type=Path, required=True, help="cache folder (resumed if it exists)")
    p.add_argument("--size", type=int, default=Prep.size, help="frame size after the resize (default 256)")
    p.add_argument("--crop", type=int, help="centre crop side before the resize (default: the largest square)")
    p.add_argument("--frames", type=int, default=Prep.frames, help="frames per clip (default 16)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        count = Dataset(args.source, args.cache, Prep(args.size, args.crop, args.frames)).prepare()
    except (InputError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{plural(count, 'clip')} in {args.cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
