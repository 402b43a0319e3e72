"""Pictures people would rather look at than read: labelled contact sheets of clips."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.fileio import atomic_file

Tensor = torch.Tensor
Tile = tuple[int, int]                  # (height, width) of one frame on a sheet
LABEL_HEIGHT = 14
#: frames keep their size on a sheet up to this total width (px), then shrink together
MAX_WIDTH = 2048


def tile_size(rows: Sequence[tuple[str, Tensor]], columns: int, extra: int = 0, max_width: int = MAX_WIDTH) -> Tile:
    """The largest frame among `rows` ([N, 3, H, W] each), scaled down only as far as `columns` tiles
    plus `extra` pixels need to fit in `max_width`."""
    h, w = max(c.shape[-2] for _, c in rows), max(c.shape[-1] for _, c in rows)
    scale = min(1.0, (max_width - extra) / (columns * w))
    return max(1, math.floor(h * scale + 1e-9)), max(1, math.floor(w * scale + 1e-9))   # rounded down: fits


def _to_size(frames: Tensor, tile: Tile) -> Tensor:
    """Nearest-neighbour resize so every row of the sheet has the same tile size.  [K, 3, h, w] → [K, 3, *tile]"""
    if tuple(frames.shape[-2:]) == tuple(tile):
        return frames
    return F.interpolate(frames, size=tuple(tile), mode="nearest")


def _label(text: str, width: int) -> np.ndarray:
    """A white strip [LABEL_HEIGHT, width, 3] uint8 with `text` in black."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, LABEL_HEIGHT), "white")
    ImageDraw.Draw(img).text((3, 1), text, fill="black")
    return np.asarray(img)


def contact_sheet(rows: Sequence[tuple[str, Tensor]], frame_ids: Sequence[int], tile: Tile | None = None) -> np.ndarray:
    """One row per labelled clip ([N, 3, H, W] in [0, 1]), one column per frame in `frame_ids`.

    Tiles are `tile` (default `tile_size`: the frames' own size, up to MAX_WIDTH in all).
    Returns an RGB image [H', W', 3] uint8; each row carries its label above it.
    """
    tile = tile or tile_size(rows, len(frame_ids))
    strips = []
    for name, clip in rows:
        row = _tiles_row(_to_size(clip[list(frame_ids)].detach().float().cpu().clamp(0, 1), tile))
        strips += [_label(name, row.shape[1]), row]
    return np.concatenate(strips, axis=0)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an RGB uint8 image [H, W, 3] atomically (engine.fileio)."""
    from PIL import Image

    path = Path(path)
    with atomic_file(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


# ----------------------------------------------------------------------------- comparison grid (the paper's Fig. 4)

ZOOM_BOX = (0.375, 0.375, 0.25, 0.25)  # (top, left, height, width) of the enlarged crop, fractions of a frame
GAP = 4                                 # white pixels between the frames and the enlarged crop
BOX_COLOUR = (230, 30, 30)


def comparison_grid(
    rows: Sequence[tuple[str, Tensor]],
    frame_ids: Sequence[int],
    *,
    box: tuple[float, float, float, float] = ZOOM_BOX,
    tile: Tile | None = None,
) -> np.ndarray:
    """Fig. 4-style grid: per labelled clip ([N, 3, H, W] in [0, 1]; sizes may differ between rows),
    its frames `frame_ids`, then the region `box` of the middle one enlarged to a tile (nearest).

    Tiles are `tile` (default `tile_size`: the frames' own size, up to MAX_WIDTH in all). The
    region is outlined on the middle frame. Returns RGB uint8 [H', W', 3].
    """
    tile = tile or tile_size(rows, len(frame_ids) + 1, GAP)
    mid = len(frame_ids) // 2
    strips = []
    for name, clip in rows:
        clip = clip.detach().float().cpu().clamp(0, 1)
        frames = _tiles_row(_to_size(clip[list(frame_ids)], tile))
        zoom = _tiles_row(_to_size(_crop(clip[frame_ids[mid]], box)[None], tile))
        gap = np.full((tile[0], GAP, 3), 255, np.uint8)
        row = _outline(np.concatenate([frames, gap, zoom], axis=1), mid * tile[1], box, tile)
        strips += [_label(name, row.shape[1]), row]
    return np.concatenate(strips, axis=0)


def _tiles_row(tiles: Tensor) -> np.ndarray:
    """[K, 3, h, w] in [0, 1] → uint8 [h, K·w, 3]."""
    h = tiles.shape[-2]
    return (tiles.permute(2, 0, 3, 1).reshape(h, -1, 3).numpy() * 255).round().astype(np.uint8)


def _crop(frame: Tensor, box: tuple[float, float, float, float]) -> Tensor:
    """The fractional region (top, left, height, width) of one frame [3, H, W], at least one pixel."""
    h, w = frame.shape[-2:]
    top, left = int(box[0] * h), int(box[1] * w)
    return frame[:, top:top + max(1, round(box[2] * h)), left:left + max(1, round(box[3] * w))]


def _outline(row: np.ndarray, x0: int, box: tuple[float, float, float, float], tile: Tile) -> np.ndarray:
    """Draw the zoom region's outline on the tile that starts at column x0."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(row)
    top, left, h, w = (round(v * size) for v, size in zip(box, (tile[0], tile[1], tile[0], tile[1])))
    ImageDraw.Draw(img).rectangle([x0 + left, top, x0 + left + w - 1, top + h - 1], outline=BOX_COLOUR, width=2)
    return np.asarray(img)


# ----------------------------------------------------------------------------- line plots (PSNR per frame, Fig. 7)

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
           (148, 103, 189), (140, 86, 75), (227, 119, 194), (23, 190, 207))
REFERENCE_COLOUR = (90, 90, 90)
MARGIN = dict(left=70, right=16, top=30, bottom=48)


def line_plot(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    references: Sequence[tuple[str, float]] = (),
    size: tuple[int, int] = (760, 400),
) -> np.ndarray:
    """A line chart drawn with PIL: one coloured line per (label, xs, ys), dashed horizontal
    `references` (label, y), axes with ticks, labels and a legend. Non-finite points break a line.

    Returns RGB uint8 [size[1], size[0], 3].
    """
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    entries = ([(name, PALETTE[i % len(PALETTE)], False) for i, (name, _, _) in enumerate(series)]
               + [(name, REFERENCE_COLOUR, True) for name, _ in references])
    right = size[0] - MARGIN["right"] - _legend_width(entries)
    frame = (MARGIN["left"], MARGIN["top"], right, size[1] - MARGIN["bottom"])
    xs = [x for _, sx, sy in series for x, y in zip(sx, sy) if math.isfinite(y)]
    ys = [y for _, _, sy in series for y in sy if math.isfinite(y)] + [y for _, y in references if math.isfinite(y)]
    draw.text((frame[0], 8), title, fill="black", font=font)
    if not xs:
        draw.text((frame[0] + 10, frame[1] + 10), "no finite data", fill="black", font=font)
        return np.asarray(img)
    xt, yt = _ticks(min(xs), max(xs)), _ticks(min(ys), max(ys))
    to_px = _mapping(frame, xt, yt)
    _axes(draw, frame, xt, yt, to_px, font)
    for i, (_, sx, sy) in enumerate(series):
        _polyline(draw, [to_px(x, y) if math.isfinite(y) else None for x, y in zip(sx, sy)], PALETTE[i % len(PALETTE)])
    for _, y in references:
        _dashed(draw, to_px(xt[0], y), to_px(xt[-1], y), REFERENCE_COLOUR)
    _legend(draw, frame, entries, font)
    draw.text(((frame[0] + frame[2]) // 2 - 3 * len(xlabel), size[1] - 18), xlabel, fill="black", font=font)
    _vertical_text(img, ylabel, (4, (frame[1] + frame[3]) // 2), font)
    return np.asarray(img)


def _font(size: int = 12):
    """PIL's built-in font at `size` (a bitmap font where FreeType is missing)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 × 10^k) covering [lo, hi]."""
    if hi - lo < 1e-12 * max(1.0, abs(lo)):
        pad = 0.5 if lo == 0 else abs(lo) * 0.05
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    step = min((m * 10.0 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    first, last = math.floor(lo / step), math.ceil(hi / step)
    return [k * step for k in range(first, last + 1)]


def _mapping(frame, xt: list[float], yt: list[float]):
    """(x, y) in data units → pixel (px, py) inside `frame` (left, top, right, bottom)."""
    left, top, right, bottom = frame

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - xt[0]) / (xt[-1] - xt[0]) * (right - left),
                bottom - (y - yt[0]) / (yt[-1] - yt[0]) * (bottom - top))

    return to_px


def _tick_label(v: float, step: float) -> str:
    """A tick value with just the decimals its step needs."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{v:.{decimals}f}"


def _axes(draw, frame, xt, yt, to_px, font) -> None:
    """Grid lines, the plot frame, and tick labels."""
    left, top, right, bottom = frame
    for x in xt:
        px = to_px(x, yt[0])[0]
        draw.line([(px, top), (px, bottom)], fill=(225, 225, 225))
        draw.text((px - 3 * len(_tick_label(x, xt[1] - xt[0])), bottom + 4), _tick_label(x, xt[1] - xt[0]),
                  fill="black", font=font)
    for y in yt:
        py = to_px(xt[0], y)[1]
        draw.line([(left, py), (right, py)], fill=(225, 225, 225))
        text = _tick_label(y, yt[1] - yt[0])
        draw.text((left - 6 - 7 * len(text), py - 7), text, fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")


def _polyline(draw, points, colour) -> None:
    """Connected segments between consecutive points (None breaks the line), dots when few."""
    for a, b in zip(points, points[1:]):
        if a is not None and b is not None:
            draw.line([a, b], fill=colour, width=2)
    if len(points) <= 40:
        for p in points:
            if p is not None:
                draw.ellipse([p[0] - 2.5, p[1] - 2.5, p[0] + 2.5, p[1] + 2.5], fill=colour)


def _dashed(draw, a, b, colour, dash: int = 6) -> None:
    """A horizontal dashed line from a to b."""
    x = a[0]
    while x < b[0]:
        draw.line([(x, a[1]), (min(x + dash, b[0]), a[1])], fill=colour, width=2)
        x += 2 * dash


def _legend_width(entries) -> int:
    """Pixels the legend takes right of the plot (0 without entries)."""
    return 44 + 7 * max(len(name) for name, _, _ in entries) if entries else 0


def _legend(draw, frame, entries, font) -> None:
    """A boxed legend right of the plot, at its top: (label, colour, dashed) per entry."""
    if not entries:
        return
    left, top = frame[2] + 10, frame[1]
    right = left + _legend_width(entries) - 10
    draw.rectangle([left, top, right, top + 16 * len(entries) + 6], fill="white", outline=(160, 160, 160))
    for i, (name, colour, dashed) in enumerate(entries):
        y = top + 11 + 16 * i
        if dashed:
            _dashed(draw, (left + 6, y), (left + 26, y), colour, dash=4)
        else:
            draw.line([(left + 6, y), (left + 26, y)], fill=colour, width=3)
        draw.text((left + 31, y - 7), name, fill="black", font=font)


def _vertical_text(img, text: str, centre_left: tuple[int, int], font) -> None:
    """Paste `text` rotated by 90° with its left edge at x and centred on y."""
    from PIL import Image, ImageDraw

    if not text:
        return
    strip = Image.new("RGB", (8 * len(text) + 4, 16), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill="black", font=font)
    strip = strip.rotate(90, expand=True)
    img.paste(strip, (centre_left[0], centre_left[1] - strip.height // 2))
