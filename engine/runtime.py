"""The embedding API: a `Solver` built once, then `solve(y)` called cheaply and repeatedly.

    solver = Solver(load_adm("256x256_diffusion_uncond.pt"), SolverConfig.from_task("temporal-k7", device="cuda"))
    x = solver.solve(y, seed=0)            # y: torch / numpy / cupy, [N, 3, H', W'] in [0, 1]

Construction allocates every static buffer (measurement, noise, output), warms the
network up and, for the graph backends, captures the whole reverse loop (all K
steps: network, Tweedie, CG, update) as one CUDA graph. `solve` then copies y and
the seed's noise into the static buffers and replays.

Thread-safety: a Solver owns its buffers, so calls are serialised by a lock, and on a GPU
each call runs on the Solver's own stream, ordered after the caller's current stream (the
caller's stream then waits for it): callers on different streams or threads cannot overwrite
the buffers of a replay still in flight. Run one Solver per thread for concurrency; graphs
are captured in thread-local mode, so other threads may keep using the GPU meanwhile.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from engine.backends import BACKENDS, GRAPH_BACKENDS, PRECISIONS, torch_eps
from engine.errors import InputError
from engine.operators import BACKENDS as OPERATOR_BACKENDS
from engine.operators import from_spec
from engine.operators.common import AUTO, resolve_backend
from engine.sampler import NOISE_MODES, check_measurement, draw_noise, reverse_process, step_kernels
from engine.schedule import ddim_steps, warm_start
from engine.streams import on_stream
from engine.tasks import get_task

log = logging.getLogger(__name__)
Tensor = torch.Tensor


@dataclass(frozen=True)
class SolverConfig:
    """Everything a Solver is built for; validated once in `__post_init__`."""

    spec: str                        # degradation, see engine.operators.from_spec
    frames: int = 16                 # N
    size: int = 256                  # H = W of the clean clip (the model's size)
    nfe: int = 20                    # K
    eta: float = 0.15                # η
    cg_iters: int = 5                # l
    gamma: Optional[float] = None    # None: noiseless CG; γ: regularised CG for noisy y
    noise: str = "shared"            # "shared" (the paper) or "independent" (its ablation)
    backend: str = "torch"           # see engine.backends
    precision: str = "fp32"          # network precision: fp32 | fp16 | bf16
    kernels: str = "auto"            # operators, steps, UNet norms: torch | triton | auto (triton on CUDA)
    channels_last: bool = False
    cudnn_benchmark: bool = False    # cuDNN times its convolution algorithms once per shape (engine.backends.torch)
    device: str = "cpu"
    mask_seed: int = 0               # random inpainting masks
    start: Optional[int] = None      # t₀ of a warm start (engine.schedule.warm_start); None: T, the cold start

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}; accepted: {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; accepted: {', '.join(PRECISIONS)}")
        if self.noise not in NOISE_MODES:
            raise InputError(f"noise must be one of {NOISE_MODES}, got {self.noise!r}")
        if self.kernels not in (*OPERATOR_BACKENDS, AUTO):
            raise InputError(f"kernels must be torch, triton or auto, got {self.kernels!r}")
        if self.frames < 1 or self.size < 1 or self.cg_iters < 0 or not 1 <= self.nfe <= 1000:
            raise InputError(f"bad sizes: frames={self.frames}, size={self.size}, nfe={self.nfe}, "
                             f"cg_iters={self.cg_iters}")
        if self.backend in GRAPH_BACKENDS and not torch.device(self.device).type == "cuda":
            raise InputError(f"backend {self.backend!r} captures CUDA graphs and needs a CUDA device, "
                             f"got {self.device!r}")
        if self.start is not None and not self.nfe <= self.start <= 1000:
            raise InputError(f"start must be in [nfe, 1000] = [{self.nfe}, 1000], got {self.start}")

    @classmethod
    def from_task(cls, name: str, **overrides) -> "SolverConfig":
        """The paper's settings for task `name` (engine.tasks), with any field overridden."""
        task = get_task(name)
        return cls(**{**dict(spec=task.spec, nfe=task.nfe, eta=task.eta, cg_iters=task.cg_iters), **overrides})

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.frames, 3, self.size, self.size)

    def operator_backend(self) -> str:
        """`kernels`, or for "auto": Triton on CUDA (installed, within its temporal kernels' frame limit),
        else torch (engine.operators.common.resolve_backend)."""
        return resolve_backend(self.kernels, self.device, self.frames)

    def norm_kernels(self) -> str:
        """How the ADM UNet's GroupNorms run: `kernels`, or for "auto" the fused Triton kernel on CUDA
        when Triton is installed (it has no frame limit) and torch ops elsewhere."""
        return resolve_backend(self.kernels, self.device, frames=1)   # the norm has no frame limit

    def to_dict(self) -> dict:
        return asdict(self)


def load_model(checkpoint=None, *, backend: str = "torch", engine=None, size: int = 256, device="cpu"):
    """(ε model, image size) for a Solver: a TensorRT engine file, an ADM checkpoint or the weight-free prior.

    backend "tensorrt" takes the engine file in the model's place; otherwise `checkpoint` is
    loaded (engine.checkpoint.load_adm, never random weights), and without one the
    weight-free Gaussian prior restores frames of `size`.
    """
    if backend == "tensorrt":
        if engine is None:
            raise InputError("--backend tensorrt needs --engine FILE (build one with python -m engine.build)")
        return engine, size
    if engine is not None:
        raise InputError("--engine is for --backend tensorrt")
    if checkpoint is None:
        from engine.priors import GaussianPrior

        log.warning("no --checkpoint: using the weight-free Gaussian prior; the ADM checkpoint gives the paper's quality")
        return GaussianPrior(), size
    from engine.checkpoint import load_adm

    model = load_adm(checkpoint, device=device)
    return model, model.config.image_size


def as_tensor(y, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A torch view of y (torch, numpy, or anything with __dlpack__ such as cupy), moved if needed."""
    if isinstance(y, Tensor):
        t = y
    elif hasattr(y, "__dlpack__"):
        try:
            t = torch.from_dlpack(y)                                   # cupy, jax, …: zero copy
        except (BufferError, TypeError, RuntimeError):
            t = torch.as_tensor(y)
    else:
        t = torch.as_tensor(y)
    return t.to(device=device, dtype=dtype)


def measure(op, x: Tensor, *, sigma_y: float = 0.0, seed: int = 0) -> Tensor:
    """y = A x + σ_y·w, w ~ N(0, I) drawn on the CPU from `seed`.  x: op.in_shape, in [0, 1]"""
    if tuple(x.shape) != tuple(op.in_shape):
        raise InputError(f"clip has shape {tuple(x.shape)}, the operator takes {tuple(op.in_shape)}")
    y = op.A(x)
    if sigma_y > 0:
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
        y = y + sigma_y * w.to(y.device)
    return y


class Solver:
    """Algorithm 1 for one fixed (model, operator, sizes, settings); see the module docstring."""

    def __init__(self, model, config: SolverConfig, *, eps_model: Callable | None = None):
        """`model`: an ADMUNet (or any nn.Module ε model), a weight-free prior, or a TensorRT
        engine path for backend "tensorrt". `eps_model` overrides how it is evaluated."""
        self.config = config
        self.device = torch.device(config.device)
        self.op = from_spec(config.spec, config.shape, seed=config.mask_seed, device=self.device,
                            dtype=torch.float32, backend=config.operator_backend())
        self.steps = ddim_steps(config.nfe, config.eta, start=config.start)
        self.warm = warm_start(config.start, config.cg_iters)
        self.eps_model = eps_model or self._make_eps(model)
        self.kernels = step_kernels(self.op.backend)
        self._lock = threading.Lock()
        b = 1 if config.noise == "shared" else config.frames
        self._E = torch.zeros((config.nfe + 1, b, *config.shape[1:]), device=self.device)  # E_b, all steps
        self._y = torch.zeros(self.op.out_shape, device=self.device)   # y
        self._out: Tensor | None = None
        self._graph = None
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        if config.backend in GRAPH_BACKENDS:
            self._capture()

    def _make_eps(self, model) -> Callable:
        cfg = self.config
        if cfg.backend == "tensorrt":
            from engine.backends.tensorrt import TensorRTEps

            return TensorRTEps(model, batch=cfg.frames, device=self.device)
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device)
        return torch_eps(model, precision=cfg.precision, channels_last=cfg.channels_last,
                         compile=cfg.backend == "compile", kernels=cfg.norm_kernels(),
                         cudnn_benchmark=cfg.cudnn_benchmark)

    def _loop(self, callback=None) -> Tensor:
        cfg = self.config
        return reverse_process(self.eps_model, self._y, self.op, self._E, self.steps,
                               cg_iters=cfg.cg_iters, gamma=cfg.gamma, callback=callback, kernels=self.kernels,
                               warm=self.warm)

    def _capture(self) -> None:
        """Warm up on the Solver's stream, then capture the whole reverse loop as one CUDA graph."""
        with self._on_own_stream(), torch.no_grad():
            self._loop()
        with torch.cuda.device(self.device):
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph, capture_error_mode="thread_local"), torch.no_grad():
                self._out = self._loop()
        log.info("captured the reverse loop (%d steps) as one CUDA graph", len(self.steps))

    def _on_own_stream(self):
        """On a GPU: the block runs on the Solver's stream (engine.streams.on_stream). On the CPU: nothing."""
        return nullcontext() if self._stream is None else on_stream(self._stream, self.device)

    def measure(self, x, *, sigma_y: float = 0.0, seed: int = 0) -> Tensor:
        """y = A x + σ_y·w with this solver's operator (see `measure`).  x: [N, 3, H, W] in [0, 1]"""
        return measure(self.op, as_tensor(x, self.device, torch.float32), sigma_y=sigma_y, seed=seed)

    def solve(self, y, *, seed: int = 0, callback=None) -> Tensor:
        """The restored clip [N, 3, H, W] in [0, 1] on the solver's device, from measurement y."""
        y = as_tensor(y, self.device, torch.float32)
        check_measurement(y, self.op)
        if callback is not None and self._graph is not None:
            raise InputError("a captured solver cannot call back per step; use backend 'torch' for callbacks")
        noise = draw_noise(seed, self.config.nfe, self.config.shape, self.config.noise)
        with self._lock, torch.no_grad():
            with self._on_own_stream() as caller:
                self._y.copy_(y)
                self._E.copy_(noise)
                if self._graph is not None:
                    self._graph.replay()
                    out = self._out.clone()
                else:
                    out = self._loop(callback)
            if caller is not None:
                out.record_stream(caller)       # made on the Solver's stream, used on the caller's
            return out
