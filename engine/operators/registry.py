"""The registry of degradations, and `from_spec`: a spec string → a LinearOperator.

A spec is one or more terms joined by `+` in the order applied:
`temporal:uniform:7+sr:4` is 4× super-resolution of the temporally blurred clip.
Each term is `NAME:ARGS`; REGISTRY maps NAME to its factory, usage and example,
so tests can run every property check over every operator.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

import torch

from engine.errors import InputError
from engine.operators import blur, inpaint, sr, temporal
from engine.operators.base import LinearOperator
from engine.operators.blur import SpatialBlur
from engine.operators.common import AUTO, resolve_kernels
from engine.operators.compose import Composition
from engine.operators.inpaint import Inpainting
from engine.operators.spec import parse
from engine.operators.sr import SuperResolution
from engine.operators.temporal import TemporalPSF, gaussian_kernel, uniform_kernel

#: The kernels every operator implements (from each operator file's KERNELS table).
KERNELS = tuple(sorted(set(temporal.KERNELS) & set(blur.KERNELS) & set(sr.KERNELS) & set(inpaint.KERNELS)))


@dataclass(frozen=True)
class Entry:
    """One degradation: `factory(args, shape, *, seed, device, dtype, kernels)` builds it from the text after `NAME:`."""

    factory: Callable[..., LinearOperator]
    usage: str    # the accepted forms of the term
    doc: str      # one line
    example: str  # a term that builds for the paper's [16, 3, 256, 256] clips


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{what} must be an integer, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{what} must be finite, got {text!r}")
    return value


def _fields(args: str, counts: tuple[int, ...]) -> list[str]:
    fields = args.split(":") if args else []
    if len(fields) not in counts:
        raise InputError(f"expected {' or '.join(map(str, counts))} fields after the name, got {len(fields)}")
    return fields


def _temporal(args, shape, *, seed, device, dtype, kernels):
    family, value, *boundary = _fields(args, (2, 3))
    if family == "uniform":
        kernel = uniform_kernel(_int(value, "the width K"))
    elif family == "gaussian":
        kernel = gaussian_kernel(_float(value, "σ"))
    elif family == "kernel":
        kernel = [_float(tap, "a kernel tap") for tap in value.split(",")]
    else:
        raise InputError(f"unknown temporal kernel {family!r}; accepted: uniform, gaussian, kernel")
    return TemporalPSF(shape, kernel, *boundary, device=device, dtype=dtype, kernels=kernels)


def _blur(args, shape, *, seed, device, dtype, kernels):
    family, sigma, width, *boundary = _fields(args, (3, 4))
    if family != "gaussian":
        raise InputError(f"unknown blur kernel {family!r}; accepted: gaussian")
    return SpatialBlur.gaussian(shape, _float(sigma, "σ"), _int(width, "the width"), *boundary,
                                device=device, dtype=dtype, kernels=kernels)


def _sr(args, shape, *, seed, device, dtype, kernels):
    (factor,) = _fields(args, (1,))
    return SuperResolution(shape, _int(factor, "the factor S"), kernels=kernels)


def _inpaint(args, shape, *, seed, device, dtype, kernels):
    if args.startswith("file="):
        return Inpainting.from_file(shape, args[len("file="):], device=device, dtype=dtype, kernels=kernels)
    rate, *own_seed = _fields(args, (1, 2))
    seed = _int(own_seed[0], "the seed") if own_seed else seed
    return Inpainting.random(shape, _float(rate, "the rate"), seed, device=device, dtype=dtype, kernels=kernels)


#: Every degradation by spec name.
REGISTRY: dict[str, Entry] = {
    "temporal": Entry(
        _temporal,
        "temporal:uniform:K | temporal:gaussian:SIGMA | temporal:kernel:K0,K1,... [:circular|zero|replicate]",
        "1-D convolution along frames (uniform width K, Gaussian σ of width 2⌈3σ⌉+1, or explicit taps); circular by default, replicate (clamped frame index) for a real video's ends",
        "temporal:uniform:7"),
    "blur": Entry(
        _blur,
        "blur:gaussian:SIGMA:WIDTH[:reflect|circular|zero]",
        "2-D Gaussian blur of every frame, odd WIDTH, same size; reflect boundary by default",
        "blur:gaussian:2.0:13"),
    "sr": Entry(
        _sr,
        "sr:S",
        "S×S average pooling (H and W divisible by S)",
        "sr:4"),
    "inpaint": Entry(
        _inpaint,
        "inpaint:RATE[:SEED] | inpaint:file=PATH.npy|.png",
        "drop exactly round(H·W·RATE) random pixels, one mask for all frames (or a mask file: nonzero = keep)",
        "inpaint:0.5"),
}


def accepted_specs() -> str:
    """The accepted forms, on one line."""
    forms = "; ".join(entry.usage for entry in REGISTRY.values())
    return f"accepted: {forms}; join terms with '+' in the order applied, e.g. temporal:uniform:7+sr:4"


def _video_shape(shape) -> tuple[int, int, int, int]:
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise InputError(f"the clean video shape must be [N, C, H, W] with positive integers, got {shape!r}")
    return dims


def from_spec(spec: str, shape, *, seed: int = 0, device=None, dtype: torch.dtype | None = None,
              kernels: str = AUTO) -> LinearOperator:
    """The operator of `spec` for clean videos of `shape` [N, C, H, W].

    `seed` draws random inpainting masks (unless a term names its own); `device` and
    `dtype` are where the constants are placed first (any input is still accepted);
    `kernels` picks every operator's arithmetic: KERNELS ("torch", "triton") or "auto",
    Triton on CUDA and torch elsewhere (engine.operators.common.resolve_kernels).
    """
    if kernels not in (*KERNELS, AUTO):
        raise InputError(f"unknown operator kernels {kernels!r}; accepted: {', '.join((*KERNELS, AUTO))}")
    try:
        terms = parse(spec)
    except InputError as err:
        raise InputError(f"{err}; {accepted_specs()}") from None
    shape = _video_shape(shape)
    kernels = resolve_kernels(kernels, device, shape[0])
    ops = []
    for term in terms:
        if term.name not in REGISTRY:
            raise InputError(f"unknown degradation {term.name!r} in spec {spec!r}; {accepted_specs()}")
        entry = REGISTRY[term.name]
        try:
            op = entry.factory(term.args, shape, seed=seed, device=device, dtype=dtype, kernels=kernels)
        except InputError as err:
            raise InputError(f"bad spec term {str(term)!r}: {err} (usage: {entry.usage})") from None
        ops.append(op)
        shape = op.out_shape
    return ops[0] if len(ops) == 1 else Composition(ops)
