"""The PyTorch ε model: eager or torch.compile, fp32/fp16/bf16, optional channels_last."""

from __future__ import annotations

from contextlib import contextmanager
from copy import deepcopy
from typing import Callable, Iterator

import torch

Tensor = torch.Tensor
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def to_precision(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`model` in `dtype`, in place: the ADM UNet as upstream's fp16 mode (ADMUNet.convert_to:
    block convolutions only), any other module wholesale. Returns the module."""
    return model.convert_to(dtype) if hasattr(model, "convert_to") else model.to(dtype=dtype)


def prepared_copy(model: torch.nn.Module, *, device, dtype: torch.dtype, memory_format: torch.memory_format,
                  kernels: str) -> torch.nn.Module:
    """The module a Solver runs: `model` itself when it already has the device, precision, layout and
    norm kernels asked for, else a deep copy converted to them. The caller's module is never changed
    (a second Solver at another precision would round the first one's weights, and a captured graph
    would replay with pointers to freed parameters)."""
    if _already(model, torch.device(device), dtype, memory_format, kernels):
        return model
    copy = deepcopy(model).to(device)
    copy = to_precision(copy, dtype).to(memory_format=memory_format)
    if hasattr(copy, "use_kernels"):
        copy.use_kernels(kernels)
    return copy


def _already(model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
             memory_format: torch.memory_format, kernels: str) -> bool:
    """Whether `model` already runs on `device`, in `dtype` (ADMUNet.dtype, or every parameter's),
    with its 4-d weights in `memory_format` and its GroupNorms on `kernels`."""
    params = list(model.parameters())
    compute = {model.dtype} if hasattr(model, "convert_to") else {q.dtype for q in params}
    norms = {m.kernels for m in model.modules() if type(m).__name__ == "GroupNorm32"}
    return (all(q.device == device for q in params) and compute <= {dtype} and norms <= {kernels}
            and all(q.dim() != 4 or q.is_contiguous(memory_format=memory_format) for q in params))


def torch_eps(model, *, precision: str = "fp32", channels_last: bool = False, compile: bool = False,
              kernels: str = "torch", device=None) -> Callable[[Tensor, Tensor], Tensor]:
    """ε(x_t [N, 3, H, W], t [N]) → [N, C_out, H, W] in the model's precision.

    `model` is an `nn.Module` (the ADM UNet, run from `prepared_copy`: the caller's module is
    left as it was) or any callable ε model, such as the weight-free prior, which runs in its
    input's dtype. kernels="triton" runs the ADM UNet's GroupNorm + scale-shift + SiLU as one
    fused Triton kernel (ADMUNet.use_kernels); with `compile` they must be "torch": torch.compile fuses
    them itself (engine.runtime.kernels_run decides so for the compile backend).
    `device`: where the network runs (default: where its parameters are).
    fp32 convolutions on CUDA follow torch.backends.cudnn.allow_tf32 (PyTorch's default: TF32).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if compile and kernels != "torch":
        raise ValueError(f"torch.compile fuses the norms itself: compile=True takes kernels='torch', got {kernels!r}")
    if not isinstance(model, torch.nn.Module):
        return model
    dtype = PRECISIONS[precision]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if device is None:
        device = next(model.parameters()).device
    net = prepared_copy(model, device=device, dtype=dtype, memory_format=fmt,
                        kernels=kernels).eval()
    net = torch.compile(net, dynamic=False) if compile else net

    @torch.no_grad()
    def eps(x: Tensor, t: Tensor) -> Tensor:
        out = net(x.to(dtype).contiguous(memory_format=fmt), t)
        return out.contiguous() if channels_last else out   # frames contiguous again for the step kernels

    eps.module = net            # the module this ε runs (the caller's or the Solver's own copy)
    return eps


@contextmanager
def cudnn_benchmark_mode() -> Iterator[None]:
    """torch.backends.cudnn.benchmark on inside the block, as it was after.

    cuDNN then times its candidate algorithms for each new convolution shape and keeps the
    fastest: worth it for the fixed shapes of a Solver (its warm-up pays the timing; a
    captured graph keeps the chosen kernels). The flag is process-wide: a thread running
    convolutions meanwhile may see it too, which changes its speed, not its results' meaning.
    cuDNN keeps its chosen plans per thread, keyed by shape, layout and dtype but not by this
    flag: a shape the calling thread already ran untimed keeps its untimed plan. Build a tuned
    Solver before other work of the same shapes, or in a thread of its own.
    """
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
