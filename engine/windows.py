"""Videos of any length in windows with pinned context, and the streaming API (docs/design.md, "Windows").

A spec is at most one temporal PSF (kernel k of width w, centre c) composed with
frame-local spatial terms S (blur, sr, inpaint). On frames n = 0 … N−1 the temporal
part is the N×N matrix T (engine.operators.temporal), so A = T ⊗ S and

    y[n] = S( Σ_m T[n, m] · x[m] ),    T[n, m] = Σ_j k[j]·[m = n + c − j]   (interior rows).

Row n reads frames n − ℓ … n + c, ℓ = w − 1 − c. At the video's ends a frame index
outside [0, N) is clamped to the end frame ("replicate") or dropped ("zero");
"circular" would read the other end of the video and is refused.

Windows. The free frames [a, b) of a window (W = b − a of them) are restored together
from the measurement rows [m₀, m₁),

    m₀ = max(0, a − c),   m₁ = b − c (N for the last window),

every row that reads a free frame and no frame past b. Those rows read frames from
m₀ − ℓ, so the P = min(a, w − 1) restored frames [a − P, a) before the window
(the context: w − 1 = 2r for a centred kernel of reach r = c) are pinned and enter
as a known term:

    y'[n] = y[n] − S( Σ_{m < a} T[n, m] · x̄[m] ),    n ∈ [m₀, m₁)
    A_win z = S( T[m₀:m₁, a:b] z ),  z = x[a:b]  (W free frames)

A window yields its frames [a + O, b − L) and the next one starts at b − L − O: the last L
frames (the lag), which miss the rows past m₁, are solved again with them, and so are the O
frames before (the lead), which the next window solves but does not yield again. Why both (measured
by bench/window_quality.py, docs/results.md "Windows"): a window's open end leaves modes that only
the prior fills, and through the taps' row sums (x[n + w] − x[n] is measured) and the K steps of the
loop they pull on frames up to about 3(w − 1) before it: the default L = 3(w − 1). The first free
frame next to the pinned ones absorbs alone the residual of the row that reads it and w − 1 fixed
frames (every other frame of that row is pinned): the default O = ⌈(w − 1)/2⌉ keeps it unyielded.
L = O = 0 yields all W frames (cheaper, measurably worse). At the video's true ends the boundary
applies; there are no seams. Each window runs
Algorithm 1 (engine.sampler.reverse_process) with the same noise image per step, drawn
once from the seed (shared by all frames of all windows): the video is a deterministic
function of the seed, W, L and O (not of the process count: below). With a warm start t₀
(`start`), each window begins from √ᾱ_{t₀}·X_init + √(1−ᾱ_{t₀})·E_b, X_init from a few CG
iterations on its own normal equations A_winᵀA_win z = A_winᵀy' (engine.schedule.warm_start).
With a frame-local operator whose CG converges exactly (inpainting, SR: AᵀA has two
eigenvalues) windows give the whole-video solve exactly; for a temporal PSF they differ by
the pinned frames (fixed, not refined by later rows) and by CG's per-window step sizes.

Several processes (a torch.distributed `group`; docs/distributed.md). Every process reads the same measurement
stream and holds the window's rows; the window's free frames are sharded over the processes
(engine.operators.kronecker.KroneckerOperator.sharded: the network on each process's frames, CG across
all of them), gathered on the group's rank 0, which yields them, and the next window's lead and pinned
frames are broadcast from it. A window too short to split (fewer than P·(w − 1) frames, the
band of T_winᵀT_win) is solved whole by every process alike.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch
import torch.distributed as dist

from engine.cg import preconditioner
from engine.distributed import Comm, gather_frames
from engine.errors import InputError
from engine.memory import MOTION_BUFFERS, WINDOW_BUFFERS
from engine.operators import from_spec
from engine.operators.base import LinearOperator
from engine.operators.banded import band
from engine.operators.kronecker import KroneckerOperator, TemporalTerm, frame_matrix, split_spec
from engine.operators.measurement import noisy_frames
from engine.operators.temporal import frames_matmul
from engine.runtime import SolverConfig, kernels_run, make_network
from engine.sampler import EpsModel, draw_noise, reverse_process
from engine.schedule import ddim_steps, warm_start
from engine.temporal_prior import MotionPrior, video_frames

log = logging.getLogger(__name__)
Tensor = torch.Tensor



# ── the window plan ─────────────────────────────────────────────────────────

#: the default lag, in widths w − 1 of the temporal PSF: frames a window solves again with the next one
#: (measured by bench/window_quality.py: a window's open end still pulls on frames about 3(w − 1) before it)
LAG_WIDTHS = 3


def default_lag(term: TemporalTerm) -> int:
    """L = LAG_WIDTHS·(w − 1): the frames at a window's end that the next window restores again."""
    return LAG_WIDTHS * term.context


def default_lead(term: TemporalTerm) -> int:
    """O = ⌈(w − 1)/2⌉: the frames already yielded that a window restores again before its first new frame,
    so that no yielded frame lies next to the pinned frames (whose row residual it alone would absorb)."""
    return (term.context + 1) // 2


def least_window(term: TemporalTerm, lag: Optional[int] = None, lead: Optional[int] = None) -> int:
    """The fewest free frames a window may hold: more than the reach r and than L + O (it yields a frame)."""
    lag = default_lag(term) if lag is None else lag
    lead = default_lead(term) if lead is None else lead
    return max(term.reach, lag + lead) + 1


#: the share of extra network passes at which a window stops growing: W/(W − L − O) ≤ 1 + REPEAT_SHARE
REPEAT_SHARE = 0.15


def enough_window(term: TemporalTerm, lag: Optional[int] = None, lead: Optional[int] = None) -> int:
    """W* = ⌈(1 + s)(L + O)/s⌉, s = REPEAT_SHARE: the shortest window that solves each frame it yields at most
    1 + s times on average (it solves W frames and yields W − L − O). A longer window holds more memory and
    saves at most s of the time; windows of 32 or more frames already come within 0.1 dB of the whole video."""
    lag = default_lag(term) if lag is None else lag
    lead = default_lead(term) if lead is None else lead
    return max(least_window(term, lag, lead), math.ceil((1 + REPEAT_SHARE) * (lag + lead) / REPEAT_SHARE))


@dataclass(frozen=True)
class Window:
    """Free frames [start, stop), measurement rows [rows[0], rows[1]), pinned frames [context, start);
    frames [first, commit) are yielded: [start, first) were yielded before (the lead), [commit, stop)
    are solved again by the next window (the lag)."""

    start: int
    stop: int
    rows: tuple[int, int]
    context: int
    last: bool
    first: int
    commit: int


def plan_window(term: TemporalTerm, start: int, stop: int, last: bool, lag: int = 0,
                first: Optional[int] = None) -> Window:
    """The rows and the context of the window with free frames [start, stop) that yields frames from
    `first` (default `start`) to `stop − lag` (to `stop` when it is the last; module docstring)."""
    m0 = max(0, start - term.centre)
    m1 = stop if last else stop - term.centre
    return Window(start, stop, (m0, m1), max(0, m0 - term.left), last, start if first is None else first,
                  stop if last else stop - lag)


# ── the streaming restorer ──────────────────────────────────────────────────

def window_buffers(temporal_prior: str) -> int:
    """Frame-sized buffers a window holds per frame of its W + w − 1 (measured: engine.memory), the temporal
    prior "motion" included: what turns a memory budget into W, as engine.memory.plan counts it."""
    return WINDOW_BUFFERS + (MOTION_BUFFERS if temporal_prior == "motion" else 0)


def window_from_budget(budget_bytes: int, frame: tuple[int, int], term: TemporalTerm, itemsize: int,
                       buffers: int = WINDOW_BUFFERS) -> int:
    """W = ⌊budget / (buffers · 3·H·W·itemsize)⌋ − (w − 1): free frames that fit in `budget_bytes`."""
    return int(budget_bytes) // (buffers * 3 * frame[0] * frame[1] * itemsize) - term.context


class VideoRestorer:
    """Algorithm 1 over a video of any length, a window of W free frames at a time (the `Solver` of a stream).

        config = SolverConfig(spec="temporal:uniform:7:replicate", size=(272, 640), gamma=1.0)
        restorer = VideoRestorer(model, config, window=32)
        for frame in restorer.restore(frames, seed=0):   # frames: iterable of [3, H', W'] in [0, 1], or [N, 3, H', W']
            write(frame)                                 # [3, H, W] in [0, 1], in order, one window's latency

    `model` and `config` as for engine.runtime.Solver (the network built by engine.runtime.make_network:
    `config.batch` frames or tiles per call, its backend and precision; `eps_model` overrides it). The
    stream sets the frame count, so `config.frames` is not used; only the "shared" noise is supported:
    one image per step, drawn from `restore`'s seed, the same in every window. `config.start` (t₀):
    every window starts warm from its own CG estimate (module docstring).

    The windows' own settings: `window` (W) or `memory_budget` (bytes, see window_from_budget), neither
    restoring the whole video as one window; `lag` (L, default LAG_WIDTHS·(w − 1)) and `lead` (O, default
    ⌈(w − 1)/2⌉), the frames each window solves again at its end and at its start; `dtype` of the solve
    (float32, or float64 for exact comparisons).
    `group` (a torch.distributed process group, e.g. `dist.group.WORLD`): every process runs
    `restore` on the same measurement; each window's frames are split over the processes (module
    docstring) and the restored frames come out of the group's rank 0 only (the others yield none).
    `clock` (engine.profiling.StageClock): times every window's stages and collectives, summed.
    `config.temporal_prior` "motion" refines each window's null modes along the motion seen in its
    measurement rows.
    """

    def __init__(self, model, config: SolverConfig, *, window: Optional[int] = None,
                 memory_budget: Optional[int] = None, lag: Optional[int] = None, lead: Optional[int] = None,
                 group=None, clock=None, eps_model: Optional[EpsModel] = None, dtype: torch.dtype = torch.float32):
        if config.noise != "shared":
            raise InputError(f"windows use the shared noise image only; got noise {config.noise!r}")
        self.config = config
        self.term, spatial_spec = split_spec(config.spec)
        self.temporal_prior = config.temporal_prior
        self.frame = config.frame
        self.device, self.dtype = torch.device(config.device), dtype
        #: what runs: torch arithmetic (engine.runtime.kernels_run: a window's T is an explicit frame matrix)
        self.kernels_used = kernels_run(config, windows=True)
        self.spatial = None if spatial_spec is None else from_spec(
            spatial_spec, (1, 3, *self.frame), seed=config.mask_seed, device=self.device, dtype=dtype,
            kernels=self.kernels_used.arithmetic)
        self.eps_model = eps_model if eps_model is not None else make_network(model, config)
        self.steps = ddim_steps(config.nfe, config.eta, start=config.start)
        self.warm = warm_start(config.start, config.cg_iters)
        self.cg_iters, self.gamma, self.cg_precond = config.cg_iters, config.gamma, config.cg_precond
        self.sigma_y, self.register = config.sigma_y, config.register
        self.lag = _frames("lag", default_lag(self.term) if lag is None else lag)
        self.lead = _frames("lead", default_lead(self.term) if lead is None else lead)
        self.window = self._window(window, memory_budget)
        self.frames_held_peak = 0          # most video-sized frames held at once outside the solve (measured)
        self.group = group
        if group is not None and not dist.is_initialized():
            raise InputError("a process group was given but torch.distributed is not initialised")
        self.rank = dist.get_rank(group) if group is not None else 0
        self.world = dist.get_world_size(group) if group is not None else 1
        self.windows_split = 0             # windows whose frames were split over the processes
        self.clock = clock

    def _window(self, window: Optional[int], budget: Optional[int]) -> float:
        """W from `window` or `budget`, refused in one line unless W > max(reach, L + O): a window yields a frame."""
        least = least_window(self.term, self.lag, self.lead)
        if window is not None and budget is not None:
            raise InputError("give a window size or a memory budget, not both")
        if budget is not None:
            itemsize, buffers = torch.finfo(self.dtype).bits // 8, window_buffers(self.temporal_prior)
            window = window_from_budget(budget, self.frame, self.term, itemsize, buffers)
            if window < least:
                need = (least + self.term.context) * buffers * 3 * self.frame[0] * self.frame[1] * itemsize
                raise InputError(f"a memory budget of {budget} bytes holds a window of {max(window, 0)} frames of "
                                 f"{self.frame[0]}×{self.frame[1]}; windows need at least {least} frames here "
                                 f"({self._least_why()}): give {need} bytes")
        if window is None:
            return math.inf
        if isinstance(window, bool) or not isinstance(window, int) or window < least:
            raise InputError(f"the window must be an integer number of frames, at least {least} "
                             f"({self._least_why()}), got {window!r}")
        return window

    def _least_why(self) -> str:
        return (f"more than the temporal PSF's reach {self.term.reach} and than the lag {self.lag} plus "
                f"the lead {self.lead}")

    @property
    def out_frame(self) -> tuple[int, int, int]:
        """The shape of one measurement frame, (3, H', W')."""
        return tuple(self.spatial.out_shape[1:]) if self.spatial is not None else (3, *self.frame)

    def operator(self, frames: int) -> KroneckerOperator:
        """The whole video's operator A = T ⊗ S for `frames` frames (the clean → measure path)."""
        w = plan_window(self.term, 0, frames, last=True)
        return self._operator(frame_matrix(self.term, w.rows, (0, frames), end=frames))

    def measure(self, clean: Iterable[Tensor] | Tensor, *, sigma_y: float = 0.0, seed: int = 0) -> Iterator[Tensor]:
        """y[n] = S(Σ_m T[n, m] x[m]) + σ_y·w[n], frame by frame, holding at most w + 1 clean frames.  → [3, H', W']

        x: clean frames [3, H, W] in [0, 1]; w[n] is frame n of the noise of `seed`
        (engine.operators.measurement: the draw of engine.runtime.measure on the whole video).
        """
        return noisy_frames(self._measured_rows(clean), sigma_y, seed)

    def _measured_rows(self, clean: Iterable[Tensor] | Tensor) -> Iterator[Tensor]:
        """The noiseless measurement frames S(Σ_m T[n, m] x[m]), n = 0, 1, …, as the clean frames come."""
        held: deque[Tensor] = deque()               # clean frames [first, first + len)
        first, row, ended = 0, 0, False
        frames = iter(clean)
        while not ended or row < first + len(held):
            nxt = next(frames, None)
            ended = nxt is None
            if not ended:
                held.append(torch.as_tensor(nxt).to(device=self.device, dtype=self.dtype))
            total = first + len(held)
            while row < total and (ended or row + self.term.centre < total):
                yield self._measure_row(row, held, first, total if ended else None)
                row += 1
            while held and first < row - self.term.left:          # frames no later row reads
                held.popleft()
                first += 1

    def _measure_row(self, n: int, held: deque, first: int, end: Optional[int]) -> Tensor:
        """Noiseless measurement frame n, S(Σ_m T[n, m] x_m), from the clean frames x_m, m in [first, first +
        len(held)).  → [3, H', W']"""
        T = frame_matrix(self.term, (n, n + 1), (first, first + len(held)), end)            # [1, F]
        mixed = frames_matmul(T.to(device=self.device, dtype=self.dtype), torch.stack(list(held)))   # [1, 3, H, W]
        return (mixed if self.spatial is None else self.spatial.A(mixed))[0]

    def _operator(self, T: Tensor) -> KroneckerOperator:
        """A = T ⊗ S on this restorer's frames for the frame matrix T [R, F].  [F, 3, H, W] → [R, 3, H', W']"""
        return KroneckerOperator(T, self.spatial, (3, *self.frame), device=self.device, dtype=self.dtype)

    def restore(self, measurement: Iterable[Tensor] | Tensor, *, seed: int = 0) -> Iterator[Tensor]:
        """Restored frames [3, H, W] in [0, 1], in order, a window at a time; the noise drawn from `seed`.

        Holds at most W + c + 1 measurement frames (one read ahead tells whether the window is
        the last) and the last O + w − 1 yielded frames (the next lead and its pinned frames)
        besides the window's solve.
        """
        frames = self._checked(measurement)
        noise = draw_noise(seed, self.config.nfe, (1, 3, *self.frame)).to(device=self.device, dtype=self.dtype)
        pending: deque[Tensor] = deque()   # measurement rows [first_row, first_row + len)
        held = torch.empty(0, 3, *self.frame, device=self.device, dtype=self.dtype)   # yielded frames before `first`
        first_row, start, first, done = 0, 0, 0, False
        while not done:
            want = start + self.window + 1 - first_row            # rows through the window's end, one read ahead
            while len(pending) < want and (nxt := next(frames, None)) is not None:
                pending.append(nxt)
            total = first_row + len(pending)                      # measurement frames read so far
            done = len(pending) < want                            # the iterator is exhausted: the last window
            if total <= first:
                break
            win = self._plan(start, total if done else start + self.window, done, first)
            self._hold(len(pending) + held.shape[0])
            rows = torch.stack([pending[n - first_row] for n in range(*win.rows)])
            n = held.shape[0]
            pinned = held[n - (first - win.context):n - (first - win.start)]   # frames [context, start)
            x = self._solve_window(win, rows, pinned, total, noise)
            x = x[win.first - start:win.commit - start] if x is not None else None
            held = self._next_held(held, x, win.commit - win.first)
            first, start = win.commit, max(0, win.commit - self.lead)
            while pending and first_row < start - self.term.centre:   # rows no later window reads
                pending.popleft()
                first_row += 1
            if x is not None:
                yield from x

    def _plan(self, start: int, stop: int, last: bool, first: int) -> Window:
        """The window of free frames [start, stop) yielding from `first` (plan_window with this restorer's lag)."""
        return plan_window(self.term, start, stop, last, self.lag, first)

    def _solve_window(self, win: Window, y: Tensor, pinned: Tensor, total: int, noise: Tensor) -> Optional[Tensor]:
        """Algorithm 1 on one window: y' = y − S(T_pin x_pin), then reverse_process on A_win.  → [F, 3, H, W]
        (on the group's rank 0; None on the others)"""
        end = total if win.last else None
        T = frame_matrix(self.term, win.rows, (win.context, win.stop), end)      # [R, P + F]
        P = win.start - win.context
        if P:
            y = y.sub_(self._operator(T[:, :P]).A(pinned))                  # y' in place: y is the window's own stack
        op = self._split_operator(T[:, P:])
        log.debug("window frames [%d, %d) yielding [%d, %d), rows [%d, %d), %d pinned", win.start, win.stop,
                  win.first, win.commit, *win.rows, P)
        precond = preconditioner(op, self.gamma, self.cg_precond, device=self.device, dtype=self.dtype)
        x = reverse_process(self.eps_model, y, op, noise, self.steps, cg_iters=self.cg_iters,
                            gamma=self.gamma, precond=precond, warm=self.warm, stage=self.clock)
        if op.comm is not None:
            x = gather_frames(x, op.comm)
        if x is None or self.rank != 0:
            return None
        if self.temporal_prior == "motion":                      # the window's null modes, after its loop
            x = self._refined(x, y, T, pinned)
        return x

    def _refined(self, x: Tensor, y: Tensor, T: Tensor, pinned: Tensor) -> Tensor:
        """MotionPrior on the window's free frames x [F, 3, H, W]: its data term on y' (the rows less the pinned
        frames' share), its flow from the rows as measured (y' plus that share: the motion the video shows)."""
        P = pinned.shape[0]
        rows = y + self._operator(T[:, :P]).A(pinned) if P else y
        prior = MotionPrior(self._operator(T[:, P:]), y, video_frames(self._operator(T), rows)[P:], self.gamma,
                            sigma_y=self.sigma_y, register=self.register)
        del rows
        return prior(x).clamp_(0, 1)

    def _split_operator(self, T: Tensor) -> LinearOperator:
        """The window's operator for T [R, F]: sharded over the group when each process gets at least
        the band of T_winᵀT_win (and one frame), else whole (every process solves the window alike)."""
        op = self._operator(T)
        frames = T.shape[1]
        if self.world > 1 and frames // self.world >= max(1, *band(op.normal_matrix, ring=False)):
            self.windows_split += 1
            comm = Comm(frames, self.group, clock=self.clock)
            return op.sharded(comm, what="the window's temporal PSF", device=self.device, dtype=self.dtype)
        return op

    def _next_held(self, held: Tensor, x: Optional[Tensor], yielded: int) -> Tensor:
        """The last O + w − 1 yielded frames after a window yielded `yielded` frames `x` (rank 0's): the next
        window's lead and pinned frames, broadcast from the group's rank 0 when there are several processes.
        → [≤ O + w − 1, 3, H, W]"""
        keep = min(self.term.context + self.lead, held.shape[0] + yielded)
        if not keep:
            return held
        if x is not None:
            nxt = torch.cat([held, x])[held.shape[0] + yielded - keep:]
        else:
            nxt = held.new_empty((keep, *held.shape[1:]))
        if self.world > 1:
            dist.broadcast(nxt, src=dist.get_global_rank(self.group, 0), group=self.group)
        return nxt

    def _hold(self, frames: int) -> None:
        self.frames_held_peak = max(self.frames_held_peak, frames)

    def _checked(self, measurement: Iterable[Tensor] | Tensor) -> Iterator[Tensor]:
        """The measurement frame by frame on the device, each checked: shape (3, H', W'), finite."""
        for i, f in enumerate(measurement):
            f = torch.as_tensor(f).to(device=self.device, dtype=self.dtype)
            if tuple(f.shape) != self.out_frame:
                raise InputError(f"measurement frame {i} has shape {tuple(f.shape)}; expected {self.out_frame} "
                                 f"(clean frames {self.frame[0]}×{self.frame[1]} through the spec)")
            if not torch.isfinite(f).all():
                raise InputError(f"measurement frame {i} contains NaN or Inf values")
            yield f


def _frames(name: str, value) -> int:
    """`value` as a count of frames ≥ 0, refused in one line otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"the {name} must be an integer number of frames ≥ 0, got {value!r}")
    return value
