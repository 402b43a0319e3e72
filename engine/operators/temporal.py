"""Temporal PSF: a centred 1-D convolution along the frame axis (docs/design.md, "Operators").

For a kernel k of width w with centre c = (w − 1) // 2, on frames n = 0 … N−1:

    A:   y[n] = Σ_j k[j] · x[n + c − j]        (convolution)
    Aᵀ:  x[m] = Σ_j k[j] · y[m − c + j]        (correlation: the flipped kernel)

A frame index outside [0, N) wraps modulo N (boundary "circular", the public
code's), reads 0 (boundary "zero": the output still has N frames) or reads the
nearest end frame (boundary "replicate": index clamped to [0, N − 1], a real video's
ends). Any way A acts on the frame axis as an N×N matrix T (`temporal_matrix`,
banded: T[n, m] ≠ 0 only for m − n ∈ [c − w + 1, c], clamping included), so the torch
arithmetic is one small matmul per call: A = T, Aᵀ = Tᵀ, AᵀA = TᵀT, the operator
building T and TᵀT once. With the circular boundary TᵀT is the circulant of the
autocorrelation a_d = Σ_j k[j]·k[j + d], d = −(w−1) … w−1 (2w − 1 taps, wrapped
modulo N), which the fused Triton kernels apply in one pass; for the replicate
boundary they read the diagonals of T or TᵀT.

`frame_preconditioner` gives φ(TᵀT) = V φ(Λ) Vᵀ (TᵀT = V Λ Vᵀ) for preconditioned CG
(engine.cg): it shares TᵀT's eigenvectors, so it commutes with AᵀA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.errors import InputError
from engine.operators.base import LinearOperator
from engine.operators.common import Arithmetic, Constants, lazy, pick_kernels

Tensor = torch.Tensor

BOUNDARIES = ("circular", "zero", "replicate")


# ── kernels (float64, on the CPU) ────────────────────────────────────────────

def uniform_kernel(width: int) -> Tensor:
    """k[j] = 1/w, j = 0 … w−1.  [w]"""
    if not (isinstance(width, int) and width >= 1):
        raise InputError(f"a uniform kernel needs an integer width ≥ 1, got {width!r}")
    return torch.full((width,), 1.0 / width, dtype=torch.float64)


def gaussian_kernel(sigma: float, width: int | None = None) -> Tensor:
    """k[j] ∝ exp(−(j − (w−1)/2)² / 2σ²), normalised to Σ k = 1; w = 2⌈3σ⌉ + 1 unless given.  [w]"""
    if not (math.isfinite(sigma) and sigma > 0):
        raise InputError(f"a Gaussian kernel needs a finite σ > 0, got {sigma!r}")
    width = 2 * math.ceil(3 * sigma) + 1 if width is None else width
    if not (isinstance(width, int) and width >= 1):
        raise InputError(f"a Gaussian kernel needs an integer width ≥ 1, got {width!r}")
    t = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    g = torch.exp(-t**2 / (2 * sigma**2))
    return g / g.sum()


def autocorrelation(kernel: Tensor) -> Tensor:
    """a[d + w − 1] = Σ_j k[j]·k[j + d], d = −(w−1) … w−1: the kernel of AᵀA (centre w − 1).  [w] → [2w − 1]"""
    k = kernel.reshape(1, 1, -1)
    return F.conv1d(k, k, padding=kernel.numel() - 1).reshape(-1)


# ── arithmetic (the reference for the other kernels) ──────────────────────

def temporal_matrix(kernel: Tensor, n: int, boundary: str) -> Tensor:
    """The N×N matrix T of A on the frame axis: T[n, m] = Σ_j k[j]·[m = n + c − j].

    m wraps modulo N ("circular"), is clamped to [0, N − 1] ("replicate"), or terms with m
    outside [0, N) are dropped ("zero").  kernel: [w] → [N, N] in the kernel's dtype and device.
    """
    w, c = kernel.numel(), (kernel.numel() - 1) // 2
    rows = torch.arange(n, device=kernel.device)
    T = torch.zeros(n, n, dtype=kernel.dtype, device=kernel.device)
    for j in range(w):
        cols = rows + c - j
        if boundary == "circular":
            cols = cols % n
        elif boundary == "replicate":
            cols = cols.clamp(0, n - 1)
        inside = ((cols >= 0) & (cols < n)).to(kernel.dtype)        # masked, not indexed: no host sync
        T.index_put_((rows, cols.clamp(0, n - 1)), kernel[j] * inside, accumulate=True)
    return T


#: rows per block of a banded product on the CPU (bench: 640×272 frames, N = 64 … 167: 1.5–1.7× faster than
#: the dense product, whose cost per frame grows with N while the banded one's does not)
BAND_BLOCK = 16


def frames_matmul(M: Tensor, x: Tensor, band: tuple[int, int] | None = None) -> Tensor:
    """M applied along the frame axis: (M x)[n] = Σ_m M[n, m]·x[m].  M: [R, N], x: [N, ...] → [R, ...]

    `band` (lo, hi): M[n, m] = 0 unless −lo ≤ m − n ≤ hi. On the CPU a banded M is applied BAND_BLOCK
    rows at a time against the columns their band reaches (the same sums without the zeros); elsewhere,
    or without a band, as one dense product.
    """
    flat = x.reshape(x.shape[0], -1)
    rows, cols = M.shape
    if band is None or x.device.type != "cpu" or sum(band) + 2 * BAND_BLOCK >= cols:
        return (M @ flat).reshape(rows, *x.shape[1:])
    lo, hi = band
    out = flat.new_empty(rows, flat.shape[1])
    for i in range(0, rows, BAND_BLOCK):
        j0, j1 = max(0, i - lo), min(cols, i + BAND_BLOCK + hi)
        torch.mm(M[i:i + BAND_BLOCK, j0:j1], flat[j0:j1], out=out[i:i + BAND_BLOCK])
    return out.reshape(rows, *x.shape[1:])


def temporal_band(kernel: Tensor, boundary: str) -> tuple[int, int] | None:
    """T's band (lo, hi) = (w − 1 − c, c) (clamping stays inside it), None for the circular boundary (it wraps)."""
    w = kernel.numel()
    return None if boundary == "circular" else (w - 1 - (w - 1) // 2, (w - 1) // 2)


def temporal_conv(x: Tensor, kernel: Tensor, boundary: str, matrix: Tensor | None = None) -> Tensor:
    """A x: y[n] = Σ_j k[j] · x[n + c − j], c = (w−1)//2.  x: [N, ...], kernel: [w] (x's dtype/device) → [N, ...]

    `matrix`: T of `temporal_matrix` when the caller holds it (else it is built).
    """
    T = temporal_matrix(kernel, x.shape[0], boundary) if matrix is None else matrix
    return frames_matmul(T, x, temporal_band(kernel, boundary))


def temporal_conv_adjoint(y: Tensor, kernel: Tensor, boundary: str, matrix: Tensor | None = None) -> Tensor:
    """Aᵀ y: x[m] = Σ_j k[j] · y[m − c + j], c = (w−1)//2, i.e. Tᵀ y.  y: [N, ...], kernel: [w] → [N, ...]"""
    T = temporal_matrix(kernel, y.shape[0], boundary) if matrix is None else matrix
    band = temporal_band(kernel, boundary)
    return frames_matmul(T.T, y, band[::-1] if band else None)


def temporal_conv_normal(x: Tensor, kernel: Tensor, autocorr: Tensor, boundary: str,
                         normal: Tensor | None = None) -> Tensor:
    """AᵀA x = (TᵀT) x, exact for every boundary.  x: [N, ...], kernel: [w] → [N, ...]

    For the circular boundary TᵀT is the circulant of the autocorrelation `autocorr`
    (centre w − 1, wrapped modulo N), which the fused kernels use; here it is formed directly
    (`normal`: TᵀT when the caller holds it).
    """
    if normal is None:
        T = temporal_matrix(kernel, x.shape[0], boundary)
        normal = T.T @ T
    band = temporal_band(kernel, boundary)
    return frames_matmul(normal, x, (sum(band), sum(band)) if band else None)


def frame_preconditioner(normal: Tensor, phi) -> Tensor:
    """P = φ(TᵀT) = V diag(φ(λ)) Vᵀ from the eigendecomposition TᵀT = V Λ Vᵀ (λ clamped at 0).

    normal: TᵀT [N, N] float64, phi: float64 [N] → [N] → P [N, N] float64 (symmetric, commutes with
    TᵀT). For the circular boundary V is the DFT along frames and λ = |H|², the kernel's spectrum
    on the N-point grid.
    """
    lam, V = torch.linalg.eigh(normal)
    return (V * phi(lam.clamp(min=0))) @ V.T


#: TemporalPSF's arithmetic by kernels: forward(x, kernel, boundary, T),
#: adjoint(y, kernel, boundary, T), normal(x, kernel, autocorr, boundary, TᵀT).
KERNELS = {
    "torch": Arithmetic(temporal_conv, temporal_conv_adjoint, temporal_conv_normal),
    "triton": Arithmetic(lazy("kernels.temporal", "temporal_conv"), lazy("kernels.temporal", "temporal_conv_adjoint"),
                         lazy("kernels.temporal", "temporal_conv_normal")),
}

#: P x along frames for a dense N×N matrix P, by kernels.
FRAME_MATMUL = {"torch": frames_matmul, "triton": lazy("kernels.temporal", "frame_matmul")}


# ── the operator ─────────────────────────────────────────────────────────────

class TemporalPSF(LinearOperator):
    """A = centred convolution of every pixel's time series with k.  [N, C, H, W] → [N, C, H, W]"""

    def __init__(self, shape, kernel, boundary: str = "circular", *, device=None, dtype=None, kernels: str = "torch"):
        self.in_shape = self.out_shape = tuple(int(s) for s in shape)
        k = torch.as_tensor(kernel, dtype=torch.float64).cpu()
        if k.ndim != 1 or k.numel() == 0 or not torch.isfinite(k).all():
            raise InputError(f"a temporal kernel must be a non-empty 1-D array of finite numbers, got shape {tuple(k.shape)}")
        if boundary not in BOUNDARIES:
            raise InputError(f"unknown temporal boundary {boundary!r}; accepted: {', '.join(BOUNDARIES)}")
        n, w = self.in_shape[0], k.numel()
        if boundary == "circular" and w > n:
            raise InputError(
                f"the temporal kernel has width {w} but the clip has {n} frames: with the circular boundary "
                f"the kernel would wrap onto itself and count a frame twice; use at least {w} frames, "
                f"a narrower kernel, or the zero boundary")
        self.boundary = boundary
        self.kernels = kernels
        self._fn = pick_kernels(KERNELS, kernels, "TemporalPSF")
        T = temporal_matrix(k, n, boundary)
        #: the largest eigenvalue of AᵀA = TᵀT (about |Σ k|² = 1 for a normalised kernel): CG preconditioners scale by it
        self.normal_gain = float(torch.linalg.eigvalsh(T.T @ T)[-1])
        #: the constants the arithmetic and compositions read (cast on use): "kernel" k [w],
        #: "autocorr" a [2w − 1], "matrix" T [N, N], "normal" TᵀT [N, N]
        self.constants = Constants({"kernel": k, "autocorr": autocorrelation(k), "matrix": T, "normal": T.T @ T},
                                   device=device, dtype=dtype)

    @classmethod
    def uniform(cls, shape, width: int, boundary: str = "circular", **options) -> "TemporalPSF":
        """Uniform kernel of width k (the paper's k = 7, 13)."""
        return cls(shape, uniform_kernel(width), boundary, **options)

    @classmethod
    def gaussian(cls, shape, sigma: float, boundary: str = "circular", **options) -> "TemporalPSF":
        """Gaussian kernel σ of width 2⌈3σ⌉ + 1 (the paper's σ = 1.0)."""
        return cls(shape, gaussian_kernel(sigma), boundary, **options)

    @property
    def kernel(self) -> Tensor:
        """k, float64 on the CPU.  [w]"""
        return self.constants.original("kernel")

    @property
    def autocorr(self) -> Tensor:
        """The autocorrelation of k, float64 on the CPU (centre w − 1).  [2w − 1]"""
        return self.constants.original("autocorr")

    @property
    def normal_matrix(self) -> Tensor:
        """TᵀT on the frame axis, float64 on the CPU.  [N, N]"""
        return self.constants.original("normal")

    def A(self, x: Tensor) -> Tensor:
        """y = k ∗ x along frames.  [N, C, H, W] → [N, C, H, W]"""
        c = self.constants
        return self._fn.forward(x, c.like("kernel", x), self.boundary, c.like("matrix", x))

    def A_adjoint(self, y: Tensor) -> Tensor:
        """x = k ⋆ y (correlation) along frames.  [N, C, H, W] → [N, C, H, W]"""
        c = self.constants
        return self._fn.adjoint(y, c.like("kernel", y), self.boundary, c.like("matrix", y))

    def A_adjoint_A(self, x: Tensor) -> Tensor:
        """AᵀA x = TᵀT x along frames.  [N, C, H, W] → [N, C, H, W]"""
        c = self.constants
        return self._fn.normal(x, c.like("kernel", x), c.like("autocorr", x), self.boundary, c.like("normal", x))

    def frame_preconditioner(self, phi, *, gain: float = 1.0, device=None, dtype=None):
        """v ↦ φ(g·TᵀT) v along frames (`frame_preconditioner`; g = `gain`, the per-frame factor a
        composition scales TᵀT by), on this operator's kernels, placed on `device` in `dtype` at once.
        [N, ...] → [N, ...]"""
        return frames_operator(frame_preconditioner(self.normal_matrix, lambda lam: phi(gain * lam)), self.kernels,
                               device=device, dtype=dtype)


def frames_operator(P: Tensor, kernels: str, *, device=None, dtype=None):
    """v ↦ P v along frames on `kernels` (FRAME_MATMUL), P [N, N] cast once to `device`/`dtype`.  [N, ...] → [N, ...]"""
    matmul = pick_kernels(FRAME_MATMUL, kernels, "frame matrix")
    consts = Constants({"P": P}, device=device, dtype=dtype)
    return lambda v: matmul(consts.like("P", v), v)
