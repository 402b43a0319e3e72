"""What every benchmark shares: timing with device events, the machine's description, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import threading
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

T = TypeVar("T")

RESULTS = Path(__file__).resolve().parent / "results"
#: Environment variable naming another folder for the result files (bench/device_check.sh: $OUT).
RESULTS_ENV = "BENCH_RESULTS"


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors that ops create, from creation until their storage is freed; `peak` is the maximum.

    Counts torch's own allocations on any device (meta tensors in bench/memory.py, CPU tensors in
    bench/fps.py), without tracemalloc; tensors made before the mode was entered are not counted."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._storages: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._count(t.untyped_storage())
        return out

    def _count(self, storage) -> None:
        key = storage._cdata
        if key in self._storages:                                     # a view of a counted tensor
            return
        self._storages.add(key)
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key, storage.nbytes())

    def _release(self, key: int, nbytes: int) -> None:
        self._storages.discard(key)
        self.live -= nbytes


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, *, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Seconds per call of `fn`, each call timed alone (CUDA events on a GPU, perf_counter on the CPU)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def in_new_thread(fn: Callable[[], T]) -> T:
    """fn() run in a thread of its own; its result, or its exception raised again here.

    cuDNN keeps the plan it chose for each convolution per thread, keyed by shapes, layout and
    dtype but not by torch.backends.cudnn.benchmark, and looks there before it would time the
    candidates: a thread that already ran a shape untimed keeps that plan. A new thread starts
    with none, so a configuration measured in one chooses its plans afresh.
    """
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as err:  # handed to the caller's thread
            out["error"] = err

    thread = threading.Thread(target=run, name="bench-fresh-cudnn-plans")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(device: torch.device) -> dict:
    """The card (or CPU), versions and commit that every result line carries."""
    info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
            "torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, compute_capability=f"{props.major}.{props.minor}",
                    memory_bytes=props.total_memory, cuda=torch.version.cuda)
    else:
        info.update(device_name=cpu_name(), threads=torch.get_num_threads())
    return info


def cpu_name() -> str:
    """The processor's model name (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def add_save_flag(parser, name: str) -> None:
    """--save: append the rows to bench/results/<name>.jsonl (or $BENCH_RESULTS); a plain run writes nothing
    into the tree."""
    parser.add_argument("--save", action="store_true",
                        help=f"append the rows to bench/results/{name}.jsonl (or $BENCH_RESULTS)")


def append_jsonl(name: str, rows: list[dict]) -> Path:
    """Append result rows to <name>.jsonl in bench/results, or in $BENCH_RESULTS when set (never typed in by hand)."""
    folder = Path(os.environ.get(RESULTS_ENV) or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Dense matmul throughput measured now: the peak the UNet's TFLOP/s is compared with."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = median(time_fn(lambda: a @ b, device, repeats=10))
    return 2 * n**3 / t / 1e12


def unet_flops(config, batch: int) -> int:
    """FLOPs of one batch-`batch` ADM forward (torch.utils.flop_counter on the meta device: nothing runs).

    Counted on meta tensors because on CPU tensors attention runs as a fused kernel the counter skips.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from engine.unet import ADMUNet

    with torch.device("meta"):
        model = ADMUNet(config)
        x = torch.empty(batch, 3, config.image_size, config.image_size)
        t = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(x, t)
    return counter.get_total_flops()
