"""`torchrun --nproc-per-node G -m engine.solve INPUT … --out out/`: one video, G processes (#17).

engine.solve hands its job here when torchrun started it. Every process reads the input and keeps
its own frames (engine.distributed.frame_ranges; the measurement of a clean input is made over the
whole video first, so its noise is the single-process run's), restores them with a sharded Solver
(network on its frames, CG across all of them), and sends them to process 0, which alone claims
--out, writes the outputs atomically and records in metrics.json the world size and each process's
frames and seconds (network, CG, communication). A process that fails prints its one-line error
naming its rank and exits non-zero; torchrun then stops the others, and process 0's temporary
output is removed as for any failed run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from engine.cli import USER_ERRORS
from engine.distributed import gather_frames, gather_records, init_from_environment
from engine.errors import InputError, PeerError
from engine.metrics import clip_summary
from engine.operators import from_spec
from engine.profiling import StageClock
from engine.runtime import Solver, SolverConfig, as_tensor, load_model, measure
from engine import solve

log = logging.getLogger("engine.solve")


#: the key of torchrun's store under which the first process to fail leaves its message for the others
FAILED_KEY = "engine.solve/failed"


def run_sharded(job: "solve.Job", cfg: SolverConfig) -> Path | None:
    """engine.solve's `run` for a process torchrun started; returns the output folder on process 0.

    A process that fails leaves its one-line message in torchrun's store; a process whose collective
    then breaks (its peer is gone) raises PeerError with that message instead of the transport's."""
    device = init_from_environment(cfg.device)
    rank, world = dist.get_rank(), dist.get_world_size()
    store = _store()
    try:
        return _run(job, dataclasses.replace(cfg, device=device), rank, world)
    except Exception as err:
        told = _read(store)
        if told is not None and isinstance(err, RuntimeError) and not isinstance(err, USER_ERRORS):
            raise PeerError(f"process {rank} of {world} stopped: {told}") from None
        message = f"process {rank} of {world}: {err}"
        _leave(store, message)
        if isinstance(err, USER_ERRORS):
            raise type(err)(message) from None
        raise
    finally:
        dist.destroy_process_group()


def _store():
    """A client of torchrun's store (its agent keeps it while workers fail), or None where there is none."""
    try:
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                             timeout=timedelta(seconds=10))
    except (KeyError, ValueError, RuntimeError):
        return None


def _leave(store, message: str) -> None:
    if store is not None:
        try:
            if not store.check([FAILED_KEY]):
                store.set(FAILED_KEY, message)
        except RuntimeError:
            pass                                   # the store is gone too: the message is still printed here


def _read(store) -> str | None:
    try:
        return store.get(FAILED_KEY).decode() if store is not None and store.check([FAILED_KEY]) else None
    except RuntimeError:
        return None


def _run(job, cfg: SolverConfig, rank: int, world: int) -> Path | None:
    if job.blind or job.max_frames is not None:
        raise InputError("--blind and --max-frames run in one process; leave them out under torchrun")
    with solve.claimed_output(job) if rank == 0 else nullcontext() as tmp:
        model, _ = load_model(job.checkpoint, backend=cfg.backend, engine=job.engine, size=job.size,
                              device=cfg.device, model_config=job.model_config, class_label=job.class_label,
                              prior=job.prior)
        clean, y, notes = solve.read_input(job)
        frame = tuple(clean.shape[-2:]) if clean is not None else solve.clean_frame(cfg.spec, tuple(y.shape[-2:]))
        frames = (clean if clean is not None else y).shape[0]
        cfg = dataclasses.replace(cfg, frames=frames, size=frame,
                                  spec=solve.with_time_boundary(cfg.spec, solve.video_boundary(job, frames)))
        solver = Solver(model, cfg, group=dist.group.WORLD)
        if clean is not None:                    # the whole video's measurement, as one process makes it
            op = from_spec(cfg.spec, cfg.shape, seed=cfg.mask_seed, device=solver.device, dtype=torch.float32)
            y = measure(op, as_tensor(clean, solver.device, torch.float32), sigma_y=job.sigma_y, seed=job.seed + 1)
        shard = solver.shard or _whole(frames)
        restored, record = _restore_shard(solver, y[shard.start:shard.stop], job.seed, rank)
        restored = gather_frames(restored, solver.comm) if solver.comm is not None else restored
        records = gather_records(record, solver.comm) if solver.comm is not None else [record]
        if rank != 0:
            return None
        seconds = max(r["seconds"] for r in records)
        report = {"written_by": solve.WRITTEN_BY, "settings": solve.settings(job, cfg), "kernels_used": "torch",
                  "input": str(job.input) if job.input else "demo", "prior": solve.prior_name(job),
                  **solve.model_record(model), "seconds": seconds, "fps": frames / seconds,
                  "world_size": world, "ranks": records, "input_changes": notes}
        restored = restored.cpu()
        if clean is not None:
            report["restored"] = clip_summary(restored, clean)
            op = from_spec(cfg.spec, cfg.shape, seed=cfg.mask_seed)
            report["baselines"] = {name: clip_summary(clip.cpu(), clean)
                                   for name, clip in solve.run_baselines(job, cfg, op, y.cpu()).items()}
            log.info("PSNR %.2f dB with %d processes, %.1f s", report["restored"]["psnr_mean"], world, seconds)
        solve.write_outputs(tmp, job, clean, y, restored, report, fps=solve._output_fps(job))
    log.info("wrote restored.mp4, measurement.mp4, frames/, metrics.json and comparison.png to %s", job.out)
    return job.out.resolve()


def _whole(frames: int):
    from engine.distributed import Shard

    return Shard(rank=0, world=1, frames=frames, start=0, stop=frames)


def _restore_shard(solver: Solver, y, seed: int, rank: int):
    """(this process's restored frames, its record: frames, seconds, network / CG / communication seconds)."""
    clock = StageClock(solver.device)
    t0 = time.perf_counter()
    restored = solver.solve(y, seed=seed, clock=clock)
    stages = clock.seconds()
    shard = solver.shard
    record = {"rank": rank, "frames": [shard.start, shard.stop] if shard else [0, y.shape[0]],
              "seconds": time.perf_counter() - t0, "network_s": stages.get("UNet", 0.0),
              "cg_s": stages.get("CG", 0.0), "communication_s": stages.get("communication", 0.0)}
    log.info("process %d: frames %s in %.1f s (network %.1f s, CG %.1f s of which communication %.1f s)", rank,
             record["frames"], record["seconds"], record["network_s"], record["cg_s"], record["communication_s"])
    return restored, record
