"""Where one UNet forward's time goes: kernel time by kind, upstream's GroupNorms against the fused ones.

    python bench/profile_unet.py                          # GPU: ADM-256, batch 16, fp16, channels_last
    python bench/profile_unet.py --preset tiny --frames 2 # CPU: aten ops' self time instead of kernels

Runs a few forwards under torch.profiler and adds up the device time of every CUDA kernel
(on the CPU: the self time of every aten op) by kind: convolutions and matmuls, attention,
GroupNorm, elementwise (casts, SiLU, scale-shift, residual adds), concatenation,
resampling, other. Printed in ms per forward with each kind's share, once per way of
running the GroupNorms (`--norms`: upstream's torch ops, the fused Triton kernel), next to
the forward's median time from CUDA events. This is the profile behind the "where the
time went" of bench/fps.py's UNet stage. Each row is appended to bench/results/profile.jsonl
(or $BENCH_RESULTS) as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter

import torch

from bench.common import add_save_flag, append_jsonl, machine, median, synchronize, time_fn
from engine.backends import PRECISIONS, torch_eps
from engine.unet import PRESETS, ADMConfig, ADMUNet

#: Kinds of kernel (or aten op), first match wins: a name is lower-cased and searched.
KINDS = (
    ("attention", r"flash|fmha|attention|softmax"),
    ("groupnorm", r"group_?norm|_gn_|moments|computefusedparams"),
    ("convolution + matmul", r"conv|gemm|xmma|cutlass|cudnn|implicit|wgmma|mkldnn|addmm|\bmm\b|linear|matmul"),
    ("concatenation", r"\bcat\b|catarray"),
    ("resampling", r"upsample|interpolate|avg_pool|pool2d"),
    ("elementwise", r"elementwise|copy|silu|add|mul|sigmoid|fill|_to_|clone"),
)
OTHER = "other"


def kind_of(name: str) -> str:
    """The kind of a CUDA kernel or aten op, by its name."""
    lowered = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, lowered):
            return kind
    return OTHER


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="adm256_uncond" if cuda else "tiny")
    p.add_argument("--frames", type=int, default=16 if cuda else 2, help="batch N")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp16" if cuda else "fp32")
    p.add_argument("--norms", default="torch,triton" if cuda else "torch",
                   help="comma list: torch (upstream's ops), triton (the fused kernel)")
    p.add_argument("--repeats", type=int, default=3, help="forwards profiled (and timed)")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object per --norms entry")
    add_save_flag(p, "profile")
    return p.parse_args(argv)


def kernel_ms(eps, x: torch.Tensor, t: torch.Tensor, device: torch.device, repeats: int) -> dict[str, float]:
    """ms per forward by kind: CUDA kernels' device time on a GPU, aten ops' self time on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            eps(x, t)
        synchronize(device)
    totals: Counter = Counter()
    for event in prof.key_averages():
        if cuda:
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = getattr(event, "self_device_time_total", None)
            us = us if us is not None else event.self_cuda_time_total
        else:
            if not event.key.startswith("aten::"):
                continue
            us = event.self_cpu_time_total
        totals[kind_of(event.key)] += us / 1e3 / repeats
    return dict(totals)


def profile_row(args, model: ADMUNet, norms: str, common: dict) -> dict:
    device = torch.device(args.device)
    eps = torch_eps(model, precision=args.precision, channels_last=device.type == "cuda", kernels=norms)
    size = model.config.image_size
    x = torch.randn((args.frames, 3, size, size), device=device)
    t = torch.full((args.frames,), 500, device=device, dtype=torch.long)
    with torch.no_grad():
        forward_ms = 1e3 * median(time_fn(lambda: eps(x, t), device, repeats=args.repeats, warmup=2))
        kinds = kernel_ms(eps, x, t, device, args.repeats)
    return dict(common, norms=norms, forward_ms=forward_ms, kinds=kinds, kernel_ms=sum(kinds.values()))


def print_table(rows: list[dict]) -> None:
    first = rows[0]
    print(f"{first['preset']} {first['precision']}, batch {first['frames']}, {first['device_name']}: "
          f"ms per forward by kind ({'CUDA kernels' if first['device'].startswith('cuda') else 'aten self time'})")
    kinds = sorted({k for r in rows for k in r["kinds"]}, key=lambda k: -max(r["kinds"].get(k, 0) for r in rows))
    print(f"{'kind':24}" + "".join(f" {r['norms'] + ' norms':>14} {'%':>5}" for r in rows))
    for kind in kinds + ["kernel time", "forward (timed)"]:
        cells = ""
        for r in rows:
            ms = {"kernel time": r["kernel_ms"], "forward (timed)": r["forward_ms"]}.get(kind, r["kinds"].get(kind, 0))
            share = f"{100 * ms / r['kernel_ms']:5.1f}" if kind in r["kinds"] else f"{'':5}"
            cells += f" {ms:14.2f} {share}"
        print(f"{kind:24}{cells}")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    norms = [n for n in args.norms.split(",") if n]
    if not norms or any(n not in ("torch", "triton") for n in norms):
        print(f"bench/profile_unet.py: --norms takes torch and/or triton, got {args.norms!r}", file=sys.stderr)
        return 2
    if args.frames < 1 or args.repeats < 1:
        print("bench/profile_unet.py: --frames and --repeats must be at least 1", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    with device:                                                        # random weights: speed does not care
        model = ADMUNet(ADMConfig.preset(args.preset))
    common = dict(bench="profile_unet", preset=args.preset, frames=args.frames, precision=args.precision,
                  device=args.device, channels_last=device.type == "cuda", **machine(device))
    rows = []
    for n in norms:                 # each row kept the moment it is measured: a time-out loses only the rest
        rows.append(profile_row(args, model, n, common))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
        if args.save:
            append_jsonl("profile", rows[-1:])
    if not args.json:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
