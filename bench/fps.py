"""End-to-end speed of the reverse loop, every available backend side by side in one run.

    python bench/fps.py                      # CPU: a tiny model, about a minute (or python -m bench.fps)
    python bench/fps.py --frames 16,64       # CPU: one row per frame count and backend, a minute or two
    python bench/fps.py --task temporal-k7   # GPU: ADM-256 (random weights), 16 frames, 20 NFE, 5 CG
    python bench/fps.py --frames 16,64,256 --backends torch+graph      # GPU: length sweep, B = 16
    python bench/fps.py --size 720x1280 --frames 8 --backends torch+graph   # GPU: 720p, 28 tiles a frame
    python bench/fps.py --json --nvtx        # one JSON object per row; NVTX ranges for Nsight
    python bench/fps.py --save               # also append the rows to bench/results/fps.jsonl
    python bench/fps.py --procs 1,2          # one video over 1 and 2 processes: time per process and stage
    python bench/fps.py --prior ffdnet --start 400 --nfe 8   # the default prior (no checkpoint), as the demo runs it
    python bench/fps.py --frames 256 --nfe 4 --extrapolate-nfe 20    # 4 steps timed, the 20-step clip extrapolated
    python bench/fps.py --backends tensorrt --engine a.engine --engine b.engine   # engines side by side

Each row is one (frame count, backend): seconds per clip and per frame, the network batch B
(`--batch`: the network sees B frames, or B tiles of its training size, at a time) and the
peak memory of the row. `s/frame ×1st` divides a row's seconds per frame by those of the same
backend's first row of this run (the first of --frames): the goal is flat within 15 % from 16
to 256 frames. `B/frame+` is the peak's growth per frame over that first row, i.e. what each
extra frame costs (the video-sized buffers); the network's memory is set by B. Peak memory on
CUDA is torch.cuda.max_memory_allocated, reset before each row's build; on the CPU it is the
peak of live torch tensor bytes (bench.common.LiveBytes, a dispatch mode, no tracemalloc)
over a second build and one untimed clip of the row, so the counting does not slow the timed clips.
The benchmark builds each row's fp32 model (2.2 GB for ADM-256) and hands it to the Solver, which
keeps its own converted copy: `peak_mem_bytes` includes that caller's model, alive while the Solver
is built and captured; `peak_mem_solve_bytes` is the peak of the clips alone once it is gone (what a
process that keeps only the Solver needs), and `caller_model_bytes` its size.

`--extrapolate-nfe K` times the clips at --nfe and adds the K-step figures, scaled linearly in the
number of steps (seconds × K / nfe; every step costs the same, and the clip's fixed part, scaled
too, makes the figure err high); the row says so, and its targets are checked on those figures.

On a CPU shared with other work, OMP_NUM_THREADS=1 keeps torch's threads from spinning against
each other (on 2 cores under load, 2 threads made a 16-frame tiny clip ten times slower); the
rows record `threads`.

The reference is the loop written the way the public code runs it (eager UNet in fp16
on a GPU, fp32 on the CPU; plain torch operators and CG). Speed does not depend on the
weights' values, so the model is built from its config with random weights. `--prior` times
a plug-and-play prior (engine.priors; FFDNet with its shipped weights) in the UNet's place, at
the frame size (`--size`, default 256), with no reference row (the public code has none). The stage
columns split each clip's time by shares measured inside the Solver's own loop run step by step
(`stage_shares`: Solver.solve(eager=True), with its preconditioner and warm start).
With --save each row is appended, as soon as it is measured, to bench/results/fps.jsonl (or
$BENCH_RESULTS) with the card, versions and commit; a plain run writes nothing into the tree.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import (LiveBytes, add_save_flag, append_jsonl, machine, matmul_peak_tflops, median, synchronize,
                          time_fn, unet_flops)
from engine.cli import add_solver_flag, default_device
from engine.ffdnet import FFDNet
from engine.priors import make_prior
from engine.runtime import Solver, SolverConfig
from engine.profiling import StageClock, nvtx_range
from engine.tasks import TASKS
from engine.tiling import tile_starts
from engine.unet import ADMConfig, ADMUNet

log = logging.getLogger("bench.fps")
REFERENCE = "reference"
#: frame size of --prior rows unless --size says otherwise (the demo's)
PRIOR_SIZE = 256
COLD_START_LIMIT_S = 120
#: seconds per frame may differ from the first row's by this fraction and still count as flat
FLAT_TOLERANCE = 0.15
#: The matmul whose measured throughput is the UNet's peak, by network precision.
PEAK_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="adm256_uncond" if cuda else "tiny", help="ADM config (adm256_uncond, ffhq_dps, tiny)")
    add_solver_flag(p, "prior", help="time this prior instead of an ADM preset",
                    note=f"(the default without --checkpoint; frames of --size, default {PRIOR_SIZE})")
    add_solver_flag(p, "start", note="(default: the cold start)")
    p.add_argument("--frames", type=frame_list, default=[16] if cuda else [8],
                   help="comma list of frame counts, one row each (e.g. 16,64,256); the first is the baseline")
    add_solver_flag(p, "batch", default=16, note="(default 16)")
    p.add_argument("--size", type=frame_size, default=None,
                   help="frame size S or HxW (e.g. 720x1280: tiles of the network's size); default the network's")
    p.add_argument("--task", default="temporal-k7", choices=sorted(TASKS), help="degradation (sets the operator)")
    add_solver_flag(p, "nfe", default=20 if cuda else 4, note="(default 20 on a GPU, 4 on the CPU)")
    add_solver_flag(p, "cg_iters", default=5, note="(default 5)")
    add_solver_flag(p, "dtype", flags=("--precision",), default="fp16" if cuda else "fp32",
                    note="of the fast backends (default fp16 on a GPU, fp32 on the CPU)")
    add_solver_flag(p, "cudnn_benchmark", note="in the fast backends (the reference does not)")
    p.add_argument("--backends", default=None,
                   help="comma list from torch,torch+graph,compile,tensorrt (default: all that run here but compile)")
    add_solver_flag(p, "engine", action="append", default=None,
                    help="TensorRT engine file for the tensorrt backend; repeat it to time several engines side by "
                         "side (e.g. built with and without --norm-outputs-fp32), one row each")
    p.add_argument("--repeats", type=int, default=5 if cuda else 2, help="timed clips per row (median reported)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed clips before the timed ones (a graph backend has already run one to capture)")
    p.add_argument("--stage-repeats", type=int, default=None,
                   help="eager clips that split each row's time into stages (default max(3, --repeats); 0: none)")
    p.add_argument("--extrapolate-nfe", type=int, default=None, metavar="K",
                   help="also report the clip at K network evaluations, extrapolated linearly from the --nfe timed")
    p.add_argument("--target-fps", type=float, help="print whether each row reaches this many frames per second")
    p.add_argument("--target-s-per-frame", type=float, help="print whether each row takes at most this many s/frame")
    p.add_argument("--target-peak-gb", type=float, help="print whether each row's peak memory stays within this")
    add_solver_flag(p, "device", default=default_device())
    p.add_argument("--json", action="store_true", help="print one JSON object per backend instead of a table")
    p.add_argument("--nvtx", action="store_true", help="NVTX ranges per stage (for nsys)")
    p.add_argument("--profile", type=Path, help="write a torch profiler trace of one clip per backend here")
    p.add_argument("--cold-start", action="store_true", help="also time process start → first restored clip")
    add_save_flag(p, "fps")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the public-code reference (e.g. when only the cold start is wanted)")
    p.add_argument("--reference-last", action="store_true",
                   help="measure the reference after the backends (a run cut short keeps the backends' rows); "
                        "the reference row then lists each backend's speed-up")
    p.add_argument("--procs", type=frame_list, default=None,
                   help="comma list of process counts (e.g. 1,2): one video sharded by frames over that many local "
                        "processes, time per process split into network, CG and communication (bench/procs.py)")
    p.add_argument("--cold-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def frame_list(text: str) -> list[int]:
    """"16,64,256" → [16, 64, 256] (argparse type)."""
    try:
        counts = [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected counts of at least 1, got {text!r}")
    return counts


def frame_size(text: str) -> tuple[int, int]:
    """"256" → (256, 256), "720x1280" → (720, 1280) (argparse type)."""
    try:
        sides = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        sides = ()
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"--size takes S or HxW in pixels, got {text!r}")
    return (sides[0], sides[-1])


def default_backends(device: torch.device, engines: list[Path] | None) -> list[str]:
    names = ["torch"]
    if device.type == "cuda":
        names.append("torch+graph")
        if engines:
            names.append("tensorrt")
    return names


def engine_labels(backends: list[str], engines: list[Path] | None) -> dict[str, Path]:
    """The rows of the tensorrt backend: label → engine file ("tensorrt" for one engine, "tensorrt[stem]" each
    for several)."""
    if "tensorrt" not in backends or not engines:
        return {}
    if len(engines) == 1:
        return {"tensorrt": engines[0]}
    return {f"tensorrt[{path.stem}]": path for path in engines}


def expand_backends(backends: list[str], labels: dict[str, Path]) -> list[str]:
    """`backends` with "tensorrt" replaced by one label per engine."""
    out = []
    for name in backends:
        out.extend(labels if name == "tensorrt" and labels else [name])
    return out


def engine_settings(path: Path) -> dict | None:
    """The builder settings an engine was built with (its record beside it), None when it has no readable record."""
    try:
        return json.loads(path.with_name(path.name + ".json").read_text())["fields"]["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_solver(args, backend: str, frames: int) -> tuple[Solver, float]:
    """A Solver for one backend and frame count with a freshly built random-weight model; returns
    (solver, build seconds)."""
    device = torch.device(args.device)
    reference = backend == REFERENCE
    torch.manual_seed(0)
    cfg_model = ADMConfig.preset(args.preset)
    if args.prior:
        model = make_prior(args.prior, device=device)
    elif backend.startswith("tensorrt"):
        model = args.engine_labels.get(backend)
        if model is None:
            raise ValueError(f"backend {backend} needs --engine FILE")
    else:
        with device:                       # initialised where it runs: seconds, not minutes, for ADM-256
            model = ADMUNet(cfg_model)
    config = SolverConfig.from_task(
        args.task, frames=frames, size=args.size or (PRIOR_SIZE if args.prior else cfg_model.image_size),
        nfe=args.nfe, cg_iters=args.cg_iters, start=args.start, device=args.device, batch=args.batch,
        backend="torch" if reference else ("tensorrt" if backend.startswith("tensorrt") else backend),
        precision=("fp16" if device.type == "cuda" else "fp32") if reference else args.precision,
        kernels="torch" if reference else "auto",
        channels_last=not reference and (device.type == "cuda" or bool(args.prior)),   # a prior: as engine.solve
        cudnn_benchmark=not reference and args.cudnn_benchmark,
        nvtx=args.nvtx,
    )
    synchronize(device)
    t0 = time.perf_counter()
    solver = Solver(model, config)
    synchronize(device)
    return solver, time.perf_counter() - t0


#: the table's stage columns: row key → the loop's stages (engine.sampler.reverse_process) it sums
STAGES = {"unet_s": ("UNet",), "cg_and_operators_s": ("CG",), "updates_s": ("Tweedie", "update")}


def stage_shares(solver: Solver, y: torch.Tensor, repeats: int) -> dict[str, float]:
    """Each stage's share of a clip, timed inside the Solver's own loop (Solver.solve(eager=True): its
    model, operator, step arithmetic, preconditioner and warm start, run step by step, since a captured
    graph cannot be split), the median over `repeats` clips.

    Shares, not seconds: the stage clock and the clip timer then measure the same clips, so the
    stages of a row never add up to more than its time per clip (they did when the stages were
    timed alone after the clips, on a machine whose load had changed meanwhile).
    """
    shares: dict[str, list[float]] = {key: [] for key in STAGES}
    for _ in range(repeats):
        clock = StageClock(solver.device)
        synchronize(solver.device)
        start = time.perf_counter()
        solver.solve(y, seed=0, clock=clock, eager=True)
        synchronize(solver.device)
        clip, seconds = time.perf_counter() - start, clock.seconds()
        for key, names in STAGES.items():
            shares[key].append(sum(seconds.get(n, 0.0) for n in names) / clip)
    return {key: median(values) for key, values in shares.items()}


def bench_backend(args, backend: str, frames: int, clip_y: dict, flops: float, peak: float) -> dict:
    """One row: `backend` restoring `frames` frames (clip_y caches the measurement per frame count)."""
    device = torch.device(args.device)
    if device.type == "cuda":
        gc.collect()                          # the previous row's solver, before this row's peak starts
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    solver, build_s = build_solver(args, backend, frames)
    build_peak = solve_peak = None
    if device.type == "cuda":                 # the caller's fp32 model is gone: the clips' own peak from here
        gc.collect()
        build_peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    if frames not in clip_y:
        clip_y[frames] = solver.measure(torch.rand(solver.op.in_shape, generator=torch.Generator().manual_seed(0)))
    y = clip_y[frames]
    with nvtx_range(f"solve[{backend}]", args.nvtx):
        seconds = time_fn(lambda: solver.solve(y, seed=0), device, repeats=args.repeats, warmup=args.warmup)
    if args.profile:
        profile_one(args, solver, y, backend)
    per_clip = median(seconds)
    stage_repeats = max(3, args.repeats) if args.stage_repeats is None else args.stage_repeats
    shares = stage_shares(solver, y, repeats=stage_repeats) if stage_repeats > 0 else None
    stages = {key: share * per_clip for key, share in shares.items()} if shares else None
    cfg, used = solver.config, solver.kernels_used
    tiles = 1 if args.prior else network_tiles(cfg, ADMConfig.preset(args.preset).image_size)
    if device.type == "cuda":
        solve_peak = torch.cuda.max_memory_allocated(device)
        peak_mem, method = max(build_peak, solve_peak), "torch.cuda.max_memory_allocated, reset per row"
    else:
        del solver
        peak_mem, solve_peak = cpu_tensor_peak(args, backend, frames, y)
        method = "peak live torch tensor bytes (LiveBytes)"
    flops_per_step = flops * frames * tiles
    row = {
        "backend": backend, "device": args.device, "preset": None if args.prior else args.preset,
        "channels_last": cfg.channels_last,
        "prior": args.prior, "start": cfg.start, "task": args.task,
        "frames": cfg.frames, "size": list(cfg.frame), "batch": cfg.batch, "tiles": tiles, "nfe": cfg.nfe,
        "cg_iters": cfg.cg_iters, "precision": cfg.precision, "kernels": used.arithmetic,
        "norms": used.norms, "cudnn_benchmark": cfg.cudnn_benchmark,
        "seconds_per_clip": per_clip, "seconds_all": seconds, "seconds_per_frame": per_clip / frames,
        "fps": frames / per_clip, "ms_per_nfe": per_clip / cfg.nfe * 1e3, "build_s": build_s, "warmup": args.warmup,
        "stages": stages, "stage_shares": shares,
        "unet_flops_per_forward": flops_per_step,
        "unet_tflops": flops_per_step * cfg.nfe / stages["unet_s"] / 1e12 if stages and flops else None,
        "matmul_peak_tflops": peak,
        "peak_mem_bytes": peak_mem, "peak_mem_method": method, "peak_bytes_per_frame": peak_mem / frames,
        "peak_mem_solve_bytes": solve_peak, "caller_model_bytes": caller_model_bytes(args, backend),
    }
    if backend.startswith("tensorrt"):
        row["engine"] = str(args.engine_labels[backend])
        row["engine_settings"] = engine_settings(args.engine_labels[backend])
    extrapolate(row, args.extrapolate_nfe)
    row["unet_fraction_of_peak"] = row["unet_tflops"] / peak if row["unet_tflops"] is not None else None
    return row


def network_flops(args) -> float:
    """FLOPs of one network forward on one frame (or tile): the ADM preset's, FFDNet's at the frame size,
    0 for the weight-free prior (its FFTs are not counted)."""
    if args.prior == "ffdnet":
        return float(FFDNet().flops(*(args.size or (PRIOR_SIZE, PRIOR_SIZE))))
    if args.prior:
        return 0.0
    return float(unet_flops(ADMConfig.preset(args.preset), 1))


def network_tiles(cfg: SolverConfig, tile: int) -> int:
    """Tiles of the network's `tile`-pixel training size per frame, as the Solver lays them out
    (engine.tiling, overlap a quarter of the tile unless set): 1 when the frame is that size."""
    if cfg.frame == (tile, tile):
        return 1
    overlap = tile // 4 if cfg.tile_overlap is None else cfg.tile_overlap
    return len(tile_starts(cfg.frame[0], tile, overlap)) * len(tile_starts(cfg.frame[1], tile, overlap))


def cpu_tensor_peak(args, backend: str, frames: int, y: torch.Tensor) -> tuple[int, int]:
    """(peak bytes of live torch tensors while a fresh solver of the row is built and restores one clip,
    the peak of that clip alone, counted from what lives after the build: the caller's model is gone)
    (bench.common.LiveBytes: tensors from their creation to their release, weights included)."""
    with LiveBytes() as counter, torch.no_grad():
        solver, _ = build_solver(args, backend, frames)
        gc.collect()
        build_peak, counter.peak = counter.peak, counter.live
        solver.solve(y, seed=0)
        del solver
    return max(build_peak, counter.peak), counter.peak


def caller_model_bytes(args, backend: str) -> int:
    """Bytes of the fp32 ADM model the benchmark builds and hands to the Solver (counted on the meta device);
    0 for a prior or an engine file."""
    if args.prior or backend.startswith("tensorrt"):
        return 0
    with torch.device("meta"):
        model = ADMUNet(ADMConfig.preset(args.preset))
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


#: what an extrapolated row says about its figures
EXTRAPOLATION = ("linear in the number of network evaluations: seconds × K / nfe, from the clips timed at nfe "
                 "(every step costs the same; the clip's fixed part is scaled too, so the figure errs high)")


def extrapolate(row: dict, nfe: int | None) -> None:
    """Adds to `row` its K-step figures (K = `nfe`), scaled from its timed clips (EXTRAPOLATION says how)."""
    if not nfe:
        return
    scale = nfe / row["nfe"]
    row["extrapolated"] = {"to_nfe": nfe, "from_nfe": row["nfe"], "method": EXTRAPOLATION,
                           "seconds_per_clip": row["seconds_per_clip"] * scale,
                           "seconds_per_frame": row["seconds_per_frame"] * scale,
                           "fps": row["fps"] / scale}


def profile_one(args, solver: Solver, y: torch.Tensor, backend: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    args.profile.mkdir(parents=True, exist_ok=True)
    with profile(activities=acts) as prof:
        solver.solve(y, seed=0)
        synchronize(solver.device)
    path = args.profile / f"trace_{backend.replace('+', '_')}.json"
    prof.export_chrome_trace(str(path))
    log.info("wrote %s", path)


def cold_start(args, backend: str, frames: int) -> float | None:
    """Seconds from process start to the first restored clip (kernels and engines already cached);
    None (logged) when that process fails or outlasts COLD_START_LIMIT_S."""
    engine = args.engine_labels.get(backend)
    cmd = [sys.executable, __file__, "--cold-child", "--backends", "tensorrt" if engine else backend,
           "--preset", args.preset,
           *(["--prior", args.prior] if args.prior else []), *(["--start", str(args.start)] if args.start else []),
           "--frames", str(frames), "--batch", str(args.batch), "--task", args.task, "--nfe", str(args.nfe),
           "--cg-iters", str(args.cg_iters), "--precision", args.precision, "--device", args.device]
    if args.size:
        cmd += ["--size", "x".join(map(str, args.size))]
    if engine:
        cmd += ["--engine", str(engine)]
    if args.cudnn_benchmark:
        cmd.append("--cudnn-benchmark")
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=COLD_START_LIMIT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        log.warning("cold start of %s not measured: %s", backend, err)
        return None
    return time.perf_counter() - t0


def compare_with_first(row: dict, first: dict | None) -> None:
    """Adds to `row` its seconds per frame relative to `first` (the same backend's first row of this run)
    and its peak's growth per frame over that row's; the first row is its own baseline (ratio 1)."""
    first = first or row
    row["baseline_frames"] = first["frames"]
    row["seconds_per_frame_ratio"] = row["seconds_per_frame"] / first["seconds_per_frame"]
    row["flat"] = abs(row["seconds_per_frame_ratio"] - 1) <= FLAT_TOLERANCE
    extra = row["frames"] - first["frames"]
    row["growth_bytes_per_frame"] = (row["peak_mem_bytes"] - first["peak_mem_bytes"]) / extra if extra else None


def check_targets(row: dict, args) -> None:
    """Adds row["targets"]: each target given on the command line, the row's number and whether it is met."""
    speed = row.get("extrapolated") or row                # the K-step figures when the row was extrapolated
    wanted = [("fps", args.target_fps, speed["fps"], speed["fps"] >= (args.target_fps or 0)),
              ("s_per_frame", args.target_s_per_frame, speed["seconds_per_frame"],
               speed["seconds_per_frame"] <= (args.target_s_per_frame or 0)),
              ("peak_gb", args.target_peak_gb, row["peak_mem_bytes"] / 1e9,
               row["peak_mem_bytes"] / 1e9 <= (args.target_peak_gb or 0))]
    row["targets"] = {name: {"target": target, "measured": value, "met": met}
                      for name, target, value, met in wanted if target is not None}


def print_table(rows: list[dict]) -> None:
    head = f"{'backend':<12} {'frames':>6} {'B':>3} {'tiles':>5} {'s/clip':>8} {'s/frame':>8} {'s/fr ×1st':>9} " \
           f"{'FPS':>7} {'UNet s':>7} {'CG s':>7} {'upd s':>7} {'TFLOP/s':>8} {'%peak':>6} {'mem GB':>7} " \
           f"{'MB/frame+':>9} {'speed-up':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.get("kind") == "error":
            print(f"{r['backend']:<12} {r['frames']:>6} not measured: {r['error']}")
            continue
        st = r["stages"] or {}
        growth = r["growth_bytes_per_frame"]
        print(f"{r['backend']:<12} {r['frames']:>6} {r['batch']:>3} {r['tiles']:>5} {r['seconds_per_clip']:8.3f} "
              f"{r['seconds_per_frame']:8.4f} {r['seconds_per_frame_ratio']:8.2f}{' ' if r['flat'] else '!'} "
              f"{r['fps']:7.2f} {cell(st.get('unet_s'), 7, '.3f')} {cell(st.get('cg_and_operators_s'), 7, '.3f')} "
              f"{cell(st.get('updates_s'), 7, '.3f')} {cell(r['unet_tflops'], 8, '.2f')} "
              f"{cell(r['unet_fraction_of_peak'] and 100 * r['unet_fraction_of_peak'], 6, '.1f')} "
              f"{r['peak_mem_bytes'] / 1e9:7.3f} {cell(growth and growth / 1e6, 9, '.2f')} "
              f"{cell(r['speedup_vs_reference'], 8, '.2f')}")
        if r.get("extrapolated"):
            e = r["extrapolated"]
            print(f"{'':<12} extrapolated to {e['to_nfe']} NFE from {e['from_nfe']}: {e['seconds_per_clip']:.3f} s/clip, "
                  f"{e['seconds_per_frame']:.4f} s/frame, {e['fps']:.2f} FPS (linear in NFE)")
        if r.get("peak_mem_solve_bytes") is not None:
            print(f"{'':<12} peak of the clips alone (the caller's {r['caller_model_bytes'] / 1e9:.2f} GB model "
                  f"gone): {r['peak_mem_solve_bytes'] / 1e9:.3f} GB")
        for name, t in r["targets"].items():
            print(f"{'':<12} target {name} {t['target']:g}: measured {t['measured']:.3g}, "
                  f"{'met' if t['met'] else 'NOT met'}")
    print(f"s/fr ×1st: seconds per frame over the same backend's first row ('!': beyond ±{FLAT_TOLERANCE:.0%}); "
          f"MB/frame+: peak growth per frame over that row; mem: {rows[-1].get('peak_mem_method', '')}")


def cell(value, width: int, fmt: str) -> str:
    """A table cell: `value` formatted, or '-' when it was not measured."""
    return f"{'-':>{width}}" if value is None else f"{value:{width}{fmt}}"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    backends = args.backends.split(",") if args.backends else default_backends(device, args.engine)
    args.engine_labels = engine_labels(backends, args.engine)
    backends = expand_backends(backends, args.engine_labels)
    if args.cold_child:
        solver, _ = build_solver(args, backends[0], args.frames[0])
        solver.solve(solver.measure(torch.rand(solver.op.in_shape)), seed=0)
        synchronize(device)
        return 0
    info = machine(device)
    if args.procs:
        from bench.procs import measure

        rows = measure(args, args.procs, info)
        return 1 if any(r["kind"] == "procs_error" for r in rows) else 0
    flops = network_flops(args)                                        # one frame (tile): FLOPs scale with the batch
    peak = matmul_peak_tflops(device, PEAK_DTYPE[args.precision])
    shared: dict = {}
    rows, first = [], {}
    with_reference = [] if args.no_reference or args.prior else [REFERENCE]
    order = backends + with_reference if args.reference_last else with_reference + backends
    for frames in args.frames:
        reference = None
        for backend in order:
            row = measure_backend(args, backend, frames, shared, flops, peak, reference=reference)
            if backend == REFERENCE and row.get("kind") != "error":
                reference = row
                if args.reference_last:
                    speedups_after(row, [r for r in rows if r["frames"] == frames])
            if row.get("kind") != "error":
                compare_with_first(row, first.setdefault(backend, row))
                check_targets(row, args)
            rows.append(dict(row, **info))
            if args.save:               # at once: a later row's crash or time-out keeps this one
                log.info("appended to %s", append_jsonl("fps", rows[-1:]))
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        size = "x".join(map(str, args.size)) if args.size else "native size"
        print(f"{info['device_name']}  {args.prior or args.preset}  {size}  frames {','.join(map(str, args.frames))}  "
              f"B = {args.batch}  {args.task}  {args.nfe} NFE  {args.cg_iters} CG  "
              f"matmul peak {peak:.3g} TFLOP/s ({args.precision})")
        print_table(rows)
    failed = [(r["backend"], r["frames"]) for r in rows if r.get("kind") == "error"]
    if args.cold_start:                    # after the rows are safe: a process of its own per backend
        cold_starts(args, rows, failed, info)
    return 1 if failed else 0


def speedups_after(reference: dict, earlier: list[dict]) -> None:
    """The reference measured last: each earlier row of its frame count gets its speed-up over it, and the
    reference row lists them (the earlier rows were saved before it existed)."""
    reference["speedups"] = {}
    for r in earlier:
        if r.get("kind") != "error" and r["backend"] != REFERENCE:
            r["speedup_vs_reference"] = reference["seconds_per_clip"] / r["seconds_per_clip"]
            reference["speedups"][r["backend"]] = r["speedup_vs_reference"]


def cold_starts(args, rows: list[dict], failed: list, info: dict) -> None:
    """The cold start of each measured backend at the first frame count, printed and saved as a row."""
    for r in rows:
        if r["frames"] != args.frames[0] or (r["backend"], r["frames"]) in failed or r["backend"] == REFERENCE:
            continue
        seconds = cold_start(args, r["backend"], r["frames"])
        row = dict(kind="cold_start", backend=r["backend"], cold_start_s=seconds, **{
            k: r[k] for k in ("device", "preset", "task", "frames", "size", "batch", "nfe", "cg_iters",
                              "precision")}, **info)
        if args.json:
            print(json.dumps(row))
        elif seconds is not None:
            print(f"cold start (process start → first restored clip), {r['backend']}: {seconds:.2f} s")
        if args.save:
            append_jsonl("fps", [row])


def measure_backend(args, backend: str, frames: int, clip_y: dict, flops: float, peak: float,
                    reference: dict | None) -> dict:
    """bench_backend's row with its speed-up over `reference` (the reference row at the same frame count),
    or an error row: one row's failure (out of memory, a missing engine, a kernel error) leaves the others to run."""
    try:
        row = bench_backend(args, backend, frames, clip_y, flops, peak)
    except Exception as err:                                           # recorded, not raised
        log.warning("backend %s at %d frames not measured: %s: %s", backend, frames, type(err).__name__, err)
        return {"kind": "error", "backend": backend, "device": args.device, "task": args.task,
                "frames": frames, "batch": args.batch, "nfe": args.nfe, "error": f"{type(err).__name__}: {err}"}
    ref_s = row["seconds_per_clip"] if backend == REFERENCE else (reference or {}).get("seconds_per_clip")
    row["speedup_vs_reference"] = ref_s / row["seconds_per_clip"] if ref_s else None
    log.info("%s, %d frames: %.3f s per clip, %.4f s per frame, %.2f FPS, peak memory %.3f GB, speed-up %s",
             backend, frames, row["seconds_per_clip"], row["seconds_per_frame"], row["fps"],
             row["peak_mem_bytes"] / 1e9,
             f"{row['speedup_vs_reference']:.2f}×" if row["speedup_vs_reference"] else "n/a")
    return row


if __name__ == "__main__":
    sys.exit(main())
