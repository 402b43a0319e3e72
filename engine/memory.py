"""The memory plan of a run: the whole video's peak predicted before decoding, windows when it does not fit.

A run's peak resident memory (CPU) or allocated memory (CUDA) is modelled as

    peak(N) = fixed + network + k · N · F,          F = 3·H·W·4 bytes (one float32 clean frame)

- fixed: the process as it stands when the plan is made (interpreter, torch, decoder) plus the
  prior's weights and ALLOCATOR_SLACK (allocator pools that are not handed back);
- network: the network's work space on min(B, N) frames (or, for a checkpoint, B tiles of its
  training size) per call: NETWORK_FRAMES[prior] float32 frames per frame of a batch
  (measured with bench.common.LiveBytes on 640×272 frames), or ADM_TILE_BYTES per tile
  (bench/memory.py on meta tensors, ADM-256);
- k = WHOLE_BUFFERS: the frame-sized float32 buffers the whole-video path holds per frame at its
  peak, inside CG's last iteration: y, Aᵀy, ε, X̂, CG's x, r, p, Mp, z, a product inside an inner
  product, and (regularised CG) its right-hand side; the clean clip is uint8 (a quarter).
  Measured as the slope of peak resident memory over 16, 32 and 64 frames of 640×272
  (`python -m bench.length`, README): 10.0 noiseless, 10.7 regularised.

Windows of W free frames (engine.windows.VideoRestorer) hold the same solve on W + w − 1 frames
(the pinned context enters as a known term) plus the measurement rows read ahead and their
stacked copy: k_win = WINDOW_BUFFERS per frame of W + w − 1 (the lead's O + w − 1 restored frames
held between windows, one buffer each, fall inside it). `plan` picks the whole video when
its predicted peak fits the budget, else windows of the largest W that fits up to the `longest_window`
that buys anything (engine.windows.enough_window: past it a window saves little time and holds more
memory), else refuses in one line. A video too long for the budget thus runs in windows of a length
set by the PSF and the budget, not by the video: its peak is flat in the video's length.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from engine.errors import InputError

log = logging.getLogger(__name__)

GB = 1e9
#: frame-sized float32 buffers per frame of the whole-video path at its peak (module docstring)
WHOLE_BUFFERS = 11
#: the same per frame of a window's W + w − 1 frames, with the rows read ahead and their stacked copy
#: (measured: 14.4 at W = 267 of 1000 frames of 640×272, peak 8.95 GB against 8.2 GB predicted with 13)
WINDOW_BUFFERS = 15
#: added to either for the temporal prior "motion", which runs after the loop, once the loop's buffers are
#: freed: what it holds beyond them (the sampling grid and confidence of the flow, the rows as measured
#: for the flow, its CG vectors) and the allocator's fragmentation. Counted (bench.common.LiveBytes, 60
#: frames in windows of 40): 13.7 live buffers per frame with it, 12.3 without. Peak resident memory of the
#: same run varies far more (glibc keeps freed frame-sized blocks): 250 frames of 640×272 in windows of 161
#: (bench.length, gaussian prior, 2 NFE) peaked at 6.05 GB in one run and 8.26 GB in another, i.e. 15.3 and
#: 21.6 buffers per frame past the fixed part (1000 frames: 8.17 GB); windows of 94: 4.41 GB (17.7); the
#: whole video, 64 frames: 2.34–2.62 GB (14.2 at most). Counted for the worst: 15 + 7 = 22 per window frame.
MOTION_BUFFERS = 7
#: float32 frames of work space per frame of a network batch, by prior (peak of one call, output included)
NETWORK_FRAMES = {"gaussian": 5.7, "ffdnet": 6.7}
#: an ADM-256 step's work space per tile of a batch, by network precision (bench/memory.py, meta tensors)
ADM_TILE_BYTES = {"fp32": 472e6, "fp16": 404e6, "bf16": 404e6}
#: allocator pools and small buffers not returned to the system (the fitted intercept less the parts above)
ALLOCATOR_SLACK = 0.3 * GB
#: the default budget: this fraction of the memory available when the run starts (other processes,
#: the page cache and the model's error need the rest: a window's measured peak came 1.5 % above its plan)
BUDGET_FRACTION = {"cpu": 0.3, "cuda": 0.85}


@dataclass(frozen=True)
class Plan:
    """Whole video (`window` None) or windows of `window` free frames, and the numbers behind it."""

    frames: int                    # N, declared by the container or counted
    frame: tuple[int, int]         # (H, W) of the clean frames
    budget_bytes: int
    budget_source: str             # "--memory-budget" or the fraction of what was available
    whole_bytes: int               # the whole video's predicted peak
    window: Optional[int] = None   # W; None: the whole video
    window_bytes: Optional[int] = None
    longest_window: Optional[int] = None   # the W past which windows buy nothing (None: no limit)

    def line(self) -> str:
        """The plan in one line, for the log."""
        size = f"{self.frames} frames of {self.frame[1]}x{self.frame[0]}"
        budget = f"the budget is {self.budget_bytes / GB:.1f} GB ({self.budget_source})"
        if self.window is None:
            return f"memory plan: the whole video ({size}, about {self.whole_bytes / GB:.1f} GB; {budget})"
        why = " (longer ones buy nothing)" if self.window == self.longest_window else ""
        return (f"memory plan: windows of {self.window} frames{why}, about {self.window_bytes / GB:.1f} GB (the whole "
                f"video, {size}, would need about {self.whole_bytes / GB:.1f} GB; {budget})")

    def record(self) -> dict:
        """For metrics.json."""
        return {**asdict(self), "frame": list(self.frame),
                "choice": "whole video" if self.window is None else f"windows of {self.window} frames"}


def frame_bytes(frame: tuple[int, int]) -> int:
    """F = 3·H·W·4: one float32 frame."""
    return 3 * frame[0] * frame[1] * 4


def network_bytes(frame: tuple[int, int], *, prior: str, checkpoint: bool, batch: int, frames: int,
                  precision: str = "fp32", tile: int = 256) -> int:
    """The network's work space for one call on min(batch, frames) frames (module docstring)."""
    if checkpoint:
        tiles = max(1, -(-frame[0] // tile)) * max(1, -(-frame[1] // tile)) if max(frame) > tile else 1
        return int(ADM_TILE_BYTES[precision] * min(batch, frames * tiles))
    return int(NETWORK_FRAMES[prior] * min(batch, frames) * frame_bytes(frame))


def predicted_peak(frames: int, frame: tuple[int, int], *, fixed: int, network: int, buffers: float) -> int:
    """fixed + network + buffers · frames · F."""
    return int(fixed + network + buffers * frames * frame_bytes(frame))


def process_bytes(device: torch.device) -> int:
    """What the process holds now: resident memory on the CPU, allocated memory on a CUDA device."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory available to this run now: free device memory on CUDA (torch.cuda.mem_get_info), else
    psutil's or /proc/meminfo's MemAvailable plus what this process holds already; None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_allocated(device)
    try:
        import psutil

        return psutil.virtual_memory().available + process_bytes(device)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 + process_bytes(device)
    except OSError:
        pass
    return None


def default_budget(device: torch.device) -> tuple[int, str]:
    """(bytes, where from): BUDGET_FRACTION of `available_bytes`, or one line when it cannot be read."""
    available = available_bytes(device)
    if available is None:
        raise InputError("cannot tell how much memory is available here; give --memory-budget GB")
    fraction = BUDGET_FRACTION[device.type]
    return int(fraction * available), f"{fraction:.0%} of the {available / GB:.1f} GB available"


def plan(frames: int, frame: tuple[int, int], *, budget: Optional[float], device, prior: str = "ffdnet",
         checkpoint_bytes: Optional[int] = None, batch: int = 16, precision: str = "fp32", context: int = 0,
         least_window: int = 2, longest_window: Optional[int] = None, windows_allowed: Optional[str] = None,
         motion: bool = False) -> Plan:
    """The whole video if its predicted peak fits the budget, else windows of the largest W that fits, at
    most `longest_window` (None: no limit).

    frames: N; frame: (H, W) of the clean frames; budget: bytes (None: `default_budget`); prior: the
    prior without a checkpoint; checkpoint_bytes: the checkpoint's file size (its weights), or None;
    context: the pinned frames of a window (w − 1); least_window: the smallest W windows accept;
    longest_window: the W past which windows buy nothing (module docstring);
    windows_allowed: None when windows may be used, else why not (the refusal then says it); motion: the
    temporal prior "motion" runs after each solve (MOTION_BUFFERS more per frame).
    """
    device = torch.device(device)
    source = "--memory-budget"
    if budget is None:
        budget, source = default_budget(device)
    budget = int(budget)
    weights = checkpoint_bytes or 0
    fixed = process_bytes(device) + weights + (ALLOCATOR_SLACK if device.type == "cpu" else 0)

    def peak(n: int, buffers: float) -> int:
        buffers += MOTION_BUFFERS if motion else 0
        net = network_bytes(frame, prior=prior, checkpoint=checkpoint_bytes is not None, batch=batch, frames=n,
                            precision=precision)
        return predicted_peak(n, frame, fixed=fixed, network=net, buffers=buffers)

    whole = peak(frames, WHOLE_BUFFERS)
    base = Plan(frames, tuple(frame), budget, source, whole)
    if whole <= budget:
        return base
    smallest = peak(least_window + context, WINDOW_BUFFERS)
    if windows_allowed is not None or smallest > budget or frames <= least_window:
        fits = (f"windows of {least_window} frames need about {smallest / GB:.1f} GB"
                if windows_allowed is None else windows_allowed)
        raise InputError(f"not enough memory: the whole video ({frames} frames of {frame[1]}x{frame[0]}) needs about "
                         f"{whole / GB:.1f} GB and {fits}; the budget is {budget / GB:.1f} GB ({source}): give "
                         f"--memory-budget {max(smallest if windows_allowed is None else whole, 1) / GB:.1f} or "
                         f"more, fewer --frames, a smaller --batch or --size")
    high = frames - 1 if longest_window is None else max(least_window, min(frames - 1, longest_window))
    low = least_window                                 # largest W in [low, high] with peak(W + context) <= budget
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if peak(mid + context, WINDOW_BUFFERS) <= budget else (low, mid - 1)
    return Plan(frames, tuple(frame), budget, source, whole, window=low,
                window_bytes=peak(low + context, WINDOW_BUFFERS), longest_window=longest_window)


def peak_record(device) -> dict:
    """The run's peak so far, for metrics.json: resident memory on the CPU (getrusage's ru_maxrss), allocated
    memory on a CUDA device (torch.cuda.max_memory_allocated)."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"peak_bytes": torch.cuda.max_memory_allocated(device), "peak_method": "cuda max_memory_allocated"}
    import resource

    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_method": "ru_maxrss"}
