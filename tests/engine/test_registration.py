"""Frames registered to the measurement (engine.registration): the shift's Jacobian, the fit, the motion prior's
last step, and who asks for it."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from engine import temporal_prior
from engine.cg import default_gamma
from engine.errors import InputError
from engine.job import Job, fitted_config
from engine.metrics import psnr
from engine.operators import from_spec
from engine.priors import GaussianPrior
from engine.registration import fit_shifts, frame_gradients, register, shift_frames, shift_jacobian
from engine.runtime import Solver, SolverConfig
from engine.temporal_prior import MotionPrior, video_frames
from engine.testclips import camera_clip
from engine.windows import VideoRestorer

F64 = torch.float64
SPEC = "temporal:uniform:7:replicate"


@pytest.mark.parametrize("spec, shape", [(SPEC, (9, 3, 11, 13)), ("temporal:uniform:3:replicate+sr:2", (6, 3, 8, 10))])
def test_the_shift_jacobian_passes_the_dot_test(spec, shape):
    """⟨J s, u⟩ = ⟨s, Jᵀ u⟩ in fp64 (relative), for a temporal blur and one with a spatial part."""
    g = torch.Generator().manual_seed(0)
    op = from_spec(spec, shape, kernels="torch", dtype=F64)
    J, Jt = shift_jacobian(op, torch.rand(shape, generator=g, dtype=F64))
    s, u = torch.randn(shape[0], 2, generator=g, dtype=F64), torch.randn(op.out_shape, generator=g, dtype=F64)
    lhs, rhs = (J(s) * u).sum(), (s * Jt(u)).sum()
    assert abs(lhs - rhs) <= 1e-13 * J(s).norm() * u.norm()


def test_frame_gradients_are_central_differences():
    """On a ramp a·column + b·row: a and b inside, 0 on the first and last column (row)."""
    h, w = 6, 7
    ramp = (0.3 * torch.arange(w, dtype=F64)[None, :] - 0.2 * torch.arange(h, dtype=F64)[:, None]).expand(2, 3, h, w)
    gx, gy = frame_gradients(ramp)
    assert torch.allclose(gx[..., 1:-1], torch.full_like(gx[..., 1:-1], 0.3))
    assert torch.allclose(gy[..., 1:-1, :], torch.full_like(gy[..., 1:-1, :], -0.2))
    assert gx[..., [0, -1]].abs().max() == 0 and gy[..., [0, -1], :].abs().max() == 0


def test_shift_frames_moves_each_frame_by_its_own_shift():
    """s = 0 leaves a frame as it is; s = (1, 0) shows at p what was at p + 1 column; (0, −2) two rows up."""
    x = torch.rand(3, 3, 8, 9, generator=torch.Generator().manual_seed(1), dtype=F64)
    out = shift_frames(x, torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, -2.0]], dtype=F64))
    assert torch.allclose(out[0], x[0], atol=1e-12)
    assert torch.allclose(out[1, :, :, :-1], x[1, :, :, 1:], atol=1e-12)
    assert torch.allclose(out[2, :, 2:], x[2, :, :-2], atol=1e-12)


def test_the_fit_is_the_least_squares_solution():
    """fit_shifts solves min ‖J s − (y − A x)‖² as lstsq does on J built column by column (fp64)."""
    g = torch.Generator().manual_seed(2)
    shape = (6, 3, 10, 12)
    op = from_spec(SPEC, shape, kernels="torch", dtype=F64)
    x, y = torch.rand(shape, generator=g, dtype=F64), torch.rand(shape, generator=g, dtype=F64)
    J, _ = shift_jacobian(op, x)
    columns = [J(e.view(6, 2)).flatten() for e in torch.eye(12, dtype=F64)]
    reference = torch.linalg.lstsq(torch.stack(columns, 1), (y - op.A(x)).flatten()[:, None]).solution.view(6, 2)
    assert torch.allclose(fit_shifts(op, y, x, iters=40), reference, rtol=1e-6, atol=1e-9)


def shaken_clip(shake=(0.3, -0.4), frame=10):
    """A photo panned over 21 frames of 48², frame `frame` displaced by `shake` px from the camera's smooth path,
    blurred over 7 frames with held ends, σ 0.002: (the smooth clip, the shaken clip, its measurement, the op)."""
    smooth = camera_clip("astronaut", frames=21, size=48, pan=(0.5, 0.25), dtype=F64)
    s = torch.zeros(21, 2, dtype=F64)
    s[frame] = torch.tensor(shake, dtype=F64)
    shaken = shift_frames(smooth, s)
    op = from_spec(SPEC, tuple(smooth.shape), kernels="torch", dtype=F64)
    y = op.A(shaken) + 0.002 * torch.randn(shaken.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    return smooth, shaken, y, op


def test_a_shaken_frame_is_moved_back_where_the_measurement_saw_it():
    """The smooth clip as the restoration: the fit finds the one frame's shake (within 25 %), leaves the others
    within 0.05 px, and registering lifts that frame by over 6 dB inside a 4-px border."""
    smooth, shaken, y, op = shaken_clip()
    s = fit_shifts(op, y, smooth)
    assert (s[10] - torch.tensor([0.3, -0.4], dtype=F64)).norm() < 0.25 * 0.5
    assert s[torch.arange(21) != 10].norm(dim=1).max() < 0.05
    inner = (..., slice(4, -4), slice(4, -4))
    before = psnr(smooth[10][inner][None], shaken[10][inner][None])
    after = psnr(register(op, y, smooth)[10][inner][None], shaken[10][inner][None])
    assert after > before + 6


def test_registration_runs_without_host_sync():
    """The fit and the move on meta tensors (no data: .item(), bool(tensor) or nonzero would raise)."""
    shape = (9, 3, 6, 7)
    op = from_spec(SPEC, shape, device="meta", dtype=torch.float32)
    x, y = torch.empty(shape, device="meta"), torch.empty(shape, device="meta")
    assert fit_shifts(op, y, x).shape == (9, 2)
    assert register(op, y, x).device.type == "meta"


def test_register_needs_the_motion_prior():
    with pytest.raises(InputError, match="temporal_prior 'motion'"):
        SolverConfig(spec=SPEC, temporal_prior="none", register=True)


def test_the_motion_prior_registers_before_its_noise_mean():
    """MotionPrior(register=True) registers what MotionPrior's steps made (the same flow, the same steps), then
    takes its last step, the noise mean M_σ, of the registered frames."""
    smooth, _, y, op = shaken_clip()
    y, smooth = y.float(), smooth.float()
    op = from_spec(SPEC, tuple(smooth.shape), kernels="torch")
    gamma = default_gamma(0.002)
    plain, registered = (MotionPrior(op, y, video_frames(op, y), gamma, register=r) for r in (False, True))
    full = registered(smooth)
    for prior in (plain, registered):
        prior.noise_mean = lambda x: x                                         # the steps before M_σ
    before = register(op, y, plain(smooth))
    assert torch.allclose(registered(smooth), before, atol=1e-6)
    assert not torch.allclose(before, plain(smooth), atol=1e-3)
    assert torch.allclose(full, MotionPrior(op, y, video_frames(op, y), gamma).noise_mean(before), atol=1e-6)


@pytest.mark.parametrize("measured, asked, spec, frames, expected", [
    (False, False, "temporal:uniform:7", 40, True),          # --simulate: a measurement of white noise, made here
    (True, False, "temporal:uniform:7", 40, False),          # a real video: a codec's errors
    (True, True, "temporal:uniform:7", 40, True),            # asked for in the config (the Python API)
    (False, False, "blur:gaussian:1.0:5", 40, False),        # no temporal blur: no motion prior
    (False, True, "temporal:uniform:7:circular", 40, False),  # circular ends: no motion prior, nothing to register
])
def test_a_simulated_run_registers_and_a_real_video_does_not(measured, asked, spec, frames, expected):
    job = Job(input=Path("clip.mp4"), out=Path("out"), measured=measured)
    cfg = fitted_config(job, SolverConfig(spec=spec, temporal_prior="motion" if asked else "none", register=asked),
                        (32, 32), frames=frames)
    assert cfg.register is expected


@pytest.mark.parametrize("flag, measured, expected", [
    ("--no-register", False, False),      # a simulated run left as the motion prior had it
    ("--register", True, True),           # a lossless, noisy video
    (None, False, True), (None, True, False)])
def test_the_command_line_says_whether_to_register(flag, measured, expected):
    from engine.solve import parse

    argv = ["clip.mp4", "--degrade", "temporal:uniform:7", "--out", "out", *([] if measured else ["--simulate"]),
            *([flag] if flag else [])]
    job, cfg, _ = parse(argv)
    assert job.register is {"--register": True, "--no-register": False, None: None}[flag]
    assert fitted_config(job, cfg, (32, 32), frames=40).register is expected


@pytest.mark.parametrize("argv, why", [
    (["--demo"], "circular ends"),
    (["CLIP", "--simulate", "--task", "temporal-k7", "--frames", "16", "--size", "64"], "are circular here"),
    (["CLIP", "--degrade", "temporal:uniform:7", "--temporal-prior", "none"], "--temporal-prior none"),
    (["CLIP", "--degrade", "blur:gaussian:1.0:5"], "has no temporal blur")])
def test_register_where_the_motion_prior_does_not_run_is_refused_before_any_work(argv, why, tmp_path, monkeypatch,
                                                                                capsys):
    """One line naming why, exit 2, before the model loads and before anything is written."""
    import engine.job
    from engine.solve import main
    from engine.video_io import write_video

    loads = []
    monkeypatch.setattr(engine.job, "load_model", lambda *a, **k: loads.append(a))
    clip = write_video(tmp_path / "clip.mp4", torch.rand(20, 3, 64, 64, generator=torch.Generator().manual_seed(5)))
    out = tmp_path / "never"
    argv = [str(clip) if a == "CLIP" else a for a in argv]
    assert main([*argv, "--prior", "gaussian", "--register", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --register moves the frames after the motion prior") and why in err, err
    assert "\n" not in err and loads == [] and not out.exists()


@pytest.fixture
def registrations(monkeypatch):
    """Counts the motion prior's calls of `register`."""
    calls = []

    def counted(op, y, x, *args, **kwargs):
        calls.append(x.shape[0])
        return x

    monkeypatch.setattr(temporal_prior, "register", counted)
    return calls


@pytest.mark.parametrize("register_frames", [True, False])
def test_the_solver_and_the_windows_register_when_asked(registrations, register_frames):
    """Solver registers the whole clip once, VideoRestorer each window's free frames; neither without `register`."""
    smooth, _, y, _ = shaken_clip()
    y = y.float()[:, :, :16, :16].contiguous()
    settings = dict(spec=SPEC, size=(16, 16), nfe=1, gamma=default_gamma(0.002), temporal_prior="motion",
                    register=register_frames)
    Solver(GaussianPrior(), SolverConfig(frames=21, **settings)).solve(y)
    whole = list(registrations)
    list(VideoRestorer(GaussianPrior(), SolverConfig(**settings), window=8, lag=3, lead=3).restore(y))
    windows = registrations[len(whole):]
    if register_frames:
        assert whole == [21] and len(windows) >= 2 and sum(windows) >= 21
    else:
        assert registrations == []


@pytest.mark.parametrize("h264, no_register, treatment, expected", [
    (False, False, "motion", True), (True, False, "motion", False), (False, True, "motion", False),
    (False, False, "none", False)])
def test_the_ghost_bench_registers_as_a_simulated_run_does(h264, no_register, treatment, expected):
    from bench.ghosts import registers

    assert registers(SimpleNamespace(h264=h264, no_register=no_register), treatment) is expected


@pytest.mark.parametrize("ratio, registered, warned", [(2.2, True, True), (1.0, True, False), (2.2, False, False)])
def test_a_registered_video_whose_residual_is_not_white_noise_is_warned_about(ratio, registered, warned, caplog):
    """--register on a measurement whose data residual is over REGISTER_SPAN times its noise (a codec's errors):
    a warning saying the fit may have made frames worse; none at the noise's level, none without --register."""
    from engine.realvideo import residual_record

    record = residual_record(torch.full((8,), ratio * 0.002), 0.002, weighed=0.01, registered=registered)
    assert record["ratio"] == pytest.approx(ratio)
    assert ("--register moved the frames" in caplog.text) is warned
