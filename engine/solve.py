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
scored and written frame by frame, holding about one window of frames (`restore_in_windows`).
Without --max-frames the run is planned before decoding (`planned`, engine.memory): the whole
video when its predicted peak fits --memory-budget (default: a fraction of the memory available),
else windows of the largest W that fits; the plan is logged in one line and recorded in
metrics.json. Scores are computed in chunks of frames and the outputs written a frame at a time,
so nothing after the restoration holds the clip again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import deque
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from tqdm import tqdm

from engine.backends import BACKENDS, GRAPH_BACKENDS
from engine.baselines import admm_tv, cg_baseline
from engine.cg import GAMMA_NOISE, default_gamma
from engine.checkpoint import MODEL_CONFIG_SYNTAX, parse_model_config
from engine.cli import command
from engine.distributed import (frame_ranges, gather_frames, gather_records, init_from_environment, scatter_frames,
                                launched_by_torchrun, one_failure_for_all)
from engine.errors import InputError
from engine.figures import contact_sheet, save_png
from engine.fileio import atomic_folder, atomic_write_json, mark_in_progress, remove_stale_runs
from engine.memory import peak_record
from engine.metrics import SSIM_RADIUS, Scores, clip_summary, json_safe
from engine.operators import from_spec
from engine.operators.spec import parse as parse_spec
from engine.operators.spec import split_temporal, sr_scale, time_boundary, with_time_boundary
from engine.priors import PRIORS
from engine.probe import InputFacts, check_spec, is_grey, probe_input, temporal_width
from engine.realvideo import grey_clip, noise_level, residual_record
from engine.profiling import StageClock
from engine.runtime import Solver, SolverConfig, as_tensor, load_model, measure
from engine.tasks import TASKS, get_task
from engine.temporal_prior import TEMPORAL_PRIORS
from engine.windows import split_spec

log = logging.getLogger("engine.solve")
DEMO_TASK = "temporal-k7"
DEFAULT_FRAMES = 16
DEFAULT_FPS = 8.0                     # for inputs that declare no frame rate (frame folders, arrays, the demo)
BASELINES = ("cg", "admm-tv")
DEMO_BASELINES = BASELINES
#: The demo shows what the method is for: a noisy measurement (σ_y = 0.02), where a prior matters (noiseless
#: circular blur of 16 frames is invertible: plain CG wins there), restored from a warm start in 8 steps.
DEMO_SETTINGS = {"sigma_y": 0.02, "nfe": 8, "start": 400}
#: what the command writes into --out; a folder holding anything else is never replaced
OUTPUT_NAMES = frozenset({"restored.mp4", "measurement.mp4", "frames", "metrics.json", "comparison.png"})
WRITTEN_BY = "engine.solve"           # metrics.json's "written_by": the mark --overwrite checks
MIN_SCORED_SIZE = 2 * SSIM_RADIUS + 1  # SSIM's window
SHEET_FRAMES = 16                     # a streamed run's comparison.png shows frames of its first SHEET_FRAMES


@dataclass(frozen=True)
class Job:
    """The I/O half of one run (the Solver's settings are the other half, a SolverConfig)."""

    input: Optional[Path]                # None: --demo
    out: Path
    overwrite: bool = False
    measured: bool = True                # INPUT is the measurement; False: a clean clip degraded here (--simulate)
    blind: bool = False
    init: Optional[Path] = None          # first reconstruction for --blind
    checkpoint: Optional[Path] = None
    engine: Optional[Path] = None        # TensorRT engine file
    prior: str = "ffdnet"                # the ε model without a checkpoint (engine.priors.PRIORS)
    task: Optional[str] = None           # a paper --task (its clips keep the circular boundary in time)
    model_config: Optional[dict] = None  # guided-diffusion flags the checkpoint's shapes cannot tell
    class_label: Optional[int] = None    # for a class-conditional checkpoint
    frames: Optional[int] = None         # None: every frame
    max_frames: Optional[int] = None     # restore in windows of this many frames (engine.windows); None: whole
    size: Optional[int] = None           # square frame size (crop + resize, the paper's protocol); None: own size
    fps: Optional[float] = None          # None: the input's own rate, else DEFAULT_FPS
    sigma_y: Optional[float] = None      # noise added to a clean INPUT, or the stated noise of a measured one;
                                         # None: 0 for a clean INPUT, estimated from a measured one (engine.noise)
    seed: int = 0
    baselines: tuple[str, ...] = ()
    temporal_prior: str = "auto"         # engine.temporal_prior's name, or "auto" (`temporal_prior_for`)
    memory_budget: Optional[float] = None  # GB the run may hold (engine.memory); None: a fraction of what is free
    plan: Optional[dict] = None           # engine.memory.Plan.record() of the run, set by `planned`

    def __post_init__(self):
        if self.sigma_y is not None and not (math.isfinite(self.sigma_y) and 0 <= self.sigma_y <= 1):
            raise InputError(f"--sigma-y must be a number in [0, 1], got {self.sigma_y}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"--fps must be a positive frame rate, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 2:
            raise InputError(f"--max-frames must be at least 2, got {self.max_frames}")
        if self.max_frames is not None and self.baselines:
            raise InputError("--baselines need the whole clip in memory; --max-frames streams it in windows: "
                             "give --baselines none or drop --max-frames")
        if self.max_frames is not None and self.blind:
            raise InputError("--blind fits the PSF to the whole clip at once; drop --max-frames")
        if self.memory_budget is not None and not (math.isfinite(self.memory_budget) and self.memory_budget > 0):
            raise InputError(f"--memory-budget must be a positive number of GB, got {self.memory_budget}")
        if self.frames is not None and self.frames < 1:
            raise InputError(f"--frames must be at least 1, got {self.frames}")
        if self.size is not None and self.size < 1:
            raise InputError(f"--size must be at least 1, got {self.size}")
        if self.seed < 0:
            raise InputError(f"--seed must be >= 0, got {self.seed}")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise InputError(f"unknown baseline {sorted(unknown)[0]!r}; accepted: {', '.join(BASELINES)} or none")
        if not self.measured and self.size is not None and self.size < MIN_SCORED_SIZE:
            raise InputError(f"--size {self.size} is too small to score (SSIM needs frames of at least "
                             f"{MIN_SCORED_SIZE}x{MIN_SCORED_SIZE})")


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
    prior.add_argument("--checkpoint", type=Path, help="ADM checkpoint (.pt or .safetensors), e.g. 256x256_diffusion_uncond.pt")
    prior.add_argument("--prior", choices=PRIORS, default="ffdnet",
                       help="without --checkpoint: ffdnet (default; a small learned denoiser, FFDNet, used through "
                            "Tweedie's formula; pip install 'video-inverse-engine[ffdnet]') or gaussian (weight-free)")
    p.add_argument("--model-config", metavar="KEY=VALUE[,KEY=VALUE]",
                   help="guided-diffusion flags a --checkpoint's shapes cannot tell (num_head_channels=64, "
                        "num_heads=4, image_size=128, use_new_attention_order=True): " + MODEL_CONFIG_SYNTAX)
    p.add_argument("--class-label", type=int, metavar="K",
                   help="class of the frames for a class-conditional checkpoint (ImageNet: 0–999); required there")
    p.add_argument("--nfe", type=int, help="network evaluations K, 1 to 1000 (task default: 20 temporal, "
                                           "100 spatio-temporal)")
    p.add_argument("--start", "--warm-start", type=int, metavar="T0", dest="start",
                   help="warm start: begin the reverse process at t0 in [nfe, 1000] from a CG estimate of the clip "
                        "instead of noise (default 1000, the cold start; the demo: 400). Under torchrun write "
                        "--warm-start: torchrun reads --start as its own --start-method")
    p.add_argument("--eta", type=float, help="DDIM stochasticity η in [0, 1] (task default)")
    p.add_argument("--cg-iters", type=int, help="CG iterations per step l, >= 0 (default 5)")
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
    p.add_argument("--noise", choices=["shared", "independent"], default="shared",
                   help="one noise image for all frames (the paper) or one per frame (its ablation)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0); the measurement noise of a clean "
                                                        "INPUT uses seed + 1. Inpainting masks have their own seed "
                                                        "(inpaint:RATE:SEED, default 0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="network precision")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch (eager), torch+graph (whole loop as one CUDA graph), compile, tensorrt (needs --engine)")
    p.add_argument("--engine", type=Path, help="TensorRT engine from python -m engine.build (for --backend tensorrt)")
    p.add_argument("--kernels", choices=["auto", "torch", "triton"], default="auto",
                   help="operators, step updates and UNet norms: Triton kernels or torch ops (auto: Triton on CUDA)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN time its convolution algorithms once per shape (a slower first step)")
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
                        "a third of the memory available (CPU), 85%% of the free GPU memory; --max-frames overrides")
    p.add_argument("--batch", type=int, default=16,
                   help="frames (or tiles) per network call, B (default 16): sets the network's memory, not the result")
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

    The config's frames and size are provisional until the input and the model are read (`run`).
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
              temporal_prior=args.temporal_prior, memory_budget=args.memory_budget)
    gamma = args.gamma if args.gamma is not None or sigma_y is None else default_gamma(
        sigma_y, diffusion=args.checkpoint is not None)           # an estimated σ_y gets its γ once known (`run`)
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


# ----------------------------------------------------------------------------- the run


def run(job: Job, cfg: SolverConfig) -> Path:
    """The whole job; returns the output folder. INPUT and the output location are checked first
    (`checked_input`, `claimed_output`), then the model is loaded.

    With --max-frames W, the first W + 1 frames are read: a longer video is streamed through
    `restore_in_windows`; a shorter one is restored whole, as without it. Under torchrun, the
    processes restore the video together (`run_sharded`).
    """
    if launched_by_torchrun():
        return run_sharded(job, cfg)
    job = planned(job, cfg, checked_input(job, cfg))
    with claimed_output(job) as tmp:
        model = _load(job, cfg)
        head, frames, notes = _head(job)
        if _longer_than_a_window(job, head):
            restore_in_windows(tmp, job, cfg, model, head, frames, notes)
        else:
            clean, y = _whole(job, [*head, *frames])
            clip = clean if clean is not None else y
            cfg = fitted_config(job, cfg, tuple(clip.shape[-2:]), frames=clip.shape[0])
            _say_assumed_mask(job, cfg)
            noise = None
            if job.measured:
                noise = noise_level(y, job.sigma_y)
                job, cfg = with_sigma_y(job, cfg, noise.sigma_y)
            if job.blind:
                restored, report, y, init = restore_blind(job, cfg, model, clean, y)
            else:
                (restored, report, y), init = restore(job, cfg, model, clean, y), None
            restored, changes = _as_input(restored.cpu(), grey=is_grey(clip))
            report = {"written_by": WRITTEN_BY, **report, **({"noise": noise.as_dict()} if noise else {}),
                      "input_changes": notes, "output_changes": changes}
            write_outputs(tmp, job, clean, y, restored, report, fps=_output_fps(job), init=init)
    log.info("wrote restored.mp4, measurement.mp4, frames/, metrics.json and comparison.png to %s", job.out)
    return job.out.resolve()


def planned(job: Job, cfg: SolverConfig, facts: Optional[InputFacts] = None) -> Job:
    """`job` with its memory plan (engine.memory.plan, logged in one line): --max-frames W when the whole
    video's predicted peak does not fit the budget (--memory-budget, else a fraction of the memory
    available). Made before decoding: the frame count from the container (counted, a frame at a time,
    when it declares none), the frame size from the first frame. An explicit --max-frames is kept as it
    is. Not even the smallest window fits: one line, before any work. `facts` (`checked_input`'s) spare
    decoding INPUT's first frame again when its container declares the count."""
    from engine.memory import GB, plan

    if job.max_frames is not None:
        return dataclasses.replace(job, plan={"choice": f"windows of {job.max_frames} frames (--max-frames)"})
    if facts is not None and facts.frames is not None:
        frames, first = facts.frames, (job.size, job.size) if job.size and not job.measured else facts.frame
    else:
        frames, first = _frames_and_size(job)
    frame = clean_frame(cfg.spec, first) if job.measured and cfg.spec else first
    spec = with_time_boundary(cfg.spec, video_boundary(job, frames)) if cfg.spec else ""
    context, least, why_not = 0, 2, _why_not_windows(job, spec)
    if why_not is None:
        from engine.windows import split_spec

        term = split_spec(spec)[0]
        context, least = term.context, max(2, max(term.reach, term.context) + 1)
    checkpoint = job.checkpoint.stat().st_size if job.checkpoint is not None and job.checkpoint.is_file() else None
    chosen = plan(frames, frame, budget=None if job.memory_budget is None else job.memory_budget * GB,
                  device=cfg.device, prior=job.prior, checkpoint_bytes=checkpoint, batch=cfg.batch,
                  precision=cfg.precision, context=context, least_window=least, windows_allowed=why_not,
                  motion=temporal_prior_for(job.temporal_prior, spec) == "motion" if spec else False)
    log.info("%s", chosen.line())
    return dataclasses.replace(job, max_frames=chosen.window, plan=chosen.record())


def _frames_and_size(job: Job) -> tuple[int, tuple[int, int]]:
    """(INPUT's frame count, declared or counted a frame at a time; its frames' (H, W), from the first)."""
    frames = iter(input_frames(job)[0])
    first = next(frames, None)
    if first is None:
        raise InputError(f"{job.input}: no frames")
    count = _declared_frames(job)
    if count is None:
        count = 1 + sum(1 for _ in frames)
    return count, tuple(first.shape[-2:])


def _why_not_windows(job: Job, spec: str) -> Optional[str]:
    """Why this run cannot be restored in windows (engine.windows), or None."""
    if job.baselines:
        return "--baselines need the whole clip"
    if job.blind:
        return "--blind fits the PSF to the whole clip"
    if any(time_boundary(term) == "circular" for term in split_temporal(spec)[0]) if spec else False:
        return "the circular boundary cannot be restored in windows"
    return None


def _load(job: Job, cfg: SolverConfig):
    """The ε model of the run (engine.runtime.load_model)."""
    model, _ = load_model(job.checkpoint, backend=cfg.backend, engine=job.engine, size=job.size, device=cfg.device,
                          model_config=job.model_config, class_label=job.class_label, prior=job.prior)
    return model


def checked_input(job: Job, cfg: SolverConfig) -> Optional[InputFacts]:
    """INPUT's facts (None for --demo), after every check that needs INPUT and not the model: readable,
    --frames against its count, the spec against its frame size, --max-frames against the PSF's reach.
    A clip shorter than the temporal PSF is warned about (its boundary supplies the missing frames)."""
    if job.init is not None:
        probe_input(job.init)
    if job.input is None:
        return None
    facts = probe_input(job.input, frames=job.frames)
    if job.blind and job.measured:                         # no spec: the PSF is what the run finds
        return facts
    frame = facts.frame
    if not job.measured and job.size is not None:
        frame = (job.size, job.size)
    elif not job.measured and min(frame) < MIN_SCORED_SIZE:
        raise InputError(f"frames of {frame[1]}x{frame[0]} are too small to score (SSIM needs "
                         f"{MIN_SCORED_SIZE}x{MIN_SCORED_SIZE}); leave out --simulate to restore without scoring")
    clean = clean_frame(cfg.spec, frame) if job.measured else frame
    if job.measured and job.size is not None and clean != (job.size, job.size):
        raise InputError(f"{job.input}'s frames of {frame[1]}x{frame[0]} under {cfg.spec} come from {clean[1]}x"
                         f"{clean[0]} frames, not the {job.size}x{job.size} of --size")
    boundary = video_boundary(job, facts.frames)
    try:
        op = check_spec(with_time_boundary(cfg.spec, boundary), clean, frames=facts.frames,
                        measured=frame if job.measured else None, mask_seed=cfg.mask_seed)
    except InputError as err:
        raise InputError(_as_typed(str(err), cfg.spec, boundary)) from None
    if job.max_frames is not None:
        term, _ = split_spec(with_time_boundary(cfg.spec, video_boundary(job, None)))
        least = max(term.reach, term.context) + 1
        if job.max_frames < least:
            raise InputError(f"--max-frames {job.max_frames} is too short for {cfg.spec}: a window needs at least "
                             f"{least} frames (the temporal blur's reach {term.reach}, and the {term.context} frames "
                             f"each window solves again)")
    width = temporal_width(op)
    if facts.frames is not None and facts.frames < width:
        log.warning("INPUT has %d frame(s), fewer than the temporal blur's %d: the frames it reads before the first "
                    "and after the last are %s", facts.frames, width,
                    "the other end of the clip (circular boundary)" if video_boundary(job, facts.frames) == "circular"
                    else "the end frames repeated (replicate boundary)")
    return facts


def _as_typed(message: str, spec: str, boundary: str) -> str:
    """`message` about `spec` with `boundary` appended by `with_time_boundary`, in the terms the user typed."""
    for term in map(str, parse_spec(spec)):
        message = message.replace(with_time_boundary(term, boundary), term)
    return message


def with_sigma_y(job: Job, cfg: SolverConfig, sigma_y: float) -> tuple[Job, SolverConfig]:
    """(job, cfg) at the measurement's noise σ_y: γ of the regularised CG from σ_y unless --gamma set it."""
    gamma = cfg.gamma if cfg.gamma is not None else default_gamma(sigma_y, diffusion=job.checkpoint is not None)
    return dataclasses.replace(job, sigma_y=sigma_y), dataclasses.replace(cfg, gamma=gamma)


def _as_input(restored: torch.Tensor, *, grey: bool) -> tuple[torch.Tensor, list[str]]:
    """(the restored clip in INPUT's format, the changes recorded): grey stays grey; an odd frame size
    is kept in frames/ and padded by one row/column in the mp4 (yuv420p needs even sides)."""
    changes = []
    if grey:
        restored = grey_clip(restored)
        changes.append("INPUT is grey: restored in colour, written grey (each pixel's channel mean)")
    h, w = restored.shape[-2:]
    if h % 2 or w % 2:
        changes.append(f"restored.mp4 is {w + w % 2}x{h + h % 2}: H.264 (yuv420p) needs even sides, so its last "
                       f"{'row' if h % 2 else 'column'}{' and column' if h % 2 and w % 2 else ''} is repeated; "
                       f"frames/ keeps {w}x{h}")
    for change in changes:
        log.warning("output: %s", change)
    return restored, changes


def fitted_config(job: Job, cfg: SolverConfig, shape: tuple[int, int], frames: Optional[int]) -> SolverConfig:
    """`cfg` fitted to INPUT: its frame count (None: streamed, not known yet: `cfg.frames` stays), the clean
    frames' (H, W) (`shape` is INPUT's frame size: the clean frames', or the measurement's), the time boundary."""
    frame = clean_frame(cfg.spec, shape) if job.measured else shape
    if job.measured and job.size is not None and frame != (job.size, job.size):
        raise InputError(f"the measurement's frame shape {shape[1]}x{shape[0]} under {cfg.spec} comes from "
                         f"{frame[1]}x{frame[0]} frames, not the {job.size}x{job.size} of --size")
    spec = with_time_boundary(cfg.spec, video_boundary(job, frames))
    return dataclasses.replace(cfg, frames=frames or cfg.frames, size=frame, spec=spec,
                               temporal_prior=temporal_prior_for(job.temporal_prior, spec))


def temporal_prior_for(choice: str, spec: str) -> str:
    """--temporal-prior: "auto" is "motion" (engine.temporal_prior: the blur's free modes chosen along motion)
    for a temporal blur with held or zero ends, a real video's, and "none" (the paper's behaviour) for a
    circular one (the paper's 16-frame clips, --blind) or a spec without a temporal term."""
    if choice != "auto":
        return choice
    temporal, _ = split_temporal(spec)
    return "motion" if temporal and all(time_boundary(t) != "circular" for t in temporal) else "none"


def restore(job: Job, cfg: SolverConfig, model, clean, y):
    """(restored clip, report, measurement): Algorithm 1 on y, or on A(clean) + σ_y·w, then scored.

    `clean` may be uint8 (`_whole`: 8-bit frames kept as they were decoded); it is made float32 only
    to be measured. The reported seconds include the scoring (in chunks of frames, `score`).
    """
    solver = Solver(model, cfg)
    if clean is not None:
        y = solver.measure(unit_float(clean), sigma_y=job.sigma_y, seed=job.seed + 1)
    t0 = time.perf_counter()
    with tqdm(total=cfg.nfe, desc="restoring", unit="step", disable=None) as bar:
        restored = solver.solve(y, seed=job.seed, callback=step_counter(bar, cfg))
    if clean is None:                                   # a real video: frames its input already explains kept
        from engine.realvideo import input_guard
        restored, guard = input_guard(solver.op, restored, as_tensor(y, solver.device, torch.float32), job.sigma_y)
    if restored.is_cuda:
        torch.cuda.synchronize()
    restore_s = time.perf_counter() - t0
    report = {"settings": settings(job, cfg), "kernels_used": cfg.resolved_kernels.arithmetic,   # what --kernels auto resolved to
              "input": "demo" if job.input is None else str(job.input), "prior": prior_name(job),
              **model_record(model)}
    if clean is not None:
        report["restored"] = score(restored, clean, "scoring")
        report["baselines"] = {name: score(clip, clean, f"scoring {name}")
                               for name, clip in run_baselines(job, cfg, solver.op, y)}
    seconds = time.perf_counter() - t0
    report.update(seconds=seconds, fps=cfg.frames / seconds, restore_s=restore_s, scoring_s=seconds - restore_s,
                  memory=peak_record(cfg.device))
    if clean is not None:
        scores = ", ".join(f"{k} {v['psnr_mean']:.2f} dB" for k, v in report["baselines"].items())
        log.info("PSNR %.2f dB%s, SSIM %.4f, %.1f s (scoring %.1f s)", report["restored"]["psnr_mean"],
                 f" (baselines: {scores})" if scores else "", report["restored"]["ssim_mean"], seconds,
                 seconds - restore_s)
    else:                                               # a real video: what can be measured without a reference
        report["guard"] = guard
        weighed = GAMMA_NOISE / cfg.gamma if cfg.gamma and job.checkpoint is None else 0.0   # default_gamma's σ
        report["residual"] = residual_record(solver.op, restored, as_tensor(y, solver.device, torch.float32),
                                             job.sigma_y, weighed=weighed)
        log.info("%d frames restored in %.1f s", cfg.frames, seconds)
    return restored, report, y


def score(clip: torch.Tensor, clean: torch.Tensor, desc: str) -> dict:
    """`clip_summary` of `clip` against `clean`, in chunks of frames (engine.metrics), with a progress bar."""
    with tqdm(total=clip.shape[0], desc=desc, unit="frame", disable=None) as bar:
        return clip_summary(clip, clean, progress=bar.update)


def unit_float(clip: torch.Tensor) -> torch.Tensor:
    """A clip in [0, 1] as float32: uint8 levels k as k/255 (the decoder's values), floats as they are."""
    return clip.to(torch.float32).div_(255) if clip.dtype == torch.uint8 else clip


def _head(job: Job) -> tuple[list, Iterator, list[str]]:
    """(INPUT's first W + 1 frames with --max-frames W, else none; the frames after them; the input changes)."""
    frames, notes = input_frames(job)
    return ([] if job.max_frames is None else list(islice(frames, job.max_frames + 1))), frames, notes


def _longer_than_a_window(job: Job, head: list) -> bool:
    """Whether `_head` found more than --max-frames frames: the video is restored in windows."""
    return job.max_frames is not None and len(head) > job.max_frames


def restore_in_windows(folder: Optional[Path], job: Job, cfg: SolverConfig, model, head: list,
                       rest: Iterator, notes: list[str], group=None) -> Optional[dict]:
    """Algorithm 1 in windows of --max-frames frames (engine.windows), streamed; returns the report it wrote.

    INPUT's frames (`head`, then `rest`; [3, H, W], clean or measured; `cfg` is fitted to them here) are
    measured (y[n] = S(Σ_m T[n, m] x[m]) + σ_y·w[n], `VideoRestorer.measure`, its noise drawn frame after
    frame), restored a window at a time, scored
    (the per-frame PSNR and SSIM of `clip_summary`, so its means are those of the whole clip) and written
    as they come: restored.mp4, frames/ and measurement.mp4, then metrics.json and comparison.png
    (the first SHEET_FRAMES frames only). Holds about W + 3r frames, never the whole video.

    With a process `group` (torchrun) every process measures (or reads) the same frames and restores
    its share of each window; the group's rank 0 writes (into `folder`) and records every process's
    seconds; the others return None.
    """
    from engine.runtime import make_network
    from engine.video_io import frames_writer, video_writer
    from engine.windows import VideoRestorer

    cfg = fitted_config(job, cfg, tuple(head[0].shape[-2:]), frames=None)
    first = torch.stack(head)                         # the first W + 1 frames: the noise and the colour of INPUT
    noise = noise_level(first, job.sigma_y) if job.measured else None
    if noise is not None:
        job, cfg = with_sigma_y(job, cfg, noise.sigma_y)
    grey = is_grey(first)
    _, changes = _as_input(first[:1], grey=grey)
    del first
    frames = _drained(head, rest)
    if cfg.noise != "shared":
        raise InputError("--max-frames restores in windows with the shared noise image only; drop --noise independent")
    restorer = VideoRestorer(make_network(model, cfg), cfg.spec, cfg.frame, window=job.max_frames, nfe=cfg.nfe,
                             eta=cfg.eta, cg_iters=cfg.cg_iters, gamma=cfg.gamma, cg_precond=cfg.cg_precond,
                             seed=job.seed, mask_seed=cfg.mask_seed, device=cfg.device, group=group,
                             start=cfg.start, clock=StageClock(cfg.device) if group is not None else None,
                             temporal_prior=cfg.temporal_prior)
    if restorer.rank != 0:
        return _restore_windows_elsewhere(job, restorer, frames)
    held = deque()                                    # clean frames read and not yet scored
    from engine.realvideo import StreamGuard
    guard = StreamGuard(cfg.spec, cfg.frame, job.sigma_y) if job.measured else None     # as `restore`'s input_guard
    y = guard.tap(frames) if job.measured else restorer.measure(_kept(frames, held), sigma_y=job.sigma_y,
                                                                 seed=job.seed + 1)
    scores, sheet, fps, total = Scores(), FirstFrames(SHEET_FRAMES), _output_fps(job), _declared_frames(job)
    every = max(1, total // 10) if total else job.max_frames
    t0, count = time.perf_counter(), 0
    with video_writer(folder / "restored.mp4", fps) as restored_mp4, frames_writer(folder / "frames") as png, \
            video_writer(folder / "measurement.mp4", fps) as measured_mp4, \
            tqdm(total=total, desc="restoring", unit="frame", disable=None) as bar:
        restored = restorer.restore(_tapped(y, measured_mp4, sheet))
        for count, x in enumerate(guard.frames(restored) if guard else restored, 1):
            x = grey_clip(x[None].cpu())[0] if grey else x.cpu()
            restored_mp4(x)
            png(x)
            sheet.add("restored", x)
            if not job.measured:
                ref = held.popleft()
                scores.add(x, ref)
                sheet.add("clean", ref)
            bar.update()
            if bar.disable and count % every == 0:
                log.info("restored %d frames", count)
    seconds = time.perf_counter() - t0
    cfg = dataclasses.replace(cfg, frames=count)                         # the frames read
    report = {"written_by": WRITTEN_BY, "settings": settings(job, cfg),
              "windows": {"max_frames": job.max_frames, "lag": restorer.lag, "streamed": True,
                          "measurement_frames_held_peak": restorer.frames_held_peak},
              **_window_ranks(restorer, seconds),
              "input": "demo" if job.input is None else str(job.input), "prior": prior_name(job),
              **model_record(model), "seconds": seconds, "fps": count / seconds, "memory": peak_record(cfg.device),
              "comparison": sheet.note(), **({"noise": noise.as_dict()} if noise else {}),
              **({"guard": guard.record()} if guard else {}),
              "input_changes": notes, "output_changes": changes}
    if not job.measured:
        report["restored"] = scores.summary()
        log.info("PSNR %.2f dB in windows of %d frames, %d frames, %.1f s", report["restored"]["psnr_mean"],
                 job.max_frames, count, seconds)
    atomic_write_json(folder / "metrics.json", json_safe(report))
    save_png(folder / "comparison.png", sheet.image())
    return report


def _restore_windows_elsewhere(job: Job, restorer, frames: Iterator) -> None:
    """A process other than rank 0 of `restore_in_windows`: its share of every window, nothing written."""
    y = frames if job.measured else restorer.measure(frames, sigma_y=job.sigma_y, seed=job.seed + 1)
    t0 = time.perf_counter()
    for _ in restorer.restore(y):                     # rank 0 alone yields frames
        pass
    _window_ranks(restorer, time.perf_counter() - t0)


def _window_ranks(restorer, seconds: float) -> dict:
    """{"world_size", "ranks": each process's seconds, split windows and seconds of the network, the CG, the
    warm start's CG and the communication inside both} on rank 0 ({} elsewhere, or for one process)."""
    if restorer.group is None:
        return {}
    record = {"rank": restorer.rank, "seconds": seconds, "windows_split": restorer.windows_split,
              **stage_seconds(restorer.clock)}
    records = gather_records(record, restorer.group)
    return {} if records is None else {"world_size": restorer.world, "ranks": records}


class FirstFrames:
    """The first `count` frames of each labelled stream (clean, measured, restored), for comparison.png."""

    def __init__(self, count: int):
        self.count = count
        self.rows: dict[str, list[torch.Tensor]] = {}

    def add(self, label: str, frame: torch.Tensor) -> None:
        row = self.rows.setdefault(label, [])
        if len(row) < self.count:                                   # as the 8-bit sheet will show it
            row.append((frame.detach().cpu().float().clamp(0, 1) * 255).round_().to(torch.uint8)
                       if frame.is_floating_point() else frame.cpu())

    def ids(self) -> list[int]:
        n = min(len(row) for row in self.rows.values())
        return sorted({0, n // 3, 2 * n // 3, n - 1})

    def image(self):
        """The contact sheet: clean (when scored), measured, restored; one column per frame of `ids`."""
        order = [label for label in ("clean", "measured", "restored") if label in self.rows]
        return contact_sheet([(label, unit_float(torch.stack(self.rows[label]))) for label in order], self.ids())

    def note(self) -> str:
        return (f"frames {', '.join(map(str, self.ids()))}: a streamed run keeps only its first "
                f"{self.count} frames for the sheet")


def _kept(frames: Iterable, held: deque) -> Iterator:
    """`frames`, each also appended to `held` (the clean frames the restorer has not returned yet, as uint8
    when they hold 8-bit levels only: `_compact`)."""
    for frame in frames:
        held.append(_compact(frame))
        yield frame


def _compact(frame: torch.Tensor) -> torch.Tensor:
    """A frame [3, H, W] in [0, 1] as uint8 when it holds 8-bit levels only (`unit_float` gives it back
    exactly), else as it is."""
    return (frame * 255).round_().to(torch.uint8) if _is_8bit(frame) else frame


def _tapped(y: Iterable, write, sheet: FirstFrames) -> Iterator:
    """The measurement frames as the restorer pulls them, each written (clamped to [0, 1]) and kept for the sheet."""
    for frame in y:
        view = frame.detach().cpu().clamp(0, 1)
        write(view)
        sheet.add("measured", view)
        yield frame


def _drained(head: list, rest: Iterator) -> Iterator:
    """The frames of `head` (released as they go), then those of `rest`."""
    while head:
        yield head.pop(0)
    yield from rest


def _declared_frames(job: Job) -> Optional[int]:
    """The frame count INPUT declares (capped by --frames), for the progress bar; None if unknown."""
    if job.input is None:
        return job.frames or DEFAULT_FRAMES
    from engine.video_io import declared_frames

    declared = declared_frames(job.input)
    return min(declared, job.frames) if declared and job.frames else (declared or job.frames)


def run_sharded(job: Job, cfg: SolverConfig) -> Optional[Path]:
    """`run` in a process torchrun started: one video restored by every process of the job.

    Every process keeps its own frames (engine.distributed.frame_ranges): of a --measured video it
    decodes and holds those frames only (`_own_measurement`); a clean input is read whole, its
    measurement made over the whole video so its noise is the single-process run's. It restores them
    with a sharded Solver (network on its frames, CG across all of them), and
    sends them to process 0, which alone claims --out, writes the outputs atomically and records in
    metrics.json the world size and each process's frames and seconds (network, CG, communication).
    A process that fails makes every process fail with its message (`one_failure_for_all`); process 0's
    temporary output is removed as for any failed run. Returns the output folder on process 0, else None.
    """
    device = init_from_environment(cfg.device)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        with one_failure_for_all(rank, world):
            return _run_shard(job, dataclasses.replace(cfg, device=device), rank, world)
    finally:
        dist.destroy_process_group()


def _run_shard(job: Job, cfg: SolverConfig, rank: int, world: int) -> Optional[Path]:
    if job.blind:
        raise InputError("--blind runs in one process; leave it out under torchrun")
    checked_input(job, cfg)
    with claimed_output(job) if rank == 0 else nullcontext() as tmp:
        _restore_sharded(tmp, job, cfg, _load(job, cfg), rank, world)
    if rank != 0:
        return None
    log.info("wrote restored.mp4, measurement.mp4, frames/, metrics.json and comparison.png to %s", job.out)
    return job.out.resolve()


def _restore_sharded(tmp: Optional[Path], job: Job, cfg: SolverConfig, model, rank: int, world: int) -> None:
    """The work of `run_sharded` in one process; process 0 writes the outputs into `tmp`."""
    if job.max_frames is not None:               # every process streams INPUT; longer than W: windows, each split
        head, frames_read, notes = _head(job)
        if _longer_than_a_window(job, head):
            restore_in_windows(tmp, job, cfg, model, head, frames_read, notes, group=dist.group.WORLD)
            return
    if job.measured:                         # this process's frames only: [start, stop) of a first count
        frames, first, own_rows = _own_measurement(job, rank, world)
        clean, notes = None, []
        cfg = fitted_config(job, cfg, tuple(first.shape[-2:]), frames=frames)
        told = [noise_level(own_rows, job.sigma_y) if rank == 0 else None]    # process 0's frames tell σ_y
        dist.broadcast_object_list(told, src=0)
        noise = told[0]
        job, cfg = with_sigma_y(job, cfg, noise.sigma_y)
    else:                                    # the clean clip: process 0 reads and measures it, then scatters
        noise = None
        clean, notes, frames, shape = _read_on_first(job, rank)
        cfg = fitted_config(job, cfg, shape, frames=frames)
    if rank == 0:
        _say_assumed_mask(job, cfg)
    if dist.get_world_size() > 1 and cfg.temporal_prior != "none":
        if job.temporal_prior != "auto":
            raise InputError(f"--temporal-prior {job.temporal_prior} follows motion across the whole video, which "
                             f"torchrun splits; add --max-frames W (windows) or use --temporal-prior none")
        if rank == 0:
            log.warning("torchrun splits the whole video over %d processes: its null modes keep the per-frame "
                        "prior's choice (--temporal-prior none); --max-frames W restores windows with the motion "
                        "prior", world)
        cfg = dataclasses.replace(cfg, temporal_prior="none")
    solver = Solver(model, cfg, group=dist.group.WORLD)
    if not job.measured:
        y = None
        if rank == 0:
            op = from_spec(cfg.spec, cfg.shape, seed=cfg.mask_seed, device=solver.device, dtype=torch.float32)
            y = measure(op, as_tensor(unit_float(clean), solver.device, torch.float32), sigma_y=job.sigma_y,
                        seed=job.seed + 1)
        own_rows = y if solver.comm is None else scatter_frames(
            y, solver.comm, tuple(solver.op.out_shape[1:]), dtype=torch.float32, device=solver.device)
    restored, record = _restore_shard(solver, own_rows, job.seed, rank)
    if solver.comm is not None:
        restored, records = gather_frames(restored, solver.comm), gather_records(record, solver.comm.group)
        y = gather_frames(own_rows, solver.comm) if job.measured else y
    else:
        records, y = [record], (own_rows if job.measured else y)
    if rank != 0:
        return
    seconds = max(r["seconds"] for r in records)
    report = {"written_by": WRITTEN_BY, "settings": settings(job, cfg), "kernels_used": "torch",
              "input": str(job.input) if job.input else "demo", "prior": prior_name(job),
              **model_record(model), "seconds": seconds, "fps": frames / seconds,
              "world_size": world, "ranks": records, **({"noise": noise.as_dict()} if noise else {}),
              "input_changes": notes}
    restored = restored.cpu()
    if clean is None:                            # as `restore`: frames the input already explains kept
        from engine.realvideo import input_guard
        op = from_spec(cfg.spec, cfg.shape, seed=cfg.mask_seed)
        restored, report["guard"] = input_guard(op, restored, y.cpu(), job.sigma_y)
    if clean is not None:
        report["restored"] = clip_summary(restored, clean)
        op = from_spec(cfg.spec, cfg.shape, seed=cfg.mask_seed)
        report["baselines"] = {name: clip_summary(clip.cpu(), clean)
                               for name, clip in run_baselines(job, cfg, op, y.cpu())}
        log.info("PSNR %.2f dB with %d processes, %.1f s", report["restored"]["psnr_mean"], world, seconds)
    write_outputs(tmp, job, clean, y, restored, report, fps=_output_fps(job))


def _read_on_first(job: Job, rank: int) -> tuple[Optional[torch.Tensor], list[str], int, tuple[int, int]]:
    """(the clean clip on process 0, None elsewhere; the input changes, its frame count and frame size, on
    every process): process 0 alone decodes INPUT and tells the others what they need."""
    clean, facts = None, [None]
    if rank == 0:
        frames_read, notes = input_frames(job)
        clean, _ = _whole(job, list(frames_read))
        facts = [(notes, clean.shape[0], tuple(clean.shape[-2:]))]
    dist.broadcast_object_list(facts, src=0)
    return (clean, *facts[0])


def _own_measurement(job: Job, rank: int, world: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(N, the first frame, this process's measurement frames [n_p, 3, H', W']): INPUT streamed twice, the
    first pass counting its frames (one held at a time), the second keeping frames [start, stop) only."""
    frames, first = 0, None
    for frame in input_frames(job)[0]:
        first = frame if first is None else first
        frames += 1
    start, stop = frame_ranges(frames, world)[rank]
    own = list(islice(input_frames(job)[0], start, stop))
    if len(own) != stop - start:
        raise InputError(f"{job.input} gave {start + len(own)} frames on a second read, {frames} on the first")
    return frames, first, torch.stack(own)


def stage_seconds(clock: StageClock) -> dict:
    """A process's seconds in the network, the CG, the warm start's CG and the communication inside both."""
    stages = clock.seconds()
    return {"network_s": stages.get("UNet", 0.0), "cg_s": stages.get("CG", 0.0),
            "warm_start_s": stages.get("warm start", 0.0), "communication_s": stages.get("communication", 0.0)}


def _restore_shard(solver: Solver, y, seed: int, rank: int):
    """(this process's restored frames, its record: frames, seconds, and the seconds of the network, the CG,
    the warm start's CG and the communication inside both)."""
    clock = StageClock(solver.device)
    t0 = time.perf_counter()
    with tqdm(total=solver.config.nfe, desc="restoring", unit="step", disable=None if rank == 0 else True) as bar:
        restored = solver.solve(y, seed=seed, clock=clock,
                                callback=step_counter(bar, solver.config) if rank == 0 else None)
    shard = solver.shard
    record = {"rank": rank, "frames": [shard.start, shard.stop] if shard else [0, y.shape[0]],
              "seconds": time.perf_counter() - t0, **stage_seconds(clock)}
    log.info("process %d: frames %s in %.1f s (network %.1f s, CG %.1f s, communication %.1f s of the CG's)", rank,
             record["frames"], record["seconds"], record["network_s"], record["cg_s"] + record["warm_start_s"],
             record["communication_s"])
    return restored, record


def run_baselines(job: Job, cfg: SolverConfig, op, y) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, clip) of each of the --baselines, one at a time (the caller scores one and drops it before
    the next is made), each named with what it ran (CG at the sampler's budget K·l, regularised by γ
    towards Aᵀy when the sampler's CG is)."""
    if "cg" in job.baselines:
        iters = cfg.nfe * cfg.cg_iters
        name = (f"cg ({iters} iterations)" if cfg.gamma is None
                else f"cg regularised, gamma {cfg.gamma:g} towards A^T y ({iters} iterations)")
        yield name, cg_baseline(op, y, iters=iters, gamma=cfg.gamma)
    if "admm-tv" in job.baselines:
        yield "admm-tv", admm_tv(op, y)


def restore_blind(job: Job, cfg: SolverConfig, model, clean, y):
    """(restored clip, report, measurement, first reconstruction): Algorithm 2 (engine.blind) with --init."""
    from engine.blind import blind_deblur
    from engine.video_io import read_video, validate_video

    true_psf = None
    if clean is not None:
        true_psf = cfg.spec
        temporal, frame_local = split_temporal(true_psf)
        if len(temporal) != 1 or frame_local:
            raise InputError(f"--blind estimates a temporal PSF alone; {true_psf!r} is not one")
        y = measure(from_spec(true_psf, tuple(clean.shape)), unit_float(clean), sigma_y=job.sigma_y, seed=job.seed + 1)
    init = validate_video(read_video(job.init, size=None, frames=y.shape[0]), size=cfg.frame)
    t0 = time.perf_counter()
    with tqdm(total=2 * cfg.nfe, desc="restoring (2 stages)", unit="step", disable=None) as bar:
        result = blind_deblur(model, y.to(cfg.device), init.to(cfg.device), cfg, seed=job.seed,
                              callback=step_counter(bar, cfg))
    restored, seconds = result.clip.cpu(), time.perf_counter() - t0
    report = {"settings": {k: v for k, v in settings(job, cfg).items() if k != "spec"},
              "input": str(job.input), "first_reconstruction": str(job.init), "prior": prior_name(job),
              "seconds": seconds, "fps": y.shape[0] / seconds,
              "blind": {"psf": result.psf, "true_psf": true_psf, "stages": result.stages}}
    log.info("PSF %s%s, %.1f s", result.psf, f" (true {true_psf})" if true_psf else "", seconds)
    if clean is not None:
        report["restored"] = clip_summary(restored, clean)
        report["baselines"] = {"first reconstruction (--init)": clip_summary(init, clean)}
        log.info("PSNR %.2f dB (first reconstruction %.2f dB)", report["restored"]["psnr_mean"],
                 report["baselines"]["first reconstruction (--init)"]["psnr_mean"])
    return restored, report, y, init


def settings(job: Job, cfg: SolverConfig) -> dict:
    """Every setting of the run, for metrics.json."""
    return {**cfg.to_dict(), "sigma_y": job.sigma_y, "seed": job.seed, "baselines": list(job.baselines),
            "fps": _output_fps(job), "max_frames": job.max_frames, "memory_plan": job.plan}


# ----------------------------------------------------------------------------- input


def input_frames(job: Job) -> tuple[Iterator[torch.Tensor], list[str]]:
    """(INPUT's frames [3, H, W] in [0, 1], one at a time, each checked; notes): every change made to them.

    Every frame at its own size, unless --frames keeps the first N, or --size centre-crops and
    resizes a clean clip to a square (the paper's protocol). Each change is logged and noted.
    """
    from engine.video_io import square_frame, stream_video

    if job.input is None:
        from engine.testclips import demo_clip

        return iter(demo_clip(frames=job.frames or DEFAULT_FRAMES, size=job.size or 256)), []
    frames = stream_video(job.input, frames=job.frames)
    if job.measured:
        return frames, []
    first = next(frames)
    h, w = first.shape[-2:]
    frames, notes = chain([first], frames), []
    if job.size is not None and (h, w) != (job.size, job.size):
        side = min(h, w)
        crop = f"centre-cropped {w}x{h} frames to {side}x{side} and " if h != w else f"{w}x{h} frames "
        notes.append(f"{crop}resized to {job.size}x{job.size} (--size)")
        frames, (h, w) = (square_frame(frame, job.size) for frame in frames), (job.size, job.size)
    if min(h, w) < MIN_SCORED_SIZE:
        raise InputError(f"frames of {w}x{h} are too small to score (SSIM needs "
                         f"{MIN_SCORED_SIZE}x{MIN_SCORED_SIZE}); pass --measured to restore without scoring")
    return frames, _logged(notes)


def _whole(job: Job, frames: list) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(clean clip, None), or (None, measurement) with --measured: INPUT's frames as one clip [N, 3, H, W].

    The list is emptied as the clip fills (each frame released once copied: the frames are held once).
    A clean clip whose frames are all 8-bit levels (k/255, as decoded from a video or image) is kept as
    uint8: it is only measured (`unit_float`), scored and shown. A measurement is float32.
    """
    from engine.video_io import validate_video

    if not frames:
        raise InputError(f"{job.input}: no frames")
    validate_video(frames[0][None])
    eight_bit = not job.measured and all(_is_8bit(frame) for frame in frames)
    clip = frames[0].new_empty((len(frames), *frames[0].shape), dtype=torch.uint8 if eight_bit else torch.float32)
    for i in range(len(frames)):
        clip[i] = (frames[i] * 255).round_() if eight_bit else frames[i]
        frames[i] = None
    if not eight_bit:
        validate_video(clip)
    return (None, clip) if job.measured else (clip, None)


def _is_8bit(frame: torch.Tensor) -> bool:
    """Whether a frame in [0, 1] holds 8-bit levels only: exactly the float32 k/255 of integers k."""
    return bool(frame.amin() >= 0) and bool(frame.amax() <= 1) and torch.equal((frame * 255).round_().div_(255), frame)


def video_boundary(job: Job, frames: Optional[int]) -> str:
    """The temporal boundary a spec without one gets: circular for a paper --task on its 16-frame clips
    (the paper's protocol and public code) and for --blind (Algorithm 2 fits circular PSFs), replicate
    (the end frames held, as a camera's exposure would) for a whole video and for a streamed one
    (`frames` None: windows cannot wrap its end onto its start)."""
    paper = job.task is not None and frames == DEFAULT_FRAMES
    return "circular" if paper or job.blind else "replicate"


def clean_frame(spec: str, measured: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the clean frames behind measured frames of `measured` (H', W'): × every SR factor."""
    scale = sr_scale(spec)
    return measured[0] * scale, measured[1] * scale


def _logged(notes: list[str]) -> list[str]:
    for note in notes:
        log.warning("input changed: %s", note)
    return notes


def _output_fps(job: Job) -> float:
    """--fps, else the input's declared frame rate, else DEFAULT_FPS."""
    if job.fps is not None:
        return job.fps
    from engine.video_io import frame_rate

    return (frame_rate(job.input) if job.input is not None else None) or DEFAULT_FPS


def _say_assumed_mask(job: Job, cfg: SolverConfig) -> None:
    """A measured random-inpainting run names the mask it assumes (the spec's seed, else seed 0)."""
    if not job.measured:
        return
    for term in parse_spec(cfg.spec):
        if term.name == "inpaint" and not term.args.startswith("file=") and len(term.fields) == 1:
            log.warning("measured inpainting without a mask file or seed: assuming the random mask of seed %d "
                        "(%s:%d); name yours with inpaint:RATE:SEED or inpaint:file=MASK.png",
                        cfg.mask_seed, term, cfg.mask_seed)


# ----------------------------------------------------------------------------- output


@contextmanager
def claimed_output(job: Job) -> Iterator[Path]:
    """`with claimed_output(job) as tmp:` — refuses a bad --out before any work (`check_output`), removes
    what a killed run to the same --out left (engine.fileio.remove_stale_runs), yields a new temporary
    folder beside it (engine.fileio.atomic_folder: the user's umask) marked as this run's while it
    works, swapped in for --out on success; on failure the temporary folder and any parent folders
    it created are removed."""
    out = Path(os.path.abspath(job.out))
    inputs = [p for p in (job.input, job.init, job.checkpoint, job.engine) if p is not None]
    check_output(out, overwrite=job.overwrite, protected=[Path.cwd(), *inputs])
    remove_stale_runs(out)
    created = _first_missing(out.parent)
    try:
        with ExitStack() as stack:
            try:
                tmp = stack.enter_context(atomic_folder(out))
            except OSError as err:
                raise InputError(f"cannot create the output folder {out}: {err.strerror or err}") from None
            marker = mark_in_progress(tmp)
            yield tmp
            marker.unlink()
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def check_output(out: Path, *, overwrite: bool, protected: list[Path]) -> None:
    """One line, before any work, for an --out that cannot or must not be (re)placed."""
    for path in protected:
        path = Path(os.path.abspath(path))
        if out == path or out in path.parents:
            raise InputError(f"--out {out} would replace {path} (an input or the current folder); choose a new folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace an output of this command, or choose a new folder")
    if not any(out.iterdir()):
        return                                          # an empty folder holds nothing to lose
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES)
    if foreign:
        raise InputError(f"--overwrite refused: {out} holds files this command did not write "
                         f"({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''})")
    if _written_by(out / "metrics.json") != WRITTEN_BY:
        raise InputError(f"--overwrite refused: {out} was not written by {WRITTEN_BY} (its metrics.json does not "
                         f"say so); remove it yourself if you mean it")


def _written_by(metrics: Path) -> Optional[str]:
    try:
        return json.loads(metrics.read_text()).get("written_by")
    except (OSError, ValueError, AttributeError):
        return None


def _first_missing(folder: Path) -> Optional[Path]:
    """The outermost ancestor of `folder` (or itself) that does not exist yet, or None."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing = path
    return missing


def write_outputs(folder: Path, job: Job, clean, y, restored, report, *, fps: float, init=None) -> None:
    """restored.mp4, measurement.mp4, frames/, metrics.json, comparison.png into `folder`: the encoders fed
    a frame at a time, the sheet made of its four frames only (no second copy of any clip)."""
    from engine.video_io import frames_writer, video_writer

    n = restored.shape[0]
    with video_writer(folder / "restored.mp4", fps) as mp4, \
            frames_writer(folder / "frames", digits=max(4, len(str(n - 1)))) as png:
        for frame in restored:
            mp4(frame)
            png(frame)
    with video_writer(folder / "measurement.mp4", fps) as mp4:
        for frame in y:
            mp4(frame.detach().cpu().clamp(0, 1))
    atomic_write_json(folder / "metrics.json", json_safe(report))
    ids = sorted({0, n // 3, 2 * n // 3, n - 1})
    rows = ([("clean", clean)] if clean is not None else []) + [("measured", y)]
    rows += ([("first estimate", init)] if init is not None else []) + [("restored", restored)]
    sheet = [(label, unit_float(clip[ids].detach().cpu()).clamp(0, 1)) for label, clip in rows]
    save_png(folder / "comparison.png", contact_sheet(sheet, range(len(ids))))


def step_counter(bar, cfg: SolverConfig):
    """A sampler callback that advances the progress bar, or logs every tenth of the steps when the bar
    is off (output not a terminal); None for a captured loop (it cannot call back)."""
    if cfg.backend in GRAPH_BACKENDS:
        return None
    every = max(1, cfg.nfe // 10)

    def count(k, *_):
        bar.update()
        if bar.disable and ((k + 1) % every == 0 or k + 1 == cfg.nfe):
            log.info("step %d/%d", k + 1, cfg.nfe)

    return count


def model_record(model) -> dict:
    """The checkpoint's architecture (upstream's flags) and class label, for metrics.json; {} otherwise."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "as_flags"):
        return {}
    return {"model_config": config.as_flags(), "class_label": getattr(model, "class_label", None)}


def prior_name(job: Job) -> str:
    """The ε model named in metrics.json."""
    if job.checkpoint:
        return str(job.checkpoint)
    return "ffdnet (a small learned denoiser, not the paper's ADM)" if job.prior == "ffdnet" else "gaussian (weight-free)"


def main(argv=None) -> int:
    return command(argv, parse, run, interruptible=True)


if __name__ == "__main__":
    sys.exit(main())
