"""Tooling for benchmarks and tests (not product: it patches Triton internals and os.environ).

Compile the Triton kernels for a GPU on a machine without one, and read what each costs.

Triton's NVIDIA backend builds PTX and a cubin (ptxas ships inside the triton wheel) for
whatever target its driver reports. `compile_only(arch)` reports a CUDA target of compute
capability `arch` and turns every launch into a compilation, so running the engine's
launchers on CPU or meta tensors compiles exactly the kernel variants a GPU run would compile
(the same constexprs, and integer arguments specialised the same way for the same shapes).
Launchers return uninitialised outputs while it is active: use it to compile, never to compute.

Each variant's registers per thread, stack frame and spilled bytes come from the verbose
log of the very ptxas run that Triton makes for it (TRITON_DUMP_PTXAS_LOG), with a fresh
Triton cache for the block so that every variant is really compiled.

Needs the real compiler: TRITON_INTERPRET must be unset when `kernels` is imported. While
the block runs, Triton's launch is replaced for the whole process: use it from one thread.
`launch_nothing()` replaces it the same way with nothing at all (compiled or interpreted
kernels), for counting what launchers allocate.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass

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
    stack: int                  # bytes of stack frame per thread
    spill_stores: int           # bytes of registers spilled per thread (and loaded back: spill_loads)
    spill_loads: int
    shared: int                 # bytes of shared memory per block (Triton's, dynamic)
    seconds: float              # compile time of this variant
    ptx_lines: int
    vector_loads: int           # global loads of 2 or 4 elements per instruction (ld.global.v2/.v4) in the PTX
    scalar_loads: int           # global loads of one element
    vector_stores: int          # the same for stores
    scalar_stores: int


class _CompileOnlyDriver:
    """What Triton asks its driver before compiling: the target, a device key and a stream."""

    sessions = itertools.count()

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)
        self.session = next(self.sessions)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> str:
        # A cache slot of its own in every JITFunction, new for each compile_only block: a variant
        # compiled in an earlier block (the UNet's fp32 head in every dtype's run) compiles again.
        return f"compile-only-sm{self.target.arch}-{self.session}"

    def get_current_stream(self, device=None) -> int:
        return 0


def _check_compiler_available() -> None:
    from kernels import temporal
    if not isinstance(temporal._frame_mix_kernel, JITFunction):
        raise InputError("bench.aot needs Triton's compiler: unset TRITON_INTERPRET before importing `kernels`")


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
        start, log = time.perf_counter(), io.StringIO()
        with redirect_stdout(log):                                      # Triton prints ptxas's log
            kernel = launch(self, *args, grid=grid, warmup=True, **kwargs)
        if kernel.hash not in seen:
            seen.add(kernel.hash)
            compiled.append(_describe(self, kernel, kwargs, arch, time.perf_counter() - start, log.getvalue()))
        return kernel

    previous = driver._active                                           # None until a GPU driver was asked for
    with tempfile.TemporaryDirectory(prefix="triton-aot-") as cache, \
            _environment(TRITON_CACHE_DIR=cache, TRITON_DUMP_PTXAS_LOG="1"):
        driver.set_active(_CompileOnlyDriver(arch))
        try:
            with _launches_replaced(JITFunction, compile_instead):
                yield compiled
        finally:
            driver._active = previous


@contextmanager
def launch_nothing() -> Iterator[None]:
    """Within the block every kernel launch is skipped, compiled or interpreted, and launchers
    take CPU and meta tensors: their checks and allocations run, their kernels do not
    (bench/memory.py counts the bytes a step allocates this way). Not for computing."""
    from kernels import temporal

    with _launches_replaced(type(temporal._frame_mix_kernel), lambda self, *args, **kwargs: None):
        yield


@contextmanager
def _launches_replaced(kind: type, run) -> Iterator[None]:
    """`kind.run` (what `kernel[grid](...)` calls) replaced by `run`, and host tensors accepted, in the block."""
    launch, host_tensors = kind.run, common.HOST_TENSORS
    kind.run, common.HOST_TENSORS = run, True
    try:
        yield
    finally:
        kind.run, common.HOST_TENSORS = launch, host_tensors


@contextmanager
def _environment(**values: str):
    """os.environ with `values` set for the block (Triton reads its knobs from it when used)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _describe(fn: JITFunction, kernel, kwargs: dict, arch: int, seconds: float, ptxas_log: str) -> Compiled:
    names = {p.name for p in fn.params if p.is_constexpr}
    constants = {k: (str(v) if not isinstance(v, (int, float, bool)) else v) for k, v in kwargs.items() if k in names}
    ptx = kernel.asm["ptx"]
    return Compiled(name=fn.fn.__name__, constants=constants, arch=arch, num_warps=kernel.metadata.num_warps,
                    shared=kernel.metadata.shared, seconds=seconds, ptx_lines=ptx.count("\n"),
                    **ptxas_usage(ptxas_log), **global_accesses(ptx))


_GLOBAL = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)*)")


def global_accesses(ptx: str) -> dict[str, int]:
    """{vector,scalar}_{loads,stores}: global memory instructions in PTX, by whether they move
    2 or 4 elements at once (`.v2`, `.v4`: up to 16 bytes per thread) or one."""
    counts = {"vector_loads": 0, "scalar_loads": 0, "vector_stores": 0, "scalar_stores": 0}
    for op, suffixes in _GLOBAL.findall(ptx):
        vector = ".v2" in suffixes or ".v4" in suffixes
        counts[f"{'vector' if vector else 'scalar'}_{'loads' if op == 'ld' else 'stores'}"] += 1
    return counts


_REGISTERS = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_usage(log: str) -> dict[str, int]:
    """{registers, stack, spill_stores, spill_loads} from the log of `ptxas -v` for one kernel."""
    registers, frame = _REGISTERS.search(log), _FRAME.search(log)
    if registers is None or frame is None:
        raise InputError(f"bench.aot: no ptxas resource usage in Triton's compile log:\n{log[-2000:]}")
    stack, stores, loads = map(int, frame.groups())
    return {"registers": int(registers.group(1)), "stack": stack, "spill_stores": stores, "spill_loads": loads}
