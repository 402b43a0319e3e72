"""The settings a real (measured) video gets by default: warm or cold start, NFE, η, γ, chosen on real clips.

Each clip (bench.real_clips: crops of real videos and photos seen by a panning camera) is degraded
as a user's video is (blur, noise σ, 8 bit, x264 at a CRF), its noise is estimated from the
measurement alone (engine.noise), and each setting restores it through engine.runtime.Solver as
engine.solve does with the default prior (FFDNet), γ = γ_mult · engine.cg.default_gamma(σ̂).
PSNR is against the clean clip. One row per (clip, noise, setting) is appended to
bench/results/measured_defaults.jsonl with --save; the table shows the mean over clips per setting.

    python -m bench.measured_defaults                                     # the default grid, 6 clips
    python -m bench.measured_defaults --clips carphone --noise 0.05:none --settings "cold20;nfe=12"
    python -m bench.measured_defaults --settings "nfe=12,start=600,eta=0.5,gamma=2" --save
    python -m bench.measured_defaults --summarise --settings "cold20;warm400x8;nfe=12"   # the saved rows' tables

Settings are separated by `;`; each is a preset name (SETTINGS) or `nfe=K[,start=T0][,eta=η][,gamma=M]`
(M multiplies the default γ).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import RESULTS, RESULTS_ENV, add_save_flag, append_jsonl, machine
from bench.real_clips import CLIPS, DEFAULT_SPEC, clean_clip, degrade
from engine.cg import default_gamma
from engine.metrics import psnr
from engine.noise import estimate_noise
from engine.operators import from_spec
from engine.operators.spec import with_time_boundary
from engine.runtime import Solver, SolverConfig, load_model

@dataclass(frozen=True)
class Setting:
    """How a measured clip is restored: K steps from t₀ (None: cold), η, γ = gamma_mult · default_gamma(σ̂)."""

    nfe: int
    start: int | None = None
    eta: float = 0.15
    gamma_mult: float = 1.0

    @property
    def name(self) -> str:
        text = f"nfe={self.nfe}" + (f",start={self.start}" if self.start else "")
        return text + (f",eta={self.eta:g}" if self.eta != 0.15 else "") + (
            f",gamma={self.gamma_mult:g}" if self.gamma_mult != 1 else "")


SETTINGS = {"cold20": Setting(20), "warm400x8": Setting(8, 400), "cold8": Setting(8), "warm600x12": Setting(12, 600),
            "cold20-eta0.5": Setting(20, eta=0.5), "cold20-gamma2": Setting(20, gamma_mult=2.0),
            "cold20-gamma0.5": Setting(20, gamma_mult=0.5)}
DEFAULT_CLIPS = "carphone,bikes,bigbuckbunny,photo:astronaut,photo:chelsea,photo:rocket"
#: σ added:CRF (none: 8-bit PNG); codec-only noise is 0:23
DEFAULT_NOISE = "0:23,0.01:23,0.02:none,0.05:none"


def parse_setting(text: str) -> Setting:
    """A preset name from SETTINGS, or `nfe=K[,start=T0][,eta=η][,gamma=M]`."""
    if text in SETTINGS:
        return SETTINGS[text]
    fields = dict(item.split("=", 1) for item in text.split(","))
    unknown = set(fields) - {"nfe", "start", "eta", "gamma"}
    if unknown or "nfe" not in fields:
        raise SystemExit(f"a setting is a preset ({', '.join(SETTINGS)}) or nfe=K[,start=T0][,eta=η][,gamma=M]; "
                         f"got {text!r}")
    return Setting(int(fields["nfe"]), int(fields["start"]) if "start" in fields else None,
                   float(fields.get("eta", 0.15)), float(fields.get("gamma", 1.0)))


def parse_noise(text: str) -> tuple[float, int | None]:
    """`SIGMA:CRF` (CRF `none`: 8-bit PNG) → (σ, CRF or None)."""
    sigma, crf = text.split(":")
    return float(sigma), None if crf == "none" else int(crf)


def restore(model, y: torch.Tensor, spec: str, shape: tuple, setting: Setting, sigma_y: float, *,
            seed: int = 0) -> torch.Tensor:
    """Algorithm 1 on the measurement `y` of a clean clip of `shape` [N, 3, H, W], as engine.solve runs it
    (replicate time boundary, channels_last), with σ_y's default γ (× the setting's multiplier; σ_y = 0:
    the noiseless CG)."""
    gamma = default_gamma(sigma_y)
    cfg = SolverConfig(spec=with_time_boundary(spec, "replicate"), frames=shape[0], size=tuple(shape[-2:]),
                       nfe=setting.nfe, start=setting.start, eta=setting.eta,
                       gamma=None if gamma is None else gamma * setting.gamma_mult, channels_last=True)
    return Solver(model, cfg).solve(y, seed=seed)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.measured_defaults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", default=DEFAULT_CLIPS, help=f"comma-separated, from {', '.join(CLIPS)}")
    p.add_argument("--noise", default=DEFAULT_NOISE, help="comma-separated SIGMA:CRF (CRF none: 8-bit PNG)")
    p.add_argument("--settings", default="cold20;warm400x8", help="semicolon-separated settings (module docstring)")
    p.add_argument("--spec", default=DEFAULT_SPEC, help="degradation (engine.operators.from_spec)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="clean frames' side (crop or camera size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--summarise", action="store_true",
                   help="print the tables of the --settings' rows saved in bench/results/measured_defaults.jsonl, on "
                        "the cases they all have (runs nothing)")
    add_save_flag(p, "measured_defaults")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = [parse_setting(s) for s in args.settings.split(";")]
    if args.summarise:
        names = {s.name for s in settings}
        print_table([r for r in saved_rows() if r["setting"] in names])
        return
    torch.set_num_threads(args.threads)
    model, _ = load_model(None, prior="ffdnet")
    base = {"spec": args.spec, "frames": args.frames, "size": args.size, "prior": "ffdnet", "seed": args.seed,
            **machine(torch.device("cpu"))}
    rows = []
    for clip in args.clips.split(","):
        x = clean_clip(clip, frames=args.frames, size=args.size)
        op = from_spec(with_time_boundary(args.spec, "replicate"), tuple(x.shape))
        for noise in args.noise.split(","):
            sigma, crf = parse_noise(noise)
            y = degrade(x, args.spec, sigma=sigma, crf=crf, seed=args.seed + 1)
            estimate = estimate_noise(y)
            blurred = psnr(y, x).mean().item() if y.shape == x.shape else None   # the input itself, where comparable
            for setting in settings:
                t0 = time.perf_counter()
                out = restore(model, y, args.spec, tuple(x.shape), setting, estimate.sigma, seed=args.seed)
                row = {**base, "clip": clip, "sigma": sigma, "crf": crf, "sigma_est": estimate.sigma,
                       "residual_rms": (y - op.A(x)).square().mean().sqrt().item(), "setting": setting.name,
                       "nfe": setting.nfe, "start": setting.start, "eta": setting.eta,
                       "gamma": default_gamma(estimate.sigma) * setting.gamma_mult,
                       "psnr": psnr(out, x).mean().item(), "psnr_input": blurred,
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                print(f"{clip:18s} σ={sigma:<5g} crf={str(crf):4s} σ̂={estimate.sigma:.4f} {setting.name:28s} "
                      f"{row['psnr']:6.2f} dB (input {blurred or float('nan'):5.2f})  {row['seconds']:5.1f} s",
                      flush=True)
                if args.save:
                    append_jsonl("measured_defaults", [row])
    print_table(rows)


def saved_rows() -> list[dict]:
    """The rows saved so far (the last of repeated (clip, noise, setting, size, frames) cases)."""
    path = Path(os.environ.get(RESULTS_ENV) or RESULTS) / "measured_defaults.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return list({(r["clip"], r["sigma"], r["crf"], r["setting"], r["size"], r["frames"]): r for r in rows}.values())


def print_table(rows: list[dict]) -> None:
    """Mean PSNR per (noise, setting) over clips, per (clip, setting) over noises, and per setting over
    everything, on the (clip, noise) cases every setting has; `input`: the measurement's own PSNR."""
    names = list(dict.fromkeys(r["setting"] for r in rows))
    cases = set.intersection(*({(r["clip"], r["sigma"], r["crf"]) for r in rows if r["setting"] == n} for n in names))
    rows = [r for r in rows if (r["clip"], r["sigma"], r["crf"]) in cases]
    noises = list(dict.fromkeys((r["sigma"], r["crf"]) for r in rows))
    print("\n" + f"{'σ:CRF / clip':18s}{'input':>8s}" + "".join(f"{n:>30s}" for n in names))
    groups = [(f"{sigma:g}:{crf}", lambda r, key=(sigma, crf): (r["sigma"], r["crf"]) == key) for sigma, crf in noises]
    groups += [(clip, lambda r, clip=clip: r["clip"] == clip) for clip in dict.fromkeys(r["clip"] for r in rows)]
    groups += [(f"all ({len(cases)} cases)", lambda r: True)]
    for label, member in groups:
        first = [r for r in rows if member(r) and r["setting"] == names[0]]
        given = [r["psnr_input"] for r in first if r["psnr_input"] is not None]
        cells = [statistics.mean(r["psnr"] for r in rows if member(r) and r["setting"] == n) for n in names]
        print(f"{label:18.18s}{statistics.mean(given) if given else float('nan'):8.2f}"
              + "".join(f"{c:30.2f}" for c in cells))


if __name__ == "__main__":
    main()
