"""What windows cost against the whole video, and what the lag and the warm start buy back.

    python -m bench.window_quality --clip carphone.mp4                    # 48 frames, W 16 and 32, lags 0/3/6/12
    python -m bench.window_quality --clip carphone.mp4 --frames 64 --sigma-y 0,0.01 --save

One real clip (its first --frames frames at its own size), blurred by temporal:uniform:7 (replicate
ends) with noise σ_y, restored by engine.windows.VideoRestorer as the whole video (one window) and in
windows of W frames for each lag L (the frames a window re-solves with the next one) and warm start
(--start t₀: each window starts from its own CG estimate; none: cold). The pinned context (the w − 1
restored frames before a window) is what makes windows exact for frame-local operators; L = 0 keeps
it and nothing else. Each row: mean PSNR, its gap to the whole video, the worst frame's gap and the
frame it falls on (window ends show there), seconds. --save appends to bench/results/window_quality.jsonl.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

from bench.common import add_save_flag, append_jsonl, machine
from engine.cg import default_gamma
from engine.metrics import psnr
from engine.priors import make_prior
from engine.video_io import stream_video
from engine.windows import VideoRestorer

SPEC = "temporal:uniform:7:replicate"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, required=True)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--windows", default="16,32", help="comma list of W")
    p.add_argument("--lags", default="0,3,6,12", help="comma list of L")
    p.add_argument("--sigma-y", default="0,0.01", help="comma list of σ_y")
    p.add_argument("--starts", default="none,400", help="comma list of t0 (none: cold)")
    p.add_argument("--prior", default="ffdnet")
    p.add_argument("--nfe", type=int, default=20)
    add_save_flag(p, "window_quality")
    return p.parse_args(argv)


def restore(prior, clean_shape, y, *, window, lag, sigma_y, start, nfe) -> tuple[torch.Tensor, float]:
    """(restored [N, 3, H, W], seconds) of VideoRestorer on measurement y."""
    t0 = time.perf_counter()
    restorer = VideoRestorer(prior, SPEC, clean_shape[-2:], window=window, lag=lag, nfe=nfe, start=start,
                             gamma=default_gamma(sigma_y), batch=16)
    out = torch.stack(list(restorer.restore(y)))
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    clean = torch.stack(list(stream_video(args.clip, frames=args.frames)))          # [N, 3, H, W]
    prior = make_prior(args.prior)
    info = machine(torch.device("cpu"))
    rows = []
    for sigma_y in [float(s) for s in args.sigma_y.split(",")]:
        for start in [None if s == "none" else int(s) for s in args.starts.split(",")]:
            measuring = VideoRestorer(prior, SPEC, clean.shape[-2:])
            y = torch.stack(list(measuring.measure(clean, sigma_y=sigma_y, seed=1)))
            whole, whole_s = restore(prior, clean.shape, y, window=None, lag=None, sigma_y=sigma_y, start=start,
                                     nfe=args.nfe)
            ref = psnr(whole, clean)
            base = dict(bench="window_quality", clip=args.clip.name, frames=args.frames, size=list(clean.shape[-2:]),
                        spec=SPEC, prior=args.prior, nfe=args.nfe, sigma_y=sigma_y, start=start,
                        whole_psnr=ref.mean().item(), whole_s=whole_s)
            print(f"sigma_y {sigma_y:g} start {start}: whole video {ref.mean():.2f} dB ({whole_s:.0f} s)", flush=True)
            for window, lag in itertools.product([int(w) for w in args.windows.split(",")],
                                                 [int(v) for v in args.lags.split(",")]):
                if lag >= window - 3:
                    continue
                out, seconds = restore(prior, clean.shape, y, window=window, lag=lag, sigma_y=sigma_y, start=start,
                                       nfe=args.nfe)
                p = psnr(out, clean)
                gap = p - ref
                row = {**base, "window": window, "lag": lag, "psnr": p.mean().item(), "gap_db": (p.mean() - ref.mean()).item(),
                       "worst_frame_gap_db": gap.min().item(), "worst_frame": int(gap.argmin()), "seconds": seconds,
                       "commit": info["commit"], "device_name": info["device_name"], "date": info["date"]}
                rows.append(row)
                print(f"  W {window:3d} lag {lag:2d}: {row['psnr']:.2f} dB, gap {row['gap_db']:+.2f} dB, worst frame "
                      f"{row['worst_frame']} {row['worst_frame_gap_db']:+.2f} dB, {seconds:.0f} s", flush=True)
                if args.save:
                    append_jsonl("window_quality", [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
