"""`python -m engine.solve`: restore a degraded video with the paper's Algorithm 1.

    python -m engine.solve blurred.mp4 --degrade temporal:uniform:7 --out out/
    python -m engine.solve --demo --out demo_out
    python -m engine.solve clean.mp4 --simulate --task temporal-k7 --checkpoint 256x256_diffusion_uncond.pt --out out/
    python -m engine.solve blurred.mp4 --blind --init first.mp4 --out out/
    torchrun --nproc-per-node 8 -m engine.solve video.mp4 --degrade temporal:uniform:7 --device cuda --out out/

INPUT is the degraded video (the measurement y) and --degrade or --task names how it was
degraded. Its noise σ_y is estimated from y itself unless --sigma-y states it (engine.noise),
and the regularised CG runs with that σ_y: a real video is never treated as noiseless unless
--sigma-y 0 asks for it. With --simulate (the paper's protocol; --demo always simulates) INPUT
is a clean clip: it is degraded by the operator, noise of --sigma-y added, restored, and scored
against itself. With --blind the temporal PSF is unknown (Algorithm 2, engine.blind): it is
fitted to a first reconstruction (--init), the clip restored, the PSF refitted, restored again.

Every setting, INPUT (readable, its frame count and size, the spec against that size) and the
output location are checked before the model is loaded. Everything is written into a
temporary folder beside --out and moved into place at the end, so a failed run leaves no
half-written output (and a run killed outright leaves a folder the next run to the same --out
removes). --overwrite replaces only a folder this command wrote (its metrics.json says so, and
it holds nothing else), never one that holds the input, the current directory or a parent of either.

With --max-frames W a video longer than W frames is streamed: read, restored in windows,
scored and written frame by frame, holding about one window of frames (engine.runners.windows).
Without --max-frames the run is planned before decoding (engine.job_checks.planned, engine.memory):
the whole video when its predicted peak fits --memory-budget (default: a fraction of the memory
available), else windows of the largest W that fits, up to engine.windows.enough_window; the plan is
logged in one line and recorded in metrics.json. Scores are computed in chunks of frames and the outputs written a frame at a time,
so nothing after the restoration holds the clip again.

This module is the command line alone: its flags, their combinations, and the Job and SolverConfig
they parse into. The run itself is `engine.runners.run(job, cfg)`, callable without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from engine.cg import default_gamma
from engine.checkpoint import MODEL_CONFIG_SYNTAX, parse_model_config
from engine.cli import add_solver_flag, command, default_device
from engine.errors import InputError
from engine.job import BASELINES, DEFAULT_FPS, DEFAULT_FRAMES, Job
from engine.runners import run
from engine.runtime import SolverConfig
from engine.tasks import TASKS, get_task
from engine.temporal_prior import TEMPORAL_PRIORS

DEMO_TASK = "temporal-k7"
DEMO_BASELINES = BASELINES
#: The demo shows what the method is for: a noisy measurement (σ_y = 0.02), where a prior matters (noiseless
#: circular blur of 16 frames is invertible: plain CG wins there), restored from a warm start in 8 steps.
DEMO_SETTINGS = {"sigma_y": 0.02, "nfe": 8, "start": 400}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.solve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", help="clip: .mp4/.avi/.gif, a folder of frames, or a .npy [3, N, H, W] in [0, 1]")
    p.add_argument("--demo", action="store_true",
                   help="restore a 16-frame pan-and-zoom clip of a photo scikit-image ships (no INPUT needed)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--task", choices=sorted(TASKS), help="one of the paper's tasks (sets spec, nfe, eta, cg-iters)")
    what.add_argument("--degrade", metavar="SPEC", help="a degradation spec, e.g. temporal:uniform:7+sr:4")
    truth = p.add_mutually_exclusive_group()
    truth.add_argument("--simulate", action="store_true",
                       help="INPUT is a clean clip: degrade it with --task/--degrade (and --sigma-y noise), restore "
                            "it and score the result against it (the paper's protocol; --demo always simulates)")
    truth.add_argument("--measured", action="store_true",
                       help="INPUT is the degraded video: the default; accepted for older scripts")
    p.add_argument("--blind", action="store_true",
                   help="unknown temporal PSF (Algorithm 2): fit it to --init, restore, refit, restore again; "
                        "with --simulate, --task/--degrade is the temporal blur applied to the clean INPUT")
    p.add_argument("--init", type=Path, metavar="CLIP",
                   help="first reconstruction for --blind (e.g. a deblurring network's output): INPUT's frames and size")
    prior = p.add_mutually_exclusive_group()
    add_solver_flag(prior, "checkpoint")
    add_solver_flag(prior, "prior", default="ffdnet")
    p.add_argument("--model-config", metavar="KEY=VALUE[,KEY=VALUE]",
                   help="guided-diffusion flags a --checkpoint's shapes cannot tell (num_head_channels=64, "
                        "num_heads=4, image_size=128, use_new_attention_order=True): " + MODEL_CONFIG_SYNTAX)
    p.add_argument("--class-label", type=int, metavar="K",
                   help="class of the frames for a class-conditional checkpoint (ImageNet: 0–999); required there")
    add_solver_flag(p, "nfe", note="(task default: 20 temporal, 100 spatio-temporal)")
    add_solver_flag(p, "start", flags=("--start", "--warm-start"), dest="start",
                    note="(default 1000, the cold start; the demo: 400). Under torchrun write --warm-start: "
                         "torchrun reads --start as its own --start-method")
    add_solver_flag(p, "eta", note="(task default)")
    add_solver_flag(p, "cg_iters", note="(default 5)")
    p.add_argument("--sigma-y", type=float,
                   help="measurement noise σ_y in [0, 1] units: the noise INPUT already has (default: estimated "
                        "from INPUT, never below 8-bit rounding; 0 asks for the noiseless CG); with --simulate, the "
                        "noise added to the clean INPUT (default 0; the demo: 0.02)")
    p.add_argument("--gamma", type=float, help="γ > 0 of the regularised CG (default when --sigma-y > 0: 0.04/σ_y, "
                                               "e.g. 2 at 0.02, with --prior; DDS's 1 with --checkpoint; else the "
                                               "noiseless CG)")
    p.add_argument("--temporal-prior", choices=["auto", *TEMPORAL_PRIORS], default="auto",
                   help="what chooses the temporal blur's null modes, which the measurement cannot see: motion "
                        "(smoothness along motion estimated from INPUT, after the reverse process: no ghost frames), "
                        "none (the per-frame prior alone: the paper), or auto (default: motion for a video's held "
                        "ends, none for a circular blur such as the paper's 16-frame clips)")
    p.add_argument("--register", action=argparse.BooleanOptionalAction, default=None,
                   help="after the motion prior, move each frame to where the measurement puts it (a camera's "
                        "shake; one translation per frame). Default: on with --simulate, whose noise is white; off "
                        "for a real video, whose codec errors mislead the fit (--register: a lossless, noisy one)")
    p.add_argument("--noise", choices=["shared", "independent"], default="shared",
                   help="one noise image for all frames (the paper) or one per frame (its ablation)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0); the measurement noise of a clean "
                                                        "INPUT uses seed + 1. Inpainting masks have their own seed "
                                                        "(inpaint:RATE:SEED, default 0)")
    add_solver_flag(p, "device", default=default_device())
    add_solver_flag(p, "dtype", default="fp32")
    add_solver_flag(p, "backend", default="torch")
    add_solver_flag(p, "engine")
    p.add_argument("--kernels", choices=["auto", "torch", "triton"], default="auto",
                   help="operators, step updates and UNet norms: Triton kernels or torch ops (auto: Triton on CUDA)")
    add_solver_flag(p, "cudnn_benchmark")
    p.add_argument("--frames", type=int,
                   help="frames to restore from the start of INPUT (default: all; an explicit count must be there)")
    p.add_argument("--size", type=int,
                   help="centre-crop and resize the frames to SIZE x SIZE, the paper's protocol (default: restore "
                        "them at their own size; a checkpoint's network then sees overlapping tiles of its size)")
    p.add_argument("--max-frames", type=int, metavar="W",
                   help="restore a video longer than W frames in windows of W frames, each pinning the previous "
                        "window's last restored frames (engine.windows; shared noise; --start starts each window "
                        "warm), reading and writing it frame by frame (no baselines); default: whole")
    p.add_argument("--memory-budget", type=float, metavar="GB",
                   help="memory the run may hold (GB, resident on the CPU, allocated on a GPU): the whole video when "
                        "its predicted peak fits, else windows of the largest W that fits (engine.memory); default "
                        "30%% of the memory available (CPU), 85%% of the free GPU memory; --max-frames overrides")
    add_solver_flag(p, "batch", default=16, note="(default 16): sets the network's memory, not the result")
    p.add_argument("--fps", type=float, help=f"frame rate of the written videos (default: the input's own, else "
                                             f"{DEFAULT_FPS:g})")
    p.add_argument("--baselines", default=None, metavar="LIST",
                   help="comparison methods scored beside the restoration: cg, admm-tv, both (cg,admm-tv) or none "
                        "(default: none; both for --demo). With --sigma-y the CG baseline is regularised by γ")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output folder this command wrote before (never any other folder)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p




def parse(argv=None) -> tuple[Job, SolverConfig, bool]:
    """(Job, SolverConfig, verbose) from the command line; every setting is validated here, before any work.

    The config's frames and size are provisional until the input and the model are read (engine.runners.run).
    """
    p = build_parser()
    args = p.parse_args(argv)
    _check_combinations(p, args)
    task = get_task(args.task or DEMO_TASK) if (args.task or not args.degrade) else None
    baselines = _baselines(args.baselines, args.demo and args.max_frames is None)
    model_config = parse_model_config(args.model_config)
    if (args.backend == "tensorrt") != (args.engine is not None):
        raise InputError("--backend tensorrt needs --engine FILE (build one with python -m engine.build)"
                         if args.engine is None else "--engine is for --backend tensorrt")
    demo = DEMO_SETTINGS if args.demo else {}
    simulate = args.simulate or args.demo
    sigma_y = args.sigma_y if args.sigma_y is not None else demo.get("sigma_y", 0.0 if simulate else None)
    if args.start is not None and not (args.nfe or 1) <= args.start <= 1000:
        raise InputError(f"--warm-start/--start T0 must be in [--nfe, 1000], got {args.start}")
    job = Job(input=None if args.demo else Path(args.input), out=args.out, overwrite=args.overwrite,
              measured=not simulate, blind=args.blind, init=args.init, checkpoint=args.checkpoint,
              engine=args.engine, prior=args.prior, task=args.task or (DEMO_TASK if args.demo else None),
              model_config=model_config or None, class_label=args.class_label, frames=args.frames,
              max_frames=args.max_frames,
              size=args.size, fps=args.fps, sigma_y=sigma_y, seed=args.seed, baselines=baselines,
              temporal_prior=args.temporal_prior, register=args.register, memory_budget=args.memory_budget)
    gamma = args.gamma if args.gamma is not None or sigma_y is None else default_gamma(
        sigma_y, diffusion=args.checkpoint is not None)           # an estimated σ_y: its γ once known (engine.job.with_sigma_y)
    defaults = task or get_task(DEMO_TASK)
    cfg = flagged(SolverConfig,
        spec=task.spec if task else args.degrade, frames=args.frames or DEFAULT_FRAMES, size=args.size or 256,
        batch=args.batch,
        nfe=args.nfe if args.nfe is not None else demo.get("nfe", defaults.nfe),
        start=args.start if args.start is not None else demo.get("start"),
        eta=args.eta if args.eta is not None else defaults.eta,
        cg_iters=args.cg_iters if args.cg_iters is not None else defaults.cg_iters,
        gamma=gamma, noise=args.noise, backend=args.backend, precision=args.dtype, kernels=args.kernels,
        device=args.device, channels_last=True,        # also on the CPU: FFDNet 5.9 → 4.2 s per 16×256² pass
        cudnn_benchmark=args.cudnn_benchmark)
    return job, cfg, args.verbose


#: SolverConfig's field names as this command's flags, for its messages
FLAGS = {"start": "--warm-start/--start", "nfe": "--nfe", "eta": "--eta", "cg_iters": "--cg-iters",
         "gamma": "--gamma", "batch": "--batch", "size": "--size", "frames": "--frames", "device": "--device"}


def flagged(make, *args, **kwargs):
    """`make(*args, **kwargs)`, its InputError reworded to name the command's flag instead of the field."""
    try:
        return make(*args, **kwargs)
    except InputError as err:
        field, sep, rest = str(err).partition(" ")
        raise InputError(f"{FLAGS[field]} {rest}" if sep and field in FLAGS else str(err)) from None


def _check_combinations(p: argparse.ArgumentParser, args) -> None:
    """argparse errors for flags that do not go together."""
    if args.demo == (args.input is not None):
        p.error("give either INPUT or --demo")
    if args.demo and args.measured:
        p.error("--demo makes its own clean clip; --measured does not apply")
    measured = not (args.simulate or args.demo)
    if args.blind:
        if args.init is None:
            p.error("--blind needs --init CLIP: a first reconstruction made without the PSF (the paper uses a "
                    "deblurring network); one made with an assumed PSF would only return that PSF")
        if args.demo:
            p.error("--blind needs a first reconstruction (--init) of a clip you have; --demo makes its own clip")
        if measured and (args.task or args.degrade):
            p.error("with --blind the PSF of a degraded INPUT is unknown: leave out --task and --degrade (with "
                    "--simulate they name the blur applied to a clean INPUT)")
    elif args.init is not None:
        p.error("--init is for --blind")
    if (args.model_config or args.class_label is not None) and args.checkpoint is None:
        p.error("--model-config and --class-label describe a --checkpoint; none was given")
    if not args.demo and not (args.task or args.degrade) and not (args.blind and measured):
        p.error("give --degrade SPEC (how INPUT was degraded, e.g. temporal:uniform:7) or --task")


def _baselines(text: Optional[str], demo: bool) -> tuple[str, ...]:
    """The --baselines list: "none", or names joined by commas; default none, both for the demo (`demo`)."""
    if text is None:
        return DEMO_BASELINES if demo else ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    return () if names == ("none",) else names


def main(argv=None) -> int:
    return command(argv, parse, run, interruptible=True)


if __name__ == "__main__":
    sys.exit(main())
