"""One video restored by every process torchrun started: frames split over the processes, the CG across all.

    torchrun --nproc-per-node 8 -m engine.solve video.mp4 --degrade temporal:uniform:7 --out out/

Every process keeps its own frames (engine.distributed.frame_ranges): of a measured video it decodes
and holds those frames only (`own_measurement`); a clean input is read whole on process 0
(`read_on_first`), its measurement made over the whole video so its noise is the single-process
run's. With --max-frames a longer video is streamed in windows, each split over the processes
(engine.runners.windows). Process 0 alone claims --out and writes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import nullcontext
from itertools import islice
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from tqdm import tqdm

from engine.distributed import (frame_ranges, gather_frames, gather_records, init_from_environment, one_failure_for_all,
                                scatter_frames)
from engine.errors import InputError
from engine.job import Job, fitted_config, load_eps_model, output_fps, say_assumed_mask, weighed_noise, with_sigma_y
from engine.job_checks import checked_input
from engine.job_input import input_frames, longer_than_a_window, split_head, unit_float, whole_clip
from engine.metrics import clip_summary
from engine.operators import from_spec
from engine.output import claimed_output, metrics_record, write_outputs
from engine.profiling import StageClock
from engine.polish import polish, polish_record, polish_sigma
from engine.realvideo import frame_residuals, input_guard, noise_level, residual_record
from engine.runners.progress import stage_seconds, step_counter
from engine.runners.whole import run_baselines
from engine.runners.windows import restore_in_windows
from engine.runtime import Solver, SolverConfig, as_tensor, measure

log = logging.getLogger(__name__)

__all__ = ["run_sharded", "read_on_first", "own_measurement"]


def run_sharded(job: Job, cfg: SolverConfig) -> Optional[Path]:
    """The job in a process torchrun started: one video restored by every process of the job.

    Every process keeps its own frames (engine.distributed.frame_ranges): of a --measured video it
    decodes and holds those frames only (`own_measurement`); a clean input is read whole, its
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
        _restore_sharded(tmp, job, cfg, load_eps_model(job, cfg), rank, world)
    if rank != 0:
        return None
    log.info("wrote restored.mp4, measurement.mp4, frames/, metrics.json and comparison.png to %s", job.out)
    return job.out.resolve()


def _restore_sharded(tmp: Optional[Path], job: Job, cfg: SolverConfig, model, rank: int, world: int) -> None:
    """The work of `run_sharded` in one process; process 0 writes the outputs into `tmp`."""
    if job.max_frames is not None:               # every process streams INPUT; longer than W: windows, each split
        head, frames_read, notes = split_head(job)
        if longer_than_a_window(job, head):
            restore_in_windows(tmp, job, cfg, model, head, frames_read, notes, group=dist.group.WORLD)
            return
    if job.measured:                         # this process's frames only: [start, stop) of a first count
        frames, first, own_rows = own_measurement(job, rank, world)
        clean, notes = None, []
        cfg = fitted_config(job, cfg, tuple(first.shape[-2:]), frames=frames)
        told = [noise_level(own_rows, job.sigma_y) if rank == 0 else None]    # process 0's frames tell σ_y
        dist.broadcast_object_list(told, src=0)
        noise = told[0]
        job, cfg = with_sigma_y(job, cfg, noise.sigma_y)
    else:                                    # the clean clip: process 0 reads and measures it, then scatters
        noise = None
        clean, notes, frames, shape = read_on_first(job, rank)
        cfg = fitted_config(job, cfg, shape, frames=frames)
    if rank == 0:
        say_assumed_mask(job, cfg)
    if dist.get_world_size() > 1 and cfg.temporal_prior != "none":
        if job.temporal_prior != "auto":
            raise InputError(f"--temporal-prior {job.temporal_prior} follows motion across the whole video, which "
                             f"torchrun splits; add --max-frames W (windows) or use --temporal-prior none")
        if job.register:
            raise InputError("--register moves the frames after the motion prior, which torchrun leaves out of a "
                             "whole video it splits; add --max-frames W (windows) or drop --register")
        if rank == 0:
            log.warning("torchrun splits the whole video over %d processes: its null modes keep the per-frame "
                        "prior's choice (--temporal-prior none); --max-frames W restores windows with the motion "
                        "prior", world)
        cfg = dataclasses.replace(cfg, temporal_prior="none", register=False)     # the motion prior's last step too
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
    fields = {"kernels_used": solver.kernels_used.arithmetic, "world_size": world, "ranks": records}
    restored, op = restored.cpu(), from_spec(cfg.spec, cfg.shape, seed=cfg.mask_seed)
    if clean is None:                            # as whole.restore: its residual, frames the input explains kept
        residuals = frame_residuals(op, restored, y.cpu())
        sigma_p = polish_sigma(weighed_noise(job, cfg))                   # the last denoise: engine.polish
        finish = lambda x: polish(solver.eps_model, x.to(solver.device), sigma_p).cpu()
        restored, fields["guard"] = input_guard(op, restored, y.cpu(), job.sigma_y, e_out=residuals, finish=finish)
        fields["polish"] = polish_record(sigma_p)
        fields["residual"] = residual_record(residuals, job.sigma_y, weighed=weighed_noise(job, cfg),
                                             registered=cfg.register)
    else:
        fields["restored"] = clip_summary(restored, clean)
        fields["baselines"] = {name: clip_summary(clip.cpu(), clean)
                               for name, clip in run_baselines(job, cfg, op, y.cpu())}
        log.info("PSNR %.2f dB with %d processes, %.1f s", fields["restored"]["psnr_mean"], world, seconds)
    report = metrics_record(job, cfg, frames=frames, seconds=seconds, model=model, noise=noise, input_changes=notes,
                            **fields)
    write_outputs(tmp, job, clean, y, restored, report, fps=output_fps(job))


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


def read_on_first(job: Job, rank: int) -> tuple[Optional[torch.Tensor], list[str], int, tuple[int, int]]:
    """(the clean clip on process 0, None elsewhere; the input changes, its frame count and frame size, on
    every process): process 0 alone decodes INPUT and tells the others what they need."""
    clean, facts = None, [None]
    if rank == 0:
        frames_read, notes = input_frames(job)
        clean, _ = whole_clip(job, list(frames_read))
        facts = [(notes, clean.shape[0], tuple(clean.shape[-2:]))]
    dist.broadcast_object_list(facts, src=0)
    return (clean, *facts[0])


def own_measurement(job: Job, rank: int, world: int) -> tuple[int, torch.Tensor, torch.Tensor]:
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
