"""CPU time of one ADM UNet forward (random fp32 weights, no_grad): a benchmark, not a test.

One warm-up pass (timed and reported apart), then the median of `--repeats` timed
passes. FLOPs come from torch.utils.flop_counter.FlopCounterMode (2 per multiply-add;
convolutions, matmuls and attention only) over a forward on the meta device: on CPU
tensors attention runs as `_scaled_dot_product_flash_attention_for_cpu`, which the
counter does not count. Prints a summary and, with --save, appends one JSON line to
bench/results/unet_cpu.jsonl with the CPU model, threads, load average, torch version
and git commit.

    python -m bench.unet_cpu                       # ADM-256, batch 1, 2 repeats (~1 min)
    python -m bench.unet_cpu --preset tiny --repeats 5 --save
"""

from __future__ import annotations

import argparse
import os

import torch

from bench.common import add_save_flag, append_jsonl, machine, median, time_fn, unet_flops
from engine.unet import PRESETS, ADMConfig, ADMUNet

CPU = torch.device("cpu")


def measure(preset: str, batch: int, repeats: int, timestep: int) -> dict:
    """Build the model, warm up once, then time `repeats` forwards."""
    config = ADMConfig.preset(preset)
    torch.manual_seed(0)
    model = ADMUNet(config).eval()
    x = torch.randn(batch, 3, config.image_size, config.image_size)  # [N, 3, H, W]
    t = torch.full((batch,), timestep, dtype=torch.long)             # [N]
    with torch.no_grad():
        (warmup_s,) = time_fn(lambda: model(x, t), CPU, repeats=1, warmup=0)
        seconds = time_fn(lambda: model(x, t), CPU, repeats=repeats, warmup=0)
    flops = unet_flops(config, batch)
    return {
        "bench": "unet_cpu",
        **machine(CPU),
        "loadavg_1m": os.getloadavg()[0],
        "preset": preset,
        "batch": batch,
        "dtype": "float32",
        "timestep": timestep,
        "parameters": model.num_parameters(),
        "flops": flops,
        "seconds_median": median(seconds),
        "seconds": seconds,
        "warmup_s": warmup_s,
        "gflop_per_s": flops / median(seconds) / 1e9,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="adm256_uncond", choices=list(PRESETS))
    parser.add_argument("--batch", type=int, default=1, help="frames per forward (default 1)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed passes after the warm-up (default 2)")
    parser.add_argument("--timestep", type=int, default=500,
                        help="t fed to the network (FLOPs do not depend on it)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    add_save_flag(parser, "unet_cpu")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:
        parser.error("--repeats and --batch must be ≥ 1")
    return args


def summary(r: dict) -> str:
    runs = [round(s, 2) for s in r["seconds"]]
    return (f"{r['preset']} batch {r['batch']} fp32 on {r['device_name']} ({r['threads']} threads, "
            f"load {r['loadavg_1m']:.1f}): median {r['seconds_median']:.2f} s of {runs}, "
            f"{r['flops'] / 1e12:.3f} TFLOP, {r['gflop_per_s']:.1f} GFLOP/s; warm-up {r['warmup_s']:.2f} s")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    record = measure(args.preset, args.batch, args.repeats, args.timestep)
    print(summary(record))
    if args.save:
        print(f"appended to {append_jsonl('unet_cpu', [record])}")
    return record


if __name__ == "__main__":
    main()
