"""Pictures people would rather look at than read: labelled contact sheets of clips."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LABEL_HEIGHT = 14


def _to_size(frames: Tensor, size: int) -> Tensor:
    """Nearest-neighbour resize so every row of the sheet has the same tile size.  [K, 3, h, w] → [K, 3, size, size]"""
    if frames.shape[-2:] == (size, size):
        return frames
    return F.interpolate(frames, size=(size, size), mode="nearest")


def _label(text: str, width: int) -> np.ndarray:
    """A white strip [LABEL_HEIGHT, width, 3] uint8 with `text` in black."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, LABEL_HEIGHT), "white")
    ImageDraw.Draw(img).text((3, 1), text, fill="black")
    return np.asarray(img)


def contact_sheet(rows: Sequence[tuple[str, Tensor]], frame_ids: Sequence[int], tile: int = 128) -> np.ndarray:
    """One row per labelled clip ([N, 3, H, W] in [0, 1]), one column per frame in `frame_ids`.

    Returns an RGB image [H', W', 3] uint8; each row carries its label above it.
    """
    strips = []
    for name, clip in rows:
        tiles = _to_size(clip[list(frame_ids)].detach().float().cpu().clamp(0, 1), tile)  # [K, 3, t, t]
        row = (tiles.permute(2, 0, 3, 1).reshape(tile, -1, 3).numpy() * 255).round().astype(np.uint8)
        strips += [_label(name, row.shape[1]), row]
    return np.concatenate(strips, axis=0)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an RGB uint8 image atomically (temp file in the same folder, then rename)."""
    from PIL import Image

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
