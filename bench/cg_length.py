"""PSNR against clip length for plain and preconditioned CG: a benchmark, not a test.

Real footage (engine.testclips: a camera panning over a photo scikit-image ships), a
noiseless degradation, the weight-free prior (engine.priors.GaussianPrior) through
engine.sampler.sample at the paper's temporal settings (20 NFE, η = 0.15, l = 5 CG
steps), once with plain CG and once per δ with the temporal preconditioner of
engine.cg.preconditioner. Plain CG with l = 5 falls with the length (the kernel's
spectral near-zeros crowd the DFT grid); the goal for PCG is a flat line. Prints a table
(rows: frames; columns: plain CG and each δ) and, with --save, appends one JSON line per
run to bench/results/cg_length.jsonl.

    python -m bench.cg_length                                      # 16, 32, 64, 256 frames of 32×32
    python -m bench.cg_length --spec temporal:uniform:7:replicate --deltas 1e-4,1e-6 --save
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bench.common import append_jsonl, machine
from engine.metrics import psnr
from engine.operators import from_spec
from engine.priors import GaussianPrior
from engine.sampler import sample
from engine.testclips import camera_clip

CPU = torch.device("cpu")


def run(spec: str, frames: int, size: int, image: str, delta: float | None, *, nfe: int, eta: float,
        cg_iters: int, dtype: torch.dtype) -> dict:
    """One restoration; its mean per-frame PSNR and wall time."""
    x = camera_clip(image, frames=frames, size=size, dtype=dtype)          # [N, 3, S, S] in [0, 1]
    op = from_spec(spec, x.shape, kernels="torch")
    y = op.A(x)
    start = time.perf_counter()
    out = sample(GaussianPrior(), y, op, nfe=nfe, eta=eta, cg_iters=cg_iters, precond_delta=delta)
    seconds = time.perf_counter() - start
    return {"bench": "cg_length", "spec": spec, "image": image, "frames": frames, "size": size,
            "dtype": str(dtype).removeprefix("torch."), "nfe": nfe, "eta": eta, "cg_iters": cg_iters,
            "cg": "plain" if delta is None else "pcg", "delta": delta,
            "psnr_mean": float(psnr(out, x).mean()), "seconds": seconds}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="temporal:uniform:7", help="noiseless degradation (default temporal:uniform:7)")
    parser.add_argument("--frames", default="16,32,64,256", help="clip lengths (default 16,32,64,256)")
    parser.add_argument("--size", type=int, default=32, help="frame side (default 32)")
    parser.add_argument("--image", default="astronaut", help="photo of engine.testclips (default astronaut)")
    parser.add_argument("--deltas", default="1e-3,1e-4,1e-5,1e-6", help="PCG's δ values (default 1e-3,…,1e-6)")
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--eta", type=float, default=0.15)
    parser.add_argument("--cg-iters", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--save", action="store_true", help="append the rows to bench/results/cg_length.jsonl")
    args = parser.parse_args(argv)
    try:
        args.frames = [int(v) for v in args.frames.split(",")]
        args.deltas = [float(v) for v in args.deltas.split(",")] if args.deltas else []
    except ValueError:
        parser.error("--frames takes integers and --deltas numbers, comma-separated")
    if min(args.frames) < 1 or args.size < 1 or any(d <= 0 for d in args.deltas):
        parser.error("--frames and --size must be ≥ 1 and every δ > 0")
    return args


def table(rows: list[dict], deltas: list[float]) -> str:
    """PSNR (dB): one line per length, plain CG then PCG per δ."""
    head = f"{'frames':>6} {'plain':>8}" + "".join(f" {'δ=' + format(d, 'g'):>9}" for d in deltas)
    lines = [head]
    for n in sorted({r["frames"] for r in rows}):
        by = {r["delta"]: r["psnr_mean"] for r in rows if r["frames"] == n}
        lines.append(f"{n:>6} {by[None]:>8.1f}" + "".join(f" {by[d]:>9.1f}" for d in deltas))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    common = {**machine(CPU), "loadavg_1m": os.getloadavg()[0]}
    rows = []
    for frames in args.frames:
        for delta in [None, *args.deltas]:
            row = run(args.spec, frames, args.size, args.image, delta, nfe=args.nfe, eta=args.eta,
                      cg_iters=args.cg_iters, dtype=getattr(torch, args.dtype))
            rows.append({**common, **row})
            print(f"{args.spec} {frames} frames, {'plain' if delta is None else f'δ={delta:g}'}: "
                  f"{row['psnr_mean']:.1f} dB ({row['seconds']:.1f} s)", flush=True)
    print(f"\n{args.spec}, {args.size}×{args.size}, {args.dtype}, l = {args.cg_iters}, {args.nfe} NFE — PSNR (dB)")
    print(table(rows, args.deltas))
    if args.save:
        print(f"appended to {append_jsonl('cg_length', rows)}")
    return rows


if __name__ == "__main__":
    main()
