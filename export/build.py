"""`python -m engine.build` (export.build): the ADM UNet → ONNX → TensorRT engine, checked at each step.

    python -m engine.build --batch 16 --checkpoint 256x256_diffusion_uncond.pt --out build/
    python -m engine.build --batch 16 --random-weights --preset tiny --onnx-only --out build/

Writes into --out: unet.onnx (plus unet.onnx.data for models over 2 GB), the engine and
its record (unet-<precision>-b<N>-<key>.engine[.json], reused while nothing that changes
it has changed), TensorRT's timing cache, and manifest.json (shapes, precision, versions,
the errors measured against the torch model, the time each step took).

The ONNX file is checked with onnx.checker and against the torch model in onnxruntime
(batches 1, 3 and N by default); the engine is compared with the torch model on random
input and refused past its precision's tolerance. Without TensorRT or a CUDA GPU the
command exports and checks the ONNX, writes the manifest and stops with exit status 3
(0 with --onnx-only). Errors exit with status 2 and one line on stderr. A checkpoint that
does not load stops the command: random weights are used only with --random-weights.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.checkpoint import load_adm
from engine.errors import CheckpointError, InputError
from engine.fileio import atomic_write_json
from engine.unet import PRESETS, ADMConfig, ADMUNet
from export.contract import UNetContract
from export.onnx import DTYPES, OPSETS, PARITY_TOLERANCE, ExportError, check_parity, export_onnx, onnx_parity
from export.tensorrt import (GROUPNORM_OPSET_TENSORRT, PRECISIONS, VIAS, EngineError, TensorRTBuilder,
                             TorchTensorRTBuilder, get_engine, import_tensorrt, import_torch_tensorrt,
                             installed_tensorrt_version, onnx_opset_for, version_tuple)

log = logging.getLogger(__name__)
DEFAULT_PRESET = "adm256_uncond"
EXIT_ERROR, EXIT_STOPPED = 2, 3
_VERSIONED = ("torch", "onnx", "onnxruntime", "onnxscript", "tensorrt", "torch-tensorrt")
_CHATTY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")   # a line per folded constant at INFO


class Stopped(Exception):
    """The ONNX is written and checked, but this machine cannot build the engine."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class BuildJob:
    """One build, checked once: what `python -m engine.build` was asked for (the command line is `parse_args`).

    The weights are chosen explicitly, never implied: a `checkpoint` (its preset read off its keys unless
    `preset` names it) or `random_weights` (seeded by `seed`, `preset` or adm256_uncond). The engine serves
    batches 1…`batch` and is tuned for `batch`; onnxruntime checks the ONNX file at `parity_batches`.
    """

    checkpoint: Path | None = None        # ADM checkpoint (.pt or .safetensors)
    random_weights: bool = False          # build from random weights, to test the build
    batch: int = 16                       # frames per clip N
    preset: str | None = None             # architecture (engine.unet.PRESETS)
    precision: str = "fp16"               # engine precision (export.tensorrt.PRECISIONS)
    via: str = "onnx"                     # TensorRT's ONNX parser or torch-tensorrt's converter (VIAS)
    out: Path = Path("build")             # output folder
    onnx_only: bool = False               # stop after exporting and checking the ONNX file
    opset: int | str = "auto"             # 21, 17 or "auto" (see export_opset)
    norm_outputs_fp32: bool = False       # the engine's GroupNorm outputs forced to fp32
    onnx_dtype: str = "fp32"              # weights of the ONNX file (export.onnx.DTYPES)
    parity_batches: tuple[int, ...] = ()  # batch sizes of the onnxruntime check; () is 1, 3 and `batch`
    device: str = field(default_factory=default_device)   # the torch model's and the engine build's
    seed: int = 0                         # seed of random_weights
    verbose: bool = False                 # debug logging

    def __post_init__(self):
        if (self.checkpoint is None) != self.random_weights:
            raise InputError("choose the weights: a checkpoint (--checkpoint FILE) or random ones (--random-weights), "
                             "one of the two")
        if self.batch < 1:
            raise InputError(f"--batch must be ≥ 1, got {self.batch}")
        for flag, value, allowed in (("--preset", self.preset, (None, *PRESETS)),
                                     ("--precision", self.precision, PRECISIONS), ("--via", self.via, VIAS),
                                     ("--opset", self.opset, OPSETS), ("--onnx-dtype", self.onnx_dtype, tuple(DTYPES))):
            if value not in allowed:
                names = ", ".join(str(a) for a in allowed if a is not None)
                raise InputError(f"{flag} takes one of {names}, got {value!r}")
        batches = tuple(sorted(set(self.parity_batches or (1, 3, self.batch))))
        if batches[0] < 1:
            raise InputError(f"--parity-batches must list batch sizes ≥ 1, got {list(self.parity_batches)}")
        object.__setattr__(self, "parity_batches", batches)     # sorted, without repeats


def parse_args(argv=None) -> BuildJob:
    """The command line → its BuildJob; a bad one stops with argparse's usage line (exit status 2)."""
    p = argparse.ArgumentParser(prog="python -m engine.build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=BuildJob.batch,
                   help=f"frames per clip N: the engine serves batches 1…N, tuned for N (default {BuildJob.batch})")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path, metavar="FILE",
                         help="ADM checkpoint (.pt or .safetensors), e.g. 256x256_diffusion_uncond.pt")
    weights.add_argument("--random-weights", action="store_true",
                         help="build from randomly initialised weights (to test the build; never implied)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help=f"architecture: with --checkpoint, inferred from its keys unless given; "
                        f"with --random-weights, default {DEFAULT_PRESET}")
    p.add_argument("--precision", choices=PRECISIONS, default=BuildJob.precision,
                   help=f"engine precision (default {BuildJob.precision}); fp8 needs an ONNX model with FP8 Q/DQ nodes")
    p.add_argument("--via", choices=VIAS, default=BuildJob.via,
                   help="TensorRT's ONNX parser (default) or torch-tensorrt's converter from the torch model")
    p.add_argument("--out", type=Path, default=BuildJob.out, help=f"output folder (default ./{BuildJob.out})")
    p.add_argument("--onnx-only", action="store_true", help="stop after exporting and checking the ONNX (exit 0)")
    p.add_argument("--opset", choices=[str(o) for o in OPSETS], default=BuildJob.opset,
                   help="ONNX opset: auto (21 with native GroupNormalization if it checks out and the installed "
                        "TensorRT parses it, i.e. from 10.9 on; else 17), 21 or 17")
    p.add_argument("--norm-outputs-fp32", action="store_true",
                   help="also force the GroupNorm layers' outputs to fp32 (reformat layers around each; default: "
                        "they compute in fp32 and output in the engine's precision); a separate engine, to compare")
    p.add_argument("--onnx-dtype", choices=sorted(DTYPES), default=BuildJob.onnx_dtype,
                   help=f"weights of the ONNX file (default {BuildJob.onnx_dtype}; the interface stays fp32 "
                        "either way)")
    p.add_argument("--parity-batches", default="1,3,N", metavar="LIST",
                   help="batch sizes of the onnxruntime check, N meaning --batch (default 1,3,N)")
    p.add_argument("--device", default=default_device(),
                   help="device of the torch model (the reference) and of the engine build (default: cuda if present)")
    p.add_argument("--seed", type=int, default=BuildJob.seed,
                   help=f"seed of --random-weights (default {BuildJob.seed})")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    try:
        if args.batch < 1:   # before --parity-batches, whose N stands for it
            raise InputError(f"--batch must be ≥ 1, got {args.batch}")
        return BuildJob(**{**vars(args), "opset": args.opset if args.opset == "auto" else int(args.opset),
                           "parity_batches": tuple(parse_batches(args.parity_batches, args.batch))})
    except (InputError, ValueError) as err:
        p.error(str(err))


def parse_batches(text: str, n: int) -> list[int]:
    """'1,3,N' → [1, 3, n] (sorted, without repeats)."""
    try:
        batches = {n if tok.strip().upper() == "N" else int(tok) for tok in text.split(",") if tok.strip()}
    except ValueError:
        raise ValueError(f"--parity-batches takes integers or N separated by commas, got {text!r}") from None
    if not batches or min(batches) < 1:
        raise ValueError(f"--parity-batches must list batch sizes ≥ 1, got {text!r}")
    return sorted(batches)


def load_model(job: BuildJob) -> ADMUNet:
    """The fp32 UNet in eval mode on job.device: the checkpoint's weights or, when asked, random ones."""
    if job.checkpoint is not None:
        return load_adm(job.checkpoint, config=job.preset, device=job.device)
    torch.manual_seed(job.seed)
    model = ADMUNet(ADMConfig.preset(job.preset or DEFAULT_PRESET)).to(job.device).eval()
    log.warning("random weights (--random-weights, seed %d): for testing the build, not for restoring video",
                job.seed)
    return model


def versions(device: torch.device) -> dict:
    """Python, the packages that shape the files, and the GPU."""
    info = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    return info


def export_opset(job: BuildJob) -> tuple[int | str, str]:
    """(the opset to export, why): --opset as given, except that "auto" follows the installed TensorRT
    (export.tensorrt.onnx_opset_for) when the engine is built from the ONNX file; InputError for --opset 21
    with a TensorRT that cannot parse it."""
    version = installed_tensorrt_version()
    if job.via != "onnx":
        return job.opset, f"--via {job.via} does not parse the ONNX file"
    if job.opset == "auto":
        return onnx_opset_for(version)
    if job.opset == 21 and version is not None and version_tuple(version) < GROUPNORM_OPSET_TENSORRT:
        need = ".".join(map(str, GROUPNORM_OPSET_TENSORRT))
        raise InputError(f"--opset 21: the installed TensorRT {version} parses opset 21's GroupNormalization only "
                         f"from {need}; use --opset 17 (or auto), or upgrade TensorRT")
    return job.opset, "--opset given"


def export_step(job: BuildJob, model: ADMUNet, contract: UNetContract) -> tuple[dict, list]:
    """Export the ONNX file and run it in onnxruntime: the manifest's "onnx" section and the parity results."""
    opset, why = export_opset(job)
    log.info("ONNX opset %s: %s", opset, why)
    exported = export_onnx(model, contract, job.out / "unet.onnx", dtype=job.onnx_dtype, opset=opset)
    start = time.perf_counter()
    parity = onnx_parity(exported.path, model, contract, list(job.parity_batches))
    tol = PARITY_TOLERANCE[job.onnx_dtype]
    section = {**exported.as_dict(), "opset_asked": opset, "opset_reason": why,
               "parity": [p.as_dict() for p in parity], "parity_tolerance": tol,
               "parity_ok": all(p.finite and p.rel_l2 <= tol for p in parity),
               "parity_seconds": round(time.perf_counter() - start, 3)}
    return section, parity


def engine_blockers(device: torch.device, via: str = "onnx") -> list[str]:
    """Why this machine cannot build a TensorRT engine `via` a conversion path (empty if it can)."""
    reasons = []
    for needed in [import_tensorrt] + ([import_torch_tensorrt] if via == "torch-tensorrt" else []):
        try:
            needed()
        except ImportError as err:
            reasons.append(str(err))
    if device.type != "cuda" or not torch.cuda.is_available():
        reasons.append(f"no CUDA GPU to build on (device {device}, CUDA available: {torch.cuda.is_available()})")
    return reasons


def engine_step(job: BuildJob, model: ADMUNet, contract: UNetContract, onnx_path: Path) -> dict:
    """Build (or reuse) the engine and compare it with the model: the manifest's "engine" section."""
    device = torch.device(job.device)
    if job.via == "torch-tensorrt":
        builder = TorchTensorRTBuilder(model, device)
    else:
        builder = TensorRTBuilder(device, norm_outputs_fp32=job.norm_outputs_fp32)
    result = get_engine(onnx_path, contract, job.precision, job.out, builder=builder, model=model)
    return {"precision": job.precision, "via": job.via, **result.as_dict()}


def run(job: BuildJob) -> Path:
    """Everything; returns the manifest's path. Raises Stopped when the engine cannot be built here."""
    device = torch.device(job.device)
    model = load_model(job)
    contract = UNetContract.for_config(model.config, job.batch)
    job.out.mkdir(parents=True, exist_ok=True)
    manifest_path = job.out / "manifest.json"
    manifest = {"model": {"config": model.config.as_flags(), "parameters": model.num_parameters(),
                          "checkpoint": str(job.checkpoint) if job.checkpoint else None,
                          "random_weights": job.random_weights, "seed": job.seed if job.random_weights else None},
                "contract": contract.as_dict(), "versions": versions(device), "onnx": None, "engine": None,
                "stopped": None}
    manifest["onnx"], parity = export_step(job, model, contract)
    blockers = [] if job.onnx_only else engine_blockers(device, job.via)
    if blockers:
        manifest["stopped"] = "; ".join(blockers)
    atomic_write_json(manifest_path, manifest)
    check_parity(parity, job.onnx_dtype)   # after the manifest, so that it keeps the numbers
    if job.onnx_only:
        return manifest_path
    if blockers:
        raise Stopped(f"the ONNX is written and checked ({manifest_path}), but no engine can be built here: "
                      f"{manifest['stopped']}")
    manifest["engine"] = engine_step(job, model, contract, Path(manifest["onnx"]["path"]))
    atomic_write_json(manifest_path, manifest)
    return manifest_path


def main(argv=None) -> int:
    job = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if job.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not job.verbose:
        for chatty in _CHATTY_LOGGERS:
            logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        path = run(job)
    except Stopped as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return EXIT_STOPPED
    except (InputError, CheckpointError, ImportError, ExportError, EngineError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
