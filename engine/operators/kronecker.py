"""The Kronecker operator A = T ⊗ S: a frame matrix T along frames, a frame-local operator S on every frame.

Every spec is such a product (docs/design.md, "Operators"): its temporal terms act along frames
only, as one frame matrix T (the product of theirs), its other terms on each frame alike, as one
frame-local operator S. The two act on different axes and commute, so

    A = T ⊗ S,    Aᵀ = Tᵀ ⊗ Sᵀ,    AᵀA = (TᵀT) ⊗ (SᵀS),    ‖AᵀA‖ = ‖TᵀT‖·‖SᵀS‖,

and CG's preconditioner (engine.cg) is φ(g·TᵀT) along frames, g = ‖SᵀS‖. T is [R, F]: R measurement
rows read F frames. One class serves every layout of the frames and the rows:

- one process (`comm` None): a whole video (T the N×N temporal matrix) or a window of one
  (T = T[m₀:m₁, a:b], a block of it: engine.windows);
- frames sharded over processes (engine.distributed.Comm), rows "split" like the frames (T square
  and banded, a whole video: `KroneckerOperator.from_spec(spec, shape, comm=…)`): T, Tᵀ and TᵀT by
  one halo exchange each (engine.operators.banded.BandedFrames);
- frames sharded, rows "whole" on every process (a window's rows: `window.sharded(comm)`): with x_p
  this process's frames [a, b), A x = Σ_p T[:, a:b] S x_p (one all-reduce), Aᵀ y = Sᵀ T[:, a:b]ᵀ y (local).

Sharded, AᵀA = Sᵀ (TᵀT) S x is one halo exchange, T applied on the measurement's side (a
super-resolution's halo is s² times smaller), inner products are all-reduced and the preconditioner
is applied in the pixel layout (engine.operators.banded.in_pixel_layout). In exact arithmetic every
layout gives the one-process operator's rows; in float64 they agree to rounding.

`split_spec` parses a spec into its one temporal term (`TemporalTerm`: taps and boundary) and its
frame-local rest: the form windows (engine.windows) and the streamed input guard (engine.realvideo) take.

Every layout runs torch ops (`kernels`): T is an explicit frame matrix (a block of one for a window,
a shard's band) applied as a matmul, and the sharded layouts reduce across processes, which the
fused Triton kernels (one device's whole video) do not. The whole-video operator of `from_spec`
(engine.operators.compose.Composition) is the same product in the spec's order of terms; it stays a
class of its own because on Triton it applies T by its taps with the boundary inside fused passes
(kernels.compose), which an explicit frame matrix cannot feed. In float64 the two agree to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from engine.errors import InputError
from engine.operators.banded import BandedFrames, band, in_pixel_layout
from engine.operators.base import LinearOperator, inner_product
from engine.operators.common import Constants
from engine.operators.registry import from_spec
from engine.operators.spec import Term, join, split_temporal
from engine.operators.temporal import frame_preconditioner, frames_matmul, frames_operator

Tensor = torch.Tensor

#: Where the R measurement rows of a frame-sharded operator live: on every process, or split like the frames.
ROWS = ("whole", "split")


# ── the temporal term and its frame matrix ──────────────────────────────────

@dataclass(frozen=True)
class TemporalTerm:
    """A temporal PSF: taps k [w] (float64, CPU) and the boundary at the video's ends."""

    kernel: Tensor
    boundary: str

    @property
    def centre(self) -> int:
        """c = (w − 1) // 2: row n reads frames up to n + c."""
        return (self.kernel.numel() - 1) // 2

    @property
    def left(self) -> int:
        """ℓ = w − 1 − c: row n reads frames from n − ℓ."""
        return self.kernel.numel() - 1 - self.centre

    @property
    def reach(self) -> int:
        """r = max(c, ℓ): how far one measurement frame reaches into the clean video."""
        return max(self.centre, self.left)

    @property
    def context(self) -> int:
        """w − 1: the restored frames a window pins before its first free frame."""
        return self.kernel.numel() - 1


#: No temporal term: T = I.
IDENTITY = TemporalTerm(torch.ones(1, dtype=torch.float64), "zero")


def frame_matrix(term: TemporalTerm, rows: tuple[int, int], cols: tuple[int, int], end: Optional[int]) -> Tensor:
    """T[m₀:m₁, c₀:c₁] of the whole video's temporal matrix, float64.  → [m₁ − m₀, c₁ − c₀]

    T[n, m] = Σ_j k[j]·[m = n + c − j]. Frame indices below 0 take the start boundary; at or past
    `end` (the frame count, when known) the end boundary ("replicate" clamps to the end frame,
    "zero" drops the term). Every other index a row reads must lie in [c₀, c₁).
    """
    (m0, m1), (c0, c1) = rows, cols
    M = torch.zeros(m1 - m0, c1 - c0, dtype=torch.float64)
    for n in range(m0, m1):
        for j, tap in enumerate(term.kernel.tolist()):
            m = n + term.centre - j
            outside = m < 0 or (end is not None and m >= end)
            if outside and term.boundary == "zero":
                continue
            m = min(max(m, 0), end - 1) if end is not None else max(m, 0)
            if not c0 <= m < c1:
                raise RuntimeError(f"row {n} reads frame {m} outside the frames [{c0}, {c1})")
            M[n - m0, m - c0] += tap
    return M


#: Temporal boundaries windows support, and the one used when the spec names none.
WINDOW_BOUNDARIES = ("replicate", "zero")
DEFAULT_BOUNDARY = "replicate"


# ── a windowed spec: one temporal term, the rest frame-local ─────────────────

def split_spec(spec: str) -> tuple[TemporalTerm, Optional[str]]:
    """(the temporal term, or the identity; the spatial terms joined by '+', or None).

    The spatial terms act on every frame alike, so they commute with T (A = T ⊗ S) and
    their order relative to the temporal term does not matter.
    """
    temporal, spatial = split_temporal(spec)
    if len(temporal) > 1:
        raise InputError(f"spec {spec!r} has {len(temporal)} temporal terms; windows take at most one")
    return (_temporal_term(temporal[0]) if temporal else IDENTITY), (join(spatial) or None)


def _temporal_term(term: Term) -> TemporalTerm:
    """`temporal:FAMILY:VALUE[:BOUNDARY]` → its taps (parsed by engine.operators) and boundary."""
    fields = [term.name, *term.fields]
    boundary = fields[3] if len(fields) == 4 else DEFAULT_BOUNDARY
    if boundary == "circular":
        raise InputError(f"{str(term)!r}: the circular boundary wraps the video's last frames onto its first, which "
                         f"windows cannot restore; use :replicate or :zero, or restore the whole video at once")
    if boundary not in WINDOW_BOUNDARIES:
        raise InputError(f"{str(term)!r}: unknown temporal boundary {boundary!r}; windows accept "
                         f"{', '.join(WINDOW_BOUNDARIES)}")
    taps = from_spec(":".join([*fields[:3], "zero"]), (1, 1, 1, 1), kernels="torch").kernel
    return TemporalTerm(taps, boundary)


# ── the operator ─────────────────────────────────────────────────────────────

class KroneckerOperator(LinearOperator):
    """A = T ⊗ S on frames of shape `frame` (C, H, W).  [F or n_p, C, H, W] → [R or n_p, C', H', W']

    T: [R, F] float64 (None: the identity, for a spec without a temporal term; then the rows are the
    frames); `spatial`: S, frame-local, applied to any number of frames (None: the identity).
    `comm` (engine.distributed.Comm over the F frames): this process holds its frames only, and the
    rows as `rows` says (ROWS; "split" needs T square). `ring`: T's band wraps around (the circular
    boundary). `what` names T in the error of a shard narrower than its band. `preconditioned`: False
    when no preconditioner is to be offered (the one-process operator of several temporal terms has none).
    """

    kernels = "torch"

    def __init__(self, T: Optional[Tensor], spatial: Optional[LinearOperator], frame, *, comm=None,
                 rows: str = "whole", ring: bool = False, what: str = "the temporal PSF",
                 preconditioned: bool = True, device=None, dtype=torch.float32):
        if rows not in ROWS:
            raise ValueError(f"rows must be one of {', '.join(ROWS)}, got {rows!r}")
        if T is None and spatial is None:
            raise ValueError("T ⊗ S needs T or S")
        self.matrix, self.spatial, self.comm, self.rows = T, spatial, comm, rows
        self._bands: dict[str, tuple[int, int]] = {}                # T's and TᵀT's (lo, hi), one process only
        self.shard = None if comm is None else comm.shard          # this process's frames (engine.distributed.Shard)
        self.preconditioned = preconditioned and T is not None
        #: TᵀT [F, F], formed in float64 (None for the identity)
        self.normal_matrix = None if T is None else T.T @ T
        #: g = ‖SᵀS‖, the factor φ's argument is scaled by
        self.spatial_gain = spatial.normal_gain if spatial is not None else 1.0
        temporal_gain = 1.0 if T is None else float(torch.linalg.eigvalsh(self.normal_matrix)[-1]) if T.numel() else 0.0
        #: the largest eigenvalue of AᵀA = ‖TᵀT‖·‖SᵀS‖ (engine.cg's preconditioner scales δ by it)
        self.normal_gain = temporal_gain * self.spatial_gain
        frame = tuple(int(s) for s in frame)
        out_frame = tuple(spatial.out_shape[1:]) if spatial is not None else frame
        if T is None:                                    # the rows are this process's frames, as S takes them
            self.rows = "split"
            self.in_shape, self.out_shape = (spatial.in_shape[0], *frame), (spatial.in_shape[0], *out_frame)
            return
        if comm is None:
            self.in_shape, self.out_shape = (T.shape[1], *frame), (T.shape[0], *out_frame)
            self._constants = Constants({"T": T, "TtT": self.normal_matrix}, device=device, dtype=dtype)
            if not ring:
                self._bands = {"T": band(T, ring), "TtT": band(self.normal_matrix, ring)}
            return
        if comm.shard.frames != T.shape[1]:
            raise InputError(f"the operator has {T.shape[1]} frames but the process group was sharded for "
                             f"{comm.shard.frames}")
        if rows == "split" and T.shape[0] != T.shape[1]:
            raise ValueError(f"rows split like the frames need a square T, got {tuple(T.shape)}")
        self.in_shape = (self.shard.count, *frame)
        self.out_shape = (self.shard.count if rows == "split" else T.shape[0], *out_frame)
        banded = dict(what=what, device=device, dtype=dtype)
        self._TtT = BandedFrames(self.normal_matrix, comm, ring, **banded)
        if rows == "split":
            self._T = BandedFrames(T, comm, ring, **banded)
            self._Tt = BandedFrames(T.T.contiguous(), comm, ring, **banded)
        else:
            self._constants = Constants({"T": T[:, self.shard.start:self.shard.stop]}, device=device,
                                        dtype=dtype)                                          # [R, n_p]

    @classmethod
    def from_spec(cls, spec: str, shape, *, comm=None, seed: int = 0, device=None,
                  dtype=None) -> "KroneckerOperator":
        """`spec`'s operator for videos of `shape` [N, C, H, W]: T = T_k ⋯ T₁ of its temporal terms (N×N),
        S of its frame-local terms on torch ops (`seed` draws an inpainting mask). With `comm`, on this
        process's n_p frames of the video sharded by it, the rows split like the frames.
        [N or n_p, C, H, W] → [N or n_p, C', H', W']

        As the one-process Composition of from_spec, it offers CG's preconditioner for exactly one
        temporal term.
        """
        n, *frame = (int(s) for s in shape)
        if comm is not None and comm.shard.frames != n:
            raise InputError(f"the video has {n} frames but the process group was sharded for {comm.shard.frames}")
        temporal_terms, frame_terms = split_temporal(spec)
        here = n if comm is None else comm.shard.count
        spatial = (from_spec(join(frame_terms), (here, *frame), seed=seed, device=device, dtype=dtype,
                             kernels=cls.kernels) if frame_terms else None)
        T, ring = None, False
        if temporal_terms:
            T = torch.eye(n, dtype=torch.float64)
            for term in temporal_terms:
                op = from_spec(str(term), (n, 1, 1, 1), kernels=cls.kernels)
                T = op.constants.original("matrix") @ T
                ring = ring or op.boundary == "circular"
        return cls(T, spatial, frame, comm=comm, rows="split", ring=ring,
                   what=f"the temporal PSF {join(temporal_terms)}", preconditioned=len(temporal_terms) == 1,
                   device=device, dtype=dtype)

    def sharded(self, comm, *, what: str = "the temporal PSF", device=None,
                dtype=torch.float32) -> "KroneckerOperator":
        """This one-process operator with its F frames sharded by `comm` and its R rows whole on every
        process (a window's: engine.windows); `what` names T in the error of a shard narrower than its band.
        [n_p, C, H, W] → [R, C', H', W']

        The sampler's CG (AᵀA, the all-reduced `inner`, the preconditioner in the pixel layout) then
        communicates as a sharded whole video's does; A itself, an all-reduce of a measurement, is not
        called inside the loop."""
        if self.comm is not None:
            raise ValueError("the operator is sharded already")
        return KroneckerOperator(self.matrix, self.spatial, self.in_shape[1:], comm=comm, rows="whole", what=what,
                                 preconditioned=self.preconditioned, device=device, dtype=dtype)

    def A(self, x: Tensor) -> Tensor:
        """y = T (S x).  [*in_shape] → [*out_shape]"""
        z = x if self.spatial is None else self.spatial.A(x)
        if self.matrix is None:
            return z
        if self.comm is None:
            return frames_matmul(self._constants.like("T", z), z, self._bands.get("T"))
        if self.rows == "split":
            return self._T(z)
        return self.comm.all_sum(frames_matmul(self._constants.like("T", z), z))       # Σ_p T[:, a:b] S x_p

    def A_adjoint(self, y: Tensor) -> Tensor:
        """x = Sᵀ (Tᵀ y).  [*out_shape] → [*in_shape]"""
        if self.matrix is None:
            z = y
        elif self.comm is not None and self.rows == "split":
            z = self._Tt(y)
        else:
            band_t = self._bands["T"][::-1] if "T" in self._bands else None      # Tᵀ's band is T's mirrored
            z = frames_matmul(self._constants.like("T", y).T, y, band_t)         # local: y holds every row
        return z if self.spatial is None else self.spatial.A_adjoint(z)

    def A_adjoint_A(self, x: Tensor) -> Tensor:
        """AᵀA x = (TᵀT) ⊗ (SᵀS) x: TᵀT after SᵀS on one process, Sᵀ (TᵀT) S x sharded.  [*in_shape] → same"""
        if self.matrix is None:
            return x if self.spatial is None else self.spatial.A_adjoint_A(x)
        if self.comm is None:
            z = x if self.spatial is None else self.spatial.A_adjoint_A(x)
            return frames_matmul(self._constants.like("TtT", z), z, self._bands.get("TtT"))
        if self.spatial is None:
            return self._TtT(x)
        return self.spatial.A_adjoint(self._TtT(self.spatial.A(x)))

    def inner(self, a: Tensor, b: Tensor) -> Tensor:
        """⟨a, b⟩ over the whole video's frames (CG's inner product, on the domain): sharded, this process's
        partial sum all-reduced.  → [] float64"""
        partial = inner_product(a, b)
        return partial if self.comm is None else self.comm.all_sum(partial)

    def preconditioner_matrix(self, phi) -> Tensor:
        """φ(g·TᵀT), g = ‖SᵀS‖ (engine.operators.temporal.frame_preconditioner).  → [F, F] float64"""
        return frame_preconditioner(self.normal_matrix, lambda lam: phi(self.spatial_gain * lam))

    def frame_preconditioner(self, phi, *, device=None, dtype=None):
        """v ↦ φ(g·TᵀT) v along all F frames, placed on `device` in `dtype` at once (sharded: in the pixel
        layout), or None without a temporal term (or `preconditioned` False).  [*in_shape] → [*in_shape]"""
        if not self.preconditioned:
            return None
        P = self.preconditioner_matrix(phi)
        if self.comm is None:
            return frames_operator(P, self.kernels, device=device, dtype=dtype)
        return in_pixel_layout(P, self.comm, device=device, dtype=dtype)
