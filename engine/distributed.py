"""One video sharded by frames over torch.distributed: who holds which frames, and the three
collectives the sharded CG needs (#17).

Rank p of P holds the contiguous frames [start_p, stop_p) of an N-frame video (sizes differ by at
most one, the first ranks the larger). Everything video-sized on a rank is its shard only:

- a banded operator along frames (the temporal PSF, its adjoint, TᵀT) needs `lo` frames of the
  left neighbour and `hi` of the right one: `halo`, one exchange with the two neighbours
  (around a ring for the circular boundary);
- an inner product over the video is the sum of the ranks' partial sums: `all_sum`, an all-reduce
  of one float64 scalar;
- a dense N×N matrix along frames (CG's preconditioner) needs every frame of a pixel: `to_pixels`
  redistributes [n_p, C, H, W] frame shards into [N, D_p] pixel shards (D = C·H·W split in P
  pieces) by one all-to-all, and `to_frames` brings them back.

The collectives are torch.distributed's own (gloo on CPUs, NCCL on GPUs), issued on the current
stream; none of them reads a value on the host, so the loop keeps its no-sync property. `clock`
(engine.profiling.StageClock, optional) times them as the stage "communication".
"""

from __future__ import annotations

import os
import queue
import socket
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Optional

import torch
import torch.distributed as dist

from engine.errors import CheckpointError, InputError, ModelError, PeerError

Tensor = torch.Tensor


def frame_ranges(frames: int, world: int) -> list[tuple[int, int]]:
    """[start, stop) of each rank's frames: contiguous, sizes ⌈N/P⌉ for the first N mod P ranks, ⌊N/P⌋ after."""
    if world > frames:
        raise InputError(f"{world} processes for {frames} frames: every process needs at least one frame; "
                         f"use at most {frames} processes")
    base, extra = divmod(frames, world)
    bounds = [0]
    for p in range(world):
        bounds.append(bounds[-1] + base + (p < extra))
    return list(zip(bounds[:-1], bounds[1:]))


def even_split(total: int, parts: int) -> list[int]:
    """`total` split into `parts` sizes differing by at most one (the first ones larger)."""
    base, extra = divmod(total, parts)
    return [base + (p < extra) for p in range(parts)]


@dataclass(frozen=True)
class Shard:
    """This rank's place in the video: frames [start, stop) of `frames`, rank `rank` of `world`."""

    rank: int
    world: int
    frames: int
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


class Comm:
    """The frame-sharded video's collectives over `group` (None: the default group)."""

    def __init__(self, frames: int, group: Optional[dist.ProcessGroup] = None,
                 clock: Optional[Callable[[str], ContextManager]] = None):
        if not dist.is_initialized():
            raise InputError("torch.distributed is not initialised: run under torchrun, or call "
                             "torch.distributed.init_process_group first")
        self.group = group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        self.ranges = frame_ranges(frames, world)
        self.shard = Shard(rank, world, frames, *self.ranges[rank])
        self.clock = clock

    @property
    def rank(self) -> int:
        return self.shard.rank

    @property
    def world(self) -> int:
        return self.shard.world

    def _timed(self):
        return nullcontext() if self.clock is None else self.clock("communication")

    def _peer(self, rank: int) -> int:
        """The global rank of `rank` in this group (point-to-point operations take global ranks)."""
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def all_sum(self, value: Tensor) -> Tensor:
        """Σ over ranks of a partial sum (an all-reduce; one scalar for an inner product).  [...] → [...]"""
        total = value.reshape(-1).clone()
        with self._timed():
            dist.all_reduce(total, group=self.group)
        return total.reshape(value.shape)

    def neighbours(self, ring: bool) -> tuple[Optional[int], Optional[int]]:
        """(left, right) ranks; around a ring for a circular boundary, None past the ends otherwise."""
        p, world = self.rank, self.world
        if ring:
            return (p - 1) % world, (p + 1) % world
        return (p - 1 if p > 0 else None), (p + 1 if p < world - 1 else None)

    def halo(self, x: Tensor, lo: int, hi: int, ring: bool) -> Tensor:
        """[left neighbour's last lo frames, x, right neighbour's first hi frames] (zeros past the ends
        without `ring`).  x: [n, ...] → [lo + n + hi, ...]

        Each rank sends its first hi frames to the left and its last lo frames to the right, so every
        shard must hold at least max(lo, hi) frames (checked where the operator is built).

        NCCL ignores tags: between two ranks it pairs sends and receives in the order each rank issued
        them. So the operations are issued in one order on every rank: send left (hi frames), send
        right (lo frames), receive from the right (its hi frames), receive from the left (its lo
        frames). What a rank sends to a peer then arrives in the order that peer receives it, also
        when left and right are the same peer (two ranks around a ring). One rank around a ring is
        its own neighbour: its halos are its own frames, no message.
        """
        left, right = self.neighbours(ring)
        n = x.shape[0]
        if ring and self.world == 1:
            return torch.cat([x[n - lo:], x, x[:hi]])
        left_buf = x.new_zeros((lo, *x.shape[1:]))
        right_buf = x.new_zeros((hi, *x.shape[1:]))
        ops = []
        if left is not None and hi:
            ops.append(dist.P2POp(dist.isend, x[:hi].contiguous(), self._peer(left), self.group, tag=1))
        if right is not None and lo:
            ops.append(dist.P2POp(dist.isend, x[n - lo:].contiguous(), self._peer(right), self.group, tag=0))
        if right is not None and hi:
            ops.append(dist.P2POp(dist.irecv, right_buf, self._peer(right), self.group, tag=1))
        if left is not None and lo:
            ops.append(dist.P2POp(dist.irecv, left_buf, self._peer(left), self.group, tag=0))
        if ops:
            with self._timed():
                for request in dist.batch_isend_irecv(ops):
                    request.wait()
        return torch.cat([left_buf, x, right_buf])

    def pixel_split(self, pixels: int) -> list[int]:
        """How many of a frame's `pixels` values (C·H·W) each rank holds in the pixel layout."""
        return even_split(pixels, self.world)

    def to_pixels(self, x: Tensor) -> Tensor:
        """Frame shards → pixel shards: rank p gets every frame of its D_p values.  [n_p, ...] → [N, D_p]"""
        n = x.shape[0]
        flat = x.reshape(n, -1)
        widths = self.pixel_split(flat.shape[1])
        send = torch.cat([block.reshape(-1) for block in flat.split(widths, dim=1)])
        counts = [stop - start for start, stop in self.ranges]
        mine = widths[self.rank]
        recv = x.new_empty(self.shard.frames * mine)
        with self._timed():
            dist.all_to_all_single(recv, send, [c * mine for c in counts], [n * w for w in widths], group=self.group)
        return recv.reshape(self.shard.frames, mine)

    def to_frames(self, z: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Pixel shards → frame shards, the inverse of `to_pixels`.  [N, D_p] → `shape` = [n_p, ...]"""
        counts = [stop - start for start, stop in self.ranges]
        widths = self.pixel_split(int(torch.Size(shape[1:]).numel()))
        n = shape[0]
        recv = z.new_empty(n * sum(widths))
        with self._timed():
            dist.all_to_all_single(recv, z.contiguous().reshape(-1), [n * w for w in widths],
                                   [c * z.shape[1] for c in counts], group=self.group)
        blocks = recv.split([n * w for w in widths])
        return torch.cat([b.reshape(n, w) for b, w in zip(blocks, widths)], dim=1).reshape(shape)


def launched_by_torchrun() -> bool:
    """True in a process torchrun started (it sets these)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def init_from_environment(device: str) -> str:
    """Join the process group torchrun describes (NCCL for CUDA devices, gloo for the CPU) and return
    this rank's device (`cuda:LOCAL_RANK` when `device` is "cuda"). Idempotent."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return device


def gather_frames(local: Tensor, comm: Comm, dst: int = 0) -> Optional[Tensor]:
    """The whole video on rank `dst` from every rank's frames (None on the others).  [n_p, ...] → [N, ...]"""
    most = max(stop - start for start, stop in comm.ranges)
    padded = local.new_zeros((most, *local.shape[1:]))
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(comm.world)] if comm.rank == dst else None
    with comm._timed():
        dist.gather(padded, parts, dst=comm._peer(dst), group=comm.group)
    if parts is None:
        return None
    return torch.cat([part[:stop - start] for part, (start, stop) in zip(parts, comm.ranges)])


def scatter_frames(whole: Optional[Tensor], comm: Comm, frame: tuple[int, ...], *, src: int = 0, dtype=None,
                   device=None) -> Tensor:
    """This rank's frames [start, stop) of the video `whole` that rank `src` holds (None on the others);
    `frame` is one frame's shape.  [N, *frame] → [n_p, *frame]"""
    most = max(stop - start for start, stop in comm.ranges)
    mine = torch.empty((most, *frame), dtype=dtype, device=device)
    parts = None
    if comm.rank == src:
        parts = [whole.new_zeros((most, *frame)) for _ in comm.ranges]
        for part, (start, stop) in zip(parts, comm.ranges):
            part[:stop - start] = whole[start:stop]
    with comm._timed():
        dist.scatter(mine, parts, src=comm._peer(src), group=comm.group)
    return mine[:comm.shard.count]


def gather_records(record: dict, group: Optional[dist.ProcessGroup] = None, dst: int = 0) -> Optional[list[dict]]:
    """Every rank's `record` (small, JSON-like), in rank order on `group`'s rank `dst`; None on the others."""
    records = [None] * dist.get_world_size(group) if dist.get_rank(group) == dst else None
    dist.gather_object(record, records, dst=dst if group is None else dist.get_global_rank(group, dst), group=group)
    return records


#: the key of torchrun's store under which the first process to fail leaves its message for the others
FAILED_KEY = "engine/failed"
#: errors a user acts on (engine.cli prints them as one line): re-raised with the process named
_USER_ERRORS = (InputError, CheckpointError, ModelError, ImportError)


@contextmanager
def one_failure_for_all(rank: int, world: int) -> Iterator[None]:
    """Make a failure in any process of a torchrun job the failure of every process, with its message.

    The process that fails first leaves "process R of P: message" in torchrun's store (its agent keeps
    the store while workers fail) and re-raises with that message; a process whose collective then
    breaks (the transport's RuntimeError: its peer is gone) raises PeerError with the message instead.
    Without a store the transport's error stands.
    """
    store = _torchrun_store()
    try:
        yield
    except Exception as err:
        told = _read(store)
        if told is not None and isinstance(err, RuntimeError) and not isinstance(err, (*_USER_ERRORS, PeerError)):
            raise PeerError(f"process {rank} of {world} stopped: {told}") from None
        message = f"process {rank} of {world}: {err}"
        _leave(store, message)
        if isinstance(err, _USER_ERRORS):
            raise type(err)(message) from None
        raise


def _torchrun_store():
    """A client of torchrun's store, or None where there is none."""
    try:
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                             timeout=timedelta(seconds=10))
    except (KeyError, ValueError, RuntimeError):
        return None


def _leave(store, message: str) -> None:
    if store is None:
        return
    try:
        if not store.check([FAILED_KEY]):
            store.set(FAILED_KEY, message)
    except RuntimeError:
        pass                                   # the store is gone too: the message is still printed here


def _read(store) -> Optional[str]:
    try:
        return store.get(FAILED_KEY).decode() if store is not None and store.check([FAILED_KEY]) else None
    except RuntimeError:
        return None


# ── a local job without torchrun (tests, benchmarks, notebooks) ──────────────

def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world, port, backend, results, args):
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=120))
        results.put((rank, True, fn(rank, world, *args)))
    except Exception as err:                        # reported to the caller, which decides
        results.put((rank, False, f"{type(err).__name__}: {err}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_local(fn, world: int, *args, backend: str = "gloo", timeout: float = 600) -> list[tuple[bool, object]]:
    """fn(rank, world, *args) in `world` fresh processes on this machine, each in the default process
    group (`backend`: gloo, or nccl with rank r on cuda:r), over 127.0.0.1; returns [(ok, value or the
    error's text)] by rank. `fn` must be importable by name and return something picklable by value
    (numpy, not torch tensors: those travel in shared memory that ends with their process).
    AssertionError when some rank has not answered within `timeout` seconds."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, rank, world, port, backend, results, args)) for rank in range(world)]
    for p in procs:
        p.start()
    out = {}
    try:
        for _ in range(world):
            rank, ok, value = results.get(timeout=timeout)
            out[rank] = (ok, value)
    except queue.Empty:
        raise AssertionError(f"only ranks {sorted(out)} of {world} answered within {timeout} s") from None
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world)]
