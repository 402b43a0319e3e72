"""Compile every Triton kernel the engine launches for a GPU target, on a machine without a GPU.

    python bench/compile_check.py                    # sm_90 (H100/H200), 16×3×256×256, fp32/fp16/bf16
    python bench/compile_check.py --arch 89 --frames 32 --dtypes fp32 --json

Runs the reverse loop of every paper task (Tweedie, three CG iterations with γ = None and a float γ, the
DDIM update), each operator's A, Aᵀ and AᵀA, the spatial blur's three boundaries, the two largest
pooling factors the frame takes (size/2 and size: windows of more lanes than a tile), and one ADM-256
forward with its fused GroupNorm kernels (channels_last, as the fast torch backends run it) under
`bench.aot.compile_only`: each launch compiles for sm_<arch> (PTX and a cubin, with the
ptxas inside the triton wheel) and runs nothing. Per kernel variant it prints registers per
thread, bytes spilled (ptxas's spill stores), shared memory, the theoretical occupancy those
allow, global loads and stores that move 2–4 elements per instruction against one (in the PTX),
and the compile time. It fails (exit 1) when a kernel does not compile or spills.

The clips are meta tensors (shapes without data), so any host synchronisation between the
launches (.item(), bool(tensor), .cpu()) would raise: a run that passes also shows the
Triton path of the reverse loop free of them, as a CUDA graph capture needs.

It needs no GPU and no TRITON_INTERPRET; the numbers describe code, not speed. Rows are
appended to bench/results/compile.jsonl with the versions and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)                          # the real compiler, before triton loads

import torch

from bench.aot import Compiled, compile_only
from bench.common import add_save_flag, append_jsonl, machine
from engine.backends import torch_eps
from engine.errors import InputError
from engine.operators import from_spec
from engine.sampler import reverse_process, step_kernels
from engine.schedule import ddim_steps
from engine.tasks import TASKS
from engine.unet import ADMConfig, ADMUNet

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION = {dtype: name for name, dtype in DTYPES.items()}

#: Per-SM limits by compute capability: (registers, warps, blocks, shared bytes) — CUDA's occupancy table.
SM_LIMITS = {80: (65536, 64, 32, 167936), 86: (65536, 48, 16, 102400), 89: (65536, 48, 24, 102400),
             90: (65536, 64, 32, 233472)}

#: Extra operators beyond the paper's tasks: the other boundaries the kernels take.
EXTRA_SPECS = ("blur:gaussian:2.0:13:reflect", "blur:gaussian:2.0:13:circular", "blur:gaussian:2.0:13:zero",
               "temporal:uniform:7:zero", "temporal:gaussian:1.0:zero+sr:4")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability ×10 (default 90: H100, H200)")
    p.add_argument("--frames", type=int, default=16, help="N (default 16)")
    p.add_argument("--size", type=int, default=256, help="H = W (default 256)")
    p.add_argument("--dtypes", default="fp32,fp16,bf16", help="storage dtypes, comma list of fp32, fp16, bf16")
    p.add_argument("--json", action="store_true", help="print one JSON object per kernel variant")
    add_save_flag(p, "compile")
    return p.parse_args(argv)


def zero_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A stand-in ε-model with the Solver's default output, learned-σ fp16 [N, 6, H, W]: the kernels'
    launches depend on its layout and dtype, not on its values."""
    return torch.zeros((x.shape[0], 6, *x.shape[2:]), dtype=torch.float16, device=x.device)


def launch_everything(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Every launch of the reverse loop of each paper task, each operator's A, Aᵀ, AᵀA (those of
    the largest pooling factors too), and one ADM-256 forward with fused norms, on meta tensors."""
    specs = [task.spec for task in TASKS.values()] + list(EXTRA_SPECS)
    for spec in specs:
        op, y = apply_operator(spec, shape, dtype)
        noise = torch.empty((3, 1, *shape[1:]), dtype=dtype, device="meta")
        for gamma in (None, 1.0):
            reverse_process(zero_eps, y, op, noise, ddim_steps(2, 0.5), cg_iters=3, gamma=gamma,   # first, middle, last
                            kernels=step_kernels("triton"))
    size = shape[-1]
    for s in sorted({s for s in (size // 2, size) if s > 1 and size % s == 0}):
        apply_operator(f"sr:{s}", shape, dtype)
    with torch.device("meta"):
        model = ADMUNet(ADMConfig.preset("adm256_uncond"))
    eps = torch_eps(model, precision=PRECISION[dtype], channels_last=True, kernels="triton")
    eps(torch.empty(shape, device="meta"), torch.zeros(shape[0], device="meta"))


def apply_operator(spec: str, shape: tuple[int, ...], dtype: torch.dtype):
    """The Triton operator of `spec` and y = A x of a meta clip x, after A, Aᵀ and AᵀA have run once."""
    op = from_spec(spec, shape, device="meta", dtype=dtype, kernels="triton")
    x = torch.empty(shape, dtype=dtype, device="meta")
    y = op.A(x)
    op.A_adjoint(y)
    op.A_adjoint_A(x)
    return op, y


def occupancy(kernel: Compiled) -> float | None:
    """Resident warps per SM over the SM's maximum, as registers and shared memory allow."""
    if kernel.arch not in SM_LIMITS:
        return None
    regs, max_warps, max_blocks, shared = SM_LIMITS[kernel.arch]
    per_warp = -(-kernel.registers * 32 // 256) * 256                 # allocated in units of 256
    blocks = min(max_blocks, regs // (per_warp * kernel.num_warps),
                 shared // kernel.shared if kernel.shared else max_blocks)
    return min(blocks * kernel.num_warps, max_warps) / max_warps


def variant(constants: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in constants.items() if k != "ACC")


def table(rows: list[dict]) -> str:
    head = (f"{'kernel':<24} {'dtype':<5} {'regs':>4} {'spill B':>7} {'smem B':>7} {'occ':>5} {'ld v/s':>7} "
            f"{'st v/s':>7} {'compile s':>9}  variant")
    lines = [head, "-" * len(head)]
    for r in rows:
        occ = "-" if r["occupancy"] is None else f"{r['occupancy']:.0%}"
        loads, stores = f"{r['vector_loads']}/{r['scalar_loads']}", f"{r['vector_stores']}/{r['scalar_stores']}"
        lines.append(f"{r['kernel']:<24} {r['dtype']:<5} {r['registers']:>4} {r['spill_stores']:>7} "
                     f"{r['shared']:>7} {occ:>5} {loads:>7} {stores:>7} {r['seconds']:>9.2f}  {r['variant']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    shape = (args.frames, 3, args.size, args.size)
    dtypes = [d for d in args.dtypes.split(",") if d]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        print(f"bench/compile_check.py: unknown dtypes {unknown}; accepted: {', '.join(DTYPES)}", file=sys.stderr)
        return 2
    common = dict(bench="compile", arch=args.arch, shape=list(shape), **machine(torch.device("cpu")))
    rows = []
    try:
        for name in dtypes:
            with compile_only(args.arch) as compiled:
                launch_everything(shape, DTYPES[name])
            rows += [dict(common, kernel=k.name, dtype=name, variant=variant(k.constants), constants=k.constants,
                          num_warps=k.num_warps, registers=k.registers, stack=k.stack,
                          spill_stores=k.spill_stores, spill_loads=k.spill_loads,
                          shared=k.shared, occupancy=occupancy(k), seconds=k.seconds, ptx_lines=k.ptx_lines,
                          vector_loads=k.vector_loads, scalar_loads=k.scalar_loads,
                          vector_stores=k.vector_stores, scalar_stores=k.scalar_stores)
                     for k in compiled]
    except InputError as err:
        print(f"bench/compile_check.py: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, NotImplementedError) as err:
        if "meta" not in str(err):
            raise
        print(f"bench/compile_check.py: the Triton path synchronises with the host between launches "
              f"(it read a tensor's values): {err}", file=sys.stderr)
        return 1
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"sm_{args.arch}, clip {'×'.join(map(str, shape))}, triton {common['triton']}: "
              f"{len(rows)} kernel variants\n{table(rows)}")
    if args.save:
        append_jsonl("compile", rows)
    spilling = sorted({f"{r['kernel']} ({r['dtype']}, {r['variant']})" for r in rows
                       if r["spill_stores"] or r["spill_loads"]})
    if spilling:
        print(f"bench/compile_check.py: register spills in {'; '.join(spilling)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
