"""A degradation restricted to this rank's frames of a frame-sharded video (#17, engine.distributed).

Every spec is a Kronecker product: its temporal terms act along frames only, as one N×N frame
matrix T = T_k ⋯ T₁ (banded, modulo N for the circular boundary), and its other terms act on each
frame alike, as one per-frame operator F. The two commute, so for rank p's frames [a, b):

    A x    = T F x        Aᵀ y  = Fᵀ Tᵀ y        AᵀA x = Fᵀ (TᵀT) F x

F is local; a row block of a banded frame matrix M needs `lo` frames left of the shard and `hi`
right of it (M[n, m] ≠ 0 only for −lo ≤ m − n ≤ hi, modulo N around a ring), which one halo
exchange brings (`BandedFrames`). T is applied after F, on the measurement's side, so a
super-resolution's halo is s² times smaller than the clip's. Inner products are all-reduced
(`inner`), and CG's preconditioner φ(g TᵀT), a dense frame matrix, is applied in the pixel layout
(engine.distributed.Comm.to_pixels). In exact arithmetic every result equals the single-process
operator's (engine.operators.from_spec) on the same rows; in float64 they agree to rounding.

A shard must hold at least the band's reach (max(lo, hi) frames), else InputError.
"""

from __future__ import annotations

import torch

from engine.errors import InputError
from engine.operators.base import LinearOperator, inner_product
from engine.operators.common import Constants
from engine.operators.registry import from_spec
from engine.operators.spec import join, split_temporal
from engine.operators.temporal import frame_preconditioner

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


class ShardedOperator(LinearOperator):
    """`spec`'s operator on this rank's frames of a video of `shape` [N, C, H, W] sharded by `comm`
    (engine.distributed.Comm).  [n_p, C, H, W] → [n_p, C', H', W']"""

    kernels = "torch"

    def __init__(self, spec: str, shape, comm, *, seed: int = 0, device=None, dtype=None):
        n, *frame = (int(s) for s in shape)
        if comm.shard.frames != n:
            raise InputError(f"the video has {n} frames but the process group was sharded for {comm.shard.frames}")
        self.comm, self.shard = comm, comm.shard
        self.in_shape = (self.shard.count, *frame)
        temporal_terms, frame_terms = split_temporal(spec)
        self.frame_op = (from_spec(join(frame_terms), self.in_shape, seed=seed, device=device, dtype=dtype,
                                   kernels="torch") if frame_terms else None)
        self.out_shape = tuple(self.frame_op.out_shape) if self.frame_op is not None else self.in_shape
        self.temporal = [from_spec(str(term), (n, 1, 1, 1), kernels="torch") for term in temporal_terms]
        frame_gain = self.frame_op.normal_gain if self.frame_op is not None else 1.0
        #: the largest eigenvalue of AᵀA as the single-process Composition states it (Π of the parts')
        self.normal_gain = frame_gain
        for op in self.temporal:
            self.normal_gain *= op.normal_gain
        self._frame_gain = frame_gain
        self._T = self._TT = self._Tt = None
        if self.temporal:
            T = torch.eye(n, dtype=torch.float64)
            for op in self.temporal:
                T = op.constants.original("matrix") @ T
            ring = any(op.boundary == "circular" for op in self.temporal)
            what = f"the temporal PSF {join(temporal_terms)}"
            options = dict(what=what, device=device, dtype=dtype)
            self._T = BandedFrames(T, comm, ring, **options)
            self._Tt = BandedFrames(T.T.contiguous(), comm, ring, **options)
            self._TT = BandedFrames(T.T @ T, comm, ring, **options)

    def A(self, x: Tensor) -> Tensor:
        """y = T F x on this rank's frames.  [n_p, C, H, W] → [n_p, C', H', W']"""
        y = self.frame_op.A(x) if self.frame_op is not None else x
        return self._T(y) if self._T is not None else y

    def A_adjoint(self, y: Tensor) -> Tensor:
        """x = Fᵀ Tᵀ y on this rank's frames.  [n_p, C', H', W'] → [n_p, C, H, W]"""
        x = self._Tt(y) if self._Tt is not None else y
        return self.frame_op.A_adjoint(x) if self.frame_op is not None else x

    def A_adjoint_A(self, x: Tensor) -> Tensor:
        """AᵀA x = Fᵀ (TᵀT) F x: one halo exchange, in the measurement's space.  [n_p, C, H, W] → same"""
        if self.frame_op is None:
            return self._TT(x) if self._TT is not None else x
        if self._TT is None:
            return self.frame_op.A_adjoint_A(x)
        return self.frame_op.A_adjoint(self._TT(self.frame_op.A(x)))

    def inner(self, a: Tensor, b: Tensor) -> Tensor:
        """⟨a, b⟩ over the whole video: this rank's partial sum, all-reduced.  → [] float64"""
        return self.comm.all_sum(inner_product(a, b))

    def frame_preconditioner(self, phi, *, device=None, dtype=None):
        """v ↦ φ(g·TᵀT) v along all N frames (as the single-process operator's: one temporal term only,
        else None), applied in the pixel layout: all-to-all, a local [N, N] matmul, all-to-all back."""
        if len(self.temporal) != 1:
            return None
        P = frame_preconditioner(self.temporal[0].normal_matrix, lambda lam: phi(self._frame_gain * lam))
        return in_pixel_layout(P, self.comm, device=device, dtype=dtype)


def in_pixel_layout(P: Tensor, comm, *, device=None, dtype=None):
    """v ↦ (P v)[a:b] on this rank's frames for a dense frame matrix P [N, N] float64: all-to-all into
    the pixel layout (every frame of D_p pixel values), one local matmul, all-to-all back.
    [n_p, ...] → [n_p, ...]"""
    consts = Constants({"P": P}, device=device, dtype=dtype)

    def apply(v: Tensor) -> Tensor:
        return comm.to_frames(consts.like("P", v) @ comm.to_pixels(v), v.shape)

    return apply


class ShardedWindowOperator(LinearOperator):
    """A window's operator A = T_win ⊗ S (`window`, an engine.windows.WindowOperator) with its F free
    frames sharded by `comm` and its R measurement rows held whole by every rank.
    [n_p, 3, H, W] → [R, 3, H', W']

    With x_p this rank's frames [a, b) and T_p = T_win[:, a:b] (T_win banded: a row reads a few
    neighbouring frames):

        A x = Σ_p T_p S x_p   (an all-reduce of the R rows)      Aᵀ y = Sᵀ T_pᵀ y   (local: y is whole)
        AᵀA x = Sᵀ (T_winᵀT_win) S x   (one halo exchange: T_winᵀT_win is banded, F×F)

    so the sampler's CG (AᵀA, the all-reduced `inner`, the preconditioner φ(g T_winᵀT_win) in the
    pixel layout) communicates as ShardedOperator's does; A itself, an all-reduce of a measurement, is
    not called inside the loop. A rank holds the window's measurement rows and its share of the solve.
    """

    kernels = "torch"

    def __init__(self, window, comm, *, device=None, dtype=torch.float32):
        frames = window.matrix.shape[1]
        if comm.shard.frames != frames:
            raise InputError(f"the window has {frames} free frames but the process group was sharded for "
                             f"{comm.shard.frames}")
        self.window, self.comm, self.shard, self._S = window, comm, comm.shard, window.spatial
        self._Tp = Constants({"T": window.matrix[:, self.shard.start:self.shard.stop]}, device=device,
                             dtype=dtype)                                                    # [R, n_p]
        self._TtT = BandedFrames(window.normal_matrix, comm, ring=False, what="the window's temporal PSF",
                                 device=device, dtype=dtype)
        self.normal_gain = window.normal_gain
        self.in_shape = (self.shard.count, *window.in_shape[1:])
        self.out_shape = tuple(window.out_shape)

    def A(self, x: Tensor) -> Tensor:
        """y = Σ_p T_p S x_p, the same on every rank.  [n_p, 3, H, W] → [R, 3, H', W']"""
        z = x if self._S is None else self._S.A(x)
        return self.comm.all_sum((self._Tp.like("T", z) @ z.reshape(z.shape[0], -1)).reshape(self.out_shape))

    def A_adjoint(self, y: Tensor) -> Tensor:
        """x_p = Sᵀ(T_pᵀ y) on this rank's frames; y is the window's whole measurement.  [R, ...] → [n_p, 3, H, W]"""
        z = (self._Tp.like("T", y).T @ y.reshape(y.shape[0], -1)).reshape(self.shard.count, *y.shape[1:])
        return z if self._S is None else self._S.A_adjoint(z)

    def A_adjoint_A(self, x: Tensor) -> Tensor:
        """AᵀA x = Sᵀ (T_winᵀT_win) S x on this rank's frames.  [n_p, 3, H, W] → same"""
        if self._S is None:
            return self._TtT(x)
        return self._S.A_adjoint(self._TtT(self._S.A(x)))

    def inner(self, a: Tensor, b: Tensor) -> Tensor:
        """⟨a, b⟩ over the window's free frames: this rank's partial sum, all-reduced.  → [] float64"""
        return self.comm.all_sum(inner_product(a, b))

    def frame_preconditioner(self, phi, *, device=None, dtype=None):
        """The window's φ(g·T_winᵀT_win) (WindowOperator.preconditioner_matrix), in the pixel layout."""
        return in_pixel_layout(self.window.preconditioner_matrix(phi), self.comm, device=device, dtype=dtype)
