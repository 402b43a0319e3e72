"""The TensorRT ε model: a serialized engine behind the sampler's eps(x, t) interface.

Engines come from `python -m engine.build` (export/tensorrt.py; the file format is
engine.backends.engine_file's), through TensorRT's ONNX
parser (`--via onnx`) or torch-tensorrt's converter (`--via torch-tensorrt`); both give
an engine with the export contract's interface, run here the same way.

Static buffers first, capture after (TensorRT demo `Engine.infer`): the input and output
buffers are allocated once at the engine's batch. Each batch size n that is run gets its
own execution context, with its input shapes set to n once, and all contexts share one
scratch buffer (they run one after another on one stream): a CUDA graph holds the state
of the context it was captured from, so graphs of different batches must not share one.
A call copies x and t in, runs the engine and returns a copy of ε. Outside a CUDA-graph
capture each batch runs as its own CUDA graph, captured on first use and replayed after
(or is enqueued with execute_async_v3 when `graphs=False`), on the runner's own stream
ordered after the caller's; inside a capture (the Solver capturing its whole reverse loop)
the engine is enqueued on the capturing stream and becomes part of the caller's graph.
Neither path synchronises with the host.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from engine.streams import on_stream
from engine.backends.engine_file import EPS, T, X, EngineError, gpu_environment, import_tensorrt, read_engine

log = logging.getLogger(__name__)
Tensor = torch.Tensor


class TensorRTEps:
    """ε(x [n, 3, H, W] float32, t [n] int64) → [n, C, H, W] float32 from a TensorRT engine, 1 ≤ n ≤ batch.

    `engine` is a file written by engine.build (its record is checked against this
    TensorRT and GPU, its bytes against the recorded hash) or the bytes of a fresh build.
    """

    def __init__(self, engine: str | os.PathLike | bytes, *, batch: int, device: str | torch.device = "cuda",
                 graphs: bool = True):
        self._trt = trt = import_tensorrt()
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"TensorRT engines run on a CUDA device, got {device!r}")
        self.graphs = graphs
        blob = engine if isinstance(engine, (bytes, bytearray)) else self._read(Path(engine))
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = self._runtime.deserialize_cuda_engine(blob)
            if self._engine is None:
                raise EngineError("TensorRT could not deserialize the engine (corrupt, or built by another "
                                  "TensorRT version or for another GPU); rebuild it with python -m engine.build")
            self._names = _io_names(trt, self._engine)
            self.batch = _check_batch(self._engine, self._names[X], batch)
            self._buffers = self._allocate(trt, batch)
            self._scratch = torch.empty(max(_scratch_bytes(self._engine), 1), dtype=torch.uint8, device=self.device)
            self._stream = torch.cuda.Stream(self.device)
            self._contexts: dict[int, object] = {}              # batch → its execution context
            self._graph_by_batch: dict[int, torch.cuda.CUDAGraph] = {}
            self._warm_up()

    @property
    def image_size(self) -> int:
        """The square frame size the engine takes (its input's last axis): larger frames go through it as tiles."""
        return int(self._buffers[X].shape[-1])

    def _read(self, path: Path) -> bytes:
        blob, record = read_engine(path, gpu_environment(self.device))
        log.info("engine %s: %s, built %s", path, record["fields"]["precision"], record.get("created"))
        return blob

    def _allocate(self, trt, batch: int) -> dict[str, Tensor]:
        """One buffer per I/O tensor at `batch`: the static buffers every context is bound to."""
        return {role: torch.zeros((batch, *tuple(self._engine.get_tensor_shape(name))[1:]),
                                  dtype=_torch_dtype(trt, self._engine.get_tensor_dtype(name)), device=self.device)
                for role, name in self._names.items()}

    def _warm_up(self) -> None:
        """One run at the full batch (creates its context, captures its graph), then wait for it."""
        x = torch.zeros_like(self._buffers[X], dtype=torch.float32)
        t = torch.zeros(self.batch, dtype=torch.int64, device=self.device)
        self(x, t)
        torch.cuda.current_stream(self.device).synchronize()

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        n = x.shape[0]
        if not 1 <= n <= self.batch or x.shape[1:] != self._buffers[X].shape[1:] or tuple(t.shape) != (n,):
            raise ValueError(f"expected x [n, {', '.join(map(str, self._buffers[X].shape[1:]))}] and t [n] "
                             f"with 1 ≤ n ≤ {self.batch}, got x {tuple(x.shape)} and t {tuple(t.shape)}")
        with torch.cuda.device(self.device):
            self._buffers[X][:n].copy_(x)
            self._buffers[T][:n].copy_(t)
            if torch.cuda.is_current_stream_capturing():
                if n not in self._contexts:
                    raise RuntimeError(f"batch {n} was not run before this CUDA-graph capture; "
                                       f"call the model once with this batch first")
                self._enqueue(self._contexts[n], torch.cuda.current_stream(self.device))
            else:
                with on_stream(self._stream, self.device):
                    if self.graphs:
                        self._graph(n).replay()
                    else:
                        self._enqueue(self._context(n), self._stream)
            return self._buffers[EPS][:n].clone()

    def _context(self, n: int):
        """The execution context for batch n: bound to the static buffers and the shared scratch,
        input shapes set to n, run once (its first run does host work that a capture cannot hold)."""
        context = self._contexts.get(n)
        if context is None:
            strategy = self._trt.ExecutionContextAllocationStrategy.USER_MANAGED      # memory: the shared scratch
            context = self._engine.create_execution_context(strategy)
            if context is None:
                raise EngineError("TensorRT could not create an execution context")
            if hasattr(context, "set_device_memory"):                  # TensorRT ≥ 10.1
                context.set_device_memory(self._scratch.data_ptr(), self._scratch.numel())
            else:
                context.device_memory = self._scratch.data_ptr()
            for role, name in self._names.items():
                if not context.set_tensor_address(name, self._buffers[role].data_ptr()):
                    raise EngineError(f"TensorRT refused the buffer of {name!r}")
                if role != EPS and not context.set_input_shape(name, (n, *self._buffers[role].shape[1:])):
                    raise EngineError(f"TensorRT refused batch {n} for {name!r}")
            self._enqueue(context, torch.cuda.current_stream(self.device))
            self._contexts[n] = context
        return context

    def _enqueue(self, context, stream: torch.cuda.Stream) -> None:
        if not context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT failed to enqueue the engine")

    def _graph(self, n: int) -> torch.cuda.CUDAGraph:
        """The CUDA graph of one run at batch n (on its own context), captured on first use."""
        graph = self._graph_by_batch.get(n)
        if graph is None:
            context = self._context(n)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.device(self.device), \
                    torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                self._enqueue(context, self._stream)
            self._graph_by_batch[n] = graph
        return graph


def _scratch_bytes(engine) -> int:
    """Device memory one execution context needs (the largest over the profile)."""
    size = getattr(engine, "device_memory_size_v2", None)               # TensorRT ≥ 10.1
    return int(engine.device_memory_size if size is None else size)


def _io_names(trt, engine) -> dict[str, str]:
    """{x, t, eps} (the contract's names) → the engine's tensor names: the same, else told apart by rank."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 2 or len(outputs) != 1:
        raise EngineError(f"expected an engine with inputs x, t and one output, got inputs {inputs}, outputs {outputs}")
    by_rank = {len(engine.get_tensor_shape(n)): n for n in inputs}
    io = {X: X if X in inputs else by_rank.get(4), T: T if T in inputs else by_rank.get(1), EPS: outputs[0]}
    if io[X] is None or io[T] is None:
        raise EngineError(f"cannot tell x [n, 3, H, W] from t [n] among the engine's inputs {inputs}")
    return io


def _check_batch(engine, x_name: str, batch: int) -> int:
    """`batch` if the engine's profile serves it, else EngineError."""
    lo, _, hi = engine.get_tensor_profile_shape(x_name, 0)
    if not lo[0] <= batch <= hi[0]:
        raise EngineError(f"the engine serves batches {lo[0]}…{hi[0]}, not {batch}; rebuild it with "
                          f"python -m engine.build --batch {batch}")
    return batch


def _torch_dtype(trt, dtype) -> torch.dtype:
    """The torch dtype of a TensorRT I/O tensor type."""
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
             trt.int32: torch.int32, trt.int64: torch.int64}
    if dtype not in table:
        raise EngineError(f"unsupported engine I/O type {dtype}")
    return table[dtype]
