"""Inpainting: keep a fixed set of pixels, one mask for every frame and channel (docs/design.md, "Operators").

    A = Aᵀ = AᵀA:  y[n, c, h, w] = m[h, w] · x[n, c, h, w],   m ∈ {0, 1}

The measurement keeps the video's shape; dropped pixels read 0. A random mask
drops exactly round(H·W·r) pixels (Python's round), chosen by `torch.randperm`
on a seeded CPU generator, so the same seed gives the same mask on any device.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from engine.errors import InputError
from engine.operators.base import LinearOperator
from engine.operators.common import Arithmetic, Constants, lazy, pick_kernels

Tensor = torch.Tensor

MASK_SUFFIXES = (".npy", ".png")


# ── masks (bool, on the CPU) ─────────────────────────────────────────────────

def random_mask(height: int, width: int, rate: float, seed: int) -> Tensor:
    """Keep-mask with exactly round(H·W·r) pixels dropped (False), from randperm on a seeded CPU generator.  [1, 1, H, W]"""
    if not 0.0 <= rate <= 1.0:
        raise InputError(f"the inpainting drop rate must be in [0, 1], got {rate!r}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    dropped = torch.randperm(height * width, generator=generator)[: round(height * width * rate)]
    keep = torch.ones(height * width, dtype=torch.bool)
    keep[dropped] = False
    return keep.reshape(1, 1, height, width)


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask from .npy (any numeric array) or .png (any mode; colour pixels count if any channel is nonzero)."""
    path = Path(path)
    if path.suffix.lower() not in MASK_SUFFIXES:
        raise InputError(f"mask file {str(path)!r}: unsupported type; accepted: {', '.join(MASK_SUFFIXES)}")
    if not path.is_file():
        raise InputError(f"mask file not found: {str(path)!r}")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        from PIL import Image  # lazy: Pillow comes with the [video] extra
        with Image.open(path) as image:
            single = image.mode in ("1", "L", "I", "I;16", "F")
            return np.asarray(image if single else image.convert("RGB"))
    except ImportError:
        raise InputError("reading a .png mask needs Pillow: pip install 'video-inverse-engine[video]'") from None
    except (OSError, ValueError) as err:
        raise InputError(f"mask file {str(path)!r} cannot be read: {err}") from None


def as_keep_mask(mask, height: int, width: int) -> Tensor:
    """Any [H, W], [1, H, W], [1, 1, H, W] or [H, W, channels] array → bool keep-mask (nonzero = keep).  [1, 1, H, W]"""
    m = (mask if isinstance(mask, Tensor) else torch.from_numpy(np.array(mask))).detach().cpu()
    given = tuple(m.shape)
    if m.ndim == 3 and m.shape[:2] == (height, width):
        m = (m != 0).any(dim=-1)                                   # an image with channels
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if tuple(m.shape) != (height, width):
        raise InputError(f"the inpainting mask has shape {list(given)}, the video needs [{height}, {width}]")
    if m.is_floating_point() and not torch.isfinite(m).all():
        raise InputError("the inpainting mask has NaN or infinite values")
    return (m != 0).reshape(1, 1, height, width)


# ── arithmetic (the reference for the other kernels) ──────────────────────

def apply_mask(x: Tensor, mask: Tensor) -> Tensor:
    """m · x, the mask broadcast over frames and channels.  x: [N, C, H, W], mask: [1, 1, H, W] (x's dtype) → [N, C, H, W]"""
    return x * mask


#: Inpainting's arithmetic by kernels: forward, adjoint and normal are all apply_mask(x, mask).
_triton_mask = lazy("kernels.mask", "apply_mask")
KERNELS = {
    "torch": Arithmetic(apply_mask, apply_mask, apply_mask),
    "triton": Arithmetic(_triton_mask, _triton_mask, _triton_mask),
}


# ── the operator ─────────────────────────────────────────────────────────────

class Inpainting(LinearOperator):
    """A = multiplication by a 0/1 mask shared by all frames and channels.  [N, C, H, W] → [N, C, H, W]"""

    def __init__(self, shape, mask, *, device=None, dtype=None, kernels: str = "torch"):
        self.in_shape = self.out_shape = tuple(int(s) for s in shape)
        h, w = self.in_shape[-2:]
        self.kernels = kernels
        #: the largest eigenvalue of AᵀA (m² = m): CG preconditioners scale by it
        self.normal_gain = 1.0
        self._fn = pick_kernels(KERNELS, kernels, "Inpainting")
        #: the keep-mask as "mask" [1, 1, H, W] (cast on use; compositions read it)
        self.constants = Constants({"mask": as_keep_mask(mask, h, w)}, device=device, dtype=dtype)

    @classmethod
    def random(cls, shape, rate: float, seed: int = 0, **options) -> "Inpainting":
        """Drop exactly round(H·W·rate) pixels, chosen by `seed` (the paper's rate 0.5)."""
        return cls(shape, random_mask(int(shape[-2]), int(shape[-1]), rate, seed), **options)

    @classmethod
    def from_file(cls, shape, path: str | os.PathLike, **options) -> "Inpainting":
        """The mask of a .npy or .png file, nonzero = keep."""
        return cls(shape, load_mask(path), **options)

    @property
    def mask(self) -> Tensor:
        """The keep-mask, bool on the CPU.  [1, 1, H, W]"""
        return self.constants.original("mask")

    def A(self, x: Tensor) -> Tensor:
        """y = m · x.  [N, C, H, W] → [N, C, H, W]"""
        return self._fn.forward(x, self.constants.like("mask", x))

    def A_adjoint(self, y: Tensor) -> Tensor:
        """x = m · y (self-adjoint).  [N, C, H, W] → [N, C, H, W]"""
        return self._fn.adjoint(y, self.constants.like("mask", y))

    def A_adjoint_A(self, x: Tensor) -> Tensor:
        """AᵀA x = m · x (m² = m).  [N, C, H, W] → [N, C, H, W]"""
        return self._fn.normal(x, self.constants.like("mask", x))
