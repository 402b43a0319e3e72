"""`python -m engine.evaluate`: the paper's evaluation protocol (its Tables 1 and 2) on a data set.

    python -m engine.evaluate --data DAVIS --task temporal-k7 --checkpoint 256x256_diffusion_uncond.pt --out eval/k7
    python -m engine.evaluate --data clips/ --task temporal-k7 --prior gaussian --sigma-y 0,0.01,0.05 --limit 8 --out eval/noisy
    python -m engine.evaluate --data clips/ --task temporal-k7 --sigma-y 0.05 --sweep-nfe 4,8,20 --start 400 --out eval/sweep

Every clip of --data (prepared as engine.evaluation.data describes, cached under --cache) is
degraded by the task's operator, plus N(0, σ_y²) noise for each --sigma-y value, and
restored by every method of --methods:

    svi                    the paper's Algorithm 1 (batch-consistent DDIM + l CG steps per step;
                           the regularised CG of DDS when σ_y > 0: γ = --gamma, else DDS's 1 with a
                           checkpoint, 0.04/σ_y with a prior, engine.cg.default_gamma)
    svi-independent-noise  the same with one noise per frame (the paper's ablation)
    cg                     stand-alone CG on AᵀA x = Aᵀy at the sampler's budget, K·l iterations
    cg-converged           the same until the relative residual stops improving (≤ --converged-iters)
    admm-tv                ADMM with anisotropic spatio-temporal TV (the paper's eq. 22)

--start T0 starts the sampler's methods at t₀ = T0 from a CG estimate of the clip (the warm start of
engine.schedule.warm_start) instead of pure noise at T. --sweep-nfe K1,K2,… runs them at every K of
the list instead of the task's (or --nfe's) K, cold and, with --start, warm: each such run is its own
row, "svi K=8 cold" or "svi K=8 t0=400"; the baselines run once, at --nfe's budget.

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
    sweep.md/.csv/.json, pictures/psnr_vs_nfe_sigma*.png   with --sweep-nfe: PSNR, SSIM and time against
                       K, one line per start, the baselines as horizontal lines

The command line parses into an EvalJob (data, output, methods, noise levels, weight files) and
the task's SolverConfig, each setting checked once, before the model is loaded or a clip read;
`run(job, cfg)` does the rest. A killed run loses at most the clip it was working on.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from engine.backends import GRAPH_BACKENDS
from engine.baselines import admm_tv, cg_baseline, cg_converged
from engine.cg import gamma_at
from engine.cli import add_solver_flag, command, default_device
from engine.errors import InputError
from engine.evaluation.data import Dataset, Prep
from engine.evaluation.metrics_extra import LPIPS, I3DFeatures
from engine.evaluation.report import (Results, open_run, plural, psnr_value, summarize, sweep_rows, write_summary,
                                      write_sweep)
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


@dataclass(frozen=True)
class EvalJob:
    """The I/O half of an evaluation (the Solver's settings are the other half, a SolverConfig);
    every value is checked once, here."""

    data: Path                               # DAVIS root, a folder of sequences, .npy clips or videos
    out: Path                                # results folder, resumed when it holds a run with these settings
    task: str                                # one of the paper's tasks (engine.tasks.TASKS)
    cache: Optional[Path] = None             # prepared clips; None: OUT/prepared
    overwrite: bool = False                  # discard earlier results in --out instead of resuming
    limit: Optional[int] = None              # the first N clips only; None: all
    methods: tuple[str, ...] = METHODS
    sigma_ys: tuple[float, ...] = (0.0,)     # measurement noise levels σ_y
    gamma: Optional[float] = None            # γ of the regularised CG when σ_y > 0; None: the default (engine.cg)
    converged_iters: int = 1000              # most iterations of cg-converged
    admm_iters: tuple[int, int] = (30, 20)   # admm-tv's ADMM iterations, CG iterations per x-update (unless exact)
    seed: int = 0                            # sampler seed; the measurement noise is seeded per clip from it
    checkpoint: Optional[Path] = None        # ADM checkpoint; None: `prior`
    engine: Optional[Path] = None            # TensorRT engine file (--backend tensorrt)
    prior: str = "ffdnet"                    # the ε model without a checkpoint (engine.priors.PRIORS)
    frames: int = Prep.frames                # frames per clip
    size: int = Prep.size                    # frame size for a prior without a checkpoint (a checkpoint sets its own)
    crop: Optional[int] = None               # centre crop before the resize; None: the largest square
    lpips_weights: Optional[Path] = None     # LPIPS v0.1 linear heads
    lpips_backbone: Optional[Path] = None    # ImageNet AlexNet for LPIPS
    fvd_weights: Optional[Path] = None       # I3D detector for FVD
    pictures: int = 1                        # clips that get a comparison grid and a PSNR plot
    start: Optional[int] = None              # the sampler's warm-start t₀; None: the cold start at T
    sweep_nfe: tuple[int, ...] = ()          # the sampler at each of these K, cold and (with start) warm; (): the config's K

    def __post_init__(self):
        get_task(self.task)                             # InputError for a task engine.tasks does not know
        if self.prior not in PRIORS:
            raise InputError(f"unknown prior {self.prior!r}; accepted: {', '.join(PRIORS)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise InputError(f"unknown method {unknown[0]!r}; accepted: {','.join(METHODS)}")
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise InputError(f"--methods must name each method once, got {','.join(self.methods) or 'none'}")
        if not self.sigma_ys or len(set(self.sigma_ys)) != len(self.sigma_ys):
            raise InputError(f"--sigma-y must list each noise level once, got {list(self.sigma_ys)}")
        bad = [v for v in self.sigma_ys if not (math.isfinite(v) and v >= 0)]
        if bad:
            raise InputError(f"--sigma-y noise levels must be finite and >= 0, got {bad[0]}")
        if self.gamma is not None and not (math.isfinite(self.gamma) and self.gamma > 0):
            raise InputError(f"--gamma must be a finite number > 0, got {self.gamma}")
        _at_least("--limit", self.limit, 1)
        _at_least("--frames", self.frames, 2)           # the inter-frame difference needs two frames
        _at_least("--size", self.size, 1)
        _at_least("--crop", self.crop, 1)
        _at_least("--converged-iters", self.converged_iters, 1)
        if len(self.admm_iters) != 2 or min(self.admm_iters) < 1:
            raise InputError(f"--admm-iters needs two iteration counts >= 1 (OUTER,INNER), got {self.admm_iters}")
        _at_least("--seed", self.seed, 0)
        _at_least("--pictures", self.pictures, 0)
        if (self.lpips_weights is None) != (self.lpips_backbone is None):
            raise InputError("LPIPS needs both --lpips-weights and --lpips-backbone")
        if len(set(self.sweep_nfe)) != len(self.sweep_nfe) or any(not 1 <= k <= 1000 for k in self.sweep_nfe):
            raise InputError(f"--sweep-nfe must list each K in [1, 1000] once, got {list(self.sweep_nfe)}")
        if self.sweep_nfe and not any(m in SVI_NOISE for m in self.methods):
            raise InputError("--sweep-nfe sweeps the sampler: add svi or svi-independent-noise to --methods")
        if self.start is not None and not max(self.sweep_nfe, default=1) <= self.start <= 1000:
            raise InputError(f"--start must be in [{max(self.sweep_nfe, default=1)}, 1000] (at least every "
                             f"K of the sweep), got {self.start}")

    @property
    def variants(self) -> tuple["Variant", ...]:
        """The runs per clip and σ_y, in order: each method once (the sampler from `start`), or with
        `sweep_nfe` the sampler's methods at every K, cold and (with `start`) warm."""
        starts = (None,) if self.start is None else (None, self.start)
        out = []
        for m in self.methods:
            if m in SVI_NOISE and self.sweep_nfe:
                out += [Variant(m, k, t0) for k in self.sweep_nfe for t0 in starts]
            else:
                out.append(Variant(m, start=self.start if m in SVI_NOISE else None))
        return tuple(out)

    @property
    def prepared(self) -> Path:
        """Where the prepared clips are cached."""
        return self.cache if self.cache is not None else self.out / "prepared"

    def gamma_at(self, sigma: float) -> Optional[float]:
        """The sampler's γ at noise level σ_y: --gamma, else the default for a checkpoint or a prior."""
        return gamma_at(self.gamma, sigma, diffusion=self.checkpoint is not None)


@dataclass(frozen=True)
class Variant:
    """One row of the results: a method and, for a sweep of the sampler, its K and t₀."""

    method: str                              # one of METHODS
    nfe: Optional[int] = None                # the sampler's K in a sweep; None: the config's
    start: Optional[int] = None              # the sampler's warm-start t₀; None: the cold start

    @property
    def label(self) -> str:
        """The row's name: the method's, or in a sweep "svi K=8 cold" / "svi K=8 t0=400"."""
        if self.nfe is None:
            return self.method
        return f"{self.method} K={self.nfe} {'cold' if self.start is None else f't0={self.start}'}"


def _at_least(flag: str, value: Optional[int], low: int) -> None:
    """InputError unless `value` (None: not given) is at least `low`."""
    if value is not None and value < low:
        raise InputError(f"{flag} must be at least {low}, got {value}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="DAVIS root, a folder of sequences, .npy clips or videos")
    p.add_argument("--task", required=True, choices=sorted(TASKS), help="one of the paper's tasks")
    prior = p.add_mutually_exclusive_group()
    add_solver_flag(prior, "checkpoint")
    add_solver_flag(prior, "prior", default="ffdnet")
    p.add_argument("--methods", type=_names, default=METHODS, help=f"comma-separated (default: all): {','.join(METHODS)}")
    p.add_argument("--sigma-y", type=_numbers(float), default=(0.0,),
                   help="measurement noise levels, comma-separated (default 0)")
    p.add_argument("--gamma", type=float,
                   help="γ of the regularised CG when σ_y > 0 (default: 1, DDS's, with --checkpoint; 0.04/σ_y "
                        "at each noise level with a prior; engine.cg.default_gamma)")
    p.add_argument("--limit", type=int, help="evaluate the first N clips only")
    p.add_argument("--out", type=Path, required=True, help="results folder (resumed if it holds a run with the same settings)")
    p.add_argument("--cache", type=Path, help="prepared clips (default OUT/prepared)")
    p.add_argument("--frames", type=int, default=Prep.frames, help="frames per clip (default 16)")
    p.add_argument("--crop", type=int, help="centre crop before the resize (default: the largest square, 480 on DAVIS 480p)")
    p.add_argument("--size", type=int, default=Prep.size, help="frame size for the weight-free prior (a checkpoint sets its own)")
    add_solver_flag(p, "nfe", note="(default: the task's)")
    add_solver_flag(p, "eta", note="(default: the task's)")
    add_solver_flag(p, "cg_iters", note="(default: the task's)")
    add_solver_flag(p, "start", note="(default: the cold start, at T)")
    p.add_argument("--sweep-nfe", type=_numbers(int), default=(), metavar="K1,K2,...",
                   help="run the sampler at each K, cold and (with --start) warm; writes sweep.md/.csv/.json and "
                        "a PSNR-versus-K plot")
    p.add_argument("--converged-iters", type=int, default=1000, help="most iterations of cg-converged (default 1000)")
    p.add_argument("--admm-iters", type=_numbers(int), default=(30, 20), metavar="OUTER,INNER",
                   help="admm-tv's ADMM iterations and CG iterations per x-update (default 30,20; a temporal PSF "
                        "alone solves the x-update exactly and ignores INNER)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed; measurement noise is seeded per clip from it")
    add_solver_flag(p, "device", default=default_device())
    add_solver_flag(p, "dtype", default="fp32")
    add_solver_flag(p, "backend", default="torch", note="(graph backends cannot record Fig. 7)")
    add_solver_flag(p, "engine")
    p.add_argument("--lpips-weights", type=Path, help="LPIPS v0.1 linear heads (alex.pth of the lpips package)")
    p.add_argument("--lpips-backbone", type=Path, help="ImageNet AlexNet (torchvision's alexnet-owt-7be5be79.pth)")
    p.add_argument("--fvd-weights", type=Path, help="I3D detector (StyleGAN-V's i3d_torchscript.pt)")
    p.add_argument("--pictures", type=int, default=1, help="clips that get a comparison grid and PSNR plot (default 1)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results in --out instead of resuming")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def parse(argv=None) -> tuple[EvalJob, SolverConfig, bool]:
    """(EvalJob, SolverConfig, verbose) from the command line; every setting is validated here, before any work.

    The config is the task's with --nfe/--eta/--cg-iters overridden; its size is provisional until the
    model is loaded (a checkpoint sets its own, `run`). Its γ is None: `Methods` sets --gamma where σ_y > 0.
    """
    args = build_parser().parse_args(argv)
    if (args.backend == "tensorrt") != (args.engine is not None):
        raise InputError("--backend tensorrt needs --engine FILE (build one with python -m engine.build)"
                         if args.engine is None else "--engine is for --backend tensorrt")
    job = EvalJob(data=args.data, out=args.out, task=args.task, cache=args.cache, overwrite=args.overwrite,
                  limit=args.limit, methods=args.methods, sigma_ys=tuple(dict.fromkeys(args.sigma_y)),
                  gamma=args.gamma, converged_iters=args.converged_iters, admm_iters=args.admm_iters,
                  seed=args.seed, checkpoint=args.checkpoint, engine=args.engine, prior=args.prior,
                  frames=args.frames, size=args.size, crop=args.crop, lpips_weights=args.lpips_weights,
                  lpips_backbone=args.lpips_backbone, fvd_weights=args.fvd_weights, pictures=args.pictures,
                  start=args.start, sweep_nfe=args.sweep_nfe)
    overrides = {k: v for k, v in (("nfe", args.nfe), ("eta", args.eta), ("cg_iters", args.cg_iters)) if v is not None}
    cfg = SolverConfig.from_task(args.task, frames=job.frames, size=job.size, backend=args.backend,
                                 precision=args.dtype, device=args.device, **overrides)
    if job.start is not None and not job.sweep_nfe and job.start < cfg.nfe:
        raise InputError(f"--start must be in [{cfg.nfe}, 1000] (at least K = {cfg.nfe}), got {job.start}")
    return job, cfg, args.verbose


def _names(text: str) -> tuple[str, ...]:
    """"a, b,a" → ("a", "b"): the names of a comma-separated list, each once (EvalJob checks them)."""
    return tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))


def _numbers(kind: type) -> Callable[[str], tuple]:
    """An argparse type for a comma-separated list of `kind` numbers (EvalJob checks their values)."""

    def convert(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None

    return convert


def run_settings(job: EvalJob, cfg: SolverConfig, prep: Prep) -> dict:
    """Everything that changes the numbers; a resumed run must match it exactly."""
    return {
        "task": job.task, "spec": cfg.spec, "methods": [v.label for v in job.variants],
        "sigma_y": list(job.sigma_ys), "nfe": cfg.nfe, "eta": cfg.eta, "cg_iters": cfg.cg_iters, "gamma": job.gamma,
        "gammas": [job.gamma_at(sigma) for sigma in job.sigma_ys],
        "converged_iters": job.converged_iters, "admm_iters": list(job.admm_iters), "seed": job.seed,
        "start": job.start, "sweep_nfe": list(job.sweep_nfe),
        "prior": str(job.checkpoint.resolve()) if job.checkpoint else job.prior,
        "data": str(job.data.resolve()), "prep": {"size": prep.size, "crop": prep.crop, "frames": prep.frames},
        "device": str(torch.device(cfg.device)), "precision": cfg.precision, "backend": cfg.backend,
        "lpips": bool(job.lpips_weights), "fvd": bool(job.fvd_weights),
    }


# ----------------------------------------------------------------------------- methods


def interframe_difference(x: Tensor) -> Tensor:
    """mean |x[i+1] − x[i]| over consecutive frames and pixels: [N, 3, H, W] → 0-d tensor (no host sync)."""
    return (x[1:] - x[:-1]).abs().mean()


class Methods:
    """Runs every method on a measurement; one Solver per (noise mode, γ at σ_y, K, t₀), built on first use."""

    def __init__(self, model, base: SolverConfig, sigmas: tuple[float, ...], *,
                 gamma: Callable[[float], Optional[float]], converged_iters: int, admm_iters: tuple[int, int]):
        self.model, self.base, self.gamma = model, base, gamma
        self.converged_iters, self.admm_iters = converged_iters, admm_iters
        self.device = torch.device(base.device)
        self._solvers: dict[tuple, Solver] = {}
        self._measurer = self.solver("shared", sigmas[0])  # measures y; its operator serves the baselines
        self.op = self._measurer.op

    def solver(self, noise: str, sigma: float, nfe: Optional[int] = None, start: Optional[int] = None) -> Solver:
        """The Solver of `noise` at σ_y (regularised CG when > 0), K = `nfe` (None: the base's) from t₀ = `start`."""
        gamma = self.gamma(sigma)                          # γ at σ_y (None: the noiseless CG)
        key = (noise, gamma, nfe, start)
        if key not in self._solvers:
            cfg = replace(self.base, noise=noise, gamma=gamma, nfe=nfe or self.base.nfe, start=start)
            self._solvers[key] = Solver(self.model, cfg)
        return self._solvers[key]

    def measure(self, clean: Tensor, sigma: float, seed: int) -> Tensor:
        """y = A x + σ_y·w, w drawn from `seed`."""
        return self._measurer.measure(clean, sigma_y=sigma, seed=seed)

    def run(self, variant: Variant, y: Tensor, sigma: float, seed: int) -> tuple[Tensor, float, dict]:
        """(restored [N, 3, H, W], seconds, method-specific facts) for one method (a Variant)."""
        method = variant.method
        if method in SVI_NOISE:
            return self._svi(self.solver(SVI_NOISE[method], sigma, variant.nfe, variant.start), y, seed)
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
        return x, seconds, {"interframe": torch.stack(curve).tolist() if curve else None,
                            "nfe": solver.config.nfe, "start": solver.config.start}

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


def evaluate_clip(name: str, clean: Tensor, methods: Methods, scorer: Scorer, job: EvalJob) -> tuple[dict, dict, dict]:
    """Run every method at every σ_y on one clip → (record, {(σ, method): restored}, {key: I3D features})."""
    reference = clean.cpu()
    clean = clean.to(methods.device)
    record = {"clip": name, "clean_interframe": interframe_difference(clean).item(), "runs": []}
    outputs, features = {}, {}
    if scorer.i3d is not None:
        features["clean"] = scorer.i3d(clean)
    for sigma in job.sigma_ys:
        y = methods.measure(clean, sigma, measurement_seed(job.seed, name))
        outputs[(sigma, "measured")] = y.cpu()
        for variant in job.variants:
            x, seconds, facts = methods.run(variant, y, sigma, job.seed)
            record["runs"].append({"method": variant.label, "sigma_y": sigma, "seconds": seconds,
                                   **scorer.score(x.cpu(), reference), **facts})
            outputs[(sigma, variant.label)] = x.cpu()
            if scorer.i3d is not None:
                features[f"{variant.label}@{sigma:g}"] = scorer.i3d(x)
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


def sweep_pictures(folder: Path, points: list[dict], settings: dict) -> None:
    """Per σ_y: mean PSNR against K, one line per (sampler method, start), the baselines as dashed lines."""
    folder.mkdir(parents=True, exist_ok=True)
    for sigma in settings["sigma_y"]:
        block = [p for p in points if p["sigma_y"] == sigma]
        lines = list(dict.fromkeys((p["method"], p["start"]) for p in block if p["nfe"] is not None))
        series = []
        for method, start in lines:
            runs = sorted((p["nfe"], p["psnr"]) for p in block if (p["method"], p["start"]) == (method, start))
            name = f"{method} {'cold' if start is None else f'warm t0={start}'}"
            series.append((name, [k for k, _ in runs], [v for _, v in runs]))
        references = [(f"{p['method']} {p['psnr']:.2f} dB", p["psnr"]) for p in block if p["nfe"] is None]
        clips = max((p["clips"] for p in block), default=0)
        save_png(folder / f"psnr_vs_nfe_sigma{sigma:g}.png", line_plot(
            series, references=references, title=f"PSNR against NFE, mean over {plural(clips, 'clip')}, "
                                                 f"{settings['spec']}, sigma_y = {sigma:g}",
            xlabel="NFE (network evaluations K)", ylabel="PSNR [dB]"))


# ----------------------------------------------------------------------------- the run


def build(job: EvalJob, cfg: SolverConfig):
    """(Methods, Scorer, Dataset, settings) for the job; every file is checked before any work."""
    scorer = Scorer(
        LPIPS.from_files(job.lpips_weights, job.lpips_backbone, cfg.device) if job.lpips_weights else None,
        I3DFeatures(job.fvd_weights, cfg.device) if job.fvd_weights else None,
    )
    model, size = load_model(job.checkpoint, backend=cfg.backend, engine=job.engine,
                             size=job.size, device=cfg.device, prior=job.prior)
    prep = Prep(size=size, crop=job.crop, frames=job.frames)
    dataset = Dataset(job.data, job.prepared, prep)
    base = replace(cfg, size=size)                   # a checkpoint sets its own size
    methods = Methods(model, base, job.sigma_ys, gamma=job.gamma_at, converged_iters=job.converged_iters,
                      admm_iters=job.admm_iters)
    return methods, scorer, dataset, run_settings(job, base, prep)


def run(job: EvalJob, cfg: SolverConfig) -> Path:
    """Evaluate every clip not yet in results.jsonl, then write the summary and pictures; returns --out."""
    methods, scorer, dataset, settings = build(job, cfg)
    results = open_run(job.out, settings, job.overwrite)
    done = results.done()
    total = dataset.count()
    if job.limit is not None:
        total = job.limit if total is None else min(total, job.limit)
    initial = len(done) if total is None else min(len(done), total)
    pictures = job.out / "pictures"
    with tqdm(total=total, initial=initial, desc="evaluating", unit="clip", disable=None) as bar:
        for clip in dataset.clips(limit=job.limit, skip=done):
            record, outputs, features = evaluate_clip(clip.name, clip.video, methods, scorer, job)
            if len(results.records) < job.pictures:
                clip_pictures(pictures, clip.name, clip.video, outputs, record, settings)
            results.add(record, features)
            bar.update()
            bar.set_postfix_str(f"{clip.name}: {record['runs'][0]['method']} {psnr_value(record['runs'][0]['psnr_mean']):.2f} dB")
    if not results.records:
        raise InputError(f"{job.data}: no clip of {dataset.prep.frames} frames")
    rows = summarize(results, settings)
    write_summary(job.out, rows, settings, dataset.skipped)
    summary_pictures(pictures, results, settings)
    if job.sweep_nfe:
        points = sweep_rows(rows, {v.label: (v.method, v.nfe, v.start) for v in job.variants})
        write_sweep(job.out, points, settings)
        sweep_pictures(pictures, points, settings)
    log.info("%s evaluated; summary in %s", plural(len(results.records), "clip"), job.out / "summary.md")
    if dataset.skipped:
        log.warning("%s could not be read and were skipped: %s (listed in summary.md)",
                    plural(len(dataset.skipped), "sequence"), ", ".join(sorted(dataset.skipped)))
    return job.out


def main(argv=None) -> int:
    """The exit status; an interrupt reaches the caller (rerun the same command to resume)."""
    return command(argv, parse, lambda job, cfg: run(job, cfg) / "summary.md")


if __name__ == "__main__":
    sys.exit(main())
