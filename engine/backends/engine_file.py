"""The TensorRT engine file and its record: one home for the builder (export.tensorrt) and the runtime
(engine.backends.tensorrt).

    unet-fp16-b16-<key>.engine        the serialized engine
    unet-fp16-b16-<key>.engine.json   its record: {"fields": everything that changes the engine,
                                      "key": engine_key(fields), "engine_sha256", "created", …}

Reading an engine checks the record's key against its fields, the fields against what the
caller expects (the TensorRT version and the GPU, `gpu_environment`) and the engine's bytes
against the recorded hash. Needs neither onnx nor the exporter; TensorRT only for the
environment.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import torch

#: the engine's I/O tensor names: eps = unet(x, t) (export.contract declares their shapes and dtypes)
X, T, EPS = "x", "t", "eps"
TRT_HINT = "pip install 'video-inverse-engine[tensorrt]'"
ENVIRONMENT_FIELDS = ("tensorrt", "gpu", "compute_capability")


class EngineError(RuntimeError):
    """An engine that cannot be built, loaded or trusted."""


def import_tensorrt():
    """The tensorrt module, or ImportError naming the extra that provides it."""
    try:
        import tensorrt
    except ImportError as err:
        raise ImportError(f"TensorRT is not installed: {TRT_HINT}") from err
    return tensorrt


def gpu_environment(device: str | torch.device = "cuda") -> dict:
    """The installed TensorRT version and the GPU's name and compute capability."""
    trt = import_tensorrt()
    props = torch.cuda.get_device_properties(torch.device(device))
    return {"tensorrt": trt.__version__, "gpu": props.name,
            "compute_capability": f"{props.major}.{props.minor}"}


def engine_key(fields: Mapping) -> str:
    """The cache key: SHA-256 of the canonical JSON of `fields`."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def record_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def read_record(engine: Path) -> dict:
    """The record beside `engine`, or EngineError saying why there is none to trust."""
    path = record_path(engine)
    if not path.exists():
        raise EngineError(f"{engine} has no record {path.name} beside it (an interrupted write, or an "
                          f"engine not built by python -m engine.build)")
    try:
        record = json.loads(path.read_text())
        fields, key = record["fields"], record["key"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EngineError(f"the record {path} is unreadable ({err}); it is corrupt") from err
    if engine_key(fields) != key:
        raise EngineError(f"the record {path} is corrupt: its key does not match its fields")
    return record


def describe_mismatch(recorded: Mapping, expected: Mapping) -> str:
    """'tensorrt: engine 10.3 vs wanted 10.7; gpu: …' for each expected field that differs."""
    diffs = [f"{k}: engine {_short(recorded.get(k))} vs wanted {_short(v)}"
             for k, v in expected.items() if recorded.get(k) != v]
    return "; ".join(diffs)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:12] + "…"


def read_engine(engine: str | os.PathLike, expected: Mapping) -> tuple[bytes, dict]:
    """The engine's bytes and record, after checking the record against `expected` fields
    (a subset of the key's) and the bytes against the record's hash. EngineError otherwise."""
    engine = Path(engine)
    if not engine.is_file():
        raise EngineError(f"engine file not found: {engine}")
    record = read_record(engine)
    mismatch = describe_mismatch(record["fields"], expected)
    if mismatch:
        raise EngineError(f"{engine} was built for something else ({mismatch}); rebuild it with "
                          f"python -m engine.build")
    blob = engine.read_bytes()
    if hashlib.sha256(blob).hexdigest() != record.get("engine_sha256"):
        raise EngineError(f"{engine} is corrupt: its SHA-256 differs from the one recorded when it was built")
    return blob, record
