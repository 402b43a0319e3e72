"""Spatial blur: a separable 2-D convolution of every frame and channel, same output size (docs/design.md, "Operators").

Along one image axis of length L, for an odd kernel k of width w = 2p + 1:

    A₁ = V_k · P          P: pad p entries each side (reflect, circular or zero),
                          V_k: valid convolution, z[i] = Σ_j k[j] · u[i + 2p − j]
    A₁ᵀ = Pᵀ · V_k̃ · Z    Z: zero-pad 2p each side, V_k̃: valid convolution with the
                          flipped kernel (the transposed convolution); Pᵀ folds the
                          border back: each padded entry is added to the pixel it was
                          copied from (reflect: its mirror, circular: its wrap), or
                          dropped (zero).

The 2-D operator applies A₁ to rows, then to columns; with reflect this equals
DPS's ReflectionPad2d followed by a valid Conv2d with the kernel k kᵀ. The
Gaussian kernel is truncated to the given width and normalised (Σ = 1).
"""

from __future__ import annotations

import torch

from engine.errors import InputError
from engine.operators.base import LinearOperator
from engine.operators.common import Arithmetic, Constants, lazy, pick_kernels
from engine.operators.temporal import gaussian_kernel

Tensor = torch.Tensor

BOUNDARIES = ("reflect", "circular", "zero")


# ── arithmetic (the reference for the other kernels) ──────────────────────

def check_padding(length: int, p: int, boundary: str) -> None:
    """InputError unless padding an axis of `length` by p is defined: reflect p ≤ L − 1, circular p ≤ L."""
    if boundary == "reflect" and p > length - 1:
        raise InputError(
            f"reflect padding by {p} pixels needs images of at least {p + 1} pixels per side, got {length}: "
            f"use a narrower kernel, a larger image, or the circular or zero boundary")
    if boundary == "circular" and p > length:
        raise InputError(f"circular padding by {p} pixels needs images of at least {p} pixels per side, got {length}")


def pad_1d(x: Tensor, p: int, dim: int, boundary: str) -> Tensor:
    """P: pad axis `dim` by p on each side.  [..., L, ...] → [..., L + 2p, ...]

    reflect: u[−i] = x[i], u[L−1+i] = x[L−1−i] (edge not repeated); circular: u[i] = x[i mod L]; zero: 0.
    """
    n = x.shape[dim]
    if boundary == "reflect":
        left, right = x.narrow(dim, 1, p).flip(dim), x.narrow(dim, n - 1 - p, p).flip(dim)
    elif boundary == "circular":
        left, right = x.narrow(dim, n - p, p), x.narrow(dim, 0, p)
    else:
        shape = list(x.shape)
        shape[dim] = p
        left = right = x.new_zeros(shape)
    return torch.cat([left, x, right], dim)


def pad_1d_adjoint(u: Tensor, p: int, dim: int, boundary: str) -> Tensor:
    """Pᵀ: fold the 2p padded entries of axis `dim` back onto their sources.  [..., L + 2p, ...] → [..., L, ...]"""
    n = u.shape[dim] - 2 * p
    x = u.narrow(dim, p, n).clone()
    left, right = u.narrow(dim, 0, p), u.narrow(dim, n + p, p)
    if boundary == "reflect":
        x.narrow(dim, 1, p).add_(left.flip(dim))
        x.narrow(dim, n - 1 - p, p).add_(right.flip(dim))
    elif boundary == "circular":
        x.narrow(dim, n - p, p).add_(left)
        x.narrow(dim, 0, p).add_(right)
    return x


def conv_valid_1d(u: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """V_k: z[i] = Σ_j k[j] · u[i + w − 1 − j] (valid convolution).  [..., L + w − 1, ...], [w] → [..., L, ...]"""
    w = kernel.numel()
    n = u.shape[dim] - (w - 1)
    z = torch.zeros_like(u.narrow(dim, 0, n))
    for j in range(w):
        z = z + kernel[j] * u.narrow(dim, w - 1 - j, n)
    return z


def blur_1d(x: Tensor, kernel: Tensor, dim: int, boundary: str) -> Tensor:
    """A₁ = V_k · P along axis `dim`.  [..., L, ...] → [..., L, ...]"""
    return conv_valid_1d(pad_1d(x, kernel.numel() // 2, dim, boundary), kernel, dim)


def blur_1d_adjoint(y: Tensor, kernel: Tensor, dim: int, boundary: str) -> Tensor:
    """A₁ᵀ = Pᵀ · V_k̃ · Z along axis `dim` (transposed convolution, then fold).  [..., L, ...] → [..., L, ...]"""
    p = kernel.numel() // 2
    full = conv_valid_1d(pad_1d(y, 2 * p, dim, "zero"), kernel.flip(0), dim)  # [..., L + 2p, ...]
    return pad_1d_adjoint(full, p, dim, boundary)


def spatial_blur(x: Tensor, kernel: Tensor, boundary: str) -> Tensor:
    """A x: separable blur with k kᵀ, rows then columns.  x: [..., H, W], kernel: [w] (odd) → [..., H, W]"""
    return blur_1d(blur_1d(x, kernel, -2, boundary), kernel, -1, boundary)


def spatial_blur_adjoint(y: Tensor, kernel: Tensor, boundary: str) -> Tensor:
    """Aᵀ y: the 1-D adjoints in reverse order.  y: [..., H, W], kernel: [w] → [..., H, W]"""
    return blur_1d_adjoint(blur_1d_adjoint(y, kernel, -1, boundary), kernel, -2, boundary)


def spatial_blur_normal(x: Tensor, kernel: Tensor, boundary: str) -> Tensor:
    """AᵀA x = Aᵀ(A x).  x: [..., H, W], kernel: [w] → [..., H, W]"""
    return spatial_blur_adjoint(spatial_blur(x, kernel, boundary), kernel, boundary)


#: SpatialBlur's arithmetic by kernels: forward(x, kernel, boundary), adjoint(y, kernel, boundary),
#: normal(x, kernel, boundary); kernel is the 1-D separable factor.
KERNELS = {
    "torch": Arithmetic(spatial_blur, spatial_blur_adjoint, spatial_blur_normal),
    "triton": Arithmetic(lazy("kernels.blur", "spatial_blur"), lazy("kernels.blur", "spatial_blur_adjoint"),
                         lazy("kernels.blur", "spatial_blur_normal")),
}


# ── the operator ─────────────────────────────────────────────────────────────

class SpatialBlur(LinearOperator):
    """A = per-frame, per-channel 2-D convolution with k kᵀ, same size.  [N, C, H, W] → [N, C, H, W]"""

    def __init__(self, shape, kernel, boundary: str = "reflect", *, device=None, dtype=None, kernels: str = "torch"):
        self.in_shape = self.out_shape = tuple(int(s) for s in shape)
        k = torch.as_tensor(kernel, dtype=torch.float64).cpu()
        if k.ndim != 1 or k.numel() % 2 == 0 or not torch.isfinite(k).all():
            raise InputError(f"a blur kernel must be a 1-D array of finite numbers of odd width, got shape {tuple(k.shape)}")
        if boundary not in BOUNDARIES:
            raise InputError(f"unknown blur boundary {boundary!r}; accepted: {', '.join(BOUNDARIES)}")
        for length in self.in_shape[-2:]:
            check_padding(length, k.numel() // 2, boundary)
        self.boundary = boundary
        #: the largest eigenvalue of AᵀA, about the kernel's DC gain² = 1: CG preconditioners scale by it
        self.normal_gain = 1.0
        self.kernels = kernels
        self._fn = pick_kernels(KERNELS, kernels, "SpatialBlur")
        self._k = Constants({"kernel": k}, device=device, dtype=dtype)

    @classmethod
    def gaussian(cls, shape, sigma: float, width: int, boundary: str = "reflect", **options) -> "SpatialBlur":
        """Gaussian σ truncated to an odd `width` and normalised (the paper's σ = 2.0, width 13)."""
        if not (isinstance(width, int) and width >= 1 and width % 2 == 1):
            raise InputError(f"a blur width must be an odd integer ≥ 1, got {width!r}")
        return cls(shape, gaussian_kernel(sigma, width), boundary, **options)

    @property
    def kernel(self) -> Tensor:
        """The 2-D kernel k kᵀ, float64 on the CPU.  [w, w]"""
        k = self._k.original("kernel")
        return torch.outer(k, k)

    def A(self, x: Tensor) -> Tensor:
        """y = (k kᵀ) ∗ x per frame and channel.  [N, C, H, W] → [N, C, H, W]"""
        return self._fn.forward(x, self._k.like("kernel", x), self.boundary)

    def A_adjoint(self, y: Tensor) -> Tensor:
        """x = Pᵀ (flipped kernel) ∗ y.  [N, C, H, W] → [N, C, H, W]"""
        return self._fn.adjoint(y, self._k.like("kernel", y), self.boundary)

    def A_adjoint_A(self, x: Tensor) -> Tensor:
        """AᵀA x.  [N, C, H, W] → [N, C, H, W]"""
        return self._fn.normal(x, self._k.like("kernel", x), self.boundary)
