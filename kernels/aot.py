"""Compile the Triton kernels for a GPU on a machine without one, and read what each costs.

Triton's NVIDIA backend builds PTX and a cubin (ptxas ships inside the triton wheel) for
whatever target its driver reports. `compile_only(arch)` reports a CUDA target of compute
capability `arch` and turns every launch into a compilation, so running the engine's
launchers on CPU tensors compiles exactly the kernel variants a GPU run would compile
(the same constexprs, and integer arguments specialised the same way for the same shapes).
Launchers return uninitialised outputs while it is active: use it to compile, never to compute.

`resource_usage(cubin)` reads registers, stack, local memory (spills) and static shared
memory per thread/block from the cubin with the cuobjdump that ships beside ptxas.

Needs the real compiler: TRITON_INTERPRET must be unset when `kernels` is imported.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

from engine.errors import InputError
from kernels import common


@dataclass(frozen=True)
class Compiled:
    """One compiled kernel variant and its per-thread resources on the target."""

    name: str                   # the @triton.jit function
    constants: dict             # its constexpr arguments, by name
    arch: int                   # compute capability, e.g. 90
    num_warps: int
    registers: int              # per thread
    stack: int                  # bytes of stack per thread
    local: int                  # bytes of local memory per thread (register spills)
    shared: int                 # bytes of shared memory per block (Triton's, dynamic)
    seconds: float              # compile time of this variant
    ptx_lines: int


class _CompileOnlyDriver:
    """What Triton asks its driver before compiling: the target, a device key and a stream."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> str:
        return f"compile-only-sm{self.target.arch}"     # its own cache slot in every JITFunction

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def _check_compiler_available() -> None:
    from kernels import temporal
    if not isinstance(temporal._frame_mix_kernel, JITFunction):
        raise InputError("kernels.aot needs Triton's compiler: unset TRITON_INTERPRET before importing `kernels`")


@contextmanager
def compile_only(arch: int = 90) -> Iterator[list[Compiled]]:
    """Within the block every kernel launch compiles for sm_`arch` and launches nothing.

    Yields the list that collects one `Compiled` per new kernel variant, in launch order.
    """
    _check_compiler_available()
    compiled: list[Compiled] = []
    seen: set[str] = set()
    launch = JITFunction.run

    def compile_instead(self, *args, grid, warmup, **kwargs):
        start = time.perf_counter()
        kernel = launch(self, *args, grid=grid, warmup=True, **kwargs)
        if kernel.hash not in seen:
            seen.add(kernel.hash)
            compiled.append(_describe(self, kernel, kwargs, arch, time.perf_counter() - start))
        return kernel

    host_tensors, previous = common.HOST_TENSORS, driver._active      # None until a GPU driver was asked for
    driver.set_active(_CompileOnlyDriver(arch))
    JITFunction.run, common.HOST_TENSORS = compile_instead, True
    try:
        yield compiled
    finally:
        JITFunction.run, common.HOST_TENSORS = launch, host_tensors
        driver._active = previous


def _describe(fn: JITFunction, kernel, kwargs: dict, arch: int, seconds: float) -> Compiled:
    names = {p.name for p in fn.params if p.is_constexpr}
    constants = {k: (str(v) if not isinstance(v, (int, float, bool)) else v) for k, v in kwargs.items() if k in names}
    usage = resource_usage(kernel.asm["cubin"])
    return Compiled(name=fn.fn.__name__, constants=constants, arch=arch, num_warps=kernel.metadata.num_warps,
                    registers=usage["REG"], stack=usage["STACK"], local=usage["LOCAL"],
                    shared=kernel.metadata.shared, seconds=seconds, ptx_lines=kernel.asm["ptx"].count("\n"))


_USAGE = re.compile(r"(REG|STACK|SHARED|LOCAL):(\d+)")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """{'REG', 'STACK', 'SHARED', 'LOCAL'} of the one function in `cubin` (cuobjdump -res-usage)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        raise InputError(f"kernels.aot: cuobjdump not found at {tool} (it ships with triton's NVIDIA backend)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([str(tool), "-res-usage", str(path)], capture_output=True, text=True, check=True).stdout
    function = text.split("Function", 1)[-1]
    usage = {key: int(value) for key, value in _USAGE.findall(function)}
    if set(usage) != {"REG", "STACK", "SHARED", "LOCAL"}:
        raise InputError(f"kernels.aot: cannot read cuobjdump's resource usage:\n{text}")
    return usage
