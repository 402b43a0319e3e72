"""Ghost frames on real clips: per-frame PSNR dips of a temporal box blur's null modes (docs/design.md).

    python -m bench.ghosts --clips bikes:48 carphone:48 --sigma 0 0.01 --paths whole windows \\
        --temporal-prior none motion --prior gaussian --nfe 8

Each clip is read from /work/clips (or --clip-dir), resized to at most --height rows (keeping its
aspect, even sizes), blurred as a user's video is (`temporal:uniform:7:replicate` by default),
given Gaussian noise σ_y, rounded to 8 bits (and, with --h264, written and read back as an H.264
mp4), then restored by the whole-video Solver and by VideoRestorer in windows of --window frames,
with the settings `engine.solve --simulate` gives them (the motion prior's frames registered to the
measurement unless it went through --h264 or --no-register says not to).
Every restoration is scored frame by frame against the clean clip:

- mean PSNR (dB);
- dip: the largest drop of a frame below the median PSNR of the 7 frames centred on it
  (the target: ≤ 3 dB; content changes slowly, ghosts do not);
- the period-7 pattern: the mean of (frame PSNR − its local median) by frame index mod 7.

One row per restoration is appended to bench/results/ghosts.jsonl with the machine named.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import RESULTS, append_jsonl, machine
from engine.cg import gamma_at
from engine.errors import InputError
from engine.metrics import psnr
from engine.operators import from_spec
from engine.priors import PRIORS, make_prior
from engine.runtime import Solver, SolverConfig
from engine.temporal_prior import TEMPORAL_PRIORS
from engine.video_io import read_video, write_video
from engine.windows import VideoRestorer

log = logging.getLogger("bench.ghosts")
CLIP_DIR = Path("/work/clips")
CLIP_FILES = {"bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4", "bunny": "bigbuckbunny.mp4"}
#: frames on each side of a frame whose median PSNR it is compared with (7 frames in all)
NEIGHBOURS = 3
PERIOD = 7


def load_clip(name: str, frames: int, height: int, start: int = 0, clip_dir: Path = CLIP_DIR) -> torch.Tensor:
    """`frames` frames of a real clip from `start`, resized to at most `height` rows (aspect kept, even sides).  → [N, 3, H, W]"""
    clip = read_video(clip_dir / CLIP_FILES.get(name, name), size=None, frames=frames, start=start)
    h, w = clip.shape[-2:]
    scale = min(1.0, height / h)
    size = (2 * round(h * scale / 2), 2 * round(w * scale / 2))
    if size != (h, w):
        clip = F.interpolate(clip, size=size, mode="bilinear", antialias=True, align_corners=False)
    return clip.clamp(0, 1)


def degrade(clip: torch.Tensor, spec: str, sigma: float, seed: int, h264: bool) -> torch.Tensor:
    """A user's blurred video: A x + σ·w, rounded to 8 bits (and through H.264 with `h264`).  → [N, 3, H, W]"""
    y = from_spec(spec, tuple(clip.shape), kernels="torch").A(clip)
    if sigma > 0:
        y = y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    y = (y.clamp(0, 1) * 255).round() / 255
    if h264:
        with tempfile.TemporaryDirectory() as tmp:
            path = write_video(Path(tmp) / "y.mp4", y)
            y = read_video(path, size=None)[:, :, :clip.shape[-2], :clip.shape[-1]]
    return y


def dips(scores: torch.Tensor) -> torch.Tensor:
    """Each frame's PSNR below the median of the 7 frames around it (centred on it, or the first or last 7
    at the ends).  [N] → [N]"""
    n = scores.numel()
    first = (torch.arange(n) - NEIGHBOURS).clamp(0, max(n - 2 * NEIGHBOURS - 1, 0))
    idx = (first[:, None] + torch.arange(2 * NEIGHBOURS + 1)[None]).clamp(max=n - 1)
    return scores[idx].median(dim=1).values - scores


def ghost_report(restored: torch.Tensor, clean: torch.Tensor) -> dict:
    """Mean PSNR, the worst dip (and its frame), the period-7 pattern of the dips, per-frame PSNR."""
    scores = psnr(restored, clean)
    d = dips(scores)
    pattern = [-d[k::PERIOD].mean().item() for k in range(PERIOD)]
    return {"psnr_mean": scores.mean().item(), "worst_dip": d.max().item(), "worst_frame": int(d.argmax()),
            "frames_over_3db": int((d > 3).sum()), "period7": [round(p, 2) for p in pattern],
            "psnr": [round(p, 3) for p in scores.tolist()]}


def registers(args, temporal_prior: str) -> bool:
    """Whether the frames are registered to the measurement (engine.registration), as `engine.solve --simulate`
    does: with the motion prior, on a measurement of white noise (not through --h264), unless --no-register."""
    return temporal_prior == "motion" and not args.h264 and not args.no_register


def restore(path: str, model, y: torch.Tensor, spec: str, args, sigma: float, temporal_prior: str) -> torch.Tensor:
    """The whole video through a Solver, or windows through VideoRestorer, as engine.solve builds them."""
    n, _, h, w = y.shape
    gamma = gamma_at(None, sigma)
    settings = dict(nfe=args.nfe, eta=args.eta, cg_iters=args.cg_iters, gamma=gamma, start=args.start,
                    temporal_prior=temporal_prior, register=registers(args, temporal_prior))
    cfg = SolverConfig(spec=spec, frames=n, size=(h, w), channels_last=True, **settings)
    if path == "whole":
        return Solver(model, cfg).solve(y, seed=args.seed)
    restorer = VideoRestorer(model, cfg, window=args.window)
    return torch.stack(list(restorer.restore(y, seed=args.seed)))


def print_table(path: Path) -> int:
    """One line per stored row: clip, frames, size, σ_y, path, treatment (+reg: frames registered), commit, mean dB,
    worst dip, frames over 3 dB."""
    print("clip      frames size     σ_y   path    prior     temporal   commit   mean dB  worst dip  >3 dB")
    for line in path.read_text().splitlines():
        row = json.loads(line)
        d = dips(torch.tensor(row["psnr"], dtype=torch.float64))
        treatment = row["temporal_prior"] + ("+reg" if row.get("register") else "")
        print(f"{row['clip']:<9} {row['frames']:>6} {'x'.join(map(str, row['size'])):<8} {row['sigma_y']:<5} "
              f"{row['path']:<7} {row['prior']:<9} {treatment:<10} {row['commit'][:8]} "
              f"{row['psnr_mean']:7.2f} {d.max().item():9.2f} {int((d > 3).sum()):6d}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", nargs="+", default=["bikes:48"], metavar="NAME:FRAMES[:START]",
                   help=f"clips ({', '.join(CLIP_FILES)}, or a file in --clip-dir) with a frame count")
    p.add_argument("--clip-dir", type=Path, default=CLIP_DIR)
    p.add_argument("--height", type=int, default=136, help="frames resized to at most this many rows")
    p.add_argument("--spec", default="temporal:uniform:7:replicate")
    p.add_argument("--sigma", type=float, nargs="+", default=[0.0], help="measurement noise σ_y (known to the solver)")
    p.add_argument("--h264", action="store_true", help="the measurement goes through an H.264 mp4")
    p.add_argument("--paths", nargs="+", choices=["whole", "windows"], default=["whole"])
    p.add_argument("--window", type=int, default=32, help="free frames per window (windows path)")
    p.add_argument("--temporal-prior", nargs="+", choices=TEMPORAL_PRIORS, default=["none"])
    p.add_argument("--prior", choices=PRIORS, default="gaussian")
    p.add_argument("--nfe", type=int, default=8)
    p.add_argument("--start", type=int, default=None, help="warm start t₀ (default cold)")
    p.add_argument("--no-register", action="store_true",
                   help="leave the frames where the motion prior put them (engine.registration; the default "
                        "registers them on a measurement of white noise, as engine.solve --simulate)")
    p.add_argument("--eta", type=float, default=0.15)
    p.add_argument("--cg-iters", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-save", action="store_true", help="print the rows, append nothing")
    p.add_argument("--table", action="store_true", help="print the rows of ghosts.jsonl (dips recomputed from "
                                                        "their per-frame PSNR) and restore nothing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.table:
        return print_table(RESULTS / "ghosts.jsonl")
    torch.set_num_threads(args.threads)
    model = make_prior(args.prior)
    info = machine(torch.device("cpu"))
    for item in args.clips:
        name, frames, *rest = item.split(":")
        try:
            clean = load_clip(name, int(frames), args.height, int(rest[0]) if rest else 0, args.clip_dir)
        except InputError as err:
            print(f"python -m bench.ghosts: {item}: {err}", file=sys.stderr)
            return 2
        for sigma in args.sigma:
            y = degrade(clean, args.spec, sigma, args.seed + 1, args.h264)
            blurred = ghost_report(y, clean)
            for path in args.paths:
                for treatment in args.temporal_prior:
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        x = restore(path, model, y, args.spec, args, sigma, treatment)
                    seconds = time.perf_counter() - t0
                    row = {"clip": name, "frames": clean.shape[0], "size": list(clean.shape[-2:]), "sigma_y": sigma,
                           "h264": args.h264, "path": path, "window": args.window if path == "windows" else None,
                           "temporal_prior": treatment, "register": registers(args, treatment), "prior": args.prior,
                           "nfe": args.nfe, "start": args.start, "eta": args.eta, "seconds": round(seconds, 2),
                           **ghost_report(x, clean), "input_psnr_mean": blurred["psnr_mean"], **info}
                    log.info("%-9s %3d %s σ=%.3f %-7s %-8s mean %.2f dB (input %.2f), worst dip %.2f dB at %d, "
                             "%d frames > 3 dB, period-7 %s, %.0f s", name, row["frames"], "x".join(map(str, row["size"])),
                             sigma, path, treatment, row["psnr_mean"], blurred["psnr_mean"], row["worst_dip"],
                             row["worst_frame"], row["frames_over_3db"], row["period7"], seconds)
                    if not args.no_save:
                        append_jsonl("ghosts", [row])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
