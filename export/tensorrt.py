"""ONNX → TensorRT engine: precision, the contract's profile, a timing cache, fp32 islands,
an engine cache keyed by everything that changes an engine, and a check against torch.

Build (TensorRT 10). fp16 by default; bf16, and fp8 for an ONNX model that carries FP8
Q/DQ nodes (TensorRT quantises only explicitly). One optimisation profile, min 1 /
opt N / max N (`UNetContract.profile`). With `fp32_islands` the layers where fp16
overflows or loses the signal are pinned to fp32 under OBEY_PRECISION_CONSTRAINTS:
normalisation (GroupNorm / InstanceNorm), reductions, and the sinusoidal timestep
features (t·f reaches 10³ radians, past fp16's resolution). A normalisation layer computes
in fp32 and hands on its output in the engine's precision (a normalised activation is O(1));
`norm_outputs_fp32` also forces its output to fp32, the first recipe, which puts reformat
layers around every GroupNorm (~60 in ADM-256): build both and time them side by side with
`bench/fps.py --engine A --engine B`. Reductions and the timestep features keep fp32
outputs either way (a sum of squares or t·f does not fit fp16).

Opset. TensorRT's ONNX parser reads opset 21's GroupNormalization (per-channel scale and
bias) from TensorRT 10.9 on; `onnx_opset_for` chooses the export's opset from the installed
version: "auto" (21 when it exports cleanly, else 17) from 10.9 on or without TensorRT, 17 before.

Cache (in `cache_dir`):

    unet-fp16-b16-<key>.engine        the serialized engine
    unet-fp16-b16-<key>.engine.json   its record: the key's fields, the key, the engine's SHA-256,
                                      the build time and the errors measured against torch
    timing-<key of the environment>.cache   TensorRT's timing cache, shared by builds on this GPU

The key hashes the ONNX file (weights included), the precision, the profile, the I/O
contract, the conversion path, the build recipe, the TensorRT version and the GPU's name
and compute capability. Files are written to a temporary name and renamed into place,
the record last. An entry whose record is missing, unreadable or of another key, or whose
engine's hash differs from its record, is rebuilt (or refused with `rebuild=False`). A new
engine is run against the fp32 torch model on random input and refused when its output
has non-finite values or a relative error above ENGINE_TOLERANCE.

TensorRT itself is reached only through a builder object (`TensorRTBuilder`,
`TorchTensorRTBuilder`), so the cache logic runs, and is tested, without it.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib.metadata
import inspect
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Protocol

import torch

from engine.backends.engine_file import (ENVIRONMENT_FIELDS, TRT_HINT, EngineError, engine_key, gpu_environment,
                                         import_tensorrt, read_engine, record_path)
from engine.fileio import atomic_write_bytes, atomic_write_json
from export.contract import EXPORT_BATCH, T, ErrorStats, UNetContract, error_stats, reference_eps
from export.onnx import onnx_sha256

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "bf16", "fp8")
VIAS = ("onnx", "torch-tensorrt")
#: relative L2 error of the engine's ε against the fp32 torch model, per precision
ENGINE_TOLERANCE = {"fp16": 1e-2, "bf16": 5e-2, "fp8": 1.5e-1}
#: lowest compute capability with fast kernels for each precision
MIN_CAPABILITY = {"fp16": (7, 0), "bf16": (8, 0), "fp8": (8, 9)}
#: version of the build recipe (flags, fp32 islands); part of the key, bump when it changes
RECIPE = 2
#: the first TensorRT whose ONNX parser reads opset 21's GroupNormalization
GROUPNORM_OPSET_TENSORRT = (10, 9)
#: names the tensorrt wheel is installed under (the meta package, or the CUDA-specific ones)
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12", "tensorrt_cu13")
RECORD_FORMAT = 1

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def import_torch_tensorrt():
    """The torch_tensorrt module, or ImportError naming the extra that provides it."""
    try:
        import torch_tensorrt
    except ImportError as err:
        raise ImportError(f"torch-tensorrt is not installed: {TRT_HINT}") from err
    return torch_tensorrt


# ---------------------------------------------------------------- environment and key

def installed_tensorrt_version() -> str | None:
    """The installed TensorRT's version, read from its wheel's metadata (nothing imported); None without one."""
    for name in TENSORRT_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def version_tuple(version: str) -> tuple[int, ...]:
    """"10.9.0.34" → (10, 9, 0, 34); the leading numeric fields only ("10.9.0.post1" → (10, 9, 0))."""
    fields = []
    for part in version.split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        fields.append(int(digits))
    return tuple(fields)


def onnx_opset_for(tensorrt_version: str | None) -> tuple[int | str, str]:
    """(the ONNX opset to export for the TensorRT that will parse it, why).

    From TensorRT 10.9 on (or with no TensorRT installed: the file is for onnxruntime or another
    machine) "auto": opset 21 with native GroupNormalization when it exports cleanly, else 17.
    Before 10.9 the parser cannot read opset 21's GroupNormalization: 17 (GroupNorm lowered to
    InstanceNormalization + Reshape/Mul/Add).
    """
    if tensorrt_version is None:
        return "auto", "no TensorRT installed: opset 21 preferred"
    need = ".".join(map(str, GROUPNORM_OPSET_TENSORRT))
    if version_tuple(tensorrt_version) >= GROUPNORM_OPSET_TENSORRT:
        return "auto", f"TensorRT {tensorrt_version} parses opset 21's GroupNormalization (from {need})"
    return 17, f"TensorRT {tensorrt_version} parses opset 21's GroupNormalization only from {need}: opset 17"


def key_fields(onnx_sha: str, contract: UNetContract, precision: str, via: str,
               environment: Mapping, settings: Mapping | None = None) -> dict:
    """Everything that changes an engine, as a JSON-ready dict (`settings`: the builder's own knobs)."""
    missing = [f for f in ENVIRONMENT_FIELDS if f not in environment]
    if missing:
        raise ValueError(f"environment lacks {missing}")
    io = contract.as_dict()
    return {"onnx_sha256": onnx_sha, "precision": precision, "via": via, "recipe": RECIPE,
            "profile": io["profile"], "inputs": io["inputs"], "outputs": io["outputs"],
            "settings": dict(sorted((settings or {}).items())), **{k: environment[k] for k in sorted(environment)}}


def engine_path(cache_dir: str | os.PathLike, contract: UNetContract, precision: str, key: str) -> Path:
    return Path(cache_dir) / f"unet-{precision}-b{contract.batch}-{key[:16]}.engine"


def timing_cache_path(cache_dir: str | os.PathLike, environment: Mapping) -> Path:
    """One timing cache per TensorRT version and GPU (its entries are only valid there)."""
    env_key = engine_key({k: environment[k] for k in sorted(environment)})
    return Path(cache_dir) / f"timing-{env_key[:16]}.cache"


# ---------------------------------------------------------------- builders

class EngineBuilder(Protocol):
    """What the cache needs from TensorRT (faked where TensorRT is absent)."""

    via: str   # the conversion path, one of VIAS

    def environment(self) -> dict:
        """At least tensorrt, gpu, compute_capability."""

    def settings(self) -> dict:
        """The builder's knobs that change the engine (workspace, fp32 islands, …)."""

    def build(self, onnx_path: Path, contract: UNetContract, precision: str, timing_cache: Path) -> bytes:
        """A serialized engine."""

    def load(self, blob: bytes, batch: int) -> EpsModel:
        """An ε model running the serialized engine."""


class TensorRTBuilder:
    """Builds engines from the ONNX file with TensorRT's ONNX parser."""

    via = "onnx"

    def __init__(self, device: str | torch.device = "cuda", *, workspace_gib: float = 8.0,
                 fp32_islands: bool = True, norm_outputs_fp32: bool = False):
        self.trt = import_tensorrt()
        if int(self.trt.__version__.split(".")[0]) >= 11:
            raise EngineError(f"TensorRT {self.trt.__version__}: this builder sets the weakly typed precision "
                              f"flags that TensorRT 11 removed; install tensorrt<11 ({TRT_HINT})")
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise EngineError(f"building a TensorRT engine needs a CUDA GPU, got device {device!r} "
                              f"(CUDA available: {torch.cuda.is_available()})")
        self.workspace_bytes = int(workspace_gib * 2**30)
        self.fp32_islands = fp32_islands
        self.norm_outputs_fp32 = norm_outputs_fp32
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)

    def environment(self) -> dict:
        return gpu_environment(self.device)

    def settings(self) -> dict:
        return {"workspace_bytes": self.workspace_bytes, "fp32_islands": self.fp32_islands,
                "norm_outputs_fp32": self.norm_outputs_fp32}

    def build(self, onnx_path: Path, contract: UNetContract, precision: str, timing_cache: Path) -> bytes:
        trt = self.trt
        _check_capability(self.device, precision)
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)   # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT could not parse {onnx_path}: {errors} (a TensorRT older than the "
                              f"ONNX opset? export with --opset 17)")
        _check_network_io(network, contract)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        self._set_precision(config, network, precision)
        config.add_optimization_profile(_profile(builder, contract))
        _use_timing_cache(config, timing_cache)
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise EngineError("TensorRT failed to build the engine (its log above says why)")
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
        return bytes(blob)

    def _set_precision(self, config, network, precision: str) -> None:
        """Builder flags for `precision`; fp32 islands pinned under OBEY_PRECISION_CONSTRAINTS."""
        trt = self.trt
        flags = {"fp16": ["FP16"], "bf16": ["BF16"], "fp8": ["FP8", "FP16"]}[precision]
        for flag in flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        if precision == "fp8" and not _has_quantize_layers(trt, network):
            raise EngineError("fp8 needs an ONNX model with FP8 Q/DQ nodes (TensorRT quantises explicitly "
                              "only; quantise it with NVIDIA ModelOpt first); this one has none")
        if self.fp32_islands:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            pinned = pin_fp32_islands(trt, network, norm_outputs_fp32=self.norm_outputs_fp32)
            log.info("pinned %d layers to fp32 (normalisation, reductions, timestep features; normalisation "
                     "outputs in %s)", pinned, "fp32" if self.norm_outputs_fp32 else "the engine's precision")

    def load(self, blob: bytes, batch: int) -> EpsModel:
        from engine.backends.tensorrt import TensorRTEps

        return TensorRTEps(blob, batch=batch, device=self.device)


class TorchTensorRTBuilder(TensorRTBuilder):
    """Builds engines from the torch model with torch-tensorrt's dynamo converter (`--via torch-tensorrt`).

    The model is cast to the precision and compiled strongly typed, so ADM's own casts are
    the fp32 islands; the engine keeps the contract's fp32 x / int64 t / fp32 ε and runs on
    the same runner. The ONNX file only enters through the cache key (it hashes the weights).
    """

    via = "torch-tensorrt"

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cuda", *, workspace_gib: float = 8.0):
        super().__init__(device, workspace_gib=workspace_gib, fp32_islands=False)   # strongly typed instead
        self.torch_trt = import_torch_tensorrt()
        self.model = model

    def environment(self) -> dict:
        return {**super().environment(), "torch_tensorrt": self.torch_trt.__version__, "torch": torch.__version__}

    def build(self, onnx_path: Path, contract: UNetContract, precision: str, timing_cache: Path) -> bytes:
        if precision == "fp8":
            raise EngineError("fp8 through torch-tensorrt needs a model quantised with NVIDIA ModelOpt; "
                              "use --precision fp16 or bf16")
        _check_capability(self.device, precision)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        net = copy.deepcopy(self.model).to(self.device).eval()
        net = net.convert_to(dtype) if hasattr(net, "convert_to") else net.to(dtype)   # upstream's fp16 mode
        program = torch.export.export(net, contract.sample(EXPORT_BATCH, device=self.device),
                                      dynamic_shapes=contract.dynamic_shapes())
        inputs = [self.torch_trt.Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=spec.dtype)
                  for spec, (lo, opt, hi) in zip(contract.inputs, contract.profile().values())]
        convert = _serialized_engine_converter(self.torch_trt)
        blob = convert(program, inputs=inputs, use_explicit_typing=True, workspace_size=self.workspace_bytes,
                       timing_cache_path=str(timing_cache))
        return bytes(blob)


#: the options TorchTensorRTBuilder passes to torch-tensorrt's converter
TORCH_TRT_OPTIONS = ("use_explicit_typing", "workspace_size", "timing_cache_path")


def _serialized_engine_converter(torch_trt):
    """torch-tensorrt's exported-program → serialized-engine converter, if this version names every option
    used here (TORCH_TRT_OPTIONS: strong typing, workspace, timing cache) as a parameter; EngineError naming
    what is missing otherwise. An option the signature only catches in **kwargs does not count: the converter
    reads deprecated names from there and drops the rest, so a renamed option would be ignored silently."""
    name = "convert_exported_program_to_serialized_trt_engine"
    convert = getattr(torch_trt.dynamo, name, None)
    if convert is None:
        raise EngineError(f"torch-tensorrt {torch_trt.__version__} lacks {name}; upgrade torch-tensorrt "
                          f"or build with --via onnx")
    params = inspect.signature(convert).parameters
    named = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [option for option in TORCH_TRT_OPTIONS if option not in named]
    if missing:
        near = {option: difflib.get_close_matches(option, sorted(named), n=2, cutoff=0.5) for option in missing}
        hints = "; ".join(f"{o}: it names {', '.join(n)}" for o, n in near.items() if n)
        swallowed = any(p.kind == p.VAR_KEYWORD for p in params.values())
        raise EngineError(f"torch-tensorrt {torch_trt.__version__} lacks {', '.join(missing)}"
                          f"{' (its **kwargs would swallow and ignore them)' if swallowed else ''}"
                          f"{'; ' + hints if hints else ''}; upgrade torch-tensorrt or build with --via onnx")
    return convert


def _check_capability(device: torch.device, precision: str) -> None:
    props = torch.cuda.get_device_properties(device)
    need = MIN_CAPABILITY[precision]
    if (props.major, props.minor) < need:
        raise EngineError(f"{precision} needs compute capability ≥ {need[0]}.{need[1]}; "
                          f"{props.name} has {props.major}.{props.minor}")


def _check_network_io(network, contract: UNetContract) -> None:
    """The parsed network has exactly the contract's inputs and outputs."""
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    if inputs != contract.input_names or outputs != contract.output_names:
        raise EngineError(f"the ONNX model's inputs {inputs} / outputs {outputs} differ from the contract's "
                          f"{contract.input_names} / {contract.output_names}")


def _profile(builder, contract: UNetContract):
    """The contract's min/opt/max shapes as a TensorRT optimisation profile."""
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in contract.profile().items():
        profile.set_shape(name, lo, opt, hi)
    return profile


def _use_timing_cache(config, path: Path) -> None:
    """Start from the timing cache at `path` (an unreadable one is replaced by an empty one)."""
    data = path.read_bytes() if path.exists() else b""
    try:
        cache = config.create_timing_cache(data)
        usable = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
    except (RuntimeError, TypeError):   # bytes TensorRT cannot parse
        usable = False
    if not usable:
        log.warning("timing cache %s is unusable; starting an empty one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _has_quantize_layers(trt, network) -> bool:
    kinds = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def pin_fp32_islands(trt, network, t_name: str = T, *, norm_outputs_fp32: bool = False) -> int:
    """Pin the normalisation and reduce layers and the timestep features to fp32.

    Each pinned layer computes in fp32 (`layer.precision`). Reductions and the timestep features
    also hand on fp32 outputs (`set_output_type`): a sum of squares or t·f does not fit fp16. A
    normalisation layer's output is O(1) and stays in the engine's precision, so TensorRT adds no
    reformat layers around it, unless `norm_outputs_fp32` (the first recipe, kept to compare).
    Softmax is left to TensorRT: its fused attention kernels keep the softmax in fp32
    inside, and pinning it would split them. Layers with an integer or shape-tensor output
    (shape arithmetic) are left alone. Returns the number of layers pinned.
    """
    kinds = {trt.LayerType.NORMALIZATION, trt.LayerType.REDUCE}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    chosen = {layer.name: layer for layer in layers if layer.type in kinds}
    chosen.update((layer.name, layer) for layer in _timestep_layers(trt, layers, t_name))
    floats = {trt.float32, trt.float16, trt.bfloat16}
    chosen = {name: layer for name, layer in chosen.items() if all(
        out.dtype in floats and not out.is_shape_tensor for out in map(layer.get_output, range(layer.num_outputs)))}
    for layer in chosen.values():
        layer.precision = trt.float32
        if layer.type == trt.LayerType.NORMALIZATION and not norm_outputs_fp32:
            continue
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
    return len(chosen)


def _timestep_layers(trt, layers, t_name: str) -> list:
    """The float layers between input t and the first matrix multiply (the sinusoidal features).

    Walks forward from t along float tensors only (shape arithmetic is not followed) and
    stops at matrix multiplies and convolutions, which run in the engine's precision.
    """
    floats = {trt.float32, trt.float16, trt.bfloat16}
    stop = {trt.LayerType.MATRIX_MULTIPLY, trt.LayerType.CONVOLUTION, trt.LayerType.SHAPE}
    consumers = defaultdict(list)
    for layer in layers:
        for j in range(layer.num_inputs):
            tensor = layer.get_input(j)
            if tensor is not None:
                consumers[tensor.name].append(layer)
    found, frontier = {}, [t_name]
    while frontier:
        for layer in consumers[frontier.pop()]:
            if layer.type in stop or layer.name in found:
                continue
            outputs = [layer.get_output(k) for k in range(layer.num_outputs)]
            if not all(out.dtype in floats for out in outputs):
                continue
            found[layer.name] = layer
            frontier.extend(out.name for out in outputs)
    return [layer for layer in found.values() if layer.type != trt.LayerType.CAST]


# ---------------------------------------------------------------- the cache

@dataclass(frozen=True)
class EngineResult:
    """An engine in the cache, its record, and whether this call built it."""

    path: Path
    record: dict
    built: bool

    def as_dict(self) -> dict:
        r = self.record
        return {"path": str(self.path), "key": r["key"], "built_now": self.built, "fields": r["fields"],
                "build_seconds": r["build_seconds"], "errors": r["errors"], "tolerance": r["tolerance"],
                "engine_bytes": r["engine_bytes"], "created": r["created"]}


def get_engine(onnx_path: str | os.PathLike, contract: UNetContract, precision: str,
               cache_dir: str | os.PathLike, *, builder: EngineBuilder, model: torch.nn.Module | None,
               rebuild: bool = True) -> EngineResult:
    """The cached engine for these inputs, built (and checked against `model`) when missing.

    A cached entry that fails its checks is rebuilt, or refused with EngineError when
    `rebuild` is False. `model` is the fp32 torch model on the builder's GPU; None skips the
    comparison (logged).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    onnx_path = Path(onnx_path)
    environment = builder.environment()
    fields = key_fields(onnx_sha256(onnx_path), contract, precision, builder.via, environment, builder.settings())
    key = engine_key(fields)
    path = engine_path(cache_dir, contract, precision, key)
    if path.exists() or record_path(path).exists():
        try:
            _, record = read_engine(path, fields)
            log.info("using cached engine %s", path)
            return EngineResult(path, record, built=False)
        except EngineError as err:
            if not rebuild:
                raise
            log.warning("%s; rebuilding", err)
    timing = timing_cache_path(cache_dir, environment)
    record = _build(onnx_path, contract, precision, path, fields, key, builder, model, timing)
    return EngineResult(path, record, built=True)


def _build(onnx_path, contract, precision, path, fields, key, builder, model, timing) -> dict:
    """Build, compare with `model`, then write the engine and (last) its record."""
    log.info("building a %s engine from %s (batch 1…%d); this takes minutes", precision, onnx_path, contract.batch)
    start = time.perf_counter()
    blob = builder.build(onnx_path, contract, precision, timing)
    seconds = time.perf_counter() - start
    if model is None:
        log.warning("no torch model given: the engine is not compared with it")
        errors = []
    else:
        errors = verify_engine(builder.load(blob, contract.batch), model, contract, precision)
    record = {"format": RECORD_FORMAT, "key": key, "fields": fields, "engine_sha256": hashlib.sha256(blob).hexdigest(),
              "engine_bytes": len(blob), "build_seconds": round(seconds, 3),
              "errors": [e.as_dict() for e in errors], "tolerance": ENGINE_TOLERANCE[precision],
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_bytes(path, blob)
    atomic_write_json(record_path(path), record)
    log.info("engine written: %s (%.1f MB, built in %.0f s)", path, len(blob) / 1e6, seconds)
    return record


def verify_engine(eps: EpsModel, model: torch.nn.Module, contract: UNetContract, precision: str,
                  *, seed: int = 0) -> list[ErrorStats]:
    """ε of the engine against the fp32 torch model at batch N and batch 1 (random x, t).

    Raises EngineError for non-finite outputs or a relative error above ENGINE_TOLERANCE.
    """
    tol = ENGINE_TOLERANCE[precision]
    device = next(model.parameters()).device
    results = []
    for i, n in enumerate(sorted({contract.batch, contract.min_batch}, reverse=True)):
        x, t = contract.sample(n, seed=seed + i, device=device)
        with torch.no_grad():
            stats = error_stats(eps(x, t), reference_eps(model, x, t))
        log.info("engine vs torch at batch %d: max abs %.2e, relative %.2e (tolerance %.0e)",
                 n, stats.max_abs, stats.rel_l2, tol)
        if not stats.finite:
            raise EngineError(f"the {precision} engine gives non-finite outputs at batch {n} (an overflow in "
                              f"reduced precision); refused")
        if stats.rel_l2 > tol:
            raise EngineError(f"the {precision} engine is off by a relative error of {stats.rel_l2:.2e} at batch "
                              f"{n} (max abs {stats.max_abs:.2e}), past the tolerance {tol:.0e}; refused")
        results.append(stats)
    return results
