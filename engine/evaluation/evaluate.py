"""`python -m engine.evaluate`: the paper's evaluation protocol (its Tables 1 and 2) on a data set.

    python -m engine.evaluate --data DAVIS --task temporal-k7 --checkpoint 256x256_diffusion_uncond.pt --out eval/k7
    python -m engine.evaluate --data clips/ --task temporal-k7 --prior gaussian --sigma-y 0,0.01,0.05 --limit 8 --out eval/noisy

Every clip of --data (prepared as engine.evaluation.data describes, cached under --cache) is
degraded by the task's operator, plus N(0, σ_y²) noise for each --sigma-y value, and
restored by every method of --methods:

    svi                    the paper's Algorithm 1 (batch-consistent DDIM + l CG steps per step;
                           the regularised CG of DDS, γ = --gamma, when σ_y > 0)
    svi-independent-noise  the same with one noise per frame (the paper's ablation)
    cg                     stand-alone CG on AᵀA x = Aᵀy at the sampler's budget, K·l iterations
    cg-converged           the same until the relative residual stops improving (≤ --converged-iters)
    admm-tv                ADMM with anisotropic spatio-temporal TV (the paper's eq. 22)

Written into --out:

    run.json           the settings; rerunning with the same settings resumes (clips already in
                       results.jsonl are skipped), different settings are an error
    results.jsonl      one line per clip, appended when the clip is done: per method and σ_y the
                       time, PSNR / SSIM (/ LPIPS) per frame and, for svi, the inter-frame
                       difference of the Tweedie estimates at every step (the paper's Fig. 7)
    features/          I3D features per clip, for FVD (with --fvd-weights)
    summary.md/.csv/.json   Time (median s per clip), PSNR, SSIM, LPIPS, FVD × 1e-3 per σ_y and method
    pictures/          a comparison grid with an enlarged crop and PSNR per frame for the first
                       --pictures clips; PSNR per frame and Fig. 7 averaged over all clips

A killed run loses at most the clip it was working on.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from engine.backends import BACKENDS, GRAPH_BACKENDS
from engine.baselines import admm_tv, cg_baseline, cg_converged
from engine.errors import CheckpointError, InputError
from engine.evaluation.data import Dataset, Prep
from engine.evaluation.metrics_extra import LPIPS, I3DFeatures
from engine.evaluation.report import Results, open_run, plural, psnr_value, summarize, write_summary
from engine.figures import comparison_grid, line_plot, save_png
from engine.metrics import clip_summary
from engine.priors import PRIORS
from engine.runtime import Solver, SolverConfig, load_model
from engine.schedule import ddim_steps
from engine.tasks import TASKS, get_task

log = logging.getLogger(__name__)
Tensor = torch.Tensor

METHODS = ("svi", "svi-independent-noise", "cg", "cg-converged", "admm-tv")
SVI_NOISE = {"svi": "shared", "svi-independent-noise": "independent"}


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="DAVIS root, a folder of sequences, .npy clips or videos")
    p.add_argument("--task", required=True, choices=sorted(TASKS), help="one of the paper's tasks")
    prior = p.add_mutually_exclusive_group()
    prior.add_argument("--checkpoint", type=Path, help="ADM checkpoint, e.g. 256x256_diffusion_uncond.pt")
    prior.add_argument("--prior", choices=PRIORS, default="ffdnet",
                       help="without --checkpoint: ffdnet (default, a small learned denoiser) or gaussian (weight-free)")
    p.add_argument("--methods", type=_methods, default=METHODS, help=f"comma-separated (default: all): {','.join(METHODS)}")
    p.add_argument("--sigma-y", type=_sigmas, default=(0.0,), help="measurement noise levels, comma-separated (default 0)")
    p.add_argument("--gamma", type=float, default=1.0, help="γ of the regularised CG when σ_y > 0 (default 1)")
    p.add_argument("--limit", type=int, help="evaluate the first N clips only")
    p.add_argument("--out", type=Path, required=True, help="results folder (resumed if it holds a run with the same settings)")
    p.add_argument("--cache", type=Path, help="prepared clips (default OUT/prepared)")
    p.add_argument("--frames", type=int, default=Prep.frames, help="frames per clip (default 16)")
    p.add_argument("--crop", type=int, help="centre crop before the resize (default: the largest square, 480 on DAVIS 480p)")
    p.add_argument("--size", type=int, default=Prep.size, help="frame size for the weight-free prior (a checkpoint sets its own)")
    p.add_argument("--nfe", type=int, help="network evaluations K (default: the task's)")
    p.add_argument("--eta", type=float, help="DDIM stochasticity η (default: the task's)")
    p.add_argument("--cg-iters", type=int, help="CG iterations per step l (default: the task's)")
    p.add_argument("--converged-iters", type=int, default=1000, help="most iterations of cg-converged (default 1000)")
    p.add_argument("--admm-iters", type=_pair, default=(30, 20), metavar="OUTER,INNER",
                   help="admm-tv's ADMM iterations and CG iterations per x-update (default 30,20)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed; measurement noise is seeded per clip from it")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="network precision")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="graph backends cannot record Fig. 7")
    p.add_argument("--engine", type=Path, help="TensorRT engine from python -m engine.build (for --backend tensorrt)")
    p.add_argument("--lpips-weights", type=Path, help="LPIPS v0.1 linear heads (alex.pth of the lpips package)")
    p.add_argument("--lpips-backbone", type=Path, help="ImageNet AlexNet (torchvision's alexnet-owt-7be5be79.pth)")
    p.add_argument("--fvd-weights", type=Path, help="I3D detector (StyleGAN-V's i3d_torchscript.pt)")
    p.add_argument("--pictures", type=int, default=1, help="clips that get a comparison grid and PSNR plot (default 1)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results in --out instead of resuming")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if (args.lpips_weights is None) != (args.lpips_backbone is None):
        p.error("LPIPS needs both --lpips-weights and --lpips-backbone")
    if args.frames < 2 or (args.limit is not None and args.limit < 1):
        p.error("need --frames >= 2 and --limit >= 1")
    return args


def _methods(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown methods {unknown}; accepted: {','.join(METHODS)}")
    return names


def _pair(text: str) -> tuple[int, int]:
    try:
        outer, inner = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers OUTER,INNER, got {text!r}") from None
    if outer < 1 or inner < 1:
        raise argparse.ArgumentTypeError(f"iterations must be >= 1, got {text!r}")
    return outer, inner


def _sigmas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(dict.fromkeys(float(v) for v in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(not (math.isfinite(v) and v >= 0) for v in values):
        raise argparse.ArgumentTypeError(f"noise levels must be finite and >= 0, got {text!r}")
    return values


def run_settings(args, cfg: SolverConfig, prep: Prep) -> dict:
    """Everything that changes the numbers; a resumed run must match it exactly."""
    task = get_task(args.task)
    return {
        "task": task.name, "spec": cfg.spec, "methods": list(args.methods), "sigma_y": list(args.sigma_y),
        "nfe": cfg.nfe, "eta": cfg.eta, "cg_iters": cfg.cg_iters, "gamma": args.gamma,
        "converged_iters": args.converged_iters, "admm_iters": list(args.admm_iters), "seed": args.seed,
        "prior": str(args.checkpoint.resolve()) if args.checkpoint else args.prior,
        "data": str(args.data.resolve()), "prep": {"size": prep.size, "crop": prep.crop, "frames": prep.frames},
        "device": str(torch.device(args.device)), "precision": cfg.precision, "backend": cfg.backend,
        "lpips": bool(args.lpips_weights), "fvd": bool(args.fvd_weights),
    }


# ----------------------------------------------------------------------------- methods


def interframe_difference(x: Tensor) -> Tensor:
    """mean |x[i+1] − x[i]| over consecutive frames and pixels: [N, 3, H, W] → 0-d tensor (no host sync)."""
    return (x[1:] - x[:-1]).abs().mean()


class Methods:
    """Runs every method on a measurement; one Solver per (noise mode, σ_y = 0 or not), built on first use."""

    def __init__(self, model, base: SolverConfig, sigmas: tuple[float, ...], *, gamma: float, converged_iters: int,
                 admm_iters: tuple[int, int]):
        self.model, self.base, self.gamma = model, base, gamma
        self.converged_iters, self.admm_iters = converged_iters, admm_iters
        self.device = torch.device(base.device)
        self._solvers: dict[tuple[str, bool], Solver] = {}
        self._measurer = self.solver("shared", sigmas[0])  # measures y; its operator serves the baselines
        self.op = self._measurer.op

    def solver(self, noise: str, sigma: float) -> Solver:
        key = (noise, sigma > 0)
        if key not in self._solvers:
            cfg = replace(self.base, noise=noise, gamma=self.gamma if sigma > 0 else None)
            self._solvers[key] = Solver(self.model, cfg)
        return self._solvers[key]

    def measure(self, clean: Tensor, sigma: float, seed: int) -> Tensor:
        """y = A x + σ_y·w, w drawn from `seed`."""
        return self._measurer.measure(clean, sigma_y=sigma, seed=seed)

    def run(self, method: str, y: Tensor, sigma: float, seed: int) -> tuple[Tensor, float, dict]:
        """(restored [N, 3, H, W], seconds, method-specific facts) for one method."""
        if method in SVI_NOISE:
            return self._svi(self.solver(SVI_NOISE[method], sigma), y, seed)
        budget = self.base.nfe * self.base.cg_iters
        runs: dict[str, Callable[[], tuple[Tensor, dict]]] = {
            "cg": lambda: (cg_baseline(self.op, y, iters=budget), {"iterations": budget}),
            "cg-converged": lambda: self._cg_converged(y),
            "admm-tv": lambda: (admm_tv(self.op, y, outer=self.admm_iters[0], inner=self.admm_iters[1]), {}),
        }
        (x, facts), seconds = _timed(runs[method], y.device)
        return x, seconds, facts

    def _svi(self, solver: Solver, y: Tensor, seed: int) -> tuple[Tensor, float, dict]:
        """Algorithm 1, recording the Tweedie estimates' inter-frame difference per step where the backend allows."""
        curve: list[Tensor] = []

        def record(k: int, t: int, x0: Tensor) -> None:
            curve.append(interframe_difference(x0))

        callback = record if solver.config.backend not in GRAPH_BACKENDS else None
        x, seconds = _timed(lambda: solver.solve(y, seed=seed, callback=callback), y.device)
        return x, seconds, {"interframe": torch.stack(curve).tolist() if curve else None}

    def _cg_converged(self, y: Tensor) -> tuple[Tensor, dict]:
        x, iterations, residual = cg_converged(self.op, y, self.converged_iters)
        return x, {"iterations": iterations, "residual": residual}


def _timed(fn: Callable, device: torch.device):
    """(fn(), wall seconds), synchronising a CUDA device on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


# ----------------------------------------------------------------------------- one clip


class Scorer:
    """PSNR and SSIM per frame, LPIPS per frame and I3D features when their weights are given."""

    def __init__(self, lpips: LPIPS | None = None, i3d: I3DFeatures | None = None):
        self.lpips, self.i3d = lpips, i3d

    def score(self, x: Tensor, clean: Tensor) -> dict:
        out = clip_summary(x, clean)
        if self.lpips is not None:
            d = self.lpips(x, clean)
            out.update(lpips=d.tolist(), lpips_mean=d.mean().item())
        return out


def measurement_seed(seed: int, clip: str) -> int:
    """A per-clip seed for the measurement noise, stable across runs and clip orders."""
    return (seed * 1_000_003 + zlib.crc32(clip.encode())) % 2**31


def evaluate_clip(name: str, clean: Tensor, methods: Methods, scorer: Scorer, args) -> tuple[dict, dict, dict]:
    """Run every method at every σ_y on one clip → (record, {(σ, method): restored}, {key: I3D features})."""
    reference = clean.cpu()
    clean = clean.to(methods.device)
    record = {"clip": name, "clean_interframe": interframe_difference(clean).item(), "runs": []}
    outputs, features = {}, {}
    if scorer.i3d is not None:
        features["clean"] = scorer.i3d(clean)
    for sigma in args.sigma_y:
        y = methods.measure(clean, sigma, measurement_seed(args.seed, name))
        outputs[(sigma, "measured")] = y.cpu()
        for method in args.methods:
            x, seconds, facts = methods.run(method, y, sigma, args.seed)
            record["runs"].append({"method": method, "sigma_y": sigma, "seconds": seconds,
                                   **scorer.score(x.cpu(), reference), **facts})
            outputs[(sigma, method)] = x.cpu()
            if scorer.i3d is not None:
                features[f"{method}@{sigma:g}"] = scorer.i3d(x)
    return record, outputs, features


# ----------------------------------------------------------------------------- pictures


def clip_pictures(folder: Path, name: str, clean: Tensor, outputs: dict, record: dict, settings: dict) -> None:
    """For each σ_y: the comparison grid (clean, measured, every method, enlarged crop) and PSNR per frame."""
    folder.mkdir(parents=True, exist_ok=True)
    n = clean.shape[0]
    for sigma in settings["sigma_y"]:
        runs = [r for r in record["runs"] if r["sigma_y"] == sigma]
        rows = [("clean", clean), (f"measured (sigma_y = {sigma:g})", outputs[(sigma, "measured")].clamp(0, 1))]
        rows += [(f"{r['method']}  {psnr_value(r['psnr_mean']):.2f} dB", outputs[(sigma, r["method"])]) for r in runs]
        save_png(folder / f"{name}_sigma{sigma:g}_grid.png", comparison_grid(rows, sorted({0, n // 3, 2 * n // 3, n - 1})))
        series = [(r["method"], range(n), [psnr_value(v) for v in r["psnr"]]) for r in runs]
        save_png(folder / f"{name}_sigma{sigma:g}_psnr.png",
                 line_plot(series, title=f"PSNR per frame: {name}, sigma_y = {sigma:g}", xlabel="frame",
                           ylabel="PSNR [dB]"))


def summary_pictures(folder: Path, results: Results, settings: dict) -> None:
    """PSNR per frame averaged over clips and the paper's Fig. 7 (inter-frame difference of the Tweedie estimates)."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = len(results.records)
    for sigma in settings["sigma_y"]:
        per_method = {m: [r for rec in results.records for r in rec["runs"] if r["method"] == m and r["sigma_y"] == sigma]
                      for m in settings["methods"]}
        series = [(m, range(len(runs[0]["psnr"])), np.mean([[psnr_value(v) for v in r["psnr"]] for r in runs], axis=0))
                  for m, runs in per_method.items() if runs]
        save_png(folder / f"psnr_per_frame_sigma{sigma:g}.png",
                 line_plot(series, title=f"PSNR per frame, mean over {plural(clips, 'clip')}, sigma_y = {sigma:g}",
                           xlabel="frame", ylabel="PSNR [dB]"))
        curves = [(m, np.mean([r["interframe"] for r in runs], axis=0)) for m, runs in per_method.items()
                  if m in SVI_NOISE and runs and all(r.get("interframe") for r in runs)]
        if curves:
            clean = statistics.fmean(rec["clean_interframe"] for rec in results.records)
            save_png(folder / f"interframe_sigma{sigma:g}.png", line_plot(
                [(m, range(1, len(c) + 1), c) for m, c in curves], references=[("clean clip", clean)],
                title=f"Inter-frame difference of the Tweedie estimates (Fig. 7), {plural(clips, 'clip')}, sigma_y = {sigma:g}",
                xlabel=f"reverse step k (t = {ddim_steps(settings['nfe'], settings['eta'])[0].t} ... 0)",
                ylabel="mean |x0[i+1] - x0[i]|"))


# ----------------------------------------------------------------------------- the run


def build(args):
    """(Methods, Scorer, Dataset, settings) from the command line; every file is checked before any work."""
    scorer = Scorer(
        LPIPS.from_files(args.lpips_weights, args.lpips_backbone, args.device) if args.lpips_weights else None,
        I3DFeatures(args.fvd_weights, args.device) if args.fvd_weights else None,
    )
    model, size = load_model(args.checkpoint, backend=args.backend, engine=args.engine,
                             size=args.size, device=args.device, prior=args.prior)
    prep = Prep(size=size, crop=args.crop, frames=args.frames)
    dataset = Dataset(args.data, args.cache or args.out / "prepared", prep)
    overrides = {k: v for k, v in (("nfe", args.nfe), ("eta", args.eta), ("cg_iters", args.cg_iters)) if v is not None}
    base = SolverConfig.from_task(args.task, frames=prep.frames, size=size, backend=args.backend,
                                  precision=args.dtype, device=args.device, **overrides)
    methods = Methods(model, base, args.sigma_y, gamma=args.gamma, converged_iters=args.converged_iters,
                      admm_iters=args.admm_iters)
    return methods, scorer, dataset, run_settings(args, base, prep)


def run(args) -> Path:
    """Evaluate every clip not yet in results.jsonl, then write the summary and pictures; returns --out."""
    methods, scorer, dataset, settings = build(args)
    results = open_run(args.out, settings, args.overwrite)
    done = results.done()
    total = dataset.count()
    if args.limit is not None:
        total = args.limit if total is None else min(total, args.limit)
    initial = len(done) if total is None else min(len(done), total)
    pictures = args.out / "pictures"
    with tqdm(total=total, initial=initial, desc="evaluating", unit="clip", disable=None) as bar:
        for clip in dataset.clips(limit=args.limit, skip=done):
            record, outputs, features = evaluate_clip(clip.name, clip.video, methods, scorer, args)
            if len(results.records) < args.pictures:
                clip_pictures(pictures, clip.name, clip.video, outputs, record, settings)
            results.add(record, features)
            bar.update()
            bar.set_postfix_str(f"{clip.name}: {record['runs'][0]['method']} {psnr_value(record['runs'][0]['psnr_mean']):.2f} dB")
    if not results.records:
        raise InputError(f"{args.data}: no clip of {dataset.prep.frames} frames")
    write_summary(args.out, summarize(results, settings), settings, dataset.skipped)
    summary_pictures(pictures, results, settings)
    log.info("%s evaluated; summary in %s", plural(len(results.records), "clip"), args.out / "summary.md")
    if dataset.skipped:
        log.warning("%s could not be read and were skipped: %s (listed in summary.md)",
                    plural(len(dataset.skipped), "sequence"), ", ".join(sorted(dataset.skipped)))
    return args.out


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        out = run(args)
    except (InputError, CheckpointError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out / "summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
