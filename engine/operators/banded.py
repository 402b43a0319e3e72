"""A frame matrix applied to a video sharded by frames (engine.distributed; docs/distributed.md).

Rank p holds frames [a, b) of an N-frame video. A banded frame matrix M [N, N] (M[n, m] ≠ 0 only
for −lo ≤ m − n ≤ hi, modulo N around a ring) needs `lo` frames left of the shard and `hi` right of
it, which one halo exchange brings (`BandedFrames`: the temporal PSF T, Tᵀ, TᵀT of a whole video or
T_winᵀT_win of a window). A dense one (CG's preconditioner φ(g·TᵀT)) needs every frame of a pixel:
`in_pixel_layout` applies it after an all-to-all into the pixel layout and back.

A shard must hold at least the band's reach (max(lo, hi) frames), else InputError.
"""

from __future__ import annotations

import torch

from engine.errors import InputError
from engine.operators.common import Constants

Tensor = torch.Tensor


def band(M: Tensor, ring: bool) -> tuple[int, int]:
    """(lo, hi): M[n, m] ≠ 0 only for −lo ≤ m − n ≤ hi (m − n taken modulo N into [−N/2, N/2) on a ring)."""
    rows, cols = M.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return 0, 0
    d = cols - rows
    if ring:
        n = M.shape[0]
        d = (d + n // 2) % n - n // 2
    return max(0, -int(d.min())), max(0, int(d.max()))


def local_matrix(M: Tensor, start: int, stop: int, lo: int, hi: int, ring: bool) -> Tensor:
    """Rows [start, stop) of M against the frames a halo exchange gives: columns for frames
    start − lo … stop + hi − 1 (modulo N on a ring; none past the ends otherwise). A frame that
    appears twice (a short ring) keeps its coefficient in its first column only.  → [stop − start, lo + n + hi]

    InputError when M's rows reach frames outside that window (the band is wider than lo, hi).
    """
    n_all = M.shape[0]
    frames = torch.arange(start - lo, stop + hi)
    L = M.new_zeros((stop - start, frames.numel()))
    covered = torch.zeros(n_all, dtype=torch.bool)
    for e, g in enumerate(frames.tolist()):
        g = g % n_all if ring else g
        if 0 <= g < n_all and not covered[g]:
            covered[g] = True
            L[:, e] = M[start:stop, g]
    if M[start:stop][:, ~covered].any():
        raise InputError(f"the frame operator's rows {start}…{stop - 1} reach frames beyond {lo} on the left and "
                         f"{hi} on the right")
    return L


class BandedFrames:
    """v ↦ (M v)[a:b] on this rank's shard v = x[a:b] of a video x: one halo exchange, one local matmul.
    M: [N, N] float64 banded (`band`).  [b − a, ...] → [b − a, ...]"""

    def __init__(self, M: Tensor, comm, ring: bool, *, what: str, device=None, dtype=None):
        self.comm, self.ring = comm, ring
        self.lo, self.hi = band(M, ring)
        shortest = min(stop - start for start, stop in comm.ranges)
        reach = max(self.lo, self.hi)
        if reach > shortest:
            most = max(1, M.shape[0] // reach)
            raise InputError(f"{what} reaches {reach} frames, but with {comm.world} processes a process holds only "
                             f"{shortest} of the {M.shape[0]} frames: use at most {most} processes, or more frames")
        start, stop = comm.shard.start, comm.shard.stop
        self.constants = Constants({"M": local_matrix(M, start, stop, self.lo, self.hi, ring)}, device=device,
                                   dtype=dtype)

    def __call__(self, v: Tensor) -> Tensor:
        ext = self.comm.halo(v, self.lo, self.hi, self.ring)
        M = self.constants.like("M", v)
        return (M @ ext.reshape(ext.shape[0], -1)).reshape(v.shape)


def in_pixel_layout(P: Tensor, comm, *, device=None, dtype=None):
    """v ↦ (P v)[a:b] on this rank's frames for a dense frame matrix P [N, N] float64: all-to-all into
    the pixel layout (every frame of D_p pixel values), one local matmul, all-to-all back.
    [n_p, ...] → [n_p, ...]"""
    consts = Constants({"P": P}, device=device, dtype=dtype)

    def apply(v: Tensor) -> Tensor:
        return comm.to_frames(consts.like("P", v) @ comm.to_pixels(v), v.shape)

    return apply
