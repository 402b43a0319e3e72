"""Each frame's position fitted to the measurement: the camera's shake, which a temporal blur hides.

A frame displaced from its neighbours' smooth path (a hand-held or car-mounted camera) lies mostly in a
temporal box blur's weakly seen modes. The motion prior (engine.temporal_prior) chooses those modes by
smoothness along the measurement's motion, which the blur has smoothed too, so the restoration puts
the frame on the smooth path, a fraction of a pixel from where it was (carphone, 56 frames, σ_y 0.01:
frame 14 a quarter of a pixel off, 33.8 dB against 37–39 around it; docs/results.md, "A shaking
camera"). The measurement still sees the displacement, in the seven frames the frame is blurred into,
so one Gauss–Newton step from s = 0 fits a translation s_n = (s_x, s_y) per frame n to it:

    x_s[n](p) = x[n](p + s_n)                                  (bicubic; the border held)
    J s      = A(s_x ⊙ ∂_x x + s_y ⊙ ∂_y x)                    (∂ central differences; s_n per frame)
    (Jᵀ u)_n = (⟨(Aᵀu)[n], ∂_x x[n]⟩, ⟨(Aᵀu)[n], ∂_y x[n]⟩)
    s        = argmin_s ‖J s − (y − A x)‖²,  i.e. JᵀJ s = Jᵀ(y − A x), by REGISTER_ITERS CG steps from 0
    x       ← x_s

A frame that is where it should be gets s ≈ 0 (2N unknowns against the whole clip's pixels). The fit
trusts the measurement at sub-pixel scale: right for white noise (the paper's protocol, a clip degraded
here), wrong for a codec's errors, which lie along the same edges (carphone as an H.264 mp4 at CRF 23:
one frame 1.5 dB worse), so a real video's restoration does not take it (engine.job.fitted_config).

    x = register(op, y, x)          # [N, C, H, W] → [N, C, H, W], fixed work, no host read
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from engine.cg import conjugate_gradient
from engine.operators.base import inner_product

Tensor = torch.Tensor

__all__ = ["register", "fit_shifts", "shift_jacobian", "shift_frames", "frame_gradients", "REGISTER_ITERS"]

#: CG steps on the 2N × 2N normal equations: on 56 frames of carphone the shaken frame's shift is 0.246 px after 20,
#: 0.254 after 40 and after 200 (docs/results.md, "A shaking camera")
REGISTER_ITERS = 30


def frame_gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """(∂_x x, ∂_y x): central differences along columns and rows, 0 on the first and last column / row.
    [N, C, H, W] → two [N, C, H, W]"""
    gx, gy = torch.zeros_like(x), torch.zeros_like(x)
    gx[..., 1:-1] = (x[..., 2:] - x[..., :-2]) / 2
    gy[..., 1:-1, :] = (x[..., 2:, :] - x[..., :-2, :]) / 2
    return gx, gy


def shift_frames(x: Tensor, s: Tensor) -> Tensor:
    """x_s[n](p) = x[n](p + s_n), bicubic, the border held.  x [N, C, H, W], s [N, 2] (columns, rows) → [N, C, H, W]"""
    n, _, h, w = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = torch.arange(h, device=x.device, dtype=dtype)
    cols = torch.arange(w, device=x.device, dtype=dtype)
    s = s.to(dtype)
    gx = (cols[None, None, :] + s[:, 0, None, None]) * (2 / max(w - 1, 1)) - 1      # [N, 1, W]
    gy = (rows[None, :, None] + s[:, 1, None, None]) * (2 / max(h - 1, 1)) - 1      # [N, H, 1]
    grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)                     # [N, H, W, 2]
    out = F.grid_sample(x.to(dtype), grid, mode="bicubic", padding_mode="border", align_corners=True)
    return out.to(x.dtype)


def shift_jacobian(op, x: Tensor) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """(J, Jᵀ) of s ↦ A x_s at s = 0 (module docstring): J [N, 2] → op.out_shape, Jᵀ op.out_shape → [N, 2]."""
    gx, gy = frame_gradients(x)

    def J(s: Tensor) -> Tensor:
        return op.A(gx * s[:, 0, None, None, None] + gy * s[:, 1, None, None, None])

    def Jt(u: Tensor) -> Tensor:
        a = op.A_adjoint(u)
        return torch.stack([(a * gx).sum(dim=(1, 2, 3)), (a * gy).sum(dim=(1, 2, 3))], dim=1)

    return J, Jt


def fit_shifts(op, y: Tensor, x: Tensor, iters: int = REGISTER_ITERS) -> Tensor:
    """s = argmin ‖J s − (y − A x)‖² by `iters` CG steps on JᵀJ s = Jᵀ(y − A x) from 0.  → [N, 2] in x's dtype"""
    J, Jt = shift_jacobian(op, x)
    b = Jt(y - op.A(x))
    return conjugate_gradient(lambda s: Jt(J(s)), b, torch.zeros_like(b), iters, dot=inner_product)


def register(op, y: Tensor, x: Tensor, iters: int = REGISTER_ITERS) -> Tensor:
    """x_s with s = `fit_shifts`: every frame moved to where the measurement puts it.  [N, C, H, W] → [N, C, H, W]"""
    return shift_frames(x, fit_shifts(op, y, x, iters))
