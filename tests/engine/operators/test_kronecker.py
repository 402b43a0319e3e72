"""The Kronecker operator T ⊗ S (engine.operators.kronecker), the measurement noise every path draws
(engine.operators.measurement) and the record of the kernels a run used (engine.runtime.kernels_run).

The sharded layouts' dot tests and their equality with one process run in tests/engine/test_distributed.py
(`test_sharded_operators_equal_the_single_process_ones`, `test_a_sharded_window_operator_equals_the_window_operator`).
"""

from __future__ import annotations

import pytest
import torch

from engine.backends import torch_eps
from engine.cg import preconditioner
from engine.operators import from_spec
from engine.operators.kronecker import KroneckerOperator, TemporalTerm, frame_matrix
from engine.operators.measurement import add_noise
from engine.operators.temporal import gaussian_kernel
from engine.priors import GaussianPrior
from engine.runtime import ResolvedKernels, Solver, SolverConfig, kernels_run
from engine.windows import VideoRestorer

F64 = torch.float64
SHAPE = (7, 3, 9, 13)          # odd sizes
SHAPE_SR = (7, 3, 12, 20)

#: (spec, clean shape): one temporal term with each boundary, with and without frame-local terms,
#: frame-local terms alone, two temporal terms.
SPECS = [
    ("temporal:uniform:3", SHAPE),
    ("temporal:kernel:0.1,0.5,0.3,0.1:zero", SHAPE),
    ("temporal:gaussian:1.0:replicate", SHAPE),
    ("temporal:uniform:3+sr:4", SHAPE_SR),
    ("temporal:uniform:5:replicate+sr:2", SHAPE_SR),
    ("temporal:kernel:0.2,0.7,0.1:zero+blur:gaussian:1.0:5", SHAPE),
    ("inpaint:0.5+temporal:uniform:3:replicate", SHAPE),
    ("temporal:uniform:3+blur:gaussian:1.0:5:zero+sr:4", SHAPE_SR),
    ("blur:gaussian:2.0:13+sr:4", SHAPE_SR),
    ("temporal:uniform:3+temporal:kernel:0.2,0.5,0.3:zero", SHAPE),
]
#: (taps, boundary, rows, columns, end): windows of engine.windows — a first one, an interior one, a last one.
WINDOWS = [
    ([0.2, 0.7, 0.1], "replicate", (0, 8), (0, 10), None),
    (gaussian_kernel(1.0).tolist(), "replicate", (5, 17), (2, 20), None),
    ([0.1, 0.5, 0.3, 0.1], "zero", (8, 20), (6, 22), 22),
]


def rand(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def dot_gap(op, seed=0) -> float:
    """|⟨A x, y⟩ − ⟨x, Aᵀ y⟩| / (‖A x‖·‖y‖) in fp64 on random x, y."""
    x, y = rand(op.in_shape, seed), rand(op.out_shape, seed + 1) - 0.5
    Ax = op.A(x)
    return float(abs(torch.sum(Ax * y) - torch.sum(x * op.A_adjoint(y))) / (Ax.norm() * y.norm()))


def window_operator(taps, boundary, rows, cols, end, spatial_spec=None) -> KroneckerOperator:
    frame = (8, 12)
    S = from_spec(spatial_spec, (1, 3, *frame), kernels="torch", dtype=F64) if spatial_spec else None
    T = frame_matrix(TemporalTerm(torch.tensor(taps, dtype=F64), boundary), rows, cols, end)
    return KroneckerOperator(T, S, (3, *frame), dtype=F64)


# ── the operator ─────────────────────────────────────────────────────────────

@pytest.mark.parametrize("spec, shape", SPECS, ids=[s for s, _ in SPECS])
def test_whole_video_dot_test_and_normal_operator(spec, shape):
    op = KroneckerOperator.from_spec(spec, shape, dtype=F64)
    assert op.in_shape == shape and op.kernels == "torch"
    for seed in (0, 2):
        assert dot_gap(op, seed) < 1e-12
        x = rand(op.in_shape, seed)
        assert rel(op.A_adjoint_A(x), op.A_adjoint(op.A(x))) < 1e-12


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("spatial", [None, "sr:2", "blur:gaussian:1.0:5", "inpaint:0.5"])
def test_window_dot_test_and_normal_operator(window, spatial):
    op = window_operator(*window, spatial_spec=spatial)
    rows, cols = window[2], window[3]
    assert op.in_shape[0] == cols[1] - cols[0] and op.out_shape[0] == rows[1] - rows[0] != op.in_shape[0]
    assert dot_gap(op) < 1e-12
    x = rand(op.in_shape, 3)
    assert rel(op.A_adjoint_A(x), op.A_adjoint(op.A(x))) < 1e-12


@pytest.mark.parametrize("spec, shape", SPECS, ids=[s for s, _ in SPECS])
def test_whole_video_equals_the_composition_of_from_spec(spec, shape):
    """T ⊗ S (T the product of the temporal matrices, applied after S) and the spec's composition in its
    order agree in fp64: A, Aᵀ, AᵀA, ‖AᵀA‖ (one temporal term), CG's preconditioner or its absence."""
    kron, comp = KroneckerOperator.from_spec(spec, shape, dtype=F64), from_spec(spec, shape, kernels="torch", dtype=F64)
    x, y = rand(shape, 0), rand(comp.out_shape, 1)
    assert kron.out_shape == tuple(comp.out_shape)
    assert rel(kron.A(x), comp.A(x)) < 1e-12
    assert rel(kron.A_adjoint(y), comp.A_adjoint(y)) < 1e-12
    assert rel(kron.A_adjoint_A(x), comp.A_adjoint_A(x)) < 1e-12
    if spec.count("temporal") <= 1:
        assert kron.normal_gain == pytest.approx(comp.normal_gain, rel=1e-12)
    for gamma in (None, 1.0):
        P_kron, P_comp = preconditioner(kron, gamma), preconditioner(comp, gamma)
        assert (P_kron is None) == (P_comp is None) == (spec.count("temporal") != 1)
        if P_comp is not None:
            assert rel(P_kron(x), P_comp(x)) < 1e-12


def test_a_window_is_the_block_of_the_whole_video_operator():
    """A_win z = rows [m₀, m₁) of A applied to the video that is z on the window's frames and 0 elsewhere
    (the rows read no frame outside them)."""
    n, (m0, m1), (c0, c1) = 20, (5, 14), (2, 17)
    term = TemporalTerm(gaussian_kernel(1.0), "replicate")
    whole = KroneckerOperator(frame_matrix(term, (0, n), (0, n), end=n),
                              from_spec("sr:2", (1, 3, 8, 12), kernels="torch", dtype=F64), (3, 8, 12), dtype=F64)
    window = KroneckerOperator(frame_matrix(term, (m0, m1), (c0, c1), end=n), whole.spatial, (3, 8, 12), dtype=F64)
    z, x = rand(window.in_shape, 0), torch.zeros(whole.in_shape, dtype=F64)
    x[c0:c1] = z
    assert rel(window.A(z), whole.A(x)[m0:m1]) < 1e-14


@pytest.mark.parametrize("boundary", ["replicate", "zero"])
def test_banded_products_equal_the_dense_ones(boundary):
    """On the CPU T, Tᵀ and TᵀT skip their zeros a block of rows at a time (temporal.frames_matmul): on a
    whole video (the torch kernels) and a window longer than the blocks, they equal the dense products."""
    n, taps = 90, gaussian_kernel(1.5)
    dense = lambda M, x: (M @ x.reshape(M.shape[1], -1)).reshape(M.shape[0], *x.shape[1:])
    whole = from_spec(f"temporal:gaussian:1.5:{boundary}", (n, 2, 3, 4), kernels="torch", dtype=F64)
    T = frame_matrix(TemporalTerm(taps, boundary), (0, n), (0, n), end=n)
    window = KroneckerOperator(frame_matrix(TemporalTerm(taps, boundary), (20, 80), (15, 85), end=None), None,
                               (2, 3, 4), dtype=F64)
    for op, M in ((whole, T), (window, window.matrix)):
        x, y = rand(op.in_shape, 5), rand(op.out_shape, 6)
        assert rel(op.A(x), dense(M, x)) < 1e-14
        assert rel(op.A_adjoint(y), dense(M.T, y)) < 1e-14
        assert rel(op.A_adjoint_A(x), dense(M.T @ M, x)) < 1e-14


def test_a_spec_without_a_temporal_term_is_its_frame_operator():
    op = KroneckerOperator.from_spec("blur:gaussian:1.0:5+sr:2", SHAPE_SR, dtype=F64)
    ref = from_spec("blur:gaussian:1.0:5+sr:2", SHAPE_SR, kernels="torch", dtype=F64)
    x = rand(SHAPE_SR, 0)
    assert op.matrix is None and torch.equal(op.A(x), ref.A(x)) and op.frame_preconditioner(lambda m: m) is None


# ── the measurement noise ────────────────────────────────────────────────────

def test_the_noise_is_drawn_frame_after_frame_from_the_seed():
    y = torch.zeros(5, 3, 5, 7)
    gen = torch.Generator().manual_seed(11)
    w = torch.stack([torch.randn((3, 5, 7), generator=gen) for _ in range(5)])
    assert torch.equal(add_noise(y, 1.0, seed=11), w)
    assert torch.equal(add_noise(y[2:], 1.0, seed=11, start=2), w[2:])        # a process's frames [2, 5)
    assert add_noise(y, 0.0, seed=11) is y                                       # nothing drawn
    assert not torch.equal(add_noise(y, 1.0, seed=12), w)


def test_every_path_draws_the_same_noise():
    """The whole video (Solver.measure), a stream (VideoRestorer.measure, frame by frame) and the frames of a
    process give the same noise at the same frames, on a frame size whose pixel count is no multiple of 16."""
    cfg = SolverConfig("temporal:uniform:3:replicate+sr:2", frames=9, size=(10, 14), nfe=2, cg_iters=1)
    clean = torch.zeros(cfg.shape)
    whole = Solver(GaussianPrior(), cfg).measure(clean, sigma_y=0.5, seed=4)             # [9, 3, 5, 7]: w alone
    restorer = VideoRestorer(GaussianPrior(), cfg, window=8, dtype=F64)
    streamed = torch.stack(list(restorer.measure(clean.double(), sigma_y=0.5, seed=4)))
    assert streamed.dtype == F64 and torch.equal(streamed.float(), whole)
    assert torch.equal(add_noise(torch.zeros(4, 3, 5, 7), 0.5, seed=4, start=5), whole[5:])


def test_frames_of_16k_pixels_keep_the_whole_tensor_draw():
    """For frames of H'·W' a multiple of 16 (256×256, its 64×64 super-resolution) the frame-by-frame draw is
    torch's draw of the whole tensor at once, the draw measurements used before it was made one: results
    measured on such frames are reproduced."""
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(add_noise(torch.zeros(4, 3, 64, 64), 1.0, seed=3), torch.randn((4, 3, 64, 64), generator=gen))


# ── what the kernels were ─────────────────────────────────────────────────────

def test_the_kernels_are_narrowed_in_one_place_and_recorded():
    cfg = SolverConfig("temporal:uniform:3+sr:2", frames=4, size=8, nfe=2, cg_iters=1, kernels="triton")
    assert cfg.resolved_kernels == ResolvedKernels("triton", "triton")
    assert kernels_run(cfg) == ResolvedKernels("triton", "triton")
    assert kernels_run(cfg, sharded=True) == kernels_run(cfg, windows=True) == ResolvedKernels("torch", "triton")
    compiled = SolverConfig(**{**cfg.to_dict(), "backend": "compile"})
    assert kernels_run(compiled) == ResolvedKernels("triton", "torch")          # torch.compile fuses the norms
    solver = Solver(GaussianPrior(), cfg)
    assert solver.kernels_used == ResolvedKernels("triton", "triton") and solver.op.kernels == "triton"
    auto = Solver(GaussianPrior(), SolverConfig(**{**cfg.to_dict(), "kernels": "auto"}))
    assert auto.kernels_used == ResolvedKernels("torch", "torch") and auto.op.kernels == "torch"


def test_a_tensorrt_engine_runs_its_own_norms(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)      # a CUDA device as far as the config can tell
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = SolverConfig("temporal:uniform:3", frames=4, size=8, backend="tensorrt", device="cuda", kernels="torch")
    assert kernels_run(cfg) == ResolvedKernels("torch", "tensorrt")


def test_torch_compile_refuses_the_triton_norms_instead_of_overriding_them():
    net = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="compile=True takes kernels='torch'"):
        torch_eps(net, compile=True, kernels="triton")
