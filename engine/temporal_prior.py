"""A temporal prior for the blur's null modes: motion-compensated smoothness (docs/design.md).

A temporal box blur of width k has (near-)null modes that oscillate along time with period k: the
measurement does not see them and a per-frame prior barely does, so whatever the restoration X̄
holds there shows as periodic ghost frames. Along a motion trajectory a real video changes
slowly, so those modes are chosen here by motion-compensated smoothness.

Notation (frames n = 0 … N−1, pixels p, data range [0, 1]):

    f_n(p)     flow of frame n + 1 into frame n: pixel p of frame n + 1 shows what p + f_n(p) of
               frame n shows; estimated once from the measurement (`estimate_flow`)  [N−1, 2, H, W]
    W_n        bilinear warp by f_n: (W_n u)(p) = u(p + f_n(p)), 0 outside the frame
    c_n(p)     confidence ∈ [0, 1] of f_n at p (its brightness residual on the measurement)
    D          (D x)[n] = c_n ⊙ (x[n + 1] − W_n x[n]),  n = 0 … N−2    [N, C, H, W] → [N−1, C, H, W]
    Π          the projection onto the operator's free modes along frames: the eigenvectors of
               g·TᵀT with eigenvalue μ < τ·‖AᵀA‖ (`free_modes`, through `frame_preconditioner`)

`MotionPrior` replaces X̄'s component in the free modes by the one that best balances smoothness
along the trajectories against the measurement (a MAP estimate with trajectory residuals of size s
and measurement noise σ_y, w = (s/σ_y)²):

    X̄ ← X̄ + Π z,   z = argmin_z ‖D(X̄ + Π z)‖² + w‖A(X̄ + Π z) − y‖² + ρ‖z‖²
                      i.e. (Π H Π + ρ I) z = Π(w Aᵀy − H X̄),  H = DᵀD + w AᵀA,
                      by `iters` CG steps from z = 0,

which leaves every mode outside the free ones (g·μ ≥ τ‖AᵀA‖) as it was. Where the confidence
is 0 (occlusions, pixels leaving the frame) DᵀD is 0 and the data term and ρ keep X̄.

The measurement's frames are blurred along time: their flow smears fast motion, and across a scene
cut they fade one shot into the other, so D_y ties frames the cut separates. The result X₁ of that
step is sharp, so a second MAP step takes D₁ = D(X₁), the flow and confidence of X₁ itself, over the
wider free modes Π_r (g·μ < τ_r‖AᵀA‖, τ_r = REFINE_FREE):

    X₂ = X₁ + Π_r z,   z = argmin_z ‖D₁(X₁ + Π_r z)‖² + w‖A(X₁ + Π_r z) − y‖² + ρ_r‖z‖²

by REFINE_ITERS CG steps (on 96 frames of a real 640×272 H.264 clip with two scene cuts: +2.5 dB, the
worst frame's drop below its neighbours 5.3 → 2.9 dB; on slow clips −0.05 to +0.3 dB: docs/results.md,
"The flow of the restored frames"). A third step gained on the fast clip and lost on the slow ones.
The step is there for fast motion, which the blur smears; where the measurement moves slowly its own
flow is as good as X₁'s, and a step along X₁'s flow only adds that flow's errors (ghost pairs on a slow
codec clip). So ρ_r‖z‖² is Σ ρ_r z² with ρ_r per pixel of every frame (`refine_rho`): ρ_slow where
the measurement's flow is shorter than SLOW_SPEED pixels per frame, REFINE_RHO from FAST_SPEED on. A
noisy measurement's flow is less sure, so ρ_slow falls with σ_y (`slow_rho`): REFINE_RHO_SLOW up to
σ_y = SLOW_NOISE, REFINE_RHO (the step the same everywhere) from NOISY on, geometrically between.

Both steps still tie the two frames beside a scene cut: D_y through the fade, D₁ wherever unrelated
colours happen to match. X₂ shows the cut plainly, so it is found there (`scene_cuts`: the colour
histograms of frames n and n + 1 differ by far more than those of the six pairs nearest), and where
one is found both steps run again from X̄ with the pairs across a cut left out of D_y and D₁
(`TrajectoryDifference.linking`): each shot's modes are chosen along its own motion (on the clip
above: its worst drop 2.9 → 1.7 dB; docs/results.md, "Scene cuts"). A clip without a cut keeps X₂.

Then the weakly seen modes (g·μ < τ_m‖AᵀA‖, τ_m = MEAN_FREE > τ, projection Π_m) take the mean of
each frame and its neighbours along their motion (`trajectory_mean`), the flow estimated on the
refined clip X = X₂ itself, each neighbour weighed by its flow's confidence:

    M(X)[n] = (X[n] + Σ_{0<|j|≤r} c_{n,j} ⊙ X[n+j](p + f_{n,j}(p))) / (1 + Σ_{0<|j|≤r} c_{n,j})
    X ← X − Π_m X + Π_m M(X)

(frames past the clip's ends held). The refined clip's motion is sharper than the measurement's, and
the mean averages along it what the data barely sees: the loop's errors there, and the MAP step's
first-order model's.

With `register` (a measurement with white noise: a clip degraded here), each frame is then moved by the
translation that the measurement puts it at (engine.registration): the camera's shake, which the motion
the steps follow has smoothed away.

Every step above acts on weakly seen modes; in the modes the data sees well the restoration keeps the
measurement's noise. A clip's ends are seen best (a held end counts its frame up to four times), so there
the restoration is no better than its input while the frames inside gain 3–4 dB: a dip at the end that the
bound on ghost frames counts (the last frame of a 48-frame clip 3.7 dB below its neighbours at σ_y = 0.01).
So last, every frame takes the trajectory mean M_σ of the frames within NOISE_RADIUS, each weighed by how
well it matches within the measurement's own noise (confidence e^−1 at a residual of NOISE_SPAN·σ_y), in all
modes, the frames past the clip's ends left out (held, they would count the end frame again): neighbours
that show the same content up to noise average its noise away, moving or mismatched ones barely count.
At σ_y = 0.01 it lifts the mean by 0.3–0.9 dB and the end frame by 3.9 (docs/results.md, "The clip's ends");
on an H.264 video σ̂ is the codec's white residue (0.002) and the step all but keeps the frames.

The MAP step is linear in X̄ for fixed flow; the mean's flow comes from X, so the whole is not. The
steps, the cut detection and the mean run a fixed number of iterations and never synchronise with
the host; the prior reads one boolean after the first two steps (was a cut found?), after the reverse
loop, so a clip without a cut does not pay for the second pass.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from engine.cg import GAMMA_NOISE, conjugate_gradient
from engine.errors import InputError
from engine.noise import ROUNDING_FLOOR
from engine.operators.base import LinearOperator, inner_product
from engine.registration import register

log = logging.getLogger(__name__)
Tensor = torch.Tensor

#: "none": the paper's behaviour (X̄'s null component kept as the per-frame prior left it);
#: "motion": `MotionPrior` after the reverse loop
TEMPORAL_PRIORS = ("none", "motion")
#: τ: modes with g·μ < τ·‖AᵀA‖ are free (chosen by bench/ghosts.py, as the others below)
DEFAULT_FREE = 0.03
#: τ_r: the second MAP step's free modes, its D from the first step's result (module docstring); chosen with the
#: saved loop outputs of six real H.264 clips (docs/results.md, "The flow of the restored frames")
REFINE_FREE = 0.1
#: the second MAP step's ρ and CG iterations: on 96 frames of 640×272 ten iterations from z = 0 leave it far from
#: converged (the frames beside a scene cut 0.7 dB lower); twenty with ρ 0.01 (docs/results.md)
REFINE_RHO, REFINE_ITERS = 0.01, 20
#: ρ_r where the measurement shows slow motion (`refine_rho`): ρ_slow at a speed ≤ SLOW_SPEED pixels per frame,
#: REFINE_RHO from FAST_SPEED on, linear between; the speed a (2·SPEED_RADIUS + 1)² mean of the flow's length;
#: ρ_slow = REFINE_RHO_SLOW up to σ_y = SLOW_NOISE, REFINE_RHO from NOISY on (`slow_rho`). Chosen with the saved loop
#: outputs of real H.264 clips (σ̂ 0.001–0.004), noisy near-lossless ones (σ̂ 0.004–0.005) and bench/ghosts.py (σ_y
#: 0.01) (docs/results.md, "Where the measurement's flow holds" and "The slow pixels' ρ of a noisy measurement")
REFINE_RHO_SLOW, SLOW_NOISE, NOISY, SLOW_SPEED, FAST_SPEED, SPEED_RADIUS = 0.1, 0.003, 0.004, 1.0, 3.0, 3
#: ρ of the free-mode solve, relative to DᵀD's scale (≤ 4)
DEFAULT_RHO = 1e-3
#: CG iterations of the free-mode solve
DEFAULT_ITERS = 10
#: brightness residual (data range) at which a flow vector's confidence falls to e^−1; also s, the size
#: of a trajectory difference the data term is weighed against
DEFAULT_RESIDUAL = 0.02
#: the flow is estimated on frames halved this many times, then upsampled (faster, and smoother on blurred frames)
FLOW_SKIP = 1
#: τ_m: modes with g·μ < τ_m·‖AᵀA‖ take the trajectory mean after the MAP step, over MEAN_RADIUS frames on each
#: side, a neighbour's confidence falling to e^−1 at a brightness residual of MEAN_RESIDUAL, its flow matched
#: over (2·MEAN_WINDOW + 1)² pixels; measured with bench/real_targets.py on six real H.264 clips (docs/results.md)
MEAN_FREE, MEAN_RADIUS, MEAN_RESIDUAL, MEAN_WINDOW = 0.1, 7, 0.08, 7
#: frames whose trajectory mean is taken at once (its work space; the result does not depend on it)
MEAN_CHUNK = 8
#: the last step's trajectory mean M_σ (module docstring): NOISE_RADIUS frames on each side, a neighbour's confidence
#: falling to e^−1 at a residual of NOISE_SPAN·σ_y; chosen with bench/ghosts.py (σ_y 0.01) and bench/real_targets.py
#: (docs/results.md, "The clip's ends")
NOISE_RADIUS, NOISE_SPAN = 3, 1.0
#: a scene cut between frames n and n + 1 of X₂ (`scene_cuts`): their colour histograms (CUT_BINS bins per channel)
#: differ by at least CUT_FLOOR and by CUT_RATIO times the median difference of the 2·CUT_RADIUS pairs nearest; on the
#: clean real clips cuts give 0.21–0.71 and 7.8–73×, other pairs at most 0.11 and 2.5×; on a restored 640×272 clip
#: the weaker cut 0.21 and 5.3×, other pairs at most 0.11 and 2.9× (docs/results.md, "Scene cuts")
CUT_BINS, CUT_FLOOR, CUT_RATIO, CUT_RADIUS = 32, 0.15, 4.0, 3
#: frames whose histograms are counted at once (the work space; the result does not depend on it)
CUT_CHUNK = 8


def noise_level(gamma: Optional[float]) -> float:
    """σ_y behind the CG's γ: GAMMA_NOISE / γ (engine.cg.default_gamma's inverse), the 8-bit rounding's
    (engine.noise.ROUNDING_FLOOR) for γ None, the noiseless CG."""
    return ROUNDING_FLOOR if gamma is None else GAMMA_NOISE / gamma


def check_temporal_prior(name: str) -> str:
    """`name` if it is one of TEMPORAL_PRIORS, else one line listing them."""
    if name not in TEMPORAL_PRIORS:
        raise InputError(f"unknown temporal prior {name!r}; accepted: {', '.join(TEMPORAL_PRIORS)}")
    return name


# ── bilinear warping with an exact adjoint ──────────────────────────────────

def sampling_grid(flow: Tensor) -> Tensor:
    """p + f(p) in grid_sample's coordinates (align_corners: −1 and 1 are the border pixels' centres).
    flow: [B, 2, H, W] (x, y in pixels) → [B, H, W, 2]"""
    _, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    return torch.stack([2 * (xs + flow[:, 0]) / max(w - 1, 1) - 1, 2 * (ys + flow[:, 1]) / max(h - 1, 1) - 1], -1)


def _sampling_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: a half-precision grid misplaces samples by up to 0.16 pixel at 1280 wide."""
    return torch.promote_types(dtype, torch.float32)


def warp(u: Tensor, grid: Tensor) -> Tensor:
    """(W u)(p) = Σ_corners bilinear weight · u[corner] at p + f(p), a corner outside the frame weighing 0;
    computed in at least float32, returned in u's dtype.  u: [B, C, H, W], grid: `sampling_grid` [B, H, W, 2]
    → [B, C, H, W]"""
    dt = _sampling_dtype(u.dtype)
    return F.grid_sample(u.to(dt), grid.to(dt), mode="bilinear", padding_mode="zeros", align_corners=True).to(u.dtype)


def warp_adjoint(v: Tensor, grid: Tensor) -> Tensor:
    """Wᵀ v: every v(p) spread back onto the corners it was sampled from, with the same weights (grid_sample's
    gradient with respect to its input, which reads only the input's shape).  v: [B, C, H, W] → [B, C, H, W]"""
    dt = _sampling_dtype(v.dtype)
    shape = v.new_zeros((), dtype=dt).expand(v.shape)
    return torch.ops.aten.grid_sampler_2d_backward(v.to(dt), shape, grid.to(dt), 0, 0, True, [True, False])[0].to(v.dtype)


class TrajectoryDifference(LinearOperator):
    """D x[n] = c_n ⊙ (x[n + 1] − W_n x[n]): differences along motion trajectories.  [N, C, H, W] → [N−1, C, H, W]"""

    def __init__(self, flow: Tensor, confidence: Tensor, channels: int = 3):
        n1, _, h, w = flow.shape
        self.in_shape, self.out_shape = (n1 + 1, channels, h, w), (n1, channels, h, w)
        self.kernels = "torch"
        self.grid = sampling_grid(flow)                               # [N−1, H, W, 2]
        self.confidence = confidence                                  # [N−1, 1, H, W]

    def A(self, x: Tensor) -> Tensor:
        """c ⊙ (x[1:] − W x[:−1]).  [N, C, H, W] → [N−1, C, H, W]"""
        d = warp(x[:-1], self.grid)
        return torch.sub(x[1:], d, out=d).mul_(self.confidence.to(x.dtype))

    def A_adjoint(self, r: Tensor) -> Tensor:
        """Dᵀ r: +c ⊙ r onto frames 1 … N−1, −Wᵀ(c ⊙ r) onto frames 0 … N−2.  [N−1, C, H, W] → [N, C, H, W]"""
        cr = self.confidence.to(r.dtype) * r
        out = r.new_zeros((r.shape[0] + 1, *r.shape[1:]))
        out[1:] = cr
        out[:-1].sub_(warp_adjoint(cr, self.grid))
        return out

    def speed(self) -> Tensor:
        """|f_n(p)|, the flow's length in pixels, recovered from the sampling grid (p + f(p) scaled by 2/(size − 1)).
        → [N−1, 1, H, W] float32 or wider"""
        n1, h, w, _ = self.grid.shape
        still = sampling_grid(self.grid.new_zeros(1, 2, h, w))                           # p itself
        scale = self.grid.new_tensor([max(w - 1, 1) / 2, max(h - 1, 1) / 2])
        return (self.grid - still).mul_(scale).norm(dim=-1)[:, None]

    def linking(self, keep: Tensor) -> "TrajectoryDifference":
        """The same differences with those of the pairs keep[n] = False (frames n and n + 1 across a scene cut)
        weighed 0: a new operator sharing the flow.  keep: [N−1] bool"""
        out = copy.copy(self)
        out.confidence = self.confidence * keep.to(self.confidence.dtype)[:, None, None, None]
        return out


# ── flow from the measurement ───────────────────────────────────────────────

#: from this radius on a box mean runs as two 1-D passes (rows, then columns): on a CPU the 2-D pool costs
#: (2r + 1)² per pixel, the two passes 2(2r + 1): 3× faster at r = 7, as fast at r = 3, slower below
SEPARABLE_RADIUS = 3


def _box(u: Tensor, radius: int) -> Tensor:
    """Mean over the (2r + 1)² window, border pixels averaging what is inside (the window's inside is a
    rectangle, so its mean is the mean along rows of the means along columns).  [B, C, H, W] → [B, C, H, W]"""
    k = 2 * radius + 1
    if radius < SEPARABLE_RADIUS:
        return F.avg_pool2d(u, k, stride=1, padding=radius, count_include_pad=False)
    u = F.avg_pool2d(u, (1, k), stride=1, padding=(0, radius), count_include_pad=False)
    return F.avg_pool2d(u, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)


def _sample(u: Tensor, flow: Tensor) -> Tensor:
    """u at p + flow(p), bilinear, the border repeated (for matching and the trajectory mean, whose confidence
    is 0 where p + flow(p) leaves the frame; D warps with `warp`).  [B, C, H, W]"""
    return F.grid_sample(u, sampling_grid(flow), mode="bilinear", padding_mode="border", align_corners=True)


def _gradients(u: Tensor) -> tuple[Tensor, Tensor]:
    """Central differences (one-sided at the border).  [B, 1, H, W] → ∂x, ∂y"""
    p = F.pad(u, (1, 1, 1, 1), mode="replicate")
    return (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2, (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2


def estimate_flow(ref: Tensor, other: Tensor, *, levels: int = 4, iters: int = 3, radius: int = 3,
                  eps: float = 1e-4, skip: int = 0) -> Tensor:
    """Dense flow f with other(p + f(p)) ≈ ref(p): coarse-to-fine Lucas–Kanade on grey frames.

    At every pyramid level (halved by 2×2 means) and iteration, with I = other warped by f,
    g = (∇I + ∇ref)/2 and e = I − ref, the window sums over (2r + 1)² pixels give
    f ← f − (Σ g gᵀ + ε I)⁻¹ Σ g e, then f is smoothed by a 3×3 mean.
    ref, other: [B, C, H, W] in [0, 1] → f [B, 2, H, W] (x, y) in pixels
    """
    a, b = ref.mean(1, keepdim=True), other.mean(1, keepdim=True)
    pyramid = [(a, b)]
    while len(pyramid) < levels and min(pyramid[-1][0].shape[-2:]) >= 16:
        pyramid.append(tuple(F.avg_pool2d(u, 2, ceil_mode=True) for u in pyramid[-1]))
    flow, skip = None, min(skip, len(pyramid) - 1)         # frames under 32 pixels have no halved level to start from
    for a, b in reversed(pyramid[skip:]):
        if flow is None:
            flow = torch.zeros(a.shape[0], 2, *a.shape[-2:], device=a.device, dtype=a.dtype)
        else:
            scale = torch.tensor([a.shape[-1] / flow.shape[-1], a.shape[-2] / flow.shape[-2]], device=a.device,
                                 dtype=a.dtype)
            flow = F.interpolate(flow, size=a.shape[-2:], mode="bilinear", align_corners=False) * scale[:, None, None]
        ax, ay = _gradients(a)
        for _ in range(iters):
            warped = _sample(b, flow)
            wx, wy = _gradients(warped)
            gx, gy, e = (ax + wx) / 2, (ay + wy) / 2, warped - a
            sums = _box(torch.cat([gx * gx, gx * gy, gy * gy, gx * e, gy * e], 1), radius)   # [B, 5, h, w]
            sxx, sxy, syy, bx, by = sums.split(1, dim=1)
            sxx, syy = sxx + eps, syy + eps
            det = sxx * syy - sxy * sxy
            step = torch.cat([syy * bx - sxy * by, sxx * by - sxy * bx], 1) / det
            flow = _box(flow - step, 1)
    if skip:
        flow = F.interpolate(flow, size=ref.shape[-2:], mode="bilinear", align_corners=False) * 2**skip
    return flow


def flow_confidence(ref: Tensor, warped: Tensor, flow: Tensor, residual: float = DEFAULT_RESIDUAL) -> Tensor:
    """c = exp(−ē²/s²) · [p + f(p) inside the frame], ē² the 5×5 mean of the squared grey residual
    warped(p) − ref(p), warped = other(p + f(p)) (`_sample`), s = `residual`.  → [B, 1, H, W]"""
    e = (warped - ref).mean(1, keepdim=True)
    inside = (sampling_grid(flow).abs() <= 1).all(-1, keepdim=True).movedim(-1, 1).to(ref.dtype)   # [B, 1, H, W]
    return torch.exp(-_box(e * e, 2) / residual**2) * inside


def trajectories(frames: Tensor, residual: float = DEFAULT_RESIDUAL, skip: int = FLOW_SKIP) -> TrajectoryDifference:
    """D for a clip from its own frames (the measurement, or anything in video space with its motion):
    f_n = flow of frame n + 1 into frame n, with its confidence.  frames: [N, C, H, W] in [0, 1]"""
    ref, other = frames[1:].float(), frames[:-1].float()
    flow = estimate_flow(ref, other, skip=skip)
    confidence = flow_confidence(ref, _sample(other, flow), flow, residual)
    return TrajectoryDifference(flow, confidence, channels=frames.shape[1])


def trajectory_mean(x: Tensor, radius: int = MEAN_RADIUS, residual: float = MEAN_RESIDUAL,
                    window: int = MEAN_WINDOW, skip: int = FLOW_SKIP, chunk: int = MEAN_CHUNK, *,
                    held: bool = True) -> Tensor:
    """M(x) (module docstring): every frame averaged with its neighbours n + j, 0 < |j| ≤ r (past the clip's ends
    the end frames held, or left out with held=False), each warped onto it by the flow estimated between the two
    frames of x (`estimate_flow` with `window` as its radius) and weighed by that flow's confidence.
    Flow, warps and weights in float32, `chunk` frames at a time (the work space is a chunk's, not the clip's).
    [N, C, H, W] → [N, C, H, W] in x's dtype"""
    n, out = x.shape[0], torch.empty_like(x)
    for start in range(0, n, chunk):
        frames = torch.arange(start, min(start + chunk, n), device=x.device)
        ref = x[frames].float()
        total, weight = ref.clone(), torch.ones_like(ref[:, :1])
        for j in [*range(-radius, 0), *range(1, radius + 1)]:
            index = frames.add(j)
            other = x[index.clamp(0, n - 1)].float()
            flow = estimate_flow(ref, other, radius=window, skip=skip)
            warped = _sample(other, flow)
            confidence = flow_confidence(ref, warped, flow, residual)
            if not held:                                             # a frame past the end: no neighbour
                confidence *= ((index >= 0) & (index < n)).to(confidence.dtype)[:, None, None, None]
            total.addcmul_(confidence, warped)
            weight.add_(confidence)
        out[frames] = total.div_(weight).to(x.dtype)
    return out


def video_frames(op, y: Tensor) -> Tensor:
    """The measurement seen in video space, for the flow: y itself when A keeps the frame shape, else
    Aᵀy / Aᵀ(A 1) (e.g. SR's nearest upsampling), 0 where Aᵀ(A 1) is.  → op.in_shape"""
    if tuple(op.out_shape) == tuple(op.in_shape):
        return y
    weight = op.A_adjoint(op.A(torch.ones(op.in_shape, device=y.device, dtype=y.dtype)))
    return op.A_adjoint(y).div_(weight.clamp_min(1e-12)).masked_fill_(weight <= 0, 0)


def slow_rho(sigma_y: float) -> float:
    """ρ_slow = REFINE_RHO_SLOW^(1−s) · REFINE_RHO^s, s = clamp(log(σ_y/SLOW_NOISE) / log(NOISY/SLOW_NOISE), 0, 1):
    the second step's ρ where the measurement moves slowly, lower where its noise makes its flow less sure (module
    docstring)."""
    if sigma_y <= SLOW_NOISE:
        return REFINE_RHO_SLOW
    s = min(math.log(sigma_y / SLOW_NOISE) / math.log(NOISY / SLOW_NOISE), 1.0)
    return REFINE_RHO_SLOW ** (1 - s) * REFINE_RHO ** s


def refine_rho(speed: Tensor, *, slow: float = REFINE_RHO_SLOW, fast: float = REFINE_RHO,
               slow_speed: float = SLOW_SPEED, fast_speed: float = FAST_SPEED, radius: int = SPEED_RADIUS) -> Tensor:
    """ρ_r of the second MAP step at every pixel of every frame, from the measurement's flow lengths s_n = |f_n|:

        v[n](p) = max(S s_{n−1}(p), S s_n(p))      (S: the (2·radius + 1)² mean; one pair at the clip's ends)
        ρ_r[n](p) = fast + (slow − fast) · clamp((fast_speed − v) / (fast_speed − slow_speed), 0, 1)

    Where the measurement moves slowly its own flow is as sharp as X₁'s, so the second step, there for the flow
    that the blur smears, is held near X₁ (module docstring).  speed: [N−1, 1, H, W] (`TrajectoryDifference.speed`)
    → [N, 1, H, W]"""
    s = _box(speed, radius)
    v = torch.cat([s[:1], torch.maximum(s[:-1], s[1:]), s[-1:]])                  # frame n: pairs n − 1 and n
    t = (fast_speed - v).div_(fast_speed - slow_speed).clamp_(0, 1)
    return t.mul_(slow - fast).add_(fast)


# ── scene cuts ──────────────────────────────────────────────────────────────

def histogram_change(frames: Tensor, bins: int = CUT_BINS, chunk: int = CUT_CHUNK) -> Tensor:
    """h[n] = Σ_c Σ_b |H_cb(x[n+1]) − H_cb(x[n])| / (2·C·H·W), H_cb the number of channel c's pixels in bin b of
    [0, 1] (`bins` equal bins, values clamped): the share of pixels whose colour changed bin, 0 … 1, blind to
    where in the frame they are (so to motion).  Counted `chunk` frames at a time.  [N, C, H, W] → [N−1] float32"""
    n, channels = frames.shape[:2]
    counts = torch.zeros(n, channels, bins, device=frames.device)
    for start in range(0, n, chunk):
        part = frames[start:start + chunk].float().clamp(0, 1).flatten(2)                      # [B, C, H·W]
        index = part.mul(bins).long().clamp_(max=bins - 1)
        counts[start:start + chunk].scatter_add_(2, index, torch.ones_like(part))
    return (counts[1:] - counts[:-1]).abs().sum(dim=(1, 2)) / (2 * channels * frames[0, 0].numel())


def scene_cuts(frames: Tensor, *, floor: float = CUT_FLOOR, ratio: float = CUT_RATIO,
               radius: int = CUT_RADIUS) -> Tensor:
    """cut[n]: frames n and n + 1 belong to different shots (`histogram_change` h):

        h[n] ≥ floor,   h[n] ≥ ratio · median{h[m] : m ∈ around(n)},   h[n] = max{h[m] : |m − n| ≤ radius}

    around(n): the 2·radius pairs nearest n, the window shifted inward at the clip's ends (a cut near an end is
    still compared with 2·radius pairs, not with the few beside it, which the restoration mixes across the cut);
    all other pairs where the clip has fewer (none: two frames have no cut). The last condition keeps, of a cut
    and the mixed pairs beside it, the cut alone. Sharp frames (a restoration, not the measurement, which fades
    across a cut).  [N, C, H, W] → [N−1] bool"""
    h = histogram_change(frames)
    pairs = h.numel()
    if pairs < 2:
        return torch.zeros_like(h, dtype=torch.bool)
    span = min(2 * radius, pairs - 1)                                       # the pairs compared with, n left out
    n = torch.arange(pairs, device=h.device)
    start = (n - radius).clamp(0, pairs - 1 - span)                                       # [P]
    others = start[:, None] + torch.arange(span, device=h.device)                         # [P, span] …
    others += (others >= n[:, None]).long()                                               # … stepping over n
    around = h[others].median(dim=1).values
    peak = F.max_pool1d(h[None, None], 2 * radius + 1, stride=1, padding=radius)[0, 0]
    return (h >= floor) & (h >= ratio * around) & (h >= peak)


# ── the prior ───────────────────────────────────────────────────────────────

def free_modes(op, free: float, *, device=None, dtype=None) -> Optional[Callable[[Tensor], Tensor]]:
    """Π: v ↦ V 1[g·μ < τ‖AᵀA‖] Vᵀ v along frames (op's `frame_preconditioner` with a 0/1 filter), or None
    without a temporal part.  [N, ...] → [N, ...]"""
    frame_preconditioner = getattr(op, "frame_preconditioner", None)
    if frame_preconditioner is None:
        return None
    floor = free * getattr(op, "normal_gain", 1.0)
    return frame_preconditioner(lambda mu: (mu < floor).to(mu.dtype), device=device, dtype=dtype)


class MotionPrior:
    """X̄ ↦ X₁ = X̄ + Π z with z = argmin ‖D(X̄ + Π z)‖² + w‖A(X̄ + Π z) − y‖² + ρ‖z‖², D from the measurement,
    then X₂ = X₁ + Π_r z' the same way with D₁ from X₁ (both again without the pairs across a scene cut
    where X₂ shows one), then X₂ − Π_m X₂ + Π_m M(X₂), its frames registered to y with `register`, then M_σ of
    the whole (the module docstring).

        prior = MotionPrior(op, y, video_frames(op, y), gamma)   # the measurement's flow, the projections
        x = prior(x)                        # [N, C, H, W] → [N, C, H, W], one host read (a cut or not)

    `y`: the measurement of `op` (op.out_shape); `frames`: the clip's motion as the measurement shows it
    in video space (`video_frames`), op.in_shape; `gamma`: the CG's γ (None: noiseless), which gives σ_y
    (`noise_level`) and so the data weight w = (residual/σ_y)²; `sigma_y`: the measurement's own noise where
    known (stated or estimated; the CG may weigh the data for a larger one; no lower than the 8-bit rounding's),
    for `slow_rho` and M_σ (None: γ's);
    `register`: each frame moved to where the measurement puts it before M_σ (engine.registration; for white noise).
    """

    def __init__(self, op, y: Tensor, frames: Tensor, gamma: Optional[float] = None, *, free: float = DEFAULT_FREE,
                 rho: float = DEFAULT_RHO, iters: int = DEFAULT_ITERS, residual: float = DEFAULT_RESIDUAL,
                 sigma_y: Optional[float] = None, register: bool = False):
        self.op, self.free, self.register = op, free, register
        self.project = free_modes(op, free, device=frames.device, dtype=frames.dtype)
        self.project_refine = free_modes(op, REFINE_FREE, device=frames.device, dtype=frames.dtype)
        self.project_mean = free_modes(op, MEAN_FREE, device=frames.device, dtype=frames.dtype)
        self.weight, self.residual = (residual / noise_level(gamma)) ** 2, residual
        self.sigma_y = noise_level(gamma) if sigma_y is None else max(sigma_y, ROUNDING_FLOOR)   # a stated 0 too
        self.rho_slow = slow_rho(self.sigma_y)
        self.y = y
        self.rho, self.iters = rho, iters
        self.D = trajectories(frames, residual) if self.project is not None and frames.shape[0] > 1 else None
        log.debug("motion prior on %d frames: τ %g, data weight %.3g, %d CG steps, the second step's ρ %g where the "
                  "motion is slow%s", frames.shape[0], free, self.weight, iters, self.rho_slow,
                  "" if self.D is not None else " (no temporal part: X̄ kept)")

    def __call__(self, x: Tensor) -> Tensor:
        """M_σ(X₂ − Π_m X₂ + Π_m M(X₂)): X₁ along the measurement's motion, X₂ along X₁'s own, both again without
        the pairs across a scene cut where X₂ shows one, registered with `register` before M_σ (module docstring).
        [N, C, H, W] → [N, C, H, W]"""
        if self.D is None:
            return x
        rho = self.second_rho(x.dtype)                  # the same for both passes
        refined = self.refine(x, rho=rho)
        cuts = scene_cuts(refined)
        if cuts.any():                                  # the one host read: a clip without a cut keeps X₂
            log.debug("scene cuts after frames %s: the MAP steps again without linking across them",
                      cuts.nonzero().flatten().tolist())
            del refined                                 # its memory for the second pass
            refined = self.refine(x, ~cuts, rho=rho)
        del rho
        refined.add_(self.project_mean(trajectory_mean(refined).sub_(refined)))
        if self.register:
            refined = register(self.op, self.y, refined)
        return self.noise_mean(refined)

    def noise_mean(self, x: Tensor) -> Tensor:
        """M_σ(x): the trajectory mean over NOISE_RADIUS frames with confidence e^−1 at NOISE_SPAN·σ_y, in all modes,
        frames past the clip's ends left out (module docstring).  [N, C, H, W] → [N, C, H, W] (new)"""
        return trajectory_mean(x, NOISE_RADIUS, NOISE_SPAN * self.sigma_y, held=False)

    def second_rho(self, dtype: torch.dtype) -> float | Tensor:
        """ρ_r of the second MAP step: `refine_rho` of the measurement's flow speed [N−1, 1, H, W], or REFINE_RHO
        itself where the slow pixels take it too (σ_y from NOISY on: no map to hold)."""
        if self.rho_slow <= REFINE_RHO:
            return REFINE_RHO
        return refine_rho(self.D.speed(), slow=self.rho_slow).to(dtype)

    def refine(self, x: Tensor, keep: Optional[Tensor] = None, *, rho: Optional[float | Tensor] = None) -> Tensor:
        """X₂: the MAP step along the measurement's motion (X₁), then along X₁'s own with ρ_r = `rho` (None:
        `second_rho`); keep [N−1] bool: the pairs of frames D_y and D₁ link (None: all; False: across a scene cut).
        [N, C, H, W] → [N, C, H, W] (new)"""
        link = (lambda D: D) if keep is None else (lambda D: D.linking(keep))
        x = self.map_estimate(x, link(self.D))                                                    # X₁
        rho = self.second_rho(x.dtype) if rho is None else rho
        return self.map_estimate(x, link(trajectories(x.clamp(0, 1), self.residual)), self.project_refine,
                                 rho=rho, iters=REFINE_ITERS)

    def map_estimate(self, x: Tensor, D: Optional[TrajectoryDifference] = None,
                     project: Optional[Callable[[Tensor], Tensor]] = None, *, rho: Optional[float | Tensor] = None,
                     iters: Optional[int] = None) -> Tensor:
        """X̄ + Π z, one MAP step alone, with the measurement's D, Π, ρ and iterations unless given; ρ a number or
        one per pixel of every frame ([N, 1, H, W], ρ‖z‖² then Σ ρ z²).  [N, C, H, W] → [N, C, H, W] (a new tensor)"""
        P = self.project if project is None else project
        D, w = self.D if D is None else D, self.weight
        rho, iters = self.rho if rho is None else rho, self.iters if iters is None else iters
        H = lambda v: D.A_adjoint(D.A(v)).add_(self.op.A_adjoint_A(v), alpha=w)             # DᵀD + w AᵀA
        if isinstance(rho, Tensor):                             # Π(H + diag ρ)Π on range(Π), where CG's iterates stay
            normal = lambda z: P(H(z).addcmul_(rho, z))
        else:                                                   # Π H Π + ρ I (Π z = z there)
            normal = lambda z: P(H(z)).add_(z, alpha=rho)
        rhs = P(H(x).sub_(self.op.A_adjoint(self.y), alpha=w).neg_())                    # Π(w Aᵀy − H X̄)
        z = conjugate_gradient(normal, rhs, torch.zeros_like(x), iters, dot=inner_product)
        return x + P(z)
