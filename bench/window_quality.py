"""What windows cost against the whole video, and what the lag, the lead, the pinned context and the warm start buy.

    OMP_NUM_THREADS=1 python -m bench.window_quality                      # carphone, 48 frames, W 32, the defaults
    python -m bench.window_quality --windows 16,32 --lags 0,6,12 --leads 0,3 --unpinned --sigma-y 0,0.01 --save

One real clip (bench.real_clips: a centre crop of --size, its first --frames frames), degraded as a
user's video is (temporal:uniform:7 with held ends, noise σ_y, 8 bit, x264 at --crf), restored by
engine.windows.VideoRestorer as the whole video (one window) and in windows of W frames for each lag L
(frames a window solves again with the next one), lead O (frames it solves again before its first new
one) and warm start t₀ (each window from its own CG estimate; none: cold); "default" takes the
restorer's own L or O. --unpinned adds each setting without the pinned context (the rows that read a
frame before the window left out). Each row: mean PSNR, its gap to the whole video, the worst frame's
gap and where it falls, the seam dip (the median frame gap less the worst gap within two frames of a
seam), every frame's gap, seconds. --save appends to bench/results/window_quality.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time

import torch

from bench.common import add_save_flag, append_jsonl, machine
from bench.real_clips import clean_clip, degrade
from engine.cg import default_gamma
from engine.errors import InputError
from engine.metrics import psnr
from engine.priors import make_prior
from engine.runtime import SolverConfig
from engine.windows import VideoRestorer, Window

SPEC = "temporal:uniform:7:replicate"


class Unpinned(VideoRestorer):
    """Windows without pinned context: every window past the first leaves out the rows that read a frame
    before it (what the pinned frames buy is the difference)."""

    def _plan(self, start: int, stop: int, last: bool, first: int) -> Window:
        win = super()._plan(start, stop, last, first)
        if start == 0:
            return win
        return dataclasses.replace(win, rows=(start + self.term.left, win.rows[1]), context=start)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="carphone", help="a bench.real_clips clip (carphone, bikes, bigbuckbunny, …)")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", type=int, default=144, help="side of the square centre crop")
    p.add_argument("--crf", type=int, default=23, help="x264 CRF of the measurement; -1: no x264 (8-bit frames)")
    p.add_argument("--windows", default="32", help="comma list of W")
    p.add_argument("--lags", default="default", help="comma list of L, or 'default'")
    p.add_argument("--leads", default="default", help="comma list of O, or 'default'")
    p.add_argument("--unpinned", action="store_true", help="also run each setting without the pinned context")
    p.add_argument("--sigma-y", default="0.01", help="comma list of σ_y")
    p.add_argument("--starts", default="none", help="comma list of t0 (none: cold)")
    p.add_argument("--prior", default="gaussian")
    p.add_argument("--nfe", type=int, default=8)
    p.add_argument("--per-frame", action="store_true", help="print every frame's gap to the whole video")
    add_save_flag(p, "window_quality")
    return p.parse_args(argv)


def seams(frames: int, window: int, lag: int, lead: int) -> list[int]:
    """The first frame each window after the first yields (VideoRestorer.restore's plan)."""
    out, start = [], 0
    while start + window < frames:
        commit = start + window - lag
        out.append(commit)
        start = commit - lead
    return out


def counts(values: str) -> list:
    return [None if v == "default" else int(v) for v in values.split(",")]


def main(argv=None) -> int:
    args = parse_args(argv)
    clean = clean_clip(args.clip, frames=args.frames, size=args.size)                 # [N, 3, H, W]
    prior = make_prior(args.prior)
    info = machine(torch.device("cpu"))
    for sigma_y in [float(s) for s in args.sigma_y.split(",")]:
        y = degrade(clean, SPEC, sigma=sigma_y, crf=None if args.crf < 0 else args.crf, seed=1)
        for start in [None if s == "none" else int(s) for s in args.starts.split(",")]:
            config = SolverConfig(spec=SPEC, size=tuple(clean.shape[-2:]), nfe=args.nfe, start=start,
                                  gamma=default_gamma(sigma_y))
            t0 = time.perf_counter()
            whole = torch.stack(list(VideoRestorer(prior, config).restore(y)))
            whole_s = time.perf_counter() - t0
            ref = psnr(whole, clean)
            base = dict(bench="window_quality", clip=args.clip, frames=args.frames, size=list(clean.shape[-2:]),
                        crf=None if args.crf < 0 else args.crf, spec=SPEC, prior=args.prior, nfe=args.nfe,
                        sigma_y=sigma_y, start=start, whole_psnr=ref.mean().item(), whole_s=whole_s)
            print(f"sigma_y {sigma_y:g} start {start}: whole video {ref.mean():.2f} dB ({whole_s:.0f} s)", flush=True)
            settings = itertools.product([int(w) for w in args.windows.split(",")], counts(args.lags),
                                         counts(args.leads), [True, False] if args.unpinned else [True])
            for window, lag, lead, pinned in settings:
                kind = VideoRestorer if pinned else Unpinned
                try:
                    restorer = kind(prior, config, window=window, lag=lag, lead=lead)
                except InputError as e:                       # a window too short for this lag and lead
                    print(f"  W {window} lag {lag} lead {lead}: {e}")
                    continue
                t0 = time.perf_counter()
                out = torch.stack(list(restorer.restore(y)))
                seconds = time.perf_counter() - t0
                gap = psnr(out, clean) - ref
                near = [gap[max(0, s - 2):s + 2].min() for s in seams(args.frames, window, restorer.lag, restorer.lead)]
                dip = (gap.median() - min(near)).item() if near else 0.0
                row = {**base, "window": window, "lag": restorer.lag, "lead": restorer.lead, "pinned": pinned,
                       "psnr": psnr(out, clean).mean().item(), "gap_db": (psnr(out, clean).mean() - ref.mean()).item(),
                       "worst_frame_gap_db": gap.min().item(), "worst_frame": int(gap.argmin()),
                       "seam_dip_db": dip, "frame_gap_db": [round(g, 3) for g in gap.tolist()], "seconds": seconds,
                       "commit": info["commit"], "device_name": info["device_name"], "date": info["date"]}
                print(f"  W {window:3d} lag {row['lag']:2d} lead {row['lead']:2d} {'pinned' if pinned else 'open  '}: "
                      f"{row['psnr']:.2f} dB, gap {row['gap_db']:+.2f} dB, worst frame {row['worst_frame']} "
                      f"{row['worst_frame_gap_db']:+.2f} dB, seam dip {dip:.2f} dB, {seconds:.0f} s", flush=True)
                if args.per_frame:
                    print("    " + " ".join(f"{g:+.1f}" for g in gap.tolist()))
                if args.save:
                    append_jsonl("window_quality", [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
