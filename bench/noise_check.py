"""How well engine.noise estimates σ_y on real clips degraded as a user's video is, and what its error costs.

Each clip (bench.real_clips) is blurred by each spec, given Gaussian noise of known σ, rounded to
8 bit and kept as PNG would keep it, or encoded by x264 at a CRF and decoded. A row per case:
σ, the rms of the measurement's actual error y − A x (8-bit rounding and codec included), the
estimate σ̂ and σ̂/σ. With --restore, the clip is also restored (engine.runtime.Solver, default
prior, bench.measured_defaults' setting) with σ̂, with the true σ (where σ > 0), with the rms
error and with each σ_y of --sweep; PSNR of each against the clean clip. Rows go to
bench/results/noise_check.jsonl with --save.

    python -m bench.noise_check                               # the estimate, every clip, σ and codec
    python -m bench.noise_check --specs temporal:uniform:7+sr:2 --codecs png
    python -m bench.noise_check --clips carphone,photo:chelsea --sigmas 0,0.01 --codecs 23 --restore --save
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from bench.common import add_save_flag, append_jsonl, machine
from bench.measured_defaults import parse_setting, restore
from bench.real_clips import CLIPS, DEFAULT_SPEC, clean_clip, degrade
from engine.metrics import psnr
from engine.noise import METHOD, estimate_noise
from engine.operators import from_spec
from engine.operators.spec import with_time_boundary
from engine.runtime import load_model

#: the ±30 % the estimate must stay within where σ is known (8-bit PNG, σ > 0)
TOLERANCE = 0.3
DEFAULT_CLIPS = "carphone,bikes,bigbuckbunny,photo:astronaut,photo:chelsea,photo:coffee,photo:rocket,photo:grass"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.noise_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", default=DEFAULT_CLIPS, help=f"comma-separated, from {', '.join(CLIPS)}")
    p.add_argument("--specs", default=f"{DEFAULT_SPEC},{DEFAULT_SPEC}+blur:gaussian:1.0:7",
                   help="comma-separated degradations (engine.operators.from_spec)")
    p.add_argument("--sigmas", default="0,0.005,0.01,0.02,0.05", help="comma-separated σ added before 8 bit")
    p.add_argument("--codecs", default="png,18,23,28", help="comma-separated: png, or an x264 CRF")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restore", action="store_true", help="also restore with σ̂, the true σ and the rms error")
    p.add_argument("--sweep", default="", help="with --restore: also restore with each of these σ_y (comma-separated)")
    p.add_argument("--setting", default="warm400x8", help="how --restore restores (bench.measured_defaults)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_save_flag(p, "noise_check")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    setting = parse_setting(args.setting)
    model = load_model(None, prior="ffdnet")[0] if args.restore else None
    base = {"frames": args.frames, "size": args.size, "seed": args.seed, "method": METHOD,
            **machine(torch.device("cpu"))}
    rows = []
    for clip in args.clips.split(","):
        x = clean_clip(clip, frames=args.frames, size=args.size)
        for spec in args.specs.split(","):
            op = from_spec(with_time_boundary(spec, "replicate"), tuple(x.shape))
            clean_y = op.A(x)
            for sigma in map(float, args.sigmas.split(",")):
                for codec in args.codecs.split(","):
                    crf = None if codec == "png" else int(codec)
                    y = degrade(x, spec, sigma=sigma, crf=crf, seed=args.seed + 1)
                    t0 = time.perf_counter()
                    est = estimate_noise(y)
                    row = {**base, "clip": clip, "spec": spec, "sigma": sigma, "codec": codec,
                           "residual_rms": (y - clean_y).square().mean().sqrt().item(), "sigma_est": est.sigma,
                           "floored": est.floored, "ratio": est.sigma / sigma if sigma > 0 else None,
                           "estimate_seconds": time.perf_counter() - t0}
                    if args.restore:
                        row |= {"setting": setting.name, **restorations(model, y, x, spec, setting, row, args.seed)}
                        row["psnr_at"] = {s: psnr(restore(model, y, spec, tuple(x.shape), setting, float(s),
                                                          seed=args.seed), x).mean().item()
                                          for s in filter(None, args.sweep.split(","))}
                    rows.append(row)
                    print_row(row)
                    if args.save:
                        append_jsonl("noise_check", [row])
    summary(rows)


def restorations(model, y, x, spec, setting, row, seed) -> dict:
    """PSNR of the restorations with σ̂, the true σ (None at σ = 0) and the rms error, and the first's loss."""
    out = {}
    for key, sigma_y in (("psnr_est", row["sigma_est"]), ("psnr_true", row["sigma"] or None),
                         ("psnr_rms", row["residual_rms"])):
        out[key] = None if sigma_y is None else psnr(
            restore(model, y, spec, tuple(x.shape), setting, sigma_y, seed=seed), x).mean().item()
    reference = out["psnr_true"] if out["psnr_true"] is not None else out["psnr_rms"]
    out["loss_db"] = reference - out["psnr_est"]
    return out


def print_row(row: dict) -> None:
    ratio = f"{row['ratio']:5.2f}" if row["ratio"] is not None else "   - "
    text = (f"{row['clip']:16s} {row['spec']:38s} σ={row['sigma']:<6g} {row['codec']:4s} "
            f"rms={row['residual_rms']:.4f} σ̂={row['sigma_est']:.4f} σ̂/σ={ratio}")
    if "psnr_est" in row:
        true = f"{row['psnr_true']:6.2f}" if row["psnr_true"] is not None else "   -  "
        text += (f"  PSNR σ̂ {row['psnr_est']:6.2f}  σ {true}  rms {row['psnr_rms']:6.2f}  "
                 f"loss {row['loss_db']:+.2f} dB")
        text += "".join(f"  σ_y {s}: {v:6.2f}" for s, v in row["psnr_at"].items())
    print(text, flush=True)


def summary(rows: list[dict]) -> None:
    """How many known-σ PNG cases lie within TOLERANCE, the worst ratios, and the worst restoration loss."""
    known = [r for r in rows if r["codec"] == "png" and r["sigma"] > 0]
    if known:
        inside = [r for r in known if abs(r["ratio"] - 1) <= TOLERANCE]
        print(f"\nPNG, σ > 0: {len(inside)}/{len(known)} estimates within ±{TOLERANCE:.0%}; σ̂/σ from "
              f"{min(r['ratio'] for r in known):.2f} to {max(r['ratio'] for r in known):.2f}, "
              f"median {statistics.median(r['ratio'] for r in known):.2f}")
    restored = [r for r in rows if "loss_db" in r]
    if restored:
        worst = max(restored, key=lambda r: r["loss_db"])
        print(f"restoration with σ̂ against the true σ: worst loss {worst['loss_db']:+.2f} dB "
              f"({worst['clip']}, σ {worst['sigma']:g}, {worst['codec']}); mean "
              f"{statistics.mean(r['loss_db'] for r in restored):+.2f} dB over {len(restored)} cases")


if __name__ == "__main__":
    main()
