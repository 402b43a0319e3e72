"""Speed of one video restored by P processes (frame sharding, docs/distributed.md): `python bench/fps.py --procs 1,2`.

For each frame count and each P of --procs, P local processes (gloo on the CPU, NCCL with rank r on
cuda:r) build a Solver over the default group and restore the same video; each times its clips and
splits them by stage (engine.profiling.StageClock): network, CG (with its halo exchanges, all-reduces
and all-to-alls) and, inside the CG, the communication. A row is one (frames, P): seconds per clip
(the slowest process's median), frames per second, the speed-up over the first P of --procs measured
in the same run, and each process's split, so the communication share is visible. On the CPU the
processes share the machine's cores: P processes get ⌊cores / P⌋ threads each, or OMP_NUM_THREADS
when it is set (on a machine other work loads, 1 keeps threads from spinning against each other). Every row runs the
torch kernels (several processes always do: the fused Triton CG sums on one device), so P = 1 is
the same arithmetic on one process, not the fastest single-GPU path (that is fps.py's own table).
"""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.distributed as dist

from bench.common import append_jsonl, median, synchronize
from engine.distributed import run_local
from engine.profiling import StageClock
from engine.runtime import Solver, SolverConfig
from engine.unet import ADMConfig, ADMUNet

log = logging.getLogger("bench.procs")


def rank_times(rank: int, world: int, settings: dict) -> dict:
    """One process: build its Solver, one untimed clip, then `repeats` timed clips with their stages."""
    device = torch.device("cuda", rank) if settings["device"] == "cuda" else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(0)
    config = ADMConfig.preset(settings["preset"])
    with device:
        model = ADMUNet(config)
    cfg = SolverConfig.from_task(settings["task"], frames=settings["frames"], size=settings["size"] or config.image_size,
                                 nfe=settings["nfe"], cg_iters=settings["cg_iters"], device=str(device),
                                 batch=settings["batch"], precision=settings["precision"], kernels="torch")
    solver = Solver(model, cfg, group=dist.group.WORLD)
    clean = torch.rand(cfg.shape, generator=torch.Generator().manual_seed(0))
    start, stop = (solver.shard.start, solver.shard.stop) if solver.shard else (0, cfg.frames)
    y = solver.measure(clean[start:stop].to(device))
    solver.solve(y, seed=0)
    clips, stages = [], []
    for _ in range(settings["repeats"]):
        clock = StageClock(device)
        synchronize(device)
        t0 = time.perf_counter()
        solver.solve(y, seed=0, clock=clock)
        synchronize(device)
        clips.append(time.perf_counter() - t0)
        stages.append(clock.seconds())

    def typical(name: str) -> float:
        return median([s.get(name, 0.0) for s in stages])

    return {"rank": rank, "frames": [start, stop], "threads": torch.get_num_threads(), "seconds_per_clip": median(clips),
            "network_s": typical("UNet"), "cg_s": typical("CG"), "communication_s": typical("communication"),
            "updates_s": typical("Tweedie") + typical("update")}


def measure(args, procs: list[int], info: dict) -> list[dict]:
    """One row per (frames, P), printed as measured and appended with --save."""
    rows = []
    for frames in args.frames:
        first = None
        for world in procs:
            settings = dict(device="cuda" if args.device.startswith("cuda") else "cpu", preset=args.preset,
                            task=args.task, frames=frames, size=args.size, nfe=args.nfe, cg_iters=args.cg_iters,
                            batch=args.batch, precision=args.precision, repeats=args.repeats)
            results = run_local(rank_times, world, settings, backend="nccl" if settings["device"] == "cuda" else "gloo")
            failed = [value for ok, value in results if not ok]
            if failed:
                row = dict(kind="procs_error", procs=world, frames=frames, error=failed[0], **info)
            else:
                ranks = [value for _, value in results]
                per_clip = max(r["seconds_per_clip"] for r in ranks)
                row = dict(kind="procs", procs=world, frames=frames, preset=args.preset, task=args.task, nfe=args.nfe,
                           cg_iters=args.cg_iters, batch=args.batch, size=args.size, seconds_per_clip=per_clip,
                           fps=frames / per_clip, ranks=ranks, **info)
                first = first or row
                row["speedup_vs_first"] = first["seconds_per_clip"] / per_clip
                row["baseline_procs"] = first["procs"]
            print_row(row)
            rows.append(row)
            if args.save:
                append_jsonl("fps", [row])
    return rows


def print_row(row: dict) -> None:
    if row["kind"] == "procs_error":
        print(f"P={row['procs']} frames {row['frames']}: not measured: {row['error']}")
        return
    print(f"P={row['procs']:<2} frames {row['frames']:>4}: {row['seconds_per_clip']:.3f} s/clip, "
          f"{row['fps']:.2f} frames/s, ×{row['speedup_vs_first']:.2f} over P={row['baseline_procs']}")
    for r in row["ranks"]:
        cg, comm = r["cg_s"], r["communication_s"]
        print(f"    rank {r['rank']} frames {r['frames'][0]}–{r['frames'][1] - 1} ({r['threads']} threads): "
              f"network {r['network_s']:.3f} s, CG {cg:.3f} s (communication {comm:.3f} s, "
              f"{100 * comm / max(r['seconds_per_clip'], 1e-12):.0f} % of the clip), updates {r['updates_s']:.3f} s")
