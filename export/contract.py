"""The export contract of the ADM UNet, declared once: read by the ONNX export and the engine build.

    eps = unet(x, t)
    x    [n, 3, H, W]  float32   the noisy frames x_t (the frames are the batch)
    t    [n]           int64     raw DDPM timesteps in [0, 1000)
    eps  [n, C, H, W]  float32   ε in channels 0–2 (and the learned-Σ interpolant in 3–5 when C = 6)

n is the one dynamic axis ("batch"). An engine for N frames serves 1 ≤ n ≤ N and is tuned
for n = N: the optimisation profile is min 1 / opt N / max N. Whatever precision the network
computes in (fp16, bf16), the interface stays fp32 in and fp32 out, so every backend is a
drop-in ε model for the sampler.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from engine.backends.engine_file import EPS, T, X   # the tensor names
from engine.unet import IN_CHANNELS, ADMConfig

BATCH_AXIS = "batch"
NUM_TIMESTEPS = 1000
#: batch of the example input the exporters trace with (torch.export specialises sizes 0 and 1)
EXPORT_BATCH = 2

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the interface; BATCH_AXIS marks the dynamic dimension."""

    name: str
    dtype: torch.dtype
    shape: tuple[int | str, ...]

    def concrete(self, batch: int) -> Shape:
        """The shape with the batch axis set to `batch`."""
        return tuple(batch if d == BATCH_AXIS else d for d in self.shape)

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": str(self.dtype).removeprefix("torch."), "shape": list(self.shape)}


@dataclass(frozen=True)
class UNetContract:
    """Names, dtypes, the dynamic batch axis and the min/opt/max profile of one exported UNet."""

    image_size: int
    out_channels: int
    batch: int          # N: the profile's opt and max
    min_batch: int = 1

    def __post_init__(self):
        if self.batch < 1:
            raise ValueError(f"batch must be ≥ 1, got {self.batch}")
        if not 1 <= self.min_batch <= self.batch:
            raise ValueError(f"min_batch must be in [1, {self.batch}], got {self.min_batch}")
        if self.image_size < 1 or self.out_channels < 1:
            raise ValueError(f"bad sizes: image_size={self.image_size}, out_channels={self.out_channels}")

    @classmethod
    def for_config(cls, config: ADMConfig, batch: int) -> UNetContract:
        """The contract of `ADMUNet(config)` for engines of up to `batch` frames."""
        return cls(image_size=config.image_size, out_channels=config.out_channels, batch=batch)

    @property
    def inputs(self) -> tuple[TensorSpec, TensorSpec]:
        hw = (self.image_size, self.image_size)
        return (TensorSpec(X, torch.float32, (BATCH_AXIS, IN_CHANNELS, *hw)),
                TensorSpec(T, torch.int64, (BATCH_AXIS,)))

    @property
    def outputs(self) -> tuple[TensorSpec]:
        hw = (self.image_size, self.image_size)
        return (TensorSpec(EPS, torch.float32, (BATCH_AXIS, self.out_channels, *hw)),)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def profile(self) -> dict[str, tuple[Shape, Shape, Shape]]:
        """{input name: (min, opt, max) shape}: min_batch / N / N."""
        return {s.name: (s.concrete(self.min_batch), s.concrete(self.batch), s.concrete(self.batch))
                for s in self.inputs}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The batch axis of every input and output (TorchScript exporter's `dynamic_axes`)."""
        return {s.name: {0: BATCH_AXIS} for s in (*self.inputs, *self.outputs)}

    def dynamic_shapes(self) -> dict[str, dict[int, torch.export.Dim]]:
        """The batch axis of every input, one shared symbol (torch.export's `dynamic_shapes`)."""
        batch = torch.export.Dim(BATCH_AXIS, min=1)
        return {s.name: {0: batch} for s in self.inputs}

    def sample(self, batch: int | None = None, *, seed: int = 0,
               device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """A seeded example input: x ~ N(0, I) [n, 3, H, W] float32, t uniform in [0, 1000) [n] int64."""
        n = self.batch if batch is None else batch
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(self.inputs[0].concrete(n), generator=gen)
        t = torch.randint(0, NUM_TIMESTEPS, (n,), generator=gen)
        return x.to(device), t.to(device)

    def as_dict(self) -> dict:
        """The contract for manifests: tensors, profile and batch range."""
        return {"inputs": [s.as_dict() for s in self.inputs],
                "outputs": [s.as_dict() for s in self.outputs],
                "profile": {name: [list(s) for s in shapes] for name, shapes in self.profile().items()},
                "batch": {"min": self.min_batch, "opt": self.batch, "max": self.batch}}


@dataclass(frozen=True)
class ErrorStats:
    """How far an exported network's ε is from the torch model's on one input batch."""

    batch: int
    max_abs: float     # max |out − ref|
    rel_l2: float      # ‖out − ref‖₂ / ‖ref‖₂, the number the tolerances apply to
    ref_max: float     # max |ref|, the scale max_abs reads against
    finite: bool       # every output value finite

    def as_dict(self) -> dict:
        return {"batch": self.batch, "max_abs": self.max_abs, "rel_l2": self.rel_l2,
                "ref_max": self.ref_max, "finite": self.finite}


@contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off for cuDNN's convolutions and CUDA's matmuls inside the block, as they were after.

    PyTorch lets cuDNN run fp32 convolutions in TF32 by default (a 10-bit mantissa: about 1e-3
    relative error on a UNet forward), which would swamp the 1e-4 of the fp32 parity check.
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


def reference_eps(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The reference every check compares with: the fp32 model's ε in eval mode, in full fp32."""
    with torch.no_grad(), full_fp32():
        return model.eval()(x, t)


def error_stats(out: torch.Tensor, ref: torch.Tensor) -> ErrorStats:
    """Compare out with the reference ref (both [n, C, H, W]) in float64."""
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"output shape {tuple(out.shape)} differs from the reference's {tuple(ref.shape)}")
    out = torch.as_tensor(out).detach().to("cpu", torch.float64)
    ref = torch.as_tensor(ref).detach().to("cpu", torch.float64)
    finite = bool(torch.isfinite(out).all())
    diff = out - ref
    ref_norm = float(ref.norm())
    rel = float(diff.norm()) / ref_norm if ref_norm > 0 else float(diff.norm())
    return ErrorStats(batch=int(ref.shape[0]), max_abs=float(diff.abs().max()),
                      rel_l2=rel if finite else math.inf, ref_max=float(ref.abs().max()), finite=finite)
