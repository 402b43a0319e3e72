"""A degradation on this process's frames of a frame-sharded video (engine.distributed; docs/distributed.md).

Thin constructors of engine.operators.kronecker.KroneckerOperator, A = T ⊗ S with the frames
sharded: `ShardedOperator` for a whole video from its spec (rows split like the frames, T the
product of the spec's temporal matrices, banded, modulo N for the circular boundary) and
`ShardedWindowOperator` for a window of engine.windows (its R rows on every process). Every result
equals the one-process operator's (engine.operators.from_spec, the window's KroneckerOperator) on
the same rows, to rounding; a shard must hold at least the band's reach, else InputError.
"""

from __future__ import annotations

import torch

from engine.errors import InputError
from engine.operators.kronecker import KroneckerOperator
from engine.operators.registry import from_spec
from engine.operators.spec import join, split_temporal


class ShardedOperator(KroneckerOperator):
    """`spec`'s operator on this process's frames of a video of `shape` [N, C, H, W] sharded by `comm`
    (engine.distributed.Comm).  [n_p, C, H, W] → [n_p, C', H', W']

    T = T_k ⋯ T₁ of the temporal terms, S of the frame-local ones (`seed` draws an inpainting mask).
    As the one-process Composition, it offers CG's preconditioner for exactly one temporal term.
    """

    def __init__(self, spec: str, shape, comm, *, seed: int = 0, device=None, dtype=None):
        n, *frame = (int(s) for s in shape)
        if comm.shard.frames != n:
            raise InputError(f"the video has {n} frames but the process group was sharded for {comm.shard.frames}")
        temporal_terms, frame_terms = split_temporal(spec)
        spatial = (from_spec(join(frame_terms), (comm.shard.count, *frame), seed=seed, device=device, dtype=dtype,
                             kernels="torch") if frame_terms else None)
        T, ring = None, False
        if temporal_terms:
            T = torch.eye(n, dtype=torch.float64)
            for term in temporal_terms:
                op = from_spec(str(term), (n, 1, 1, 1), kernels="torch")
                T = op.constants.original("matrix") @ T
                ring = ring or op.boundary == "circular"
        super().__init__(T, spatial, frame, comm=comm, rows="split", ring=ring,
                         what=f"the temporal PSF {join(temporal_terms)}", preconditioned=len(temporal_terms) == 1,
                         device=device, dtype=dtype)


class ShardedWindowOperator(KroneckerOperator):
    """A window's operator A = T_win ⊗ S (`window`, a one-process KroneckerOperator) with its F free
    frames sharded by `comm` and its R measurement rows held whole by every process.
    [n_p, 3, H, W] → [R, 3, H', W']

    The sampler's CG (AᵀA, the all-reduced `inner`, the preconditioner in the pixel layout)
    communicates as ShardedOperator's does; A itself, an all-reduce of a measurement, is not called
    inside the loop.
    """

    def __init__(self, window: KroneckerOperator, comm, *, device=None, dtype=torch.float32):
        super().__init__(window.matrix, window.spatial, window.in_shape[1:], comm=comm, rows="whole",
                         what="the window's temporal PSF", device=device, dtype=dtype)
