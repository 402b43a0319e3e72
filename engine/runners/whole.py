"""The whole video at once: Algorithm 1 (or Algorithm 2 with --blind) on the clip [N, 3, H, W], scored, written.

    restore_whole(tmp, job, cfg, model, frames, notes)         # frames: INPUT's, a list of [3, H, W]

`restore` and `restore_blind` are the restoration and its scores alone, for a caller with its own
clip: (restored clip, the fields of metrics.json they measured, the measurement).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from engine.baselines import admm_tv, cg_baseline
from engine.errors import InputError
from engine.job import Job, fitted_config, output_fps, say_assumed_mask, weighed_noise, with_sigma_y
from engine.job_input import unit_float, whole_clip
from engine.memory import peak_record
from engine.metrics import clip_summary
from engine.operators import from_spec
from engine.operators.spec import split_temporal
from engine.output import in_input_format, metrics_record, write_outputs
from engine.probe import is_grey
from engine.polish import polish, polish_record, polish_sigma
from engine.realvideo import frame_residuals, input_guard, noise_level, residual_record
from engine.runners.progress import step_counter
from engine.runtime import Solver, SolverConfig, as_tensor, measure

log = logging.getLogger(__name__)

__all__ = ["restore_whole", "restore", "restore_blind", "run_baselines", "score"]


def restore_whole(folder: Path, job: Job, cfg: SolverConfig, model, frames: list, notes: list[str]) -> None:
    """INPUT's `frames` as one clip, `cfg` fitted to it, its noise estimated when measured, restored
    (`restore`, or `restore_blind`) and written into `folder` with metrics.json (engine.output)."""
    clean, y = whole_clip(job, frames)
    clip = clean if clean is not None else y
    cfg = fitted_config(job, cfg, tuple(clip.shape[-2:]), frames=clip.shape[0])
    say_assumed_mask(job, cfg)
    noise = None
    if job.measured:
        noise = noise_level(y, job.sigma_y)
        job, cfg = with_sigma_y(job, cfg, noise.sigma_y)
    if job.blind:
        restored, fields, y, init = restore_blind(job, cfg, model, clean, y)
    else:
        (restored, fields, y), init = restore(job, cfg, model, clean, y), None
    restored, changes = in_input_format(restored.cpu(), grey=is_grey(clip))
    report = metrics_record(job, cfg, frames=restored.shape[0], model=None if job.blind else model, noise=noise,
                            input_changes=notes, output_changes=changes, **fields)
    write_outputs(folder, job, clean, y, restored, report, fps=output_fps(job), init=init)


def restore(job: Job, cfg: SolverConfig, model, clean, y):
    """(restored clip, metrics fields, measurement): Algorithm 1 on y, or on A(clean) + σ_y·w, then scored.

    `clean` may be uint8 (`whole_clip`: 8-bit frames kept as they were decoded); it is made float32 only
    to be measured. The reported seconds include the scoring (in chunks of frames, `score`).
    """
    solver = Solver(model, cfg)
    if clean is not None:
        y = solver.measure(unit_float(clean), sigma_y=job.sigma_y, seed=job.seed + 1)
    t0 = time.perf_counter()
    with tqdm(total=cfg.nfe, desc="restoring", unit="step", disable=None) as bar:
        restored = solver.solve(y, seed=job.seed, callback=step_counter(bar, cfg))
    if clean is None:                                   # a real video: frames its input already explains kept
        measured = as_tensor(y, solver.device, torch.float32)                 # y as the operator sees it
        residuals = frame_residuals(solver.op, restored, measured)            # [N], before the guard
        sigma_p = polish_sigma(weighed_noise(job, cfg))                       # the last denoise: engine.polish
        restored, guard = input_guard(solver.op, restored, measured, job.sigma_y, e_out=residuals,
                                      finish=lambda x: polish(solver.eps_model, x, sigma_p))
    if restored.is_cuda:
        torch.cuda.synchronize()
    restore_s = time.perf_counter() - t0
    report = {"kernels_used": solver.kernels_used.arithmetic}             # what ran (engine.runtime.kernels_run)
    if clean is not None:
        report["restored"] = score(restored, clean, "scoring")
        report["baselines"] = {name: score(clip, clean, f"scoring {name}")
                               for name, clip in run_baselines(job, cfg, solver.op, y)}
    seconds = time.perf_counter() - t0
    report.update(seconds=seconds, restore_s=restore_s, scoring_s=seconds - restore_s, memory=peak_record(cfg.device))
    if clean is not None:
        scores = ", ".join(f"{k} {v['psnr_mean']:.2f} dB" for k, v in report["baselines"].items())
        log.info("PSNR %.2f dB%s, SSIM %.4f, %.1f s (scoring %.1f s)", report["restored"]["psnr_mean"],
                 f" (baselines: {scores})" if scores else "", report["restored"]["ssim_mean"], seconds,
                 seconds - restore_s)
    else:                                               # a real video: what can be measured without a reference
        report["guard"], report["polish"] = guard, polish_record(sigma_p)
        report["residual"] = residual_record(residuals, job.sigma_y, weighed=weighed_noise(job, cfg),
                                             registered=cfg.register)
        log.info("%d frames restored in %.1f s", cfg.frames, seconds)
    return restored, report, y


def restore_blind(job: Job, cfg: SolverConfig, model, clean, y):
    """(restored clip, metrics fields, measurement, first reconstruction): Algorithm 2 (engine.blind) with --init."""
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
    report = {"first_reconstruction": str(job.init), "seconds": seconds,
              "blind": {"psf": result.psf, "true_psf": true_psf, "stages": result.stages}}
    log.info("PSF %s%s, %.1f s", result.psf, f" (true {true_psf})" if true_psf else "", seconds)
    if clean is not None:
        report["restored"] = clip_summary(restored, clean)
        report["baselines"] = {"first reconstruction (--init)": clip_summary(init, clean)}
        log.info("PSNR %.2f dB (first reconstruction %.2f dB)", report["restored"]["psnr_mean"],
                 report["baselines"]["first reconstruction (--init)"]["psnr_mean"])
    return restored, report, y, init


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


def score(clip: torch.Tensor, clean: torch.Tensor, desc: str) -> dict:
    """`clip_summary` of `clip` against `clean`, in chunks of frames (engine.metrics), with a progress bar."""
    with tqdm(total=clip.shape[0], desc=desc, unit="frame", disable=None) as bar:
        return clip_summary(clip, clean, progress=bar.update)
