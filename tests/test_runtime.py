import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.priors import GaussianPrior
from engine.runtime import Solver, SolverConfig
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
    from kernels.steps import TRITON_STEP_KERNELS

    cfg = SolverConfig.from_task("temporal-k7", frames=8, size=24, nfe=2, cg_iters=3, cg_precond=None,
                                 device="cpu" if INTERPRET else "cuda", kernels="torch")   # PCG: test_kernels
    fused = Solver(GaussianPrior(), SolverConfig(**{**cfg.to_dict(), "kernels": "triton"}))
    plain = Solver(GaussianPrior(), cfg)
    assert fused.op.backend == "triton" and fused.kernels is TRITON_STEP_KERNELS
    assert plain.op.backend == "torch" and plain.kernels is not TRITON_STEP_KERNELS
    y = plain.measure(clip)
    torch.testing.assert_close(fused.solve(y, seed=4), plain.solve(y, seed=4), rtol=0, atol=1e-5)


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


def test_operator_backend_auto_picks_what_runs():
    from kernels.temporal import MAX_FRAMES

    def pick(**kw):
        return SolverConfig.from_task("temporal-k7", **kw).operator_backend()

    assert pick(device="cpu") == "torch" and pick(device="cpu", kernels="triton") == "triton"
    assert pick(device="cuda") == "triton"                     # no CUDA needed to choose
    assert pick(device="cuda", frames=MAX_FRAMES + 1) == "torch"   # past the Triton temporal kernels' limit
    norms = SolverConfig.from_task("temporal-k7", device="cuda", frames=MAX_FRAMES + 1).norm_kernels()
    assert norms == "triton"                                       # the fused GroupNorm has no frame limit


def test_auto_kernels_without_triton_run_torch_and_triton_is_refused(monkeypatch):
    from engine.operators import common

    monkeypatch.setattr(common, "triton_installed", lambda: False)
    cfg = SolverConfig.from_task("temporal-k7", device="cuda")
    assert cfg.operator_backend() == cfg.norm_kernels() == "torch"
    with pytest.raises(InputError, match="needs the triton package"):
        SolverConfig.from_task("temporal-k7", kernels="triton").operator_backend()


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")   # torch.compile's imports
def test_the_solver_sets_the_unet_norms_with_its_kernels():
    from engine.unet import ADMConfig, ADMUNet, GroupNorm32

    def norms(**kw):
        model = ADMUNet(ADMConfig.preset("tiny"))
        Solver(model, SolverConfig.from_task("temporal-k7", frames=8, size=32, nfe=2, **kw))
        return {m.kernels for m in model.modules() if isinstance(m, GroupNorm32)}

    assert norms() == {"torch"} and norms(kernels="triton") == {"triton"}
    assert norms(kernels="triton", backend="compile") == {"torch"}          # inductor fuses them itself


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


@pytest.mark.gpu
def test_cupy_input_reaches_the_solver_without_a_copy(clip):
    cupy = pytest.importorskip("cupy")
    from engine.runtime import as_tensor

    solver = Solver(GaussianPrior(), SolverConfig.from_task("temporal-k7", frames=8, size=24, nfe=4, device="cuda"))
    y = solver.measure(clip)                                             # on the GPU, float32
    y_cupy = cupy.from_dlpack(y)
    assert as_tensor(y_cupy, solver.device, torch.float32).data_ptr() == y_cupy.data.ptr
    assert torch.equal(solver.solve(y_cupy, seed=3), solver.solve(y, seed=3))
