"""What every launcher shares: input checks, the compute dtype, exact scalars, the device a launch runs
on, and small device helpers.

Kernels build load and store masks from vectors only: Triton's interpreter (3.9) types
`vector & scalar` as int32 and rejects it as a mask, so a scalar index is broadcast first.
"""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import triton
import triton.language as tl

from engine.errors import InputError

Tensor = torch.Tensor

#: Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when this package is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: Launchers accept CPU tensors: in the interpreter, or while `bench.aot` compiles without launching.
HOST_TENSORS = INTERPRET


def interpreter_clash(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter cannot run the kernels with these versions, or None.

    Before Triton 3.7 the interpreter takes a loop bound as int() of a one-element array,
    which numpy 2.4 refuses: every kernel with a loop would fail with a bare TypeError.
    """
    def major_minor(version: str) -> tuple[int, int]:
        return tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", version).groups())

    if major_minor(triton_version) < (3, 7) and major_minor(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter cannot run these kernels with numpy {numpy_version}: "
                f"pip install 'triton>=3.7' or 'numpy<2.4'")
    return None


#: Set when this process's interpreter cannot run the kernels: launches on CPU tensors say why.
INTERPRETER_CLASH = interpreter_clash(triton.__version__, np.__version__) if INTERPRET else None

#: Storage dtype → compute dtype: float32 for float32 and the half types, float64 for float64.
ACC = {torch.float32: tl.float32, torch.float16: tl.float32, torch.bfloat16: tl.float32, torch.float64: tl.float64}

#: Number of warps of every launch (4 × 32 threads).
NUM_WARPS = 4

#: Elements per program of the elementwise kernels.
BLOCK = 1024


#: Elements of one frame (or plane) at most: kernels offset each program to its frame's first element in
#: int64 and index inside the frame in int32, with a program's last tile allowed past the frame's end.
MAX_FRAME = 2**31 - 2**16


def check(where: str, *tensors: Tensor, ndim: int | None = None) -> None:
    """InputError unless every tensor is contiguous, of one supported dtype, on one device that can run Triton.
    Any element count: the kernels' offsets into a clip are int64 where they can pass 2³¹ (see `check_frame`)."""
    first = tensors[0]
    for t in tensors:
        if t.dtype not in ACC:
            raise InputError(f"{where}: Triton kernels take float32, float64, float16 or bfloat16, got {t.dtype}")
        if t.dtype != first.dtype or t.device != first.device:
            raise InputError(f"{where}: all tensors must share one dtype and device, got "
                             f"{t.dtype} on {t.device} and {first.dtype} on {first.device}")
        if not t.is_contiguous():
            raise InputError(f"{where}: Triton kernels take contiguous tensors")
    if ndim is not None and first.ndim != ndim:
        raise InputError(f"{where}: expected a {ndim}-d tensor, got shape {tuple(first.shape)}")
    check_runnable(where, first)


def check_frame(where: str, elements: int, what: str = "frame") -> None:
    """InputError unless one frame (or plane) of `elements` elements stays under MAX_FRAME: offsets within it are
    int32."""
    if elements > MAX_FRAME:
        raise InputError(f"{where}: one {what} must have at most 2³¹ − 2¹⁶ elements (int32 offsets within it), "
                         f"got {elements}")


def check_runnable(where: str, t: Tensor) -> None:
    """InputError unless Triton can run on t's device: CUDA, or the CPU in a working interpreter."""
    if t.device.type != "cuda" and INTERPRETER_CLASH:
        raise InputError(f"{where}: {INTERPRETER_CLASH}")
    if t.device.type != "cuda" and not HOST_TENSORS:
        raise InputError(f"{where}: Triton kernels run on CUDA tensors, or on CPU tensors with TRITON_INTERPRET=1 "
                         f"set before `kernels` is imported; got a tensor on {t.device}")


def on_device(t: Tensor) -> AbstractContextManager:
    """The context every launch runs in: t's CUDA device made current, for Triton launches on the current
    device, not on the tensor's (cuda:1 data from a process whose current device is cuda:0). A no-op for
    the CPU tensors of the interpreter and the meta tensors of bench.aot."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else nullcontext()


def frame_stride(where: str, t: Tensor, like: Tensor) -> int:
    """Stride between frames of t [N, ...], shaped like `like` and on its device, in any dtype the kernels
    take (they convert as they load), whose frames t[n] must each be contiguous (a channel slice of a
    larger output is); InputError otherwise."""
    if t.shape != like.shape:
        raise InputError(f"{where}: shapes {tuple(t.shape)} and {tuple(like.shape)} differ")
    if t.device != like.device:
        raise InputError(f"{where}: tensors on {t.device} and {like.device}")
    check(where, t[0])
    return t.stride(0)


def frames_contiguous(t: Tensor) -> Tensor:
    """t itself when each frame t[n] is contiguous, else a contiguous copy."""
    return t if t[0].is_contiguous() else t.contiguous()


def output(where: str, out: Tensor | None, shape, like: Tensor) -> Tensor:
    """`out` after checking it fits (shape, dtype, device, contiguity), or a new empty tensor.

    `out` must not overlap the inputs: the stencil kernels read pixels that other programs write.
    """
    if out is None:
        return torch.empty(tuple(shape), dtype=like.dtype, device=like.device)
    if tuple(out.shape) != tuple(shape):
        raise InputError(f"{where}: out has shape {tuple(out.shape)}, expected {tuple(shape)}")
    check(where, like, out)
    return out


def split(value: float) -> tuple[float, float]:
    """(hi, lo) with hi = fp32(value), lo = fp32(value − hi): Triton passes Python floats as fp32,
    and `scalar(hi, lo, ACC)` rebuilds the value to about 2⁻⁴⁸ relative for float64 arithmetic."""
    hi = float(np.float32(value))
    return hi, float(np.float32(value - hi))


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@triton.jit
def scalar(hi, lo, ACC: tl.constexpr):
    """hi + lo in the compute dtype (see `split`)."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def wrap(i, n):
    """i mod n in [0, n) for any sign of i (Triton's % truncates like C)."""
    return ((i % n) + n) % n


@triton.jit
def wrap_once(i, n):
    """i mod n for −n ≤ i < 2n, without integer division."""
    return tl.where(i < 0, i + n, tl.where(i >= n, i - n, i))


@triton.jit
def safe_div(num, den):
    """num / den, or 0 where den == 0 (on the device, no host sync)."""
    return tl.where(den != 0, num / tl.where(den != 0, den, 1), 0)
