"""ADM UNet → ONNX under the export contract, checked by onnx.checker and onnxruntime.

Opset. TensorRT normalises in one fused kernel when the graph holds ONNX's own
GroupNormalization. Only opset 21's version has ADM's per-channel scale and bias (opset
18's has one per group), so at opsets 18–20 the exporter lowers GroupNorm to
InstanceNormalization + Reshape/Mul/Add. `opset="auto"` therefore tries opset 21 through
torch.export (the dynamo exporter, which already folds constants with the onnxscript
optimizer) and keeps it when it exports cleanly, holds GroupNormalization nodes, passes
the checker and loads in onnxruntime. Otherwise it falls back to opset 17 through the
TorchScript exporter (docs/gpu.md, "A TensorRT engine"), cleaned up with the onnxscript optimizer and shape
inference, and records why.

fp32 islands. The fp16 export converts the weights as upstream's fp16 mode does
(`ADMUNet.convert_to`: block convolutions in fp16; the time MLP, GroupNorm and the out head
fp32), not the interface (x and eps stay fp32).

Files are written into a staging folder beside the target and moved into place at the
end, so a failed export never leaves a half-written model. Models over 2 GB (ADM-256 in
fp32) keep their weights in `<name>.data` beside the `.onnx`.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import logging
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.fileio import staging_folder
from export.contract import EXPORT_BATCH, ErrorStats, UNetContract, error_stats, reference_eps

ONNX_HINT = "pip install 'video-inverse-engine[onnx]'"
try:
    import onnx
except ImportError as err:   # the runtime needs no onnx; the export does
    raise ImportError(f"exporting to ONNX needs the onnx package: {ONNX_HINT}") from err

log = logging.getLogger(__name__)

NATIVE_GROUPNORM_OPSET = 21
FALLBACK_OPSET = 17
OPSETS = ("auto", NATIVE_GROUPNORM_OPSET, FALLBACK_OPSET)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
#: onnxruntime against the fp32 torch model, relative L2 error of ε
PARITY_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
_PROTOBUF_LIMIT = 2**31 - 2**26   # 2 GiB less headroom for the graph itself


class ExportError(RuntimeError):
    """An ONNX export that failed or does not match the torch model."""


@dataclass(frozen=True)
class OnnxExport:
    """What was written and how."""

    path: Path
    opset: int
    exporter: str                 # "dynamo" (torch.export) or "torchscript"
    dtype: str                    # weights: fp32 or fp16
    groupnorm: str                # how GroupNorm appears in the graph
    fallback_reason: str | None   # why opset 21 was not kept (auto only)
    seconds: float
    sha256: str
    nodes: int

    def as_dict(self) -> dict:
        return {"path": str(self.path), "opset": self.opset, "exporter": self.exporter, "dtype": self.dtype,
                "groupnorm": self.groupnorm, "fallback_reason": self.fallback_reason,
                "seconds": round(self.seconds, 3), "sha256": self.sha256, "nodes": self.nodes}


def export_onnx(model: torch.nn.Module, contract: UNetContract, path: str | os.PathLike, *,
                dtype: str = "fp32", opset: int | str = "auto") -> OnnxExport:
    """Export `model` (an ADMUNet) to `path` under `contract`; see the module docstring."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if opset not in OPSETS:
        raise ValueError(f"opset must be one of {OPSETS}, got {opset!r}")
    path = Path(path)
    net = _export_copy(model, DTYPES[dtype])
    start = time.perf_counter()
    with staged_output(path) as stage:
        staged = stage / path.name
        chosen, reason = _export_with_opset(net, contract, staged, opset)   # checker passed
        ops = op_counts(onnx.load(str(staged), load_external_data=False))
    seconds = time.perf_counter() - start
    exporter = "dynamo" if chosen == NATIVE_GROUPNORM_OPSET else "torchscript"
    result = OnnxExport(path=path, opset=chosen, exporter=exporter, dtype=dtype, groupnorm=_groupnorm_form(ops),
                        fallback_reason=reason, seconds=seconds, sha256=onnx_sha256(path), nodes=sum(ops.values()))
    log.info("exported %s: opset %d (%s), %d nodes, GroupNorm as %s, %.1f s", path, result.opset,
             result.exporter, result.nodes, result.groupnorm, seconds)
    return result


def _export_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The model in eval mode and `dtype` (a copy when the dtype changes)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected an nn.Module (the ADM UNet), got {type(model).__name__}")
    model = model.eval()
    if getattr(model, "dtype", next(model.parameters()).dtype) == dtype:
        return model
    net = copy.deepcopy(model)   # the ADM UNet converts as upstream's fp16 mode (convolutions only)
    return net.convert_to(dtype) if hasattr(net, "convert_to") else net.to(dtype)


def _export_with_opset(net, contract, staged: Path, opset) -> tuple[int, str | None]:
    """Write the graph to `staged` at the requested opset ("auto": 21 if it checks out, else 17).

    Returns the opset written, which has passed onnx.checker, and why opset 21 was not kept.
    """
    reason = None
    if opset in ("auto", NATIVE_GROUPNORM_OPSET):
        reason = _try_native(net, contract, staged)
        if reason is None:
            return NATIVE_GROUPNORM_OPSET, None
        if opset == NATIVE_GROUPNORM_OPSET:
            raise ExportError(f"opset {NATIVE_GROUPNORM_OPSET} export failed: {reason}")
        log.warning("opset %d not kept (%s); exporting opset %d", NATIVE_GROUPNORM_OPSET, reason, FALLBACK_OPSET)
        for leftover in (staged, staged.parent / f"{staged.name}.data"):
            leftover.unlink(missing_ok=True)
    _export_torchscript(net, contract, staged)
    return FALLBACK_OPSET, reason


def _try_native(net, contract: UNetContract, staged: Path) -> str | None:
    """Export opset 21 with torch.export into `staged`; None if it checks out, else why not."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints")  # x and t share "batch"
            program = torch.onnx.export(
                net, contract.sample(EXPORT_BATCH, device=_device(net)), None, dynamo=True,
                opset_version=NATIVE_GROUPNORM_OPSET, input_names=contract.input_names,
                output_names=contract.output_names, dynamic_shapes=contract.dynamic_shapes(), verbose=False)
        program.save(str(staged))
    except Exception as err:  # the exporter raises many types; any failure means fall back
        return f"torch.export exporter failed: {_first_line(err)}"
    return native_check(staged)


def native_check(path: Path) -> str | None:
    """None if the model at `path` has native GroupNormalization, passes the checker and loads
    in onnxruntime (when installed); else the reason it does not."""
    ops = op_counts(onnx.load(str(path), load_external_data=False))
    if "GroupNormalization" not in ops:
        return f"GroupNorm was lowered to {_groupnorm_form(ops)}, not native GroupNormalization"
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        return f"onnx.checker: {_first_line(err)}"
    try:
        import onnxruntime
    except ImportError:
        return None
    try:
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        return f"onnxruntime cannot load it: {_first_line(err)}"
    return None


def _export_torchscript(net, contract: UNetContract, staged: Path) -> None:
    """The UNet at opset 17 through the TorchScript exporter into `staged` (`export_torchscript`)."""
    export_torchscript(net, contract.sample(EXPORT_BATCH, device=_device(net)), staged,
                       input_names=contract.input_names, output_names=contract.output_names,
                       dynamic_axes=contract.dynamic_axes())


def export_torchscript(net, example: tuple, staged: Path, *, input_names: list[str], output_names: list[str],
                       dynamic_axes: dict) -> onnx.ModelProto:
    """Opset 17 through the TorchScript exporter, traced on `example`, into `staged`, cleaned up and
    checked; returns the model written."""
    raw = staged.parent / "raw"
    raw.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)   # asserts, constant shapes: harmless here
        warnings.simplefilter("ignore", DeprecationWarning)         # the legacy exporter, chosen on purpose
        torch.onnx.export(net, example, str(raw / staged.name), dynamo=False, opset_version=FALLBACK_OPSET,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)
    model = clean_up(onnx.load(str(raw / staged.name)))
    shutil.rmtree(raw)
    save_model(model, staged)
    onnx.checker.check_model(str(staged), full_check=True)
    return model


def clean_up(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and dead-node removal (onnxscript optimizer), then shape inference.

    Each step is skipped, with a log line, where its tool is missing or cannot handle the model.
    """
    try:
        import onnxscript.optimizer
    except ImportError:
        log.warning("onnxscript is not installed: no graph clean-up (%s)", ONNX_HINT)
    else:
        before = len(model.graph.node)
        model = onnxscript.optimizer.optimize(model)
        log.info("onnxscript optimizer: %d → %d nodes", before, len(model.graph.node))
    if _weight_bytes(model) < _PROTOBUF_LIMIT:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    else:
        log.info("model over 2 GB: shape inference skipped (TensorRT infers shapes itself)")
    return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Save, with the weights in `<name>.data` beside it when the model is over 2 GB."""
    external = _weight_bytes(model) >= _PROTOBUF_LIMIT
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


@contextmanager
def staged_output(path: Path):
    """A fresh folder beside `path`; on success its `<name>[.data]` replace the targets."""
    with staging_folder(path) as stage:
        yield stage
        data = stage / f"{path.name}.data"
        target_data = path.parent / data.name
        if data.exists():
            os.replace(data, target_data)
        elif target_data.exists():
            target_data.unlink()   # a stale weight file of an earlier, larger export
        os.replace(stage / path.name, path)


def onnx_sha256(path: str | os.PathLike) -> str:
    """SHA-256 over the model file and its external weight file, if any."""
    path = Path(path)
    digest = hashlib.sha256()
    for part in (path, path.parent / f"{path.name}.data"):
        if part.exists():
            with part.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def op_counts(model: onnx.ModelProto) -> collections.Counter:
    """{op type: number of nodes} of the main graph."""
    return collections.Counter(node.op_type for node in model.graph.node)


def _groupnorm_form(ops: collections.Counter) -> str:
    if "GroupNormalization" in ops:
        return "GroupNormalization"
    if "InstanceNormalization" in ops:
        return "InstanceNormalization+Reshape/Mul/Add"
    return "none found"


def onnx_parity(path: str | os.PathLike, model: torch.nn.Module, contract: UNetContract,
                batches: list[int], *, seed: int = 0) -> list[ErrorStats]:
    """ε from onnxruntime against `model` (fp32) on seeded samples of each batch size.

    Runs on onnxruntime's CUDA provider when it has one and the model is on a GPU, else on the CPU;
    both sides compute in full fp32 (no TF32).
    """
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"checking the ONNX file needs onnxruntime: {ONNX_HINT}") from err
    device = _device(model)
    providers: list = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"use_tf32": "0"}))     # full fp32, as the reference
    session = onnxruntime.InferenceSession(str(path), providers=providers)
    results = []
    for i, n in enumerate(batches):
        x, t = contract.sample(n, seed=seed + i, device=device)
        ref = reference_eps(model, x, t)
        feed = dict(zip(contract.input_names, (x.cpu().numpy(), t.cpu().numpy())))
        (out,) = session.run(contract.output_names, feed)
        results.append(error_stats(torch.from_numpy(out), ref))
        log.info("onnxruntime parity at batch %d: max abs %.2e, relative %.2e", n,
                 results[-1].max_abs, results[-1].rel_l2)
    return results


def check_parity(results: list[ErrorStats], dtype: str) -> None:
    """Raise ExportError unless every result is finite and within PARITY_TOLERANCE[dtype]."""
    tol = PARITY_TOLERANCE[dtype]
    bad = [r for r in results if not r.finite or r.rel_l2 > tol]
    if bad:
        worst = max(bad, key=lambda r: r.rel_l2)
        raise ExportError(f"the ONNX model does not match the torch model: relative error {worst.rel_l2:.2e} "
                          f"(max abs {worst.max_abs:.2e}) at batch {worst.batch}, tolerance {tol:.0e} for {dtype}")


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
