"""`python -m engine.solve`: restore one clip with the paper's Algorithm 1.

    python -m engine.solve --demo --out demo_out
    python -m engine.solve clip.mp4 --task temporal-k7 --checkpoint 256x256_diffusion_uncond.pt --out out/
    python -m engine.solve blurred.mp4 --degrade temporal:uniform:7 --measured --out out/
    python -m engine.solve blurred.mp4 --measured --blind --init first.mp4 --out out/

Without --measured, INPUT is the clean clip: it is degraded with the chosen operator,
restored, and scored. With --measured, INPUT is the measurement itself. With --blind the
temporal PSF is unknown (the paper's Algorithm 2, engine.blind): it is fitted to a first
reconstruction (--init, e.g. a deblurring network's output), the clip restored, the PSF
fitted again to the restoration and the clip restored again. Everything is written into
a temporary folder beside --out and moved into place at the end, so a failed run leaves
no half-written output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from engine.baselines import cg_baseline
from engine.backends import BACKENDS, GRAPH_BACKENDS
from engine.errors import CheckpointError, InputError
from engine.figures import contact_sheet, save_png
from engine.metrics import clip_summary, json_safe
from engine.runtime import Solver, SolverConfig, load_model
from engine.tasks import TASKS, get_task

log = logging.getLogger("engine.solve")
DEMO_TASK = "temporal-k7"
DEFAULT_FRAMES = 16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.solve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", help="clip: .mp4/.avi/.gif, a folder of frames, or a .npy [3, N, H, W] in [0, 1]")
    p.add_argument("--demo", action="store_true",
                   help="restore a 16-frame pan-and-zoom clip of a photo scikit-image ships (no INPUT needed)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--task", choices=sorted(TASKS), help="one of the paper's tasks (sets spec, nfe, eta, cg-iters)")
    what.add_argument("--degrade", metavar="SPEC", help="a degradation spec, e.g. temporal:uniform:7+sr:4")
    p.add_argument("--measured", action="store_true", help="INPUT is the measurement, not the clean clip")
    p.add_argument("--blind", action="store_true",
                   help="unknown temporal PSF (Algorithm 2): fit it to --init, restore, refit, restore again; "
                        "without --measured, --task/--degrade is the temporal blur applied to the clean INPUT")
    p.add_argument("--init", type=Path, metavar="CLIP",
                   help="first reconstruction for --blind (e.g. a deblurring network's output): INPUT's frames and size")
    prior = p.add_mutually_exclusive_group()
    prior.add_argument("--checkpoint", type=Path, help="ADM checkpoint (.pt or .safetensors), e.g. 256x256_diffusion_uncond.pt")
    prior.add_argument("--prior", choices=["gaussian"], help="weight-free Gaussian prior (the default without --checkpoint)")
    p.add_argument("--nfe", type=int, help="network evaluations K (task default: 20 temporal, 100 spatio-temporal)")
    p.add_argument("--eta", type=float, help="DDIM stochasticity η (task default)")
    p.add_argument("--cg-iters", type=int, help="CG iterations per step l (default 5)")
    p.add_argument("--sigma-y", type=float, default=0.0, help="measurement noise added to the degraded clip (default 0)")
    p.add_argument("--gamma", type=float, help="γ of the regularised CG (default: 1 when --sigma-y > 0, else noiseless CG)")
    p.add_argument("--noise", choices=["shared", "independent"], default="shared",
                   help="one noise image for all frames (the paper) or one per frame (its ablation)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="network precision")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch (eager), torch+graph (whole loop as one CUDA graph), compile, tensorrt (needs --engine)")
    p.add_argument("--engine", type=Path, help="TensorRT engine from python -m engine.build (for --backend tensorrt)")
    p.add_argument("--kernels", choices=["auto", "torch", "triton"], default="auto",
                   help="operators, step updates and UNet norms: Triton kernels or torch ops (auto: Triton on CUDA)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN time its convolution algorithms once per shape (a slower first step)")
    p.add_argument("--frames", type=int,
                   help=f"frames to restore from the start of INPUT (default: up to {DEFAULT_FRAMES}; an explicit "
                        "count must be there)")
    p.add_argument("--size", type=int, default=256, help="frame size for the weight-free prior (a checkpoint sets its own)")
    p.add_argument("--fps", type=int, default=8, help="frame rate of the written videos")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.demo == (args.input is not None):
        p.error("give either INPUT or --demo")
    if args.demo and args.measured:
        p.error("--demo makes its own clean clip; --measured does not apply")
    if args.blind:
        if args.init is None:
            p.error("--blind needs --init CLIP: a first reconstruction made without the PSF (the paper uses a "
                    "deblurring network); one made with an assumed PSF would only return that PSF")
        if args.demo:
            p.error("--blind needs a first reconstruction (--init) of a clip you have; --demo makes its own clip")
        if args.measured and (args.task or args.degrade):
            p.error("with --blind --measured the PSF is unknown: leave out --task and --degrade")
    elif args.init is not None:
        p.error("--init is for --blind")
    if not args.demo and not (args.task or args.degrade) and not (args.blind and args.measured):
        p.error("give --task or --degrade")
    return args


def solver_config(args, frames: int, size: int) -> SolverConfig:
    task = get_task(args.task or DEMO_TASK) if (args.task or not args.degrade) else None
    spec = task.spec if task else args.degrade
    gamma = args.gamma if args.gamma is not None else (1.0 if args.sigma_y > 0 else None)
    return SolverConfig(
        spec=spec, frames=frames, size=size,
        nfe=args.nfe or (task.nfe if task else 20),
        eta=args.eta if args.eta is not None else (task.eta if task else 0.15),
        cg_iters=args.cg_iters if args.cg_iters is not None else (task.cg_iters if task else 5),
        gamma=gamma, noise=args.noise, backend=args.backend, precision=args.dtype, kernels=args.kernels,
        device=args.device,
        channels_last=torch.device(args.device).type == "cuda", cudnn_benchmark=args.cudnn_benchmark,
        mask_seed=args.seed,
    )


def read_input(args, size: int):
    """(clean clip or None, measurement or None): what INPUT holds."""
    if args.demo:
        from engine.testclips import demo_clip

        return demo_clip(frames=args.frames or DEFAULT_FRAMES, size=size), None
    from engine.video_io import read_video, validate_video

    clip = read_video(args.input, size=None if args.measured else size, frames=args.frames, at_most=DEFAULT_FRAMES)
    if args.measured:
        return None, validate_video(clip)
    return validate_video(clip, size=size), None


def run(args) -> Path:
    """The whole job; returns the output folder."""
    out = args.out.resolve()
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it")
    model, size = load_model(args.checkpoint, backend=args.backend, engine=args.engine, size=args.size,
                             device=args.device)
    if args.blind:
        return run_blind(args, out, model, size)
    clean, y = read_input(args, size)
    frames = (clean if clean is not None else y).shape[0]
    cfg = solver_config(args, frames, size)
    solver = Solver(model, cfg)
    if clean is not None:
        y = solver.measure(clean, sigma_y=args.sigma_y, seed=args.seed + 1)
    t0 = time.perf_counter()
    with tqdm(total=cfg.nfe, desc="restoring", unit="step", disable=None) as bar:
        restored = solver.solve(y, seed=args.seed, callback=step_counter(bar, cfg))
    if restored.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    report = {"settings": cfg.to_dict(), "kernels_used": solver.op.backend,     # what --kernels auto resolved to
              "input": "demo" if args.demo else str(args.input),
              "prior": prior_name(args),
              "seconds": seconds, "fps": frames / seconds}
    if clean is not None:
        cg = cg_baseline(solver.op, y, iters=cfg.nfe * cfg.cg_iters)
        report["restored"] = clip_summary(restored.cpu(), clean)
        report["baselines"] = {f"cg ({cfg.nfe * cfg.cg_iters} iterations)": clip_summary(cg.cpu(), clean)}
        log.info("PSNR %.2f dB (CG baseline %.2f dB), SSIM %.4f, %.1f s",
                 report["restored"]["psnr_mean"], report["baselines"][next(iter(report["baselines"]))]["psnr_mean"],
                 report["restored"]["ssim_mean"], seconds)
    write_outputs(out, args, clean, y, restored.cpu(), report)
    log.info("wrote restored.mp4, measurement.mp4, frames/, metrics.json and comparison.png to %s", out)
    return out


def run_blind(args, out: Path, model, size: int) -> Path:
    """Algorithm 2 (engine.blind) on INPUT with the first reconstruction --init; returns the output folder."""
    from engine.blind import blind_deblur

    clean, y, init, true_psf = blind_inputs(args, size)
    cfg = solver_config(args, y.shape[0], size)              # the settings; the spec is what the fit finds
    options = {k: v for k, v in cfg.to_dict().items() if k not in ("spec", "frames")}
    t0 = time.perf_counter()
    with tqdm(total=2 * cfg.nfe, desc="restoring (2 stages)", unit="step", disable=None) as bar:
        result = blind_deblur(model, y.to(cfg.device), init.to(cfg.device), seed=args.seed,
                              callback=step_counter(bar, cfg), **options)
    restored, seconds = result.clip.cpu(), time.perf_counter() - t0
    report = {"settings": {**options, "frames": y.shape[0]}, "input": str(args.input),
              "first_reconstruction": str(args.init),
              "prior": prior_name(args),
              "seconds": seconds, "fps": y.shape[0] / seconds,
              "blind": {"psf": result.psf, "true_psf": true_psf, "stages": result.stages}}
    log.info("PSF %s%s, %.1f s", result.psf, f" (true {true_psf})" if true_psf else "", seconds)
    if clean is not None:
        report["restored"] = clip_summary(restored, clean)
        report["baselines"] = {"first reconstruction (--init)": clip_summary(init, clean)}
        log.info("PSNR %.2f dB (first reconstruction %.2f dB)", report["restored"]["psnr_mean"],
                 report["baselines"]["first reconstruction (--init)"]["psnr_mean"])
    write_outputs(out, args, clean, y, restored, report, init=init)
    log.info("wrote restored.mp4, measurement.mp4, frames/, metrics.json and comparison.png to %s", out)
    return out


def blind_inputs(args, size: int):
    """(clean clip or None, measurement y, first reconstruction, true PSF spec or None) for --blind.

    A clean INPUT is blurred with --task/--degrade (a temporal PSF, hidden from the fit);
    a measured one is taken as it is. --init must match y's frames and the model's size.
    """
    from engine.operators import from_spec
    from engine.runtime import measure
    from engine.video_io import read_video, validate_video

    clean, y = read_input(args, size)
    true_psf = None
    if clean is not None:
        true_psf = solver_config(args, clean.shape[0], size).spec
        if "+" in true_psf or not true_psf.startswith("temporal:"):
            raise InputError(f"--blind estimates a temporal PSF alone; {true_psf!r} is not one")
        y = measure(from_spec(true_psf, tuple(clean.shape)), clean, sigma_y=args.sigma_y, seed=args.seed + 1)
    if tuple(y.shape[-2:]) != (size, size):
        raise InputError(f"the measurement has {y.shape[-2]}x{y.shape[-1]} frames; the model restores {size}x{size}")
    init = validate_video(read_video(args.init, size=None, frames=y.shape[0]), size=size)
    return clean, y, init, true_psf


def step_counter(bar, cfg: SolverConfig):
    """A sampler callback that advances the progress bar, or None for a captured loop (it cannot call back)."""
    return None if cfg.backend in GRAPH_BACKENDS else (lambda *_: bar.update())


def prior_name(args) -> str:
    """The ε model named in metrics.json."""
    return str(args.checkpoint) if args.checkpoint else "gaussian (weight-free)"


def write_outputs(out: Path, args, clean, y, restored, report, *, init=None) -> None:
    """restored.mp4, measurement.mp4, frames/, metrics.json, comparison.png, moved into `out` at once."""
    from engine.video_io import write_frames, write_video

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        y_view = y.detach().cpu().clamp(0, 1)
        write_video(tmp / "restored.mp4", restored, fps=args.fps)
        write_video(tmp / "measurement.mp4", y_view, fps=args.fps)
        write_frames(tmp / "frames", restored)
        (tmp / "metrics.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
        rows = ([("clean", clean)] if clean is not None else []) + [("measured", y_view)]
        rows += ([("first estimate", init)] if init is not None else []) + [("restored", restored)]
        n = restored.shape[0]
        save_png(tmp / "comparison.png", contact_sheet(rows, sorted({0, n // 3, 2 * n // 3, n - 1})))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = run(args)
    except (InputError, CheckpointError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
