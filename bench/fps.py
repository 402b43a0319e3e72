"""End-to-end speed of the reverse loop, every available backend side by side in one run.

    python bench/fps.py                      # CPU: a tiny model, about a minute (or python -m bench.fps)
    python bench/fps.py --task temporal-k7   # GPU: ADM-256 (random weights), 16 frames, 20 NFE, 5 CG
    python bench/fps.py --json --nvtx        # one JSON object per backend; NVTX ranges for Nsight
    python bench/fps.py --save               # also append the rows to bench/results/fps.jsonl

The reference is the loop written the way the public code runs it (eager UNet in fp16
on a GPU, fp32 on the CPU; plain torch operators and CG). Speed does not depend on the
weights' values, so the model is built from its config with random weights. The stage
columns split each clip's time by shares measured inside the loop itself (`stage_shares`).
With --save each row is appended, as soon as it is measured, to bench/results/fps.jsonl (or
$BENCH_RESULTS) with the card, versions and commit; a plain run writes nothing into the tree.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from bench.common import (add_save_flag, append_jsonl, machine, matmul_peak_tflops, median, synchronize, time_fn,
                          unet_flops)
from engine.runtime import Solver, SolverConfig
from engine.sampler import draw_noise, reverse_process
from engine.profiling import nvtx_range
from engine.tasks import TASKS
from engine.unet import ADMConfig, ADMUNet

log = logging.getLogger("bench.fps")
REFERENCE = "reference"
COLD_START_LIMIT_S = 120
#: The matmul whose measured throughput is the UNet's peak, by network precision.
PEAK_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="adm256_uncond" if cuda else "tiny", help="ADM config (adm256_uncond, ffhq_dps, tiny)")
    p.add_argument("--frames", type=int, default=16 if cuda else 8)
    p.add_argument("--task", default="temporal-k7", choices=sorted(TASKS), help="degradation (sets the operator)")
    p.add_argument("--nfe", type=int, default=20 if cuda else 4, help="network evaluations K")
    p.add_argument("--cg-iters", type=int, default=5)
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16" if cuda else "fp32",
                   help="network precision of the fast backends")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="the fast backends let cuDNN time its convolution algorithms (the reference does not)")
    p.add_argument("--backends", default=None,
                   help="comma list from torch,torch+graph,compile,tensorrt (default: all that run here but compile)")
    p.add_argument("--engine", type=Path, help="TensorRT engine file for the tensorrt backend")
    p.add_argument("--repeats", type=int, default=5 if cuda else 2, help="timed clips per backend (median reported)")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object per backend instead of a table")
    p.add_argument("--nvtx", action="store_true", help="NVTX ranges per stage (for nsys)")
    p.add_argument("--profile", type=Path, help="write a torch profiler trace of one clip per backend here")
    p.add_argument("--cold-start", action="store_true", help="also time process start → first restored clip")
    add_save_flag(p, "fps")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the public-code reference (e.g. when only the cold start is wanted)")
    p.add_argument("--cold-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def default_backends(device: torch.device, engine: Path | None) -> list[str]:
    names = ["torch"]
    if device.type == "cuda":
        names.append("torch+graph")
        if engine is not None:
            names.append("tensorrt")
    return names


def build_solver(args, backend: str) -> tuple[Solver, float]:
    """A Solver for one backend with a freshly built random-weight model; returns (solver, build seconds)."""
    device = torch.device(args.device)
    reference = backend == REFERENCE
    torch.manual_seed(0)
    cfg_model = ADMConfig.preset(args.preset)
    if backend == "tensorrt":
        model = args.engine
    else:
        with device:                       # initialised where it runs: seconds, not minutes, for ADM-256
            model = ADMUNet(cfg_model)
    config = SolverConfig.from_task(
        args.task, frames=args.frames, size=cfg_model.image_size, nfe=args.nfe, cg_iters=args.cg_iters,
        device=args.device,
        backend="torch" if reference else backend,
        precision=("fp16" if device.type == "cuda" else "fp32") if reference else args.precision,
        kernels="torch" if reference else "auto",
        channels_last=not reference and device.type == "cuda",
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


class StageClock:
    """Time per stage inside the reverse loop (reverse_process's `stage` hook), summed over the steps:
    CUDA events on a GPU (no host sync inside the loop), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.marks = device, []                  # (stage, start, end)

    @contextmanager
    def __call__(self, name: str):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self.marks.append((name, start, end))

    def seconds(self) -> dict[str, float]:
        synchronize(self.device)
        total: dict[str, float] = {}
        for name, start, end in self.marks:
            total[name] = total.get(name, 0.0) + (start.elapsed_time(end) / 1e3 if self.device.type == "cuda"
                                                  else end - start)
        return total


def stage_shares(solver: Solver, y: torch.Tensor, repeats: int) -> dict[str, float]:
    """Each stage's share of a clip, timed inside the clip's own loop (the Solver's model, operator and
    step arithmetic, run eagerly: a captured graph cannot be split), the median over `repeats` clips.

    Shares, not seconds: the stage clock and the clip timer then measure the same clips, so the
    stages of a row never add up to more than its time per clip (they did when the stages were
    timed alone after the clips, on a machine whose load had changed meanwhile).
    """
    cfg = solver.config
    E = draw_noise(0, cfg.nfe, cfg.shape, cfg.noise).to(solver.device)
    shares: dict[str, list[float]] = {key: [] for key in STAGES}
    for _ in range(repeats):
        clock = StageClock(solver.device)
        synchronize(solver.device)
        start = time.perf_counter()
        with torch.no_grad():
            reverse_process(solver.eps_model, y, solver.op, E, solver.steps, cg_iters=cfg.cg_iters, gamma=cfg.gamma,
                            kernels=solver.kernels, stage=clock)
        synchronize(solver.device)
        clip, seconds = time.perf_counter() - start, clock.seconds()
        for key, names in STAGES.items():
            shares[key].append(sum(seconds.get(n, 0.0) for n in names) / clip)
    return {key: median(values) for key, values in shares.items()}


def bench_backend(args, backend: str, clip_y: dict, flops: float, peak: float) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    solver, build_s = build_solver(args, backend)
    if "y" not in clip_y:
        clip_y["y"] = solver.measure(torch.rand(solver.op.in_shape, generator=torch.Generator().manual_seed(0)))
    y = clip_y["y"]
    with nvtx_range(f"solve[{backend}]", args.nvtx):
        seconds = time_fn(lambda: solver.solve(y, seed=0), device, repeats=args.repeats)
    if args.profile:
        profile_one(args, solver, y, backend)
    per_clip = median(seconds)
    shares = stage_shares(solver, y, repeats=max(3, args.repeats))
    stages = {key: share * per_clip for key, share in shares.items()}
    cfg = solver.config
    row = {
        "backend": backend, "device": args.device, "preset": args.preset, "task": args.task,
        "frames": cfg.frames, "size": cfg.size, "nfe": cfg.nfe, "cg_iters": cfg.cg_iters,
        "precision": cfg.precision, "kernels": cfg.resolved_kernels.arithmetic, "norms": cfg.resolved_kernels.norms,
        "cudnn_benchmark": cfg.cudnn_benchmark,
        "seconds_per_clip": per_clip, "seconds_all": seconds, "fps": cfg.frames / per_clip,
        "ms_per_nfe": per_clip / cfg.nfe * 1e3, "build_s": build_s,
        "stages": stages, "stage_shares": shares,
        "unet_tflops": flops * cfg.nfe / stages["unet_s"] / 1e12,
        "matmul_peak_tflops": peak,
        "peak_mem_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }
    row["unet_fraction_of_peak"] = row["unet_tflops"] / peak
    return row


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


def cold_start(args, backend: str) -> float | None:
    """Seconds from process start to the first restored clip (kernels and engines already cached);
    None (logged) when that process fails or outlasts COLD_START_LIMIT_S."""
    cmd = [sys.executable, __file__, "--cold-child", "--backends", backend, "--preset", args.preset,
           "--frames", str(args.frames), "--task", args.task, "--nfe", str(args.nfe), "--cg-iters", str(args.cg_iters),
           "--precision", args.precision, "--device", args.device]
    if args.engine:
        cmd += ["--engine", str(args.engine)]
    if args.cudnn_benchmark:
        cmd.append("--cudnn-benchmark")
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=COLD_START_LIMIT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        log.warning("cold start of %s not measured: %s", backend, err)
        return None
    return time.perf_counter() - t0


def print_table(rows: list[dict]) -> None:
    head = f"{'backend':<12} {'s/clip':>8} {'FPS':>7} {'ms/NFE':>8} {'UNet s':>7} {'CG s':>7} {'upd s':>7} " \
           f"{'TFLOP/s':>8} {'%peak':>6} {'mem GB':>7} {'speed-up':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.get("kind") == "error":
            print(f"{r['backend']:<12} not measured: {r['error']}")
            continue
        st = r["stages"]
        mem = f"{r['peak_mem_bytes'] / 1e9:7.2f}" if r["peak_mem_bytes"] else f"{'-':>7}"
        speedup = f"{r['speedup_vs_reference']:8.2f}" if r["speedup_vs_reference"] else f"{'-':>8}"
        print(f"{r['backend']:<12} {r['seconds_per_clip']:8.3f} {r['fps']:7.2f} {r['ms_per_nfe']:8.2f} "
              f"{st['unet_s']:7.3f} {st['cg_and_operators_s']:7.3f} {st['updates_s']:7.3f} {r['unet_tflops']:8.2f} "
              f"{100 * r['unet_fraction_of_peak']:6.1f} {mem} {speedup}")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    backends = args.backends.split(",") if args.backends else default_backends(device, args.engine)
    if args.cold_child:
        solver, _ = build_solver(args, backends[0])
        solver.solve(solver.measure(torch.rand(solver.op.in_shape)), seed=0)
        synchronize(device)
        return 0
    info = machine(device)
    flops = float(unet_flops(ADMConfig.preset(args.preset), args.frames))
    peak = matmul_peak_tflops(device, PEAK_DTYPE[args.precision])
    shared: dict = {}
    rows = []
    for backend in ([] if args.no_reference else [REFERENCE]) + backends:
        reference = rows[0] if rows and rows[0]["backend"] == REFERENCE else None
        row = measure_backend(args, backend, shared, flops, peak, reference=reference)
        rows.append(dict(row, **info))
        if args.save:               # at once: a later backend's crash or time-out keeps this row
            log.info("appended to %s", append_jsonl("fps", rows[-1:]))
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(f"{info['device_name']}  {args.preset}  {args.frames} frames  {args.task}  {args.nfe} NFE  "
              f"{args.cg_iters} CG  matmul peak {peak:.3g} TFLOP/s ({args.precision})")
        print_table(rows)
    failed = [r["backend"] for r in rows if r.get("kind") == "error"]
    if args.cold_start:                    # after the rows are safe: a process of its own per backend
        for r in rows:
            if r["backend"] in failed or r["backend"] == REFERENCE:
                continue
            seconds = cold_start(args, r["backend"])
            row = dict(kind="cold_start", backend=r["backend"], cold_start_s=seconds, **{
                k: r[k] for k in ("device", "preset", "task", "frames", "size", "nfe", "cg_iters", "precision")},
                **info)
            if args.json:
                print(json.dumps(row))
            elif seconds is not None:
                print(f"cold start (process start → first restored clip), {r['backend']}: {seconds:.2f} s")
            if args.save:
                append_jsonl("fps", [row])
    return 1 if failed else 0


def measure_backend(args, backend: str, clip_y: dict, flops: float, peak: float, reference: dict | None) -> dict:
    """bench_backend's row with its speed-up over `reference` (the first row), or an error row: one
    backend's failure (out of memory, a missing engine, a kernel error) leaves the others to run."""
    try:
        row = bench_backend(args, backend, clip_y, flops, peak)
    except Exception as err:                                           # recorded, not raised
        log.warning("backend %s not measured: %s: %s", backend, type(err).__name__, err)
        return {"kind": "error", "backend": backend, "device": args.device, "task": args.task,
                "frames": args.frames, "nfe": args.nfe, "error": f"{type(err).__name__}: {err}"}
    ref_s = row["seconds_per_clip"] if backend == REFERENCE else (reference or {}).get("seconds_per_clip")
    row["speedup_vs_reference"] = ref_s / row["seconds_per_clip"] if ref_s else None
    row["unet_flops_per_forward"] = flops
    log.info("%s: %.3f s per clip, %.2f FPS, UNet %.1f%% of the matmul peak, peak memory %s, speed-up %s", backend,
             row["seconds_per_clip"], row["fps"], 100 * row["unet_fraction_of_peak"],
             f"{row['peak_mem_bytes'] / 1e9:.2f} GB" if row["peak_mem_bytes"] else "n/a",
             f"{row['speedup_vs_reference']:.2f}×" if row["speedup_vs_reference"] else "n/a")
    return row


if __name__ == "__main__":
    sys.exit(main())
