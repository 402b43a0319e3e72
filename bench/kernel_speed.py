"""Bandwidth of the Triton kernels next to a device-to-device copy and torch eager, at the paper's size.

    python bench/kernel_speed.py                          # 16×3×256×256 float32, every kernel, the paper's tasks
    python bench/kernel_speed.py --dtype fp16 --frames 32 --no-unet
    TRITON_INTERPRET=1 python bench/kernel_speed.py --device cpu --frames 13 --size 8 --preset tiny
                                                          # the code paths on the CPU (numbers mean nothing)

Per kernel: the median time (triton.testing.do_bench, L2 flushed before each call), the
bytes it must move (each input read once, each output written once), the achieved GB/s
and its fraction of the copy bandwidth measured in the same run, and the median time of
the torch-eager equivalent (the engine's torch kernels). Per paper task: CG_5 with eager
launches, one CG iteration (CG_5 − CG_4, each replayed as a CUDA graph so that launch
overhead does not blur the difference), and one whole non-UNet step (Tweedie + 5 CG +
update) in Triton (eager launches, and replayed as a CUDA graph) against torch (eager, and
as a CUDA graph), with the step's share of one batch-N UNet forward as the engine runs it
(ADM-256, random weights, fp16 convolutions, channels_last, fused GroupNorms) unless --no-unet.
The CG runs as the Solver runs it: preconditioned by engine.cg.preconditioner with the task's
γ and the Solver's default δ (SolverConfig.cg_precond), P applied at every iteration.
With the UNet come its two largest GroupNorms (fused Triton against upstream's half path, the
bytes counted for one read and one write; the kernel reads twice) and the forward with either.
Each row is
appended to the results file as soon as it is measured; a failing row is logged and
recorded as an error, and the others go on. At 16 frames one fp32 clip is 12.6 MB, so a
kernel takes microseconds and a launch's fixed cost shows: `--frames 64` tells bandwidth
from overhead.
Targets (H100, fp32): every elementwise or stencil kernel ≥ 75% of the copy bandwidth;
the whole step of the hardest task (temporal-k7-sr4) ≥ 5× faster than torch eager and
≤ 2% of the UNet forward. Rows are appended to bench/results/kernels.jsonl with the
card, versions and commit.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import nullcontext
from typing import Callable

import torch

from bench.common import add_save_flag, append_jsonl, in_new_thread, machine, median, time_fn
from engine.backends.torch import cudnn_benchmark_mode
from engine.cg import preconditioner
from engine.errors import InputError
from engine.operators import from_spec
from engine.operators import blur as torch_blur
from engine.operators import inpaint as torch_inpaint
from engine.operators import sr as torch_sr
from engine.operators import temporal as torch_temporal
from engine.runtime import SolverConfig
from engine.sampler import StepKernels, step_kernels
from engine.schedule import ddim_steps
from engine.streams import on_stream
from engine.tasks import TASKS
from engine.unet import ADMConfig

log = logging.getLogger("bench.kernel_speed")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=16, help="N (default 16)")
    p.add_argument("--size", type=int, default=256, help="H = W (default 256)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="storage dtype of the clip")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma list of paper tasks for the CG and step rows")
    p.add_argument("--no-unet", action="store_true", help="skip timing the batch-N UNet forward")
    p.add_argument("--preset", default="adm256_uncond", help="the UNet of the UNet rows (tiny: the CPU check)")
    p.add_argument("--norms", default="torch,triton",
                   help="GroupNorm paths of the GroupNorm and UNet rows: torch (upstream's ops), triton (fused); "
                        "the cudnn.benchmark row runs the last (the CPU check: torch, the interpreter takes minutes)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda (the measurement), or cpu: every row's code at a toy size, Triton interpreted "
                        "(TRITON_INTERPRET=1), timed by the clock; a check of the code paths, not a measurement")
    p.add_argument("--json", action="store_true", help="print the rows as JSON lines instead of a table")
    add_save_flag(p, "kernels")
    return p.parse_args(argv)


def bench(fn: Callable[[], object], rep_ms: int = 50, dev: str = "cuda") -> float:
    """Median milliseconds of fn over about `rep_ms` of calls (triton.testing.do_bench: CUDA events,
    L2 flushed before each call, warm-up and compilation before the timed calls). On the CPU: the
    one call, by the clock (the CPU check of the code paths: Triton interpreted, the time means nothing)."""
    if torch.device(dev).type != "cuda":
        return 1e3 * median(time_fn(fn, torch.device(dev), repeats=1, warmup=0))
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=rep_ms, return_mode="median"))


def graphed(fn: Callable[[], object], dev: str = "cuda") -> Callable[[], None]:
    """fn captured as a CUDA graph (warmed up on a side stream first); returns its replay (fn itself on the CPU)."""
    if torch.device(dev).type != "cuda":
        return fn
    with on_stream(torch.cuda.Stream(), torch.device("cuda")):
        fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def kernel_rows(shape, dtype, dev: str = "cuda") -> list[tuple]:
    """Every kernel on one clip: (name, Triton call, torch call or None, bytes moved)."""
    from kernels import blur, cg, compose, mask, pool, steps, temporal

    n, c, h, w = shape
    gen = torch.Generator(device=dev).manual_seed(0)
    clip = lambda: torch.rand(shape, generator=gen, device=dev).to(dtype)  # noqa: E731
    x, r, q, p, s = clip(), clip(), clip(), clip(), clip()
    out = torch.empty_like(x)
    e = x.element_size()
    S = x.numel() * e                                                   # bytes of one clip
    k7 = torch_temporal.uniform_kernel(7).to(dev, dtype)
    a7 = torch_temporal.autocorrelation(torch_temporal.uniform_kernel(7)).to(dev, dtype)
    kb = torch_temporal.gaussian_kernel(2.0, 13).to(dev, dtype)
    keep = torch_inpaint.random_mask(h, w, 0.5, 0).to(dev, dtype)
    y4 = torch.empty((n, c, h // 4, w // 4), device=dev, dtype=dtype)
    tab_h = blur.band_table(kb, h, blur.NORMAL, "reflect")
    tab_w = blur.band_table(kb, w, blur.NORMAL, "reflect")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    part_dot = torch.empty((2, cg.GMAX), device=dev, dtype=acc)
    part = torch.zeros((2, cg.GMAX), device=dev, dtype=acc)            # γ = 0: the timed updates keep x, r, p, s
    state = torch.ones((2, 2), device=dev, dtype=acc)
    bb = torch.zeros(cg.GMAX, device=dev, dtype=acc)                   # ⟨b, b⟩ = 0: no rounding floor
    bb_res = torch.empty(cg.GMAX, device=dev, dtype=acc)
    noise = clip()[:1].contiguous()
    step = ddim_steps(20, 0.15)[3]
    x64 = lambda v: v.float() if dtype in (torch.float16, torch.bfloat16) else v.double()  # noqa: E731  (engine.cg)

    xt, rt = x.clone(), r.clone()                                      # the torch row's own: it updates them
    rs = torch.sum(x64(rt) * x64(rt))

    def torch_cg_vectors():                                             # engine.cg's iteration but M p (= q)
        alpha = (rs / torch.sum(x64(p) * x64(q))).to(dtype)
        xt.add_(alpha * p)
        rt.sub_(alpha * q)
        beta = (torch.sum(x64(rt) * x64(rt)) / rs).to(dtype)
        return rt + beta * p

    def torch_residual():                                               # engine.cg's setup, b = Aᵀy (= x here)
        torch.sum(x64(x) * x64(x))                                      # ⟨b, b⟩ for the rounding floor
        return x - q

    def triton_cg_vectors():                                            # the dot pass, then the update pass
        cg.cg_dot(r, q, part_dot)
        cg.cg_update(x, x, r, p, s, q, part, cg.GMAX, state[1], state[0], bb, None, False)

    return [
        ("temporal A (k=7, circular)", lambda: temporal.frame_mix(x, k7, temporal.FORWARD, "circular", out=out),
         lambda: torch_temporal.temporal_conv(x, k7, "circular"), 2 * S),
        ("temporal Aᵀ (k=7, circular)", lambda: temporal.frame_mix(x, k7, temporal.ADJOINT, "circular", out=out),
         lambda: torch_temporal.temporal_conv_adjoint(x, k7, "circular"), 2 * S),
        ("temporal AᵀA (k=7, circular)",
         lambda: temporal.frame_mix(x, k7, temporal.NORMAL, "circular", autocorr=a7, out=out),
         lambda: torch_temporal.temporal_conv_normal(x, k7, a7, "circular"), 2 * S),
        ("temporal AᵀA (k=7, zero)", lambda: temporal.frame_mix(x, k7, temporal.NORMAL, "zero", out=out),
         lambda: torch_temporal.temporal_conv_normal(x, k7, a7, "zero"), 2 * S),
        ("pool A (s=4)", lambda: pool.pool(x, 4, pool.FORWARD, out=y4), lambda: torch_sr.avg_pool(x, 4), S + S // 16),
        ("pool Aᵀ (s=4)", lambda: pool.pool(y4, 4, pool.ADJOINT, out=out), lambda: torch_sr.avg_pool_adjoint(y4, 4),
         S + S // 16),
        ("pool AᵀA (s=4)", lambda: pool.pool(x, 4, pool.NORMAL, out=out), lambda: torch_sr.avg_pool_normal(x, 4),
         2 * S),
        ("mask", lambda: mask.masked(x, keep, out=out), lambda: torch_inpaint.apply_mask(x, keep), 2 * S + h * w * e),
        ("blur BᵀB pass along H (25 taps)", lambda: blur.band_pass(x, tab_h, 0, "reflect", out=out), None, 2 * S),
        ("blur BᵀB pass along W (25 taps)", lambda: blur.band_pass(x, tab_w, 1, "reflect", out=out), None, 2 * S),
        ("blur A (σ=2, 13 taps, reflect)", lambda: blur.spatial_blur(x, kb, "reflect"),
         lambda: torch_blur.spatial_blur(x, kb, "reflect"), 4 * S),
        ("blur AᵀA (σ=2, 13 taps, reflect)", lambda: blur.spatial_blur_normal(x, kb, "reflect"),
         lambda: torch_blur.spatial_blur_normal(x, kb, "reflect"), 4 * S),
        ("temporal+pool AᵀA fused (k=7, s=4)", lambda: compose.temporal_pool_normal(x, k7, a7, "circular", 4),
         lambda: torch_temporal.temporal_conv_adjoint(
             torch_sr.avg_pool_normal(torch_temporal.temporal_conv(x, k7, "circular"), 4), k7, "circular"), 2 * S),
        ("temporal+mask AᵀA fused (k=7)", lambda: compose.temporal_mask_normal(x, k7, a7, "circular", keep),
         lambda: torch_temporal.temporal_conv_adjoint(
             keep * torch_temporal.temporal_conv(x, k7, "circular"), k7, "circular"), 2 * S),
        ("CG residual r₀ = c(Aᵀy − AᵀA x̂), ⟨b, b⟩", lambda: cg.cg_residual(x, q, 1.0, bb_res, out=out)[0],
         torch_residual, 3 * S),
        ("CG dot ⟨r,r⟩, ⟨r,q⟩", lambda: cg.cg_dot(r, q, part_dot),
         lambda: (torch.sum(x64(r) * x64(r)), torch.sum(x64(r) * x64(q))), 2 * S),
        ("CG update x, r, p, s", lambda: cg.cg_update(x, x, r, p, s, q, part, cg.GMAX, state[1], state[0], bb, None,
                                                             False), None, 9 * S),
        ("CG vector work of one iteration (dot + update)", triton_cg_vectors, torch_cg_vectors, 11 * S),
        ("Tweedie", lambda: steps.tweedie_step(x, q, step.sqrt_ab, step.sqrt_1m_ab, out=out),
         lambda: StepKernels().tweedie(x, q, step), 3 * S),
        ("DDIM update (shared noise)",
         lambda: steps.ddim_step(x, noise, q, step.sqrt_ab_next, step.c1, step.c2, out=out),
         lambda: StepKernels().ddim_update(x, noise, q, step), 3 * S + noise.numel() * e),
    ]


def task_rows(name: str, shape, dtype, dev: str = "cuda") -> list[tuple[str, float, float | None]]:
    """CG_5, one CG iteration and one whole non-UNet step of a paper task: (what, Triton ms, torch ms).

    The whole step starts from the network's output as the Solver's default gives it (learned-σ,
    fp16, [N, 6, H, W]): taking ε from it is part of the step (a cast pass in torch, none in Triton)."""
    spec = TASKS[name].spec
    fast = from_spec(spec, shape, device=dev, dtype=dtype, kernels="triton")
    slow = from_spec(spec, shape, device=dev, dtype=dtype, kernels="torch")
    gen = torch.Generator(device=dev).manual_seed(1)
    x = torch.rand(shape, generator=gen, device=dev).to(dtype) * 2 - 1
    net_out = torch.randn((shape[0], 6, *shape[2:]), generator=gen, device=dev).half()
    noise = torch.randn((1, *shape[1:]), generator=gen, device=dev).to(dtype)
    y = slow.A(torch.rand(shape, generator=gen, device=dev).to(dtype))
    s = ddim_steps(TASKS[name].nfe, TASKS[name].eta)[TASKS[name].nfe // 2]
    l = TASKS[name].cg_iters

    aty = slow.A_adjoint(y)   # the sampler computes Aᵀy once per clip
    cfg = SolverConfig.from_task(name, frames=shape[0], size=tuple(shape[2:]))     # the Solver's γ and δ
    gamma = cfg.gamma
    precond = [(op, preconditioner(op, gamma, cfg.cg_precond, device=dev, dtype=dtype)) for op in (fast, slow)]
    precond_of = lambda op: next(P for o, P in precond if o is op)                 # noqa: E731

    def whole_step(kern: StepKernels, op) -> Callable[[], torch.Tensor]:
        def run():
            eps = kern.take_eps(net_out, dtype)
            xbar = kern.data_consistency(op, y, kern.tweedie(x, eps, s), l, gamma, aty=aty, precond=precond_of(op))
            return kern.ddim_update(xbar, noise, eps, s)
        return run

    def cg(kern: StepKernels, op, iters: int) -> Callable[[], torch.Tensor]:
        return lambda: kern.data_consistency(op, y, x, iters, gamma, aty=aty, precond=precond_of(op))

    def timed(fn) -> float:
        return bench(fn, dev=dev)

    def replay(fn):
        return graphed(fn, dev=dev)

    fast_kern, slow_kern = step_kernels("triton"), StepKernels()
    cg_graph_fast = [timed(replay(cg(fast_kern, fast, i))) for i in (l, l - 1)]
    cg_graph_slow = [timed(replay(cg(slow_kern, slow, i))) for i in (l, l - 1)]
    step_fast, step_slow = whole_step(fast_kern, fast), whole_step(slow_kern, slow)
    step_slow_ms, step_fast_graph_ms = timed(step_slow), timed(replay(step_fast))
    return [
        (f"CG_{l}, eager launches", timed(cg(fast_kern, fast, l)), timed(cg(slow_kern, slow, l))),
        ("one CG iteration, graphs (CG_l − CG_l−1)", cg_graph_fast[0] - cg_graph_fast[1],
         cg_graph_slow[0] - cg_graph_slow[1]),
        ("whole step (Tweedie + CG + update), eager", timed(step_fast), step_slow_ms),
        ("whole step, Triton graph vs torch eager", step_fast_graph_ms, step_slow_ms),
        ("whole step, both as CUDA graphs", step_fast_graph_ms, timed(replay(step_slow))),
    ]


def norm_rows(frames: int, size: int, dev: str = "cuda", width: int = 256) -> list[tuple]:
    """The UNet's largest GroupNorms (ADM-256's: width 256), fp16 channels_last, fused Triton against the
    upstream path (GroupNorm32 with kernels="torch"): (name, Triton call, torch call, bytes a single pass moves)."""
    from engine.unet import GroupNorm32

    rows = []
    for channels, scale_shift in ((width, True), (2 * width, False)):  # out_layers at full size; decoder [h, skip]
        norm = GroupNorm32(channels).to(dev)
        x = torch.randn((frames, channels, size, size), device=dev, dtype=torch.float16)
        x = x.contiguous(memory_format=torch.channels_last)
        e = torch.randn((frames, 2 * channels, 1, 1), device=dev, dtype=torch.float16)
        scale, shift = e.chunk(2, dim=1) if scale_shift else (None, None)

        def run(kernels, norm=norm, x=x, scale=scale, shift=shift):
            norm.kernels = kernels
            return norm.norm(x, scale, shift, silu=True)

        what = "GroupNorm + scale-shift + SiLU" if scale_shift else "GroupNorm + SiLU"
        rows.append((f"{what} fp16 [{frames}, {channels}, {size}, {size}] channels_last",
                     lambda run=run: run("triton"), lambda run=run: run("torch"), 2 * x.numel() * x.element_size()))
    return rows


def unet_ms(frames: int, size: int, kernels: str, cudnn_benchmark: bool = False, *, preset: str = "adm256_uncond",
            dev: str = "cuda") -> float:
    """Median ms of one batch-`frames` forward of the `preset` UNet (random weights, [frames, 3, size, size])
    as the engine's torch backend runs it: fp16 convolutions (upstream's fp16 mode; fp32 on the CPU),
    channels_last, GroupNorms by `kernels`, cuDNN's algorithms from its heuristics or timed
    (`cudnn_benchmark`: engine.backends.torch.cudnn_benchmark_mode around the timed calls, whose warm-up
    pays the timing). main() runs each configuration in a new thread (bench.common.in_new_thread): cuDNN's
    plan cache is per thread and blind to the flag, so the timed one would otherwise reuse untimed plans."""
    from engine.backends import torch_eps
    from engine.unet import ADMConfig, ADMUNet

    cuda = torch.device(dev).type == "cuda"
    with torch.device(dev):
        eps = torch_eps(ADMUNet(ADMConfig.preset(preset)), precision="fp16" if cuda else "fp32",
                        channels_last=True, kernels=kernels)
    x = torch.randn((frames, 3, size, size), device=dev)
    t = torch.full((frames,), 500, device=dev, dtype=torch.long)
    with cudnn_benchmark_mode() if cudnn_benchmark else nullcontext():
        return bench(lambda: eps(x, t), rep_ms=600, dev=dev)


def summary(row: dict) -> str:
    """The measured numbers of a row in one line (the log keeps them if the run is cut short)."""
    if row["kind"] == "error":
        return row["error"]
    parts = [f"{row['ms']:.4g} ms"]
    if row.get("gbps") is not None:
        parts.append(f"{row['gbps']:.0f} GB/s ({100 * row['copy_fraction']:.0f}% of copy)")
    if row.get("torch_ms") is not None:
        parts.append(f"torch {row['torch_ms']:.4g} ms")
    if row.get("speedup") is not None:
        parts.append(f"{row['speedup']:.2f}×")
    if row.get("unet_fraction") is not None:
        parts.append(f"{100 * row['unet_fraction']:.2f}% of the UNet forward")
    return ", ".join(parts)


def speedup(torch_ms: float | None, ms: float) -> float | None:
    return torch_ms / ms if torch_ms is not None and torch_ms > 0 and ms > 0 else None


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = args.device
    if torch.device(dev).type == "cuda" and not torch.cuda.is_available():
        print("bench/kernel_speed.py: needs a CUDA GPU (none found; --device cpu checks the code paths)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dtype = DTYPES[args.dtype]
    shape = (args.frames, 3, args.size, args.size)
    tasks = [t for t in args.tasks.split(",") if t]
    if not set(n for n in args.norms.split(",") if n) <= {"torch", "triton"} or not args.norms.strip(","):
        print(f"bench/kernel_speed.py: --norms takes torch and/or triton, got {args.norms!r}", file=sys.stderr)
        return 2
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        print(f"bench/kernel_speed.py: unknown tasks {unknown}; known: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    info = machine(torch.device(dev))
    common = dict(bench="kernels", shape=list(shape), dtype=args.dtype, device=dev, **info)
    rows = []

    def record(**row) -> None:
        """Keep a row and append it to the results file at once (a later crash or time-out keeps it)."""
        rows.append(dict(common, **row))
        if args.save:
            append_jsonl("kernels", rows[-1:])
        log.info("%s: %s: %s", row.get("task", row["kind"]), row["name"], summary(row))

    def attempt(name: str, measure: Callable[[], None]) -> None:
        try:
            measure()
        except Exception as err:                                       # the other rows stand on their own
            log.warning("%s not measured: %s: %s", name, type(err).__name__, err)
            record(kind="error", name=name, error=f"{type(err).__name__}: {err}")

    src = torch.rand(shape, device=dev).to(dtype)
    dst = torch.empty_like(src)
    copy_ms = bench(lambda: dst.copy_(src), dev=dev)
    copy_gbps = 2 * src.numel() * src.element_size() / copy_ms / 1e6
    record(kind="copy", name="device-to-device copy", ms=copy_ms, bytes=2 * src.numel() * src.element_size(),
           gbps=copy_gbps, copy_fraction=1.0)

    def kernel_row(name, fast, slow, nbytes) -> None:
        ms = bench(fast, dev=dev)
        torch_ms = bench(slow, dev=dev) if slow is not None else None
        gbps = nbytes / ms / 1e6
        record(kind="kernel", name=name, ms=ms, bytes=nbytes, gbps=gbps, copy_fraction=gbps / copy_gbps,
               torch_ms=torch_ms, speedup=speedup(torch_ms, ms))

    for row in kernel_rows(shape, dtype, dev):
        attempt(row[0], lambda row=row: kernel_row(*row))

    unet: dict[tuple[str, bool], float] = {}                            # ms of one forward by (norms, cuDNN timed)

    def unet_row(kernels: str, tuned: bool, name: str) -> None:
        unet[kernels, tuned] = in_new_thread(lambda: unet_ms(args.frames, unet_size, kernels, tuned,
                                                             preset=args.preset, dev=dev))
        plain = unet.get(("torch", False))
        record(kind="unet", name=name, ms=unet[kernels, tuned], torch_ms=plain,
               speedup=speedup(plain, unet[kernels, tuned]) if (kernels, tuned) != ("torch", False) else None)

    unet_size = ADMConfig.preset(args.preset).image_size                # the UNet's own frame size
    norms = [n for n in args.norms.split(",") if n]
    if not args.no_unet:
        if "triton" in norms:
            for row in norm_rows(args.frames, args.size, dev, ADMConfig.preset(args.preset).num_channels):
                attempt(row[0], lambda row=row: kernel_row(*row))
        how = {"torch": "torch GroupNorm", "triton": "fused Triton GroupNorm"}
        configurations = [(kernels, False, how[kernels]) for kernels in norms]
        configurations.append((norms[-1], True, f"{how[norms[-1]]}, cudnn.benchmark"))
        for kernels, tuned, what in configurations:
            name = f"UNet forward {args.preset} fp16 convolutions, channels_last, {what}, batch {args.frames}"
            attempt(name, lambda kernels=kernels, tuned=tuned, name=name: unet_row(kernels, tuned, name))
    engine_unet = unet.get(("triton", False), unet.get(("torch", False)))   # the forward the engine runs on CUDA

    def task_row(task: str) -> None:
        try:
            measured = task_rows(task, shape, dtype, dev)
        except InputError as err:                                       # e.g. k = 13 on fewer than 13 frames
            log.warning("task %s skipped: %s", task, err)
            return
        for what, ms, torch_ms in measured:
            record(kind="task", task=task, spec=TASKS[task].spec, name=what, ms=ms, torch_ms=torch_ms,
                   speedup=speedup(torch_ms, ms),
                   unet_fraction=ms / engine_unet if engine_unet and what.startswith("whole") else None)

    for task in tasks:
        attempt(f"task {task}", lambda task=task: task_row(task))

    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print_table(rows, info, copy_gbps)
    return 1 if any(r["kind"] == "error" for r in rows) else 0


def print_table(rows: list[dict], info: dict, copy_gbps: float) -> None:
    def num(v, fmt):
        return format(v, fmt) if v is not None else "—"

    print(f"{info.get('device_name')}  torch {info['torch']}  triton {info['triton']}  commit {info['commit']}  "
          f"shape {rows[0]['shape']} {rows[0]['dtype']}  copy {copy_gbps:.0f} GB/s")
    print(f"{'kernel':48} {'ms':>8} {'GB/s':>7} {'%copy':>6} {'torch ms':>9} {'×':>6}")
    for r in rows:
        if r["kind"] in ("copy", "kernel"):
            print(f"{r['name']:48} {r['ms']:8.4f} {r['gbps']:7.0f} {100 * r['copy_fraction']:5.0f}% "
                  f"{num(r.get('torch_ms'), '9.4f'):>9} {num(r.get('speedup'), '6.1f'):>6}")
        elif r["kind"] == "unet":
            print(f"{r['name']:48} {r['ms']:8.3f} {'':7} {'':6} {num(r.get('torch_ms'), '9.3f'):>9} "
                  f"{num(r.get('speedup'), '6.2f'):>6}")
    print(f"\n{'task':24} {'':44} {'ms':>8} {'torch ms':>9} {'×':>6} {'% UNet':>7}")
    for r in rows:
        if r["kind"] == "task":
            frac = num(100 * r["unet_fraction"] if r.get("unet_fraction") else None, "6.2f")
            print(f"{r['task']:24} {r['name']:44} {r['ms']:8.4f} {num(r.get('torch_ms'), '9.4f'):>9} "
                  f"{num(r.get('speedup'), '6.1f'):>6} {frac:>7}")
    for r in rows:
        if r["kind"] == "error":
            print(f"not measured: {r['name']}: {r['error']}")


if __name__ == "__main__":
    sys.exit(main())
