"""Peak memory of one reverse step, counted on meta tensors: no GPU, no data, any frame count.

    python bench/memory.py                             # ADM-256, fp16 (upstream's mode), channels_last, 16, 64, 256 frames
    python bench/memory.py --frames 8,16,24 --precision bf16 --task temporal-k7-sr4 --json

Runs one step of Algorithm 1 (UNet, Tweedie, CG, update) with the torch backend on meta
tensors, the network called on B frames at a time (`--batch`, engine.tiling.micro_batched, as
the Solver does), and counts the bytes of every tensor from its creation to its release: the peak
of live tensors, plus the weights and the Solver's static buffers (measurement, noise for
all K steps, output). The UNet's GroupNorms run as on CUDA (`--norms triton`: the fused
kernel's launcher allocates its output and partial sums as always, and
`bench.aot.launch_nothing` skips its launches, since meta tensors hold nothing to
compute) or as upstream's torch ops (`--norms torch`). This is what the tensors need; the
CUDA caching allocator, cuDNN workspaces and the CUDA context add to it, so bench/fps.py's
measured peak is the number that counts on a GPU. With B fixed, the network's activations do
not grow with the frame count; what does is the video-sized buffers (y, X, ε, X̂, the CG
vectors, the output): `per frame+` is the total's growth per frame over the first row. With
--save the rows are appended to bench/results/memory.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext

import torch

from bench.aot import launch_nothing
from bench.common import LiveBytes, add_save_flag, append_jsonl, machine
from engine.backends import torch_eps
from engine.operators import from_spec
from engine.sampler import reverse_process
from engine.schedule import ddim_steps
from engine.tasks import TASKS
from engine.tiling import micro_batched
from engine.unet import ADMConfig, ADMUNet

GB = 1e9


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="adm256_uncond", help="ADM config (adm256_uncond, ffhq_dps, tiny)")
    p.add_argument("--frames", default="16,64,256", help="comma list of frame counts (the first is the baseline)")
    p.add_argument("--batch", type=int, default=16, help="B: frames per network call")
    p.add_argument("--task", default="temporal-k7", choices=sorted(TASKS))
    p.add_argument("--nfe", type=int, default=20, help="K: the noise buffer holds K + 1 images")
    p.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--contiguous", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--norms", choices=["triton", "torch"], default="triton",
                   help="the UNet's GroupNorms: fused Triton kernel (as on CUDA) or upstream's torch ops")
    p.add_argument("--json", action="store_true", help="print one JSON object per frame count")
    add_save_flag(p, "memory")
    return p.parse_args(argv)


def step_memory(preset: str, frames: int, task: str, nfe: int, precision: str, channels_last: bool,
                norms: str = "triton", batch: int = 16) -> dict:
    """Bytes of weights, static buffers and the peak of live tensors in one reverse step (meta tensors),
    the network run on `batch` frames at a time."""
    config = ADMConfig.preset(preset)
    with torch.device("meta"):
        model = ADMUNet(config)
    eps = micro_batched(torch_eps(model, precision=precision, channels_last=channels_last, kernels=norms), batch)
    net = eps.module                 # the weights the network runs: its own converted copy (fp16) when precision asks
    del model
    weights = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
    shape = (frames, 3, config.image_size, config.image_size)
    op = from_spec(TASKS[task].spec, shape, device="meta", dtype=torch.float32)
    static = [torch.empty(op.out_shape, device="meta"), torch.empty((nfe + 1, 1, *shape[1:]), device="meta"),
              torch.empty(shape, device="meta")]                      # y, E (shared noise), output
    static_bytes = sum(t.numel() * t.element_size() for t in static)
    y, noise = static[0], static[1][:2]
    counter = LiveBytes()
    with counter, (launch_nothing() if norms == "triton" else nullcontext()):
        reverse_process(eps, y, op, noise, ddim_steps(1, TASKS[task].eta), cg_iters=TASKS[task].cg_iters,
                        gamma=None)
    return {"weights_bytes": weights, "static_bytes": static_bytes, "step_peak_bytes": counter.peak,
            "total_bytes": weights + static_bytes + counter.peak}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        frame_counts = [int(f) for f in args.frames.split(",") if f]
    except ValueError:
        print(f"bench/memory.py: --frames takes a comma list of integers, got {args.frames!r}", file=sys.stderr)
        return 2
    info = machine(torch.device("cpu"))
    rows = []
    for frames in frame_counts:
        row = dict(bench="memory", preset=args.preset, frames=frames, batch=args.batch, task=args.task, nfe=args.nfe,
                   precision=args.precision, channels_last=not args.contiguous, norms=args.norms,
                   **step_memory(args.preset, frames, args.task, args.nfe, args.precision, not args.contiguous,
                                 args.norms, args.batch),
                   commit=info["commit"], torch=info["torch"], date=info["date"])
        add_growth(row, rows[0] if rows else row)
        rows.append(row)
        if args.json:
            print(json.dumps(row))
        else:
            growth = row["growth_bytes_per_frame"]
            print(f"{args.preset} {args.precision} {args.norms} norms B = {args.batch} {frames:3d} frames: "
                  f"weights {row['weights_bytes'] / GB:.2f} GB + static buffers {row['static_bytes'] / GB:.2f} GB "
                  f"+ step peak {row['step_peak_bytes'] / GB:.2f} GB = {row['total_bytes'] / GB:.2f} GB of tensors, "
                  f"{row['total_bytes'] / frames / 1e6:.1f} MB per frame"
                  + (f", per frame+ {growth / 1e6:.2f} MB over {row['baseline_frames']} frames" if growth else ""))
    if args.save:
        append_jsonl("memory", rows)
    return 0


def add_growth(row: dict, first: dict) -> None:
    """Adds the total per frame and the total's growth per frame over `first` (this run's first row)."""
    extra = row["frames"] - first["frames"]
    row["bytes_per_frame"] = row["total_bytes"] / row["frames"]
    row["baseline_frames"] = first["frames"]
    row["growth_bytes_per_frame"] = (row["total_bytes"] - first["total_bytes"]) / extra if extra else None


if __name__ == "__main__":
    sys.exit(main())
