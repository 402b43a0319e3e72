"""What every operator shares: its arithmetic chosen by `kernels`, and constants cast on use.

"Kernels" names the arithmetic (torch ops or our Triton kernels); "backend" is kept for how the
network runs (engine.backends). Each operator file keeps a table
`KERNELS = {"torch": Arithmetic(forward, adjoint, normal), "triton": ...}` of pure functions
with the same signatures; the operator picks its row once, in its constructor, with
`pick_kernels`. The Triton rows are `lazy`: the `kernels` package (and Triton) is imported on
their first call, so `import engine.operators` stays cheap. `resolve_kernels` turns "auto"
into the row that runs where the operator lives.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from typing import Callable, Mapping, NamedTuple

import torch

from engine.errors import InputError

log = logging.getLogger(__name__)

#: The kernels that pick themselves (`resolve_kernels`).
AUTO = "auto"


class Arithmetic(NamedTuple):
    """The pure functions behind one operator: A, Aᵀ and AᵀA (signatures are the operator's own)."""

    forward: Callable[..., torch.Tensor]
    adjoint: Callable[..., torch.Tensor]
    normal: Callable[..., torch.Tensor]


def lazy(module: str, name: str) -> Callable[..., torch.Tensor]:
    """`module.name`, imported on the first call."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def pick_kernels(table: Mapping[str, Arithmetic], kernels: str, operator: str) -> Arithmetic:
    """The row of `table` for `kernels`; InputError naming the accepted kernels otherwise."""
    if kernels not in table:
        raise InputError(f"{operator}: unknown kernels {kernels!r}; accepted: {', '.join(sorted(table))}")
    return table[kernels]


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_kernels(kernels: str, device, frames: int | None) -> str:
    """The arithmetic for clips of `frames` frames on `device`: "auto" is Triton on CUDA when Triton
    is installed and the frames fit its temporal kernels (kernels.temporal.MAX_FRAMES), else torch;
    frames=None is for arithmetic without a frame limit (the UNet's fused GroupNorm).
    Asking for "triton" without the package is an InputError that says how to get it."""
    if kernels == "triton" and not triton_installed():
        raise InputError("the triton kernels need the triton package (pip install triton; Linux only)")
    if kernels != AUTO:
        return kernels
    if device is None or torch.device(device).type != "cuda":
        return "torch"
    if not triton_installed():
        _warn_no_triton()
        return "torch"
    from kernels.temporal import MAX_FRAMES

    return "triton" if frames is None or frames <= MAX_FRAMES else "torch"


@functools.cache
def _warn_no_triton() -> None:
    log.warning("Triton is not installed: the operators and step updates run as torch ops (slower on a GPU)")


class Constants:
    """An operator's constant tensors (kernels, masks), cast to the input's dtype and device on use.

    The originals stay as given (float64 or bool, on the CPU); one cast copy is
    kept per (dtype, device). Naming `dtype`/`device` at construction makes that
    copy at once, so calls on such inputs allocate nothing (safe for CUDA graph capture).
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], *, device=None, dtype=None):
        self._originals = dict(tensors)
        self._cast: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}
        if device is not None or dtype is not None:
            like = torch.empty(0, dtype=dtype or torch.get_default_dtype(), device=device)
            for name in self._originals:
                self.like(name, like)

    def original(self, name: str) -> torch.Tensor:
        """The tensor as given, on the CPU."""
        return self._originals[name]

    def like(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The tensor `name` in x's dtype and on x's device."""
        key = (name, x.dtype, x.device)
        if key not in self._cast:
            self._cast[key] = self._originals[name].to(device=x.device, dtype=x.dtype)
        return self._cast[key]
