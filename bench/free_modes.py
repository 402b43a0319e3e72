"""`python -m bench.free_modes`: where a real clip's restoration loses, band by band of the blur's modes.

A temporal box blur T of width k sees the clip's modes along time unequally: the eigenvectors of TᵀT
with eigenvalue μ (relative to ‖TᵀT‖) near 0 it barely sees, those near 1 it keeps. Split them into
bands B_j = {μ ∈ [e_j, e_{j+1})}; the projectors Π_j (`band_projectors`) are orthogonal and sum to I,
so for any estimate x of the clean clip c

    MSE(x) = Σ_j ‖Π_j (x − c)‖² / numel        (`band_errors`, one term per band)

and a row tells which modes an estimate gets wrong. The clip is degraded as a user's video is
(bench.real_clips: box blur of 7 with held ends, 8 bit, H.264 at CRF 23); the restoration runs as
`python -m engine.solve BLURRED.mp4 --degrade temporal:uniform:7` does (σ_y estimated, γ from it,
FFDNet, 20 cold steps), but through the Solver so that every stage can be scored:

    input              y, the decoded mp4
    loop               X̄, the reverse loop (no temporal prior)
    motion             the motion prior on X̄ (engine.temporal_prior: the command's default)
    y in free          X̄ with its free modes (μ < 0.03) replaced by the measurement's own
    mc mean            "y in free" with its modes under --mc-free replaced by its motion-compensated mean
                       over the 2r + 1 frames around each (r = (k − 1)/2, `mc_mean`), flow from itself
    mc mean, fitted jitter  the same with a global shift per frame added to the flow, fitted so that the
                       estimate explains the measurement best (`fitted_jitter`)
    mc mean, clean jitter  the same with the clean clip's global shifts (an oracle: what a camera's jitter costs)
    mc mean, clean flow  the same with the flow estimated on the clean clip (an oracle: what exact motion buys)
    clean in free      X̄ with the clean clip's free modes (an oracle: what the free modes cost)

Each is scored as it comes out and after the input guard (engine.realvideo.input_guard, as the command
applies it): mean PSNR, the MSE by band (×10⁴). Rows go to bench/results/free_modes.jsonl with --save.

    python -m bench.free_modes --clip carphone --frames 48 --full
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch
import torch.nn.functional as F

from bench.common import add_save_flag, append_jsonl, machine
from bench.real_clips import degrade
from bench.real_targets import SPEC, add_clip_flags, clip_of
from engine.cg import default_gamma
from engine.metrics import psnr
from engine.operators import from_spec
from engine.priors import PRIORS, make_prior
from engine.realvideo import input_guard, noise_level
from engine.runtime import Solver, SolverConfig
from engine.temporal_prior import DEFAULT_FREE, MotionPrior, estimate_flow, free_modes, sampling_grid

Tensor = torch.Tensor
#: band edges of μ / ‖TᵀT‖ (the last above 1 so that the top mode is in a band)
EDGES = (0.0, 0.01, 0.03, 0.1, 0.3, 1.01)
#: the modes the motion-compensated mean replaces: μ / ‖TᵀT‖ below this
MC_FREE = 0.1
#: Adam steps and step size (pixels) of the global jitter's fit
JITTER_STEPS, JITTER_LR = 60, 0.05


def band_projectors(op, edges=EDGES) -> list:
    """Π_j: v ↦ V 1[μ/‖TᵀT‖ ∈ [e_j, e_{j+1})] Vᵀ v along frames, one per band.  [N, C, H, W] → [N, C, H, W]"""
    gain = op.normal_gain
    return [op.frame_preconditioner(lambda mu, a=a, b=b: ((mu >= a * gain) & (mu < b * gain)).to(mu.dtype),
                                    dtype=torch.float64) for a, b in zip(edges, edges[1:])]


def band_errors(x: Tensor, clean: Tensor, projectors: list) -> list[float]:
    """‖Π_j (x − c)‖² / numel per band (fp64); they sum to the MSE of x.  x, clean: [N, C, H, W]"""
    e = x.double() - clean.double()
    return [(P(e) ** 2).sum().item() / e.numel() for P in projectors]


def neighbour_flows(frames: Tensor, radius: int) -> dict[int, Tensor]:
    """f_j for j = ±1 … ±r: the flow of frame n + j into frame n (frames past the clip's ends held), estimated
    on `frames`.  [N, C, H, W] → {j: [N, 2, H, W]}"""
    n = frames.shape[0]
    return {j: estimate_flow(frames.float(), frames[neighbours(n, j)].float(), skip=1)
            for j in [*range(-radius, 0), *range(1, radius + 1)]}


def neighbours(n: int, j: int) -> Tensor:
    """Frame n + j for every frame n, the clip's ends held.  → [N] indices"""
    return torch.arange(n).add(j).clamp(0, n - 1)


def mc_mean(x: Tensor, flows: dict[int, Tensor], jitter: Tensor | None = None) -> Tensor:
    """The mean of each frame and its neighbours n + j warped onto it by f_j (bilinear, the border repeated),
    each flow shifted by the frames' global jitter c_{n+j} − c_n (pixels; None: 0).
    x: [N, C, H, W], flows: `neighbour_flows`, jitter: [N, 2] (x, y) → [N, C, H, W]"""
    n, (h, w) = x.shape[0], x.shape[-2:]
    pixel = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], dtype=x.dtype)      # grid units per pixel
    total = x
    for j, flow in flows.items():
        grid = sampling_grid(flow).to(x.dtype)
        if jitter is not None:
            grid = grid + ((jitter[neighbours(n, j)] - jitter) * pixel)[:, None, None, :]
        total = total + F.grid_sample(x[neighbours(n, j)], grid, mode="bilinear", padding_mode="border",
                                      align_corners=True)
    return total / (len(flows) + 1)


def clean_jitter(measured: dict[int, Tensor], clean: dict[int, Tensor]) -> Tensor:
    """The clean clip's global jitter against the measured flow (an oracle): c_0 = 0, c_{n+1} = c_n + the
    frame mean of f₁(clean) − f₁(measured) at n.  → [N, 2]"""
    step = (clean[1] - measured[1]).mean((-2, -1))[:-1]                   # the last frame's f₁ is to itself
    return torch.cat([step.new_zeros(1, 2), step.cumsum(0)])


def fitted_jitter(x: Tensor, y: Tensor, T: Tensor, flows: dict[int, Tensor], project, *, steps: int = JITTER_STEPS,
                  lr: float = JITTER_LR) -> Tensor:
    """The global jitter c that makes the motion-compensated estimate explain the measurement best:

        c = argmin_c ‖T x̃(c) − y‖²,   x̃(c) = x − Π x + Π mc_mean(x, flows, c)

    by `steps` Adam steps from c = 0 (T the blur's frame matrix [N, N]; a hand-held camera's jitter is what
    the flow on blurred frames averages away).  x, y: [N, C, H, W] → [N, 2]"""
    jitter = torch.zeros(x.shape[0], 2, dtype=x.dtype, requires_grad=True)
    adam = torch.optim.Adam([jitter], lr=lr)
    for _ in range(steps):
        adam.zero_grad()
        residual = torch.einsum("nm,mchw->nchw", T.to(x.dtype), replace_modes(x, mc_mean(x, flows, jitter), project)) - y
        residual.square().sum().backward()
        adam.step()
    return jitter.detach()


def replace_modes(x: Tensor, source: Tensor, project) -> Tensor:
    """x with its component in range(Π) replaced by source's: x − Π x + Π source.  [N, C, H, W]"""
    return x - project(x) + project(source)


def estimates(clean: Tensor, y: Tensor, op, xbar: Tensor, gamma: float, mc_free: float) -> dict[str, Tensor]:
    """Every row's estimate (module docstring), clamped to [0, 1].  All [N, C, H, W]"""
    free, mc = free_modes(op, DEFAULT_FREE), free_modes(op, mc_free)
    radius = (op.kernel.numel() - 1) // 2
    y_free = replace_modes(xbar, y, free)
    measured, exact = neighbour_flows(y_free, radius), neighbour_flows(clean, radius)
    T = op.constants.original("matrix")
    with torch.enable_grad():
        jitter = fitted_jitter(y_free, y, T, measured, mc)
    mean = lambda flows, c=None: replace_modes(y_free, mc_mean(y_free, flows, c), mc)
    out = {"input": y, "loop": xbar, "motion": MotionPrior(op, y, y, gamma)(xbar), "y in free": y_free,
           "mc mean": mean(measured), "mc mean, fitted jitter": mean(measured, jitter),
           "mc mean, clean jitter": mean(measured, clean_jitter(measured, exact)),
           "mc mean, clean flow": mean(exact), "clean in free": replace_modes(xbar, clean, free)}
    return {name: x.clamp(0, 1) for name, x in out.items()}


def rows(args) -> list[dict]:
    """Degrade the clip, restore it as the command would (σ̂, γ, the loop), score every estimate: one row each."""
    clean = clip_of(args)
    y = degrade(clean, SPEC, crf=args.crf, seed=1)
    sigma = noise_level(y, None).sigma_y
    gamma = default_gamma(sigma)
    spec = f"{SPEC}:replicate"
    cfg = SolverConfig(spec=spec, frames=clean.shape[0], size=tuple(clean.shape[-2:]), nfe=args.nfe,
                       gamma=gamma, temporal_prior="none")
    t0 = time.perf_counter()
    xbar = Solver(make_prior(args.prior), cfg).solve(y, seed=args.seed)
    loop_s = time.perf_counter() - t0
    op = from_spec(spec, tuple(clean.shape), kernels="torch")
    projectors, p_in = band_projectors(op), psnr(y, clean)
    base = {"clip": args.clip, "frames": clean.shape[0], "size": list(clean.shape[-2:]), "crf": args.crf,
            "prior": args.prior, "nfe": args.nfe, "sigma_hat": sigma, "gamma": gamma, "mc_free": args.mc_free,
            "edges": list(EDGES), "input_psnr": p_in.mean().item(), "loop_s": loop_s, **machine(torch.device("cpu"))}
    out = []
    for name, x in estimates(clean, y, op, xbar, gamma, args.mc_free).items():
        guarded, _ = input_guard(op, x, y, sigma)
        p, pg = psnr(x, clean), psnr(guarded, clean)
        out.append({**base, "estimate": name, "psnr": p.mean().item(), "guarded_psnr": pg.mean().item(),
                    "worst_gain_guarded": (pg - p_in).min().item(),
                    "band_mse": band_errors(x, clean, projectors)})
    return out


def table(found: list[dict]) -> str:
    """One line per estimate: PSNR, guarded PSNR and gain over the input, MSE ×10⁴ by band."""
    edges = found[0]["edges"]
    bands = "  ".join(f"[{a:g},{min(b, 1):g})" for a, b in zip(edges, edges[1:]))
    lines = [f"{found[0]['clip']}, {found[0]['frames']} frames {found[0]['size'][1]}x{found[0]['size'][0]}: "
             f"input {found[0]['input_psnr']:.2f} dB, σ̂ {found[0]['sigma_hat']:.4f}, γ {found[0]['gamma']:g}",
             f"{'estimate':24s} {'PSNR':>6s} {'guarded':>8s} {'gain':>6s}   MSE×1e4 by band μ/‖TᵀT‖ {bands}"]
    for r in found:
        lines.append(f"{r['estimate']:24s} {r['psnr']:6.2f} {r['guarded_psnr']:8.2f} "
                     f"{r['guarded_psnr'] - r['input_psnr']:+6.2f}   " + "  ".join(f"{1e4 * e:6.2f}" for e in r["band_mse"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.free_modes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clip_flags(p, frames=48)
    p.add_argument("--crf", type=int, default=23, help="x264 CRF of the blurred clip")
    p.add_argument("--prior", choices=PRIORS, default="ffdnet")
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mc-free", type=float, default=MC_FREE, help="modes the motion-compensated mean replaces")
    p.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    add_save_flag(p, "free_modes")
    p.add_argument("-v", "--verbose", action="store_true", help="the engine's messages (the guard's warnings among them)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    found = rows(args)
    print("\n".join(json.dumps(r) for r in found) if args.json else table(found))
    if args.save:
        print(f"appended to {append_jsonl('free_modes', found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
