"""Where the time goes: `nvtx_range(name, enabled)` around a stage of the work, for Nsight Systems,
and `StageClock`, the seconds per stage of the reverse loop (bench/fps.py, metrics of sharded runs).

The `nvtx` package (the [profile] extra) is used when installed, else torch.cuda.nvtx; either is
imported only when a range is enabled, so a disabled range costs one branch and imports nothing.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def nvtx_range(name: str, enabled: bool) -> Iterator[None]:
    """One NVTX range named `name` around the block when `enabled`, else nothing."""
    if not enabled:
        yield
        return
    try:
        import nvtx
    except ImportError:
        nvtx = None
    if nvtx is not None:
        with nvtx.annotate(name):
            yield
        return
    import torch.cuda.nvtx

    with torch.cuda.nvtx.range(name):
        yield


class StageClock:
    """Time per stage inside the reverse loop (engine.sampler.reverse_process's `stage` hook, and
    engine.distributed's "communication"), summed over the steps: CUDA events on a GPU (no host sync
    inside the loop), perf_counter on the CPU. Nested stages are each timed whole."""

    def __init__(self, device: torch.device):
        self.device, self.marks = torch.device(device), []                  # (stage, start, end)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self.marks.append((name, start, end))

    def seconds(self) -> dict[str, float]:
        """{stage: seconds} so far (waits for the device first)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        total: dict[str, float] = {}
        for name, start, end in self.marks:
            total[name] = total.get(name, 0.0) + (start.elapsed_time(end) / 1e3 if self.device.type == "cuda"
                                                  else end - start)
        return total
