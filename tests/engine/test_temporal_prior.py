"""The null modes' temporal prior (engine.temporal_prior): warps, flow, the free-mode refinement, ghost frames."""

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.cg import default_gamma
from engine.errors import InputError
from engine.metrics import psnr
from engine.noise import ROUNDING_FLOOR
from engine.operators import from_spec
from engine.priors import GaussianPrior
from engine.runtime import Solver, SolverConfig
from engine.temporal_prior import (FAST_SPEED, MEAN_RADIUS, NOISE_RADIUS, NOISY, REFINE_RHO, REFINE_RHO_SLOW,
                                   SEPARABLE_RADIUS, SLOW_NOISE, SLOW_SPEED, MotionPrior, TrajectoryDifference, _box,
                                   estimate_flow, free_modes, histogram_change, refine_rho, sampling_grid, scene_cuts,
                                   slow_rho, trajectory_mean, video_frames, warp, warp_adjoint)
from engine.testclips import camera_clip
from engine.windows import VideoRestorer

F64 = torch.float64
SPEC = "temporal:uniform:7:replicate"


def dot_error(op, x, r):
    """|⟨D x, r⟩ − ⟨x, Dᵀ r⟩| / (‖D x‖·‖r‖)."""
    lhs, rhs = (op.A(x) * r).sum(), (x * op.A_adjoint(r)).sum()
    return (abs(lhs - rhs) / (op.A(x).norm() * r.norm())).item()


def worst_dip(restored, clean):
    """The largest drop of a frame's PSNR below the median of the 7 frames around it (the first or last 7 at the ends)."""
    scores = psnr(restored, clean)
    n = scores.numel()
    idx = (torch.arange(n) - 3).clamp(0, n - 7)[:, None] + torch.arange(7)[None]
    return (scores[idx].median(dim=1).values - scores).max().item()


@pytest.mark.parametrize("shape", [(6, 3, 9, 11), (2, 1, 5, 4)])
def test_trajectory_difference_dot_test(shape):
    """D and Dᵀ are exact adjoints in fp64, flows reaching outside the frame included."""
    g = torch.Generator().manual_seed(0)
    n, c, h, w = shape
    flow = 3 * torch.randn(n - 1, 2, h, w, generator=g, dtype=F64)
    D = TrajectoryDifference(flow, torch.rand(n - 1, 1, h, w, generator=g, dtype=F64), channels=c)
    x, r = torch.randn(shape, generator=g, dtype=F64), torch.randn(n - 1, c, h, w, generator=g, dtype=F64)
    assert dot_error(D, x, r) < 1e-13


def test_trajectory_difference_is_zero_on_the_motion():
    """A clip that moves by the flow has D x = 0 away from the borders."""
    clip = camera_clip("astronaut", frames=4, size=24, pan=(1.0, 0.0)).to(F64)           # moves by −1 px in x
    flow = torch.zeros(3, 2, 24, 24, dtype=F64)
    flow[:, 0] = 1.0                                      # frame n + 1 at p shows frame n at p + (1, 0)
    D = TrajectoryDifference(flow, torch.ones(3, 1, 24, 24, dtype=F64))
    assert D.A(clip)[..., 2:-2, 2:-2].abs().max() < 1e-6


@pytest.mark.parametrize("radius", [1, SEPARABLE_RADIUS, 7])
def test_box_mean_is_the_mean_of_the_window_inside_the_frame(radius):
    """The box mean (2-D below SEPARABLE_RADIUS, two 1-D passes from it on) equals, at every pixel, the plain
    mean of the frame's pixels within `radius` rows and columns, borders included (fp64)."""
    u = torch.randn(2, 3, 9, 17, generator=torch.Generator().manual_seed(4), dtype=F64)
    expected = torch.empty_like(u)
    for i in range(u.shape[-2]):
        for j in range(u.shape[-1]):
            window = u[..., max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1]
            expected[..., i, j] = window.mean(dim=(-2, -1))
    assert torch.allclose(_box(u, radius), expected, rtol=0, atol=1e-12)


def test_estimate_flow_finds_a_translation():
    """Lucas–Kanade on a textured pan recovers its sub-pixel shift in the interior."""
    clip = camera_clip("coffee", frames=2, size=48, pan=(1.5, -0.75))
    flow = estimate_flow(clip[1:], clip[:1])
    inner = flow[0, :, 8:-8, 8:-8].mean(dim=(1, 2))
    assert torch.allclose(inner, torch.tensor([1.5, -0.75]), atol=0.15)


def test_free_modes_are_what_the_blur_hardly_sees():
    """Π is a projection along frames, and ‖A Π x‖² ≤ τ·‖AᵀA‖·‖Π x‖²."""
    op = from_spec(SPEC, (48, 3, 4, 5), dtype=F64, kernels="torch")
    P = free_modes(op, 1e-2)
    x = torch.randn(op.in_shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    px = P(x)
    assert torch.allclose(P(px), px, atol=1e-12)
    assert 0 < px.norm() < x.norm()
    assert op.A(px).norm() ** 2 <= 1e-2 * op.normal_gain * px.norm() ** 2


def test_motion_prior_changes_only_the_free_modes_before_its_last_step():
    """The MAP step moves X̄ inside range(Π) only and the mean inside range(Π_m), so what the measurement
    sees well stays as it was (‖A Π_m v‖² ≤ τ_m‖AᵀA‖‖v‖²) until the last step, M_σ, which averages every mode."""
    clip = camera_clip("astronaut", frames=20, size=16, pan=(1.0, 0.5)).to(F64)
    op = from_spec(SPEC, tuple(clip.shape), dtype=F64, kernels="torch")
    y = op.A(clip)
    prior = MotionPrior(op, y, video_frames(op, y), 1.0)
    x = clip + 0.05 * torch.randn(clip.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    full = prior(x)
    noise_mean, prior.noise_mean = prior.noise_mean, lambda v: v                  # the steps before M_σ
    step = prior.map_estimate(x) - x
    change = prior(x) - x
    assert step.norm() > 0 and torch.allclose(prior.project(step), step, atol=1e-10)
    assert (change - step).norm() > 0 and not torch.allclose(prior.project(change), change, atol=1e-6)
    assert torch.allclose(prior.project_mean(change), change, atol=1e-10)
    last = full - (x + change)
    assert torch.allclose(full, noise_mean(x + change), atol=1e-12)
    assert last.norm() > 0 and not torch.allclose(prior.project_mean(last), last, atol=1e-6)


def test_speed_is_the_flow_length():
    """The flow's length recovered from D's sampling grid, flows leaving the frame included."""
    flow = 4 * torch.randn(3, 2, 7, 10, generator=torch.Generator().manual_seed(5), dtype=F64)
    D = TrajectoryDifference(flow, torch.ones(3, 1, 7, 10, dtype=F64))
    assert torch.allclose(D.speed(), flow.norm(dim=1, keepdim=True), atol=1e-12)


def test_the_second_step_is_held_where_the_measurement_moves_slowly():
    """ρ_r is REFINE_RHO_SLOW where neither of a frame's pairs moves faster than SLOW_SPEED, REFINE_RHO where one
    moves FAST_SPEED or more (the faster pair counts), linear between; the clip's first and last frames have one pair."""
    speed = torch.zeros(3, 1, 16, 32, dtype=F64)
    speed[1, ..., 16:] = FAST_SPEED + 1                     # pair 1 (frames 1, 2) moves fast in its right half
    speed[0] = (SLOW_SPEED + FAST_SPEED) / 2                # pair 0 halfway everywhere
    rho = refine_rho(speed)
    assert rho.shape == (4, 1, 16, 32)
    slow, fast, half = REFINE_RHO_SLOW, REFINE_RHO, (REFINE_RHO_SLOW + REFINE_RHO) / 2
    assert torch.allclose(rho[3], torch.full_like(rho[3], slow))                       # pair 2 only: still
    assert torch.allclose(rho[0], torch.full_like(rho[0], half))                       # pair 0 only: halfway
    for n in (1, 2):                                                                   # pair 1's right half
        assert torch.allclose(rho[n, ..., 20:], torch.full_like(rho[n, ..., 20:], fast))
    assert torch.allclose(rho[1, ..., :12], torch.full_like(rho[1, ..., :12], half))   # pair 0 beside a still half
    assert torch.allclose(rho[2, ..., :12], torch.full_like(rho[2, ..., :12], slow))


def test_a_noisy_measurement_holds_its_slow_pixels_less():
    """ρ_slow is REFINE_RHO_SLOW up to SLOW_NOISE (most codec clips' σ̂ and the noiseless CG's rounding), falls with
    σ_y beyond, geometrically (halfway in log σ_y: the geometric mean), and is REFINE_RHO (the step the same
    everywhere) from NOISY on."""
    assert slow_rho(0.0) == slow_rho(SLOW_NOISE) == REFINE_RHO_SLOW
    assert slow_rho((SLOW_NOISE * NOISY) ** 0.5) == pytest.approx((REFINE_RHO * REFINE_RHO_SLOW) ** 0.5, rel=1e-12)
    assert slow_rho(NOISY) == pytest.approx(REFINE_RHO, rel=1e-12)
    assert slow_rho(0.01) == slow_rho(0.05) == REFINE_RHO


def test_the_slow_rho_follows_the_measurement_s_own_noise_not_the_weighed_one():
    """A real video's CG weighs the data for σ_w = 0.01 whatever its σ̂ (engine.realvideo): the prior takes ρ_slow
    from the σ_y the command sets (`with_sigma_y`), and from γ's noise only without one."""
    from engine.job import Job, with_sigma_y

    clip = camera_clip("astronaut", frames=8, size=16, pan=(1.0, 0.5))
    op = from_spec(SPEC, tuple(clip.shape), kernels="torch")
    y = op.A(clip)
    gamma = default_gamma(0.01)
    assert MotionPrior(op, y, video_frames(op, y), gamma).rho_slow == REFINE_RHO
    assert MotionPrior(op, y, video_frames(op, y), gamma, sigma_y=0.002).rho_slow == REFINE_RHO_SLOW
    _, cfg = with_sigma_y(Job(input=None, out=Path("out")), SolverConfig(spec=SPEC), 0.002)
    assert cfg.sigma_y == 0.002 and cfg.gamma is not None


def test_a_map_step_with_a_rho_per_pixel_minimises_its_objective():
    """With ρ given per pixel the step solves Π(H + diag ρ)Π z = Π(w Aᵀy − H X̄): after enough CG steps its
    residual is 1e-8 of the right-hand side's (2e-13 by 100 steps: further steps add only rounding, which the
    projection does not keep symmetric, and on some CPUs grows); with ρ the same everywhere it is the step with that
    number."""
    clip = camera_clip("astronaut", frames=10, size=12, pan=(1.0, 0.5)).to(F64)
    op = from_spec(SPEC, tuple(clip.shape), dtype=F64, kernels="torch")
    g = torch.Generator().manual_seed(4)
    y = op.A(clip) + 0.01 * torch.randn(op.out_shape, generator=g, dtype=F64)
    prior = MotionPrior(op, y, video_frames(op, y), 4.0)
    x = clip + 0.05 * torch.randn(clip.shape, generator=g, dtype=F64)
    rho = 0.01 + 0.5 * torch.rand(10, 1, 12, 12, generator=g, dtype=F64)
    z = prior.map_estimate(x, rho=rho, iters=100) - x
    H = lambda v: prior.D.A_adjoint(prior.D.A(v)) + prior.weight * op.A_adjoint_A(v)
    rhs = prior.project(prior.weight * op.A_adjoint(y) - H(x))
    assert torch.allclose(prior.project(z), z, atol=1e-12)
    assert (prior.project(H(z) + rho * z) - rhs).norm() < 1e-8 * rhs.norm()
    same = torch.full_like(rho, 0.02)
    assert torch.allclose(prior.map_estimate(x, rho=same), prior.map_estimate(x, rho=0.02), atol=1e-10)


def test_the_trajectory_mean_keeps_a_clip_that_moves_by_whole_pixels():
    """Frames that are exact shifts of each other (a pan of one pixel per frame) average to nearly themselves
    away from the border (the flow errs by a tenth of a pixel), where a mean of the same frames without the warps
    blurs (0.08 of its error at r = 7)."""
    clip = camera_clip("astronaut", frames=9, size=48, pan=(1.0, 0.0))
    mean = trajectory_mean(clip)
    assert mean.dtype == clip.dtype and mean.shape == clip.shape
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    unwarped = sum(clip[(torch.arange(9) + j).clamp(0, 8)] for j in range(-MEAN_RADIUS, MEAN_RADIUS + 1))
    unwarped = unwarped / (2 * MEAN_RADIUS + 1)                                  # the same frames, not warped
    assert (mean - clip)[inner].abs().mean() < 0.1 * (unwarped - clip)[inner].abs().mean()


def test_the_trajectory_mean_does_not_depend_on_its_chunk():
    """Taken a few frames at a time (its work space) or the whole clip at once: the same mean."""
    clip = camera_clip("coffee", frames=11, size=32, pan=(0.7, -0.4))
    for held in (True, False):
        assert torch.allclose(trajectory_mean(clip, chunk=3, held=held), trajectory_mean(clip, chunk=11, held=held),
                              atol=1e-6)


def noisy_still_clip(sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten identical frames of a photo (a still shot) and the same with white noise σ.  [10, 3, 32, 32] each"""
    still = camera_clip("camera", frames=10, size=32, pan=(0.0, 0.0))
    return still, still + sigma * torch.randn(still.shape, generator=torch.Generator().manual_seed(4))


def frame_errors(x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """RMS error of every frame.  → [N]"""
    return (x - clean).square().mean(dim=(1, 2, 3)).sqrt()


def test_the_noise_mean_averages_a_still_clips_noise_at_its_ends_too():
    """M_σ on a still clip with noise σ = 0.02 at its own σ: every frame's error falls to 0.41–0.55 σ, the end
    frames' too with the frames past the ends left out (held, the end frame counts itself four times: 0.75 σ);
    told a noise of 0.002, the frames keep theirs (a neighbour whose residual is the noise barely counts)."""
    still, noisy = noisy_still_clip(0.02)
    errors = frame_errors(trajectory_mean(noisy, NOISE_RADIUS, 0.02, held=False), still)
    held = frame_errors(trajectory_mean(noisy, NOISE_RADIUS, 0.02), still)
    assert errors.max() < 0.6 * 0.02
    assert errors[[0, -1]].max() < 0.8 * held[[0, -1]].min()
    assert frame_errors(trajectory_mean(noisy, NOISE_RADIUS, 0.002, held=False), still).min() > 0.9 * 0.02


def test_the_motion_prior_ends_with_the_noise_mean_at_its_sigma_y():
    """The prior's last step weighs neighbours by the measurement's own σ_y: told the clip's noise, it averages it
    away; told a tenth of it, it keeps the frames."""
    still, noisy = noisy_still_clip(0.02)
    op = from_spec(SPEC, tuple(still.shape), kernels="torch")
    y = op.A(noisy)
    for sigma_y, most in ((0.02, 0.6), (0.002, 1.1)):
        prior = MotionPrior(op, y, video_frames(op, y), default_gamma(0.02), sigma_y=sigma_y)
        assert frame_errors(prior.noise_mean(noisy), still).max() < most * 0.02
    assert frame_errors(prior.noise_mean(noisy), still).min() > 0.9 * 0.02


def test_a_measurement_stated_noiseless_is_averaged_at_the_8_bit_rounding_noise():
    """σ_y = 0 (`--sigma-y 0`) weighs neighbours as for the 8-bit rounding's noise, the least any measurement
    has, not for none (a confidence of 0/0)."""
    still, noisy = noisy_still_clip(0.02)
    op = from_spec(SPEC, tuple(still.shape), kernels="torch")
    y = op.A(noisy)
    prior = MotionPrior(op, y, video_frames(op, y), None, sigma_y=0.0)
    assert prior.sigma_y == ROUNDING_FLOOR
    assert torch.isfinite(prior(noisy)).all()


def test_the_noise_mean_keeps_a_clip_that_moves():
    """A pan of one pixel per frame, noiseless, under M_σ at σ 0.01: each frame stays itself away from the border
    (0.04 of the frame-to-frame change), its neighbours warped onto it."""
    clip = camera_clip("astronaut", frames=9, size=48, pan=(1.0, 0.0))
    mean = trajectory_mean(clip, NOISE_RADIUS, 0.01, held=False)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert (mean - clip)[inner].abs().mean() < 0.1 * (clip[1:] - clip[:-1])[inner].abs().mean()


def test_the_trajectory_mean_does_not_average_across_a_scene_cut():
    """Two unrelated scenes back to back: the frames beside the cut keep their own scene (no confidence
    across it), while a plain mean over the same frames would mix them."""
    first = camera_clip("astronaut", frames=6, size=32, pan=(0.5, 0.0))
    second = camera_clip("coffee", frames=6, size=32, pan=(0.5, 0.0))
    clip = torch.cat([first, second])
    mean = trajectory_mean(clip)
    for n in (5, 6):                                    # the last frame before the cut, the first after it
        assert (mean[n] - clip[n]).abs().mean() < 0.1 * (clip[5] - clip[6]).abs().mean()     # 0.22 unweighed


def test_the_second_step_follows_the_restored_frames_across_a_scene_cut():
    """Two panning shots back to back, blurred over 7 frames (the measurement fades one into the other), X̄
    the clean clip plus an error in the free modes: the frames beside the cut come out closer to the clean
    clip with the second MAP step (its flow from X₁, which the cut separates) than with the first step
    and the mean alone (0.66 of its error on the two frames)."""
    clip = torch.cat([camera_clip("astronaut", frames=12, size=32, pan=(1.0, 0.5)),
                      camera_clip("coffee", frames=12, size=32, pan=(-1.0, 0.5))]).to(F64)
    op = from_spec(SPEC, tuple(clip.shape), dtype=F64, kernels="torch")
    g = torch.Generator().manual_seed(3)
    y = op.A(clip) + 0.005 * torch.randn(op.out_shape, generator=g, dtype=F64)
    xbar = clip + 0.1 * free_modes(op, 0.1)(torch.randn(clip.shape, generator=g, dtype=F64))
    prior = MotionPrior(op, y, video_frames(op, y), 8.0)                    # γ 8: σ_y 0.005
    first = prior.map_estimate(xbar)
    one_step = first + prior.project_mean(trajectory_mean(first) - first)
    error = lambda x: (x - clip)[11:13].square().mean().sqrt()              # the last frame before the cut, the first after
    assert error(prior(xbar)) < 0.8 * error(one_step)


def test_motion_prior_steps_run_without_host_sync():
    """Every step of the prior on meta tensors (no data: .item(), bool(tensor) or nonzero would raise): the two MAP
    steps with and without the pairs across a cut (the second step's flow from the first step's result included),
    the cut detection and the trajectory mean; `prior(x)` adds one host read, whether a cut was found."""
    n, h, w = 9, 6, 7
    op = from_spec(SPEC, (n, 3, h, w), device="meta", dtype=torch.float32)
    prior = MotionPrior.__new__(MotionPrior)
    prior.project, prior.rho, prior.iters, prior.weight, prior.op = free_modes(op, 1e-2, device="meta"), 1e-3, 3, 4.0, op
    prior.rho_slow = 0.1                                                                  # ρ_r per pixel
    prior.project_mean = free_modes(op, 0.1, device="meta")
    prior.project_refine, prior.residual = free_modes(op, 0.05, device="meta"), 0.02      # the second step's flow too
    prior.y = torch.empty(n, 3, h, w, device="meta")
    prior.D = TrajectoryDifference(torch.empty(n - 1, 2, h, w, device="meta"), torch.empty(n - 1, 1, h, w, device="meta"))
    x = torch.empty(n, 3, h, w, device="meta")
    for keep in (None, torch.empty(n - 1, dtype=torch.bool, device="meta")):
        assert prior.refine(x, keep).shape == (n, 3, h, w)
    assert scene_cuts(x).shape == (n - 1,) and scene_cuts(x).device.type == "meta"
    assert trajectory_mean(x).device.type == "meta"
    assert trajectory_mean(x, NOISE_RADIUS, 0.01, held=False).device.type == "meta"                    # M_σ


def two_shots(size: int = 32) -> torch.Tensor:
    """12 frames panning over one photo, then 12 over another: a scene cut between frames 11 and 12.  [24, 3, s, s]"""
    return torch.cat([camera_clip("chelsea", frames=12, size=size, pan=(1.0, 0.5)),
                      camera_clip("rocket", frames=12, size=size, pan=(-1.0, 0.5))])


def test_histogram_change_is_the_share_of_pixels_that_change_colour():
    """A frame moved (rolled) changes no pixel's bin: 0; half the pixels moved to another bin: ½."""
    frame = torch.rand(3, 16, 20, generator=torch.Generator().manual_seed(4))
    half = torch.full((3, 16, 20), 0.1)
    half[:, :8] = 0.9
    clip = torch.stack([frame, frame.roll((3, 5), dims=(1, 2)), torch.full((3, 16, 20), 0.1), half])
    assert torch.allclose(histogram_change(clip)[[0, 2]], torch.tensor([0.0, 0.5]), atol=1e-7)


def test_histogram_change_does_not_depend_on_its_chunk():
    """Counted a frame at a time, three at a time or all at once: the same changes."""
    clip = two_shots(16)
    whole = histogram_change(clip, chunk=clip.shape[0])
    for chunk in (1, 3):
        assert torch.equal(histogram_change(clip, chunk=chunk), whole)


def test_scene_cuts_are_found_between_two_shots_and_not_inside_one():
    """The cut of two panning shots is found, at its pair only; one panning shot of the same length has none, and
    two frames alone (no pairs around to compare with) have none."""
    clip = two_shots()
    assert scene_cuts(clip).nonzero().flatten().tolist() == [11]
    assert not scene_cuts(camera_clip("chelsea", frames=24, size=32, pan=(1.0, 0.5))).any()
    assert not scene_cuts(clip[11:13]).any()


def test_a_cut_near_the_clip_end_is_found_once_among_mixed_neighbours():
    """A restoration mixes the frames beside a cut across it; with the cut two frames from the end, the pairs
    beside it change colour nearly as much as the cut itself. Compared with the six nearest pairs (not the one
    or two the end leaves on one side) the cut stands out, and only the largest change of the group is the cut."""
    first = camera_clip("chelsea", frames=12, size=32, pan=(1.0, 0.5))
    second = camera_clip("rocket", frames=2, size=32, pan=(-1.0, 0.5))
    clip = torch.cat([first, second])
    clip[10] = 0.7 * first[10] + 0.3 * second[0]
    clip[11] = 0.5 * first[11] + 0.5 * second[0]
    clip[13] = 0.6 * second[1] + 0.4 * first[11]
    change = histogram_change(clip)
    assert change[[9, 10, 12]].min() > 0.25 and change[11] == change.max()          # the mixed pairs change too
    assert scene_cuts(clip).nonzero().flatten().tolist() == [11]


def test_linking_leaves_out_the_pairs_across_a_cut():
    """D.linking(keep): the differences of the pairs with keep False are 0, the others D's own, and the
    operator keeps its exact adjoint."""
    g = torch.Generator().manual_seed(5)
    n, h, w = 6, 9, 11
    D = TrajectoryDifference(2 * torch.randn(n - 1, 2, h, w, generator=g, dtype=F64),
                             torch.rand(n - 1, 1, h, w, generator=g, dtype=F64))
    keep = torch.tensor([True, True, False, True, False])
    x = torch.randn(n, 3, h, w, generator=g, dtype=F64)
    cut = D.linking(keep)
    assert torch.equal(cut.A(x)[keep], D.A(x)[keep]) and cut.A(x)[~keep].abs().max() == 0
    assert dot_error(cut, x, torch.randn(cut.out_shape, generator=g, dtype=F64)) < 1e-12


def test_the_prior_runs_its_steps_again_without_the_pairs_across_a_cut(monkeypatch):
    """On two shots the MAP steps run twice, the second time without the pair across the cut; on one shot once.
    The second step's ρ map is made once per clip, for both passes."""
    keeps, refine = [], MotionPrior.refine
    monkeypatch.setattr(MotionPrior, "refine",
                        lambda self, x, keep=None, **options: keeps.append(keep) or refine(self, x, keep, **options))
    maps, second_rho = [], MotionPrior.second_rho
    monkeypatch.setattr(MotionPrior, "second_rho", lambda self, dtype: maps.append(dtype) or second_rho(self, dtype))
    for clip in (two_shots().to(F64), camera_clip("chelsea", frames=24, size=32, pan=(1.0, 0.5)).to(F64)):
        op = from_spec(SPEC, tuple(clip.shape), dtype=F64, kernels="torch")
        y = op.A(clip)
        prior = MotionPrior(op, y, video_frames(op, y), 8.0, sigma_y=0.002)       # the slow pixels' ρ as a map
        prior(clip + 0.05 * free_modes(op, 0.1)(torch.randn_like(clip)))
    assert len(keeps) == 3 and keeps[0] is None and keeps[2] is None
    assert (~keeps[1]).nonzero().flatten().tolist() == [11]
    assert maps == [F64, F64]


def test_video_frames_of_a_spatial_operator():
    """Under SR the flow sees Aᵀy / Aᵀ(A 1): a still clip of 2×2 blocks comes back as it was."""
    op = from_spec("temporal:uniform:3:replicate+sr:2", (5, 3, 8, 8), dtype=F64, kernels="torch")
    blocks = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    clip = F.interpolate(blocks, scale_factor=2, mode="nearest").expand(5, -1, -1, -1)
    assert torch.allclose(video_frames(op, op.A(clip)), clip, atol=1e-12)


def test_unknown_temporal_prior_is_refused():
    with pytest.raises(InputError, match="temporal prior"):
        SolverConfig(spec=SPEC, frames=8, size=8, temporal_prior="optical")


# ── ghost frames on a long clip of small frames ────────────────────────────

FRAMES, FRAME, SIGMA = 56, (32, 32), 0.005
SETTINGS = dict(nfe=4, eta=0.15, cg_iters=5, gamma=default_gamma(SIGMA))


@functools.cache
def long_clip_data():
    """56 frames of 32×32 panning over a photo, blurred over 7 frames with held ends, σ_y = 0.005, 8 bits."""
    clip = camera_clip("astronaut", frames=FRAMES, size=32, pan=(1.5, 0.75))
    y = from_spec(SPEC, tuple(clip.shape), kernels="torch").A(clip)
    y = y + SIGMA * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    return clip, (y * 255).round() / 255


def restore_whole(y, temporal_prior):
    cfg = SolverConfig(spec=SPEC, frames=FRAMES, size=FRAME, temporal_prior=temporal_prior, **SETTINGS)
    return Solver(GaussianPrior(), cfg).solve(y)


def restore_windows(y, temporal_prior):
    cfg = SolverConfig(spec=SPEC, size=FRAME, temporal_prior=temporal_prior, **SETTINGS)
    restorer = VideoRestorer(GaussianPrior(), cfg, window=28)
    return torch.stack(list(restorer.restore(y)))


def test_no_ghost_frames_on_a_long_clip():
    """Today's whole-video restoration has a frame more than 3 dB below the median of the 7 around it;
    with the motion prior no frame is, and the mean PSNR does not fall."""
    clean, y = long_clip_data()
    plain, motion = restore_whole(y, "none"), restore_whole(y, "motion")
    assert worst_dip(plain, clean) > 3
    assert worst_dip(motion, clean) <= 3
    assert psnr(motion, clean).mean() >= psnr(plain, clean).mean()


def test_windows_lower_the_dips_on_a_long_clip():
    """In windows of 28 frames (the default lag and lead) the motion prior lifts the mean by over 1 dB and,
    as on the whole video, leaves no frame more than 3 dB below the median of the 7 around it."""
    clean, y = long_clip_data()
    plain, motion = restore_windows(y, "none"), restore_windows(y, "motion")
    assert worst_dip(plain, clean) > 3
    assert worst_dip(motion, clean) <= 3
    assert psnr(motion, clean).mean() >= psnr(plain, clean).mean() + 1


def reference_warp(u, flow):
    """u at p + f(p) by the bilinear formula pixel by pixel, a corner outside the frame weighing 0 (fp64)."""
    b, c, h, w = u.shape
    out = torch.zeros_like(u)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                x, y = j + flow[n, 0, i, j].item(), i + flow[n, 1, i, j].item()
                x0, y0 = int(torch.floor(torch.tensor(x))), int(torch.floor(torch.tensor(y)))
                for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
                    cx, cy = x0 + dx, y0 + dy
                    if 0 <= cx < w and 0 <= cy < h:
                        out[n, :, i, j] += (1 - abs(x - cx)) * (1 - abs(y - cy)) * u[n, :, cy, cx]
    return out


def test_warp_matches_the_bilinear_formula():
    """D's warp (grid_sample) is the plain bilinear formula, flows past the border included, in fp64."""
    g = torch.Generator().manual_seed(4)
    u = torch.randn(2, 3, 7, 9, generator=g, dtype=F64)
    flow = 3 * torch.randn(2, 2, 7, 9, generator=g, dtype=F64)
    assert torch.allclose(warp(u, sampling_grid(flow)), reference_warp(u, flow), atol=1e-12)


def test_half_precision_frames_are_warped_on_a_float32_grid():
    """A half-precision clip is sampled where a float32 grid says (a half grid misplaces samples at 1280 wide),
    then rounded: the same as warping in float32 and rounding, and the same for the adjoint."""
    g = torch.Generator().manual_seed(6)
    u = torch.rand(1, 3, 4, 1280, generator=g)
    grid = sampling_grid(torch.full((1, 2, 4, 1280), 0.3))
    assert torch.equal(warp(u.half(), grid), warp(u.half().float(), grid).half())
    assert torch.equal(warp_adjoint(u.half(), grid), warp_adjoint(u.half().float(), grid).half())
    assert not torch.equal(warp(u.half(), grid), F.grid_sample(u.half(), grid.half(), align_corners=True))


def test_flow_of_frames_too_small_to_halve():
    """Frames under 32 pixels start from full size (no halved level to skip to): a still pair has zero flow."""
    frame = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    flow = estimate_flow(frame, frame, skip=1)
    assert flow.shape == (1, 2, 8, 8) and flow.abs().max() < 1e-6
