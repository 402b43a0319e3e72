"""Restoration quality of the priors on real footage: PSNR of Algorithm 1 with each prior, beside CG and ADMM-TV.

Clips are photos that scikit-image ships seen by a moving camera (engine.testclips), measured
through a task's operator plus noise σ_y. Each prior variant runs through engine.runtime.Solver;
the table shows the mean PSNR over clips of the returned clip and of the last Tweedie estimate.
Rows are appended to bench/results/prior_quality.jsonl with the commit and every setting.

    python -m bench.prior_quality                                   # temporal k=7, σ_y = 0.05, 2 clips
    python -m bench.prior_quality --spec temporal:uniform:7+sr:4 --sigma-y 0 --eta 0.8
    python -m bench.prior_quality --priors ffdnet:0.3,ffdnet:0.6,gaussian --methods admm-tv,cg
    python -m bench.prior_quality --save-clips clips/        # the clips as .npy files for python -m engine.evaluate

Prior variants: `gaussian`; `ffdnet:S` (FFDNet where the step's noise σ_t ≤ S in [0, 1] units,
the Gaussian prior above); `ffdnet:S:C` (the same, FFDNet's σ input clamped at C);
`ffdnet:S:C:M` (and σ multiplied by M, a plug-and-play noise-level gain).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.common import append_jsonl, machine
from engine.baselines import admm_tv, cg_baseline
from engine.cg import gamma_at
from engine.metrics import psnr
from engine.priors import DenoiserPrior, GaussianPrior
from engine.runtime import Solver, SolverConfig, measure
from engine.testclips import camera_clip

log = logging.getLogger("bench.prior_quality")
#: photo: (pan in px/frame at 256×256, zoom per frame), camera motion over photos scikit-image ships;
#: the pan scales with the frame size, so a 128×128 clip shows the same motion as the 256×256 one
CLIPS = {"astronaut": ((2.0, 1.0), 1.01), "coffee": ((-1.5, 1.0), 1.0), "chelsea": ((1.0, -2.0), 0.99),
         "rocket": ((0.0, 1.5), 1.01)}
CLIP_SCALE = 256


class NoiseLevelMap(nn.Module):
    """D(z, min(M·σ, C)): a denoiser whose noise-level input is scaled by M and clamped at C (bench variants)."""

    def __init__(self, denoiser: nn.Module, clamp: float, gain: float):
        super().__init__()
        self.denoiser, self.clamp, self.gain = denoiser, clamp, gain

    def forward(self, z, sigma):
        return self.denoiser(z, (self.gain * sigma).clamp(max=self.clamp))


def make_variant(name: str, ffdnet: nn.Module | None):
    """A prior from a variant name (module docstring)."""
    if name == "gaussian":
        return GaussianPrior()
    kind, *numbers = name.split(":")
    if kind != "ffdnet" or not 1 <= len(numbers) <= 3:
        raise SystemExit(f"unknown prior variant {name!r}")
    switch, clamp, gain = (list(map(float, numbers)) + [float("inf"), 1.0])[:3]
    return DenoiserPrior(NoiseLevelMap(ffdnet, clamp, gain), switch=switch)


def clip(name: str, frames: int, size: int) -> torch.Tensor:
    """The test clip `name` (CLIPS) at `size`.  [frames, 3, size, size] in [0, 1]"""
    (px, py), zoom = CLIPS[name]
    return camera_clip(name, frames=frames, size=size, pan=(px * size / CLIP_SCALE, py * size / CLIP_SCALE), zoom=zoom)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.prior_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="temporal:uniform:7", help="degradation (engine.operators.from_spec)")
    p.add_argument("--sigma-y", type=float, default=0.05, help="measurement noise σ_y (γ-regularised CG when > 0)")
    p.add_argument("--gamma", type=float, help="γ of the regularised CG (default: engine.cg.default_gamma, 0.04/σ_y)")
    p.add_argument("--priors", default="ffdnet:0.3,gaussian", help="comma-separated prior variants")
    p.add_argument("--methods", default="admm-tv,cg", help="baselines, comma-separated: admm-tv, cg (or empty)")
    p.add_argument("--clips", default="astronaut,coffee", help=f"comma-separated, from {', '.join(CLIPS)}")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--eta", type=float, default=0.15)
    p.add_argument("--cg-iters", type=int, default=5)
    p.add_argument("--start", type=int, help="warm start at t0 (engine.schedule.warm_start; default: cold, T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-record", action="store_true", help="print only, append nothing")
    p.add_argument("--save-clips", type=Path, metavar="DIR",
                   help="write the clean clips as the public code's .npy clips [3, N, H, W] into DIR (a --data "
                        "folder for python -m engine.evaluate) and stop")
    return p.parse_args(argv)


def save_clips(folder: Path, names: list[str], frames: int, size: int) -> list[Path]:
    """Each clip of `names` as `folder/<name>.npy`, float32 [3, N, H, W] in [0, 1]."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.npy" for name in names]
    for name, path in zip(names, paths):
        np.save(path, clip(name, frames, size).permute(1, 0, 2, 3).numpy())
    return paths


def run(args) -> list[dict]:
    cfg = SolverConfig(spec=args.spec, frames=args.frames, size=args.size, nfe=args.nfe, eta=args.eta,
                       cg_iters=args.cg_iters, gamma=gamma_at(args.gamma, args.sigma_y), start=args.start)
    ffdnet = None
    if any(v.startswith("ffdnet") for v in args.priors.split(",")):
        from engine.ffdnet import load_ffdnet

        ffdnet = load_ffdnet()
    settings = dict(spec=args.spec, sigma_y=args.sigma_y, gamma=cfg.gamma, frames=args.frames, size=args.size,
                    nfe=args.nfe, eta=args.eta, cg_iters=args.cg_iters, start=args.start, seed=args.seed)
    info = machine(torch.device("cpu"))
    rows = []
    clips = {name: clip(name, args.frames, args.size) for name in args.clips.split(",")}
    for variant in [v for v in args.priors.split(",") if v]:
        solver = Solver(make_variant(variant, ffdnet), cfg)
        for k, (name, clean) in enumerate(clips.items()):
            y = solver.measure(clean, sigma_y=args.sigma_y, seed=1000 + k)
            last = {}
            began = time.perf_counter()
            x = solver.solve(y, seed=args.seed, callback=lambda i, t, x0: last.update(x0=x0))
            seconds = time.perf_counter() - began
            rows.append(dict(method=f"svi[{variant}]", clip=name, psnr=psnr(x, clean).mean().item(),
                             psnr_last_tweedie=psnr(last["x0"].clamp(0, 1), clean).mean().item(), seconds=seconds))
            log.info("%s %s: %.2f dB", variant, name, rows[-1]["psnr"])
    budget = args.nfe * args.cg_iters
    baselines = {"cg": lambda op, y: cg_baseline(op, y, iters=budget), "admm-tv": lambda op, y: admm_tv(op, y)}
    op = Solver(GaussianPrior(), cfg).op
    for method in [m for m in args.methods.split(",") if m]:
        for k, (name, clean) in enumerate(clips.items()):
            y = measure(op, clean, sigma_y=args.sigma_y, seed=1000 + k)
            began = time.perf_counter()
            x = baselines[method](op, y)
            rows.append(dict(method=method, clip=name, psnr=psnr(x, clean).mean().item(),
                             seconds=time.perf_counter() - began))
    rows = [{"bench": "prior_quality", **info, **settings, **row} for row in rows]
    if not args.no_record:
        append_jsonl("prior_quality", rows)
    return rows


def table(rows: list[dict]) -> str:
    """Mean PSNR over clips per method (and of the last Tweedie estimate where there is one)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [f"{'method':<34} {'PSNR':>7} {'last x̂':>7} {'s/clip':>7}  per clip"]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        mean = sum(r["psnr"] for r in rs) / len(rs)
        last = [r["psnr_last_tweedie"] for r in rs if "psnr_last_tweedie" in r]
        last_s = f"{sum(last) / len(last):7.2f}" if last else f"{'':>7}"
        secs = sum(r["seconds"] for r in rs) / len(rs)
        per = " ".join(f"{r['clip']}={r['psnr']:.2f}" for r in rs)
        lines.append(f"{m:<34} {mean:7.2f} {last_s} {secs:7.1f}  {per}")
    return "\n".join(lines)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.save_clips is not None:
        paths = save_clips(args.save_clips, args.clips.split(","), args.frames, args.size)
        print("\n".join(map(str, paths)))
        return 0
    rows = run(args)
    print(f"{args.spec}, sigma_y = {args.sigma_y}, {args.frames}x{args.size}x{args.size}, "
          f"NFE {args.nfe}, eta {args.eta}, l = {args.cg_iters}, start {args.start or 'T (cold)'}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
