"""The network of a video of any length and frame size: micro-batches of frames, tiles of a frame.

Algorithm 1 needs the network frame by frame (Tweedie's estimate is per frame; the frames are
tied together only by the shared noise image and by CG, which runs over the whole video), so

- the network runs on B frames at a time (`micro_batched`): its memory is set by B, not by
  the video's length, and the result does not depend on B;
- a frame larger than the network's training size is cut into overlapping tiles of that size
  (`TiledEps`; along an axis shorter than the size the tile is the whole axis: the network is
  convolutional); all tiles of all frames go through the network as one batch dimension
  (frames × tiles, B at a time), and their ε are blended with smooth weights that sum to one
  at every pixel. X̂ = (X − √(1−ᾱ)·ε)/√ᾱ is affine in ε pixel by pixel, so blending ε blends
  the tiles' Tweedie estimates the same way. A frame that is exactly one tile is left alone.

Shapes: x [N, 3, H, W], t [N] → ε [N, C, H, W] (C = 3, or 6 for learned-σ models).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from engine.errors import InputError

Tensor = torch.Tensor
EpsModel = Callable[[Tensor, Tensor], Tensor]


def micro_batched(eps_model: EpsModel, batch: int) -> EpsModel:
    """ε of N frames from calls on at most `batch` of them at a time, written into one output along frames
    (no list of parts and no concatenated copy: the clip-sized output plus one micro-batch's)."""
    if batch < 1:
        raise InputError(f"the network batch must be at least 1, got {batch}")

    def eps(x: Tensor, t: Tensor) -> Tensor:
        if x.shape[0] <= batch:
            return eps_model(x, t)
        out = None                                           # [N, C, H, W], filled a micro-batch at a time
        for i in range(0, x.shape[0], batch):
            part = eps_model(x[i:i + batch], t[i:i + batch])
            if out is None:
                out = part.new_empty((x.shape[0], *part.shape[1:]))
            out[i:i + batch] = part
        return out

    eps.module = getattr(eps_model, "module", None)
    return eps


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the fewest tiles of `tile` pixels that cover [0, length) with neighbours overlapping by
    at least `overlap` pixels, spread evenly; the first starts at 0, the last ends at `length`."""
    if length < tile:
        raise InputError(f"frames of {length} pixels are smaller than the network's {tile}-pixel tiles; "
                         f"resize the video (--size) or use a model of a smaller size")
    if not 0 <= overlap < tile:
        raise InputError(f"the tile overlap must lie in [0, {tile}), got {overlap}")
    if length == tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(k * (length - tile) / (count - 1)) for k in range(count)]


def ramp(tile: int, overlap: int, *, rise: bool, fall: bool, dtype=torch.float64) -> Tensor:
    """1-D blending weights of one tile [tile]: sin² rising over its first `overlap` pixels when `rise`,
    cos² falling over its last ones when `fall` (sin² + cos² = 1 where two such edges overlap), 1 elsewhere."""
    w = torch.ones(tile, dtype=dtype)
    if overlap > 0:
        edge = torch.sin(0.5 * math.pi * (torch.arange(overlap, dtype=dtype) + 0.5) / overlap) ** 2
        if rise:
            w[:overlap] = edge
        if fall:
            w[tile - overlap:] = edge.flip(0)
    return w


class TiledEps:
    """ε of frames [N, 3, H, W] from a network of square `tile`-pixel frames (see the module docstring).

    The tiles, their blending weights and their normalisation are fixed by (H, W) and computed once.
    """

    def __init__(self, eps_model: EpsModel, frame: tuple[int, int], tile: int, *, overlap: int, batch: int):
        h, w = frame
        if not 0 <= overlap < tile:
            raise InputError(f"the tile overlap must lie in [0, {tile}), got {overlap}")
        th, tw = min(tile, h), min(tile, w)                  # an axis shorter than the tile is one tile
        self.rows, self.cols = tile_starts(h, th, min(overlap, th - 1)), tile_starts(w, tw, min(overlap, tw - 1))
        self.tile, self.frame = (th, tw), (h, w)
        self.eps_model = micro_batched(eps_model, batch)
        self.module = getattr(eps_model, "module", None)
        weights = torch.zeros(h, w, dtype=torch.float64)
        self._tile_weights = []
        for i, r in enumerate(self.rows):
            for j, c in enumerate(self.cols):
                wr = ramp(th, min(overlap, th - 1), rise=i > 0, fall=i < len(self.rows) - 1)
                wc = ramp(tw, min(overlap, tw - 1), rise=j > 0, fall=j < len(self.cols) - 1)
                self._tile_weights.append(wr[:, None] * wc[None, :])                # [th, tw]
                weights[r:r + th, c:c + tw] += self._tile_weights[-1]
        self._norm = weights                                                       # Σ of the tiles' weights
        self._cache: dict = {}

    @property
    def tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    def _weights(self, like: Tensor) -> Tensor:
        """Each tile's weight divided by the sum at its pixels [T, 1, th, tw], in `like`'s dtype and device."""
        key = (like.dtype, like.device)
        if key not in self._cache:
            th, tw = self.tile
            normed = [wt / self._norm[r:r + th, c:c + tw] for wt, (r, c) in zip(self._tile_weights, self._corners())]
            self._cache[key] = torch.stack(normed)[:, None].to(like.device, like.dtype)
        return self._cache[key]

    def _corners(self) -> list[tuple[int, int]]:
        return [(r, c) for r in self.rows for c in self.cols]

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        n, (th, tw) = x.shape[0], self.tile
        if tuple(x.shape[-2:]) != self.frame:
            raise InputError(f"frames of {tuple(x.shape[-2:])}; these tiles were laid out for {self.frame}")
        if self.tiles == 1:
            return self.eps_model(x, t)
        corners = self._corners()
        patches = torch.stack([x[:, :, r:r + th, c:c + tw] for r, c in corners], dim=1)  # [N, T, 3, th, tw]
        eps = self.eps_model(patches.flatten(0, 1), t.repeat_interleave(len(corners)))    # [N·T, C, th, tw]
        eps = eps.unflatten(0, (n, len(corners))) * self._weights(eps)                     # [N, T, C, th, tw]
        out = eps.new_zeros((n, eps.shape[2], *self.frame))
        for k, (r, c) in enumerate(corners):
            out[:, :, r:r + th, c:c + tw] += eps[:, k]
        return out
