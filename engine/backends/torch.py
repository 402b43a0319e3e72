"""The PyTorch ε model: eager or torch.compile, fp32/fp16/bf16, optional channels_last."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch

Tensor = torch.Tensor
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_eps(model, *, precision: str = "fp32", channels_last: bool = False, compile: bool = False,
              kernels: str = "torch", cudnn_benchmark: bool = False) -> Callable[[Tensor, Tensor], Tensor]:
    """ε(x_t [N, 3, H, W], t [N]) → [N, C_out, H, W] in the model's precision.

    `model` is an `nn.Module` (the ADM UNet; converted in place to `precision`) or any
    callable ε model, such as the weight-free prior, which runs in its input's dtype.
    kernels="triton" runs the ADM UNet's GroupNorm + scale-shift + SiLU as one fused
    Triton kernel (ADMUNet.use_kernels); torch.compile fuses them itself and keeps "torch".
    cudnn_benchmark: each call runs with cuDNN choosing every convolution's algorithm by
    timing the candidates, once per shape (the first call is slower; see `cudnn_benchmark_mode`).
    fp32 convolutions on CUDA follow torch.backends.cudnn.allow_tf32 (PyTorch's default: TF32).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if not isinstance(model, torch.nn.Module):
        return model
    dtype = PRECISIONS[precision]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # The ADM UNet converts as upstream's fp16 mode (convolutions only); other modules wholesale.
    model = model.convert_to(dtype) if hasattr(model, "convert_to") else model.to(dtype=dtype)
    model = model.eval().to(memory_format=fmt)
    if hasattr(model, "use_kernels"):
        model.use_kernels("torch" if compile else kernels)
    net = torch.compile(model, dynamic=False) if compile else model

    tuned = cudnn_benchmark_mode if cudnn_benchmark else nullcontext

    @torch.no_grad()
    def eps(x: Tensor, t: Tensor) -> Tensor:
        with tuned():
            out = net(x.to(dtype).contiguous(memory_format=fmt), t)
        return out.contiguous() if channels_last else out   # frames contiguous again for the step kernels

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
