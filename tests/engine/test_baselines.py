"""The network-free baselines: the TV difference operator, stand-alone CG, ADMM-TV."""

import pytest
import torch

from engine.baselines import (
    admm_tv,
    cg_baseline,
    dct_basis,
    finite_difference,
    finite_difference_adjoint,
    neumann_laplacian,
    soft_threshold,
    tv_exact_solver,
    tv_normal,
    tv_objective,
)
from engine.cg import conjugate_gradient
from engine.errors import InputError
from engine.operators import from_spec
from engine.operators.base import LinearOperator


class MatrixOperator(LinearOperator):
    """A dense matrix M [m, n] acting on flattened videos: y = M vec(x)."""

    def __init__(self, matrix: torch.Tensor, in_shape: tuple[int, ...]):
        self.matrix = matrix
        self.in_shape = in_shape
        self.out_shape = (matrix.shape[0],)

    def A(self, x):
        return self.matrix @ x.reshape(-1)

    def A_adjoint(self, y):
        return (self.matrix.T @ y).reshape(self.in_shape)


class CircularBox(LinearOperator):
    """Uniform temporal blur of width k along frames, circular boundary (self-adjoint)."""

    def __init__(self, shape: tuple[int, ...], k: int = 3):
        self.in_shape = self.out_shape = shape
        self.k = k

    def A(self, x):
        return sum(torch.roll(x, s, dims=0) for s in range(-(self.k // 2), self.k // 2 + 1)) / self.k

    A_adjoint = A


def uniform(shape, lo, hi, seed):
    return lo + (hi - lo) * torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def moving_square(n: int = 9, h: int = 16, w: int = 16) -> torch.Tensor:
    """A piecewise-constant clip: a coloured square moving one pixel per frame.  [n, 3, h, w]"""
    x = torch.full((n, 3, h, w), 0.2, dtype=torch.float64)
    x[:, 0] = 0.3
    for i in range(n):
        x[i, :, 4:10, 2 + i:8 + i] = torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64)[:, None, None]
    return x


def psnr(a, b):
    return float(-10 * torch.log10((a - b).square().mean()))


@pytest.mark.parametrize("shape", [(5, 3, 7, 9), (1, 3, 4, 6), (4, 2, 1, 5)])
def test_finite_difference_adjoint_dot_test(shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = torch.randn((3, *shape), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    Dx = finite_difference(x)
    lhs, rhs = torch.sum(Dx * v), torch.sum(x * finite_difference_adjoint(v))
    assert abs(lhs - rhs) <= 1e-12 * Dx.norm() * v.norm()


def test_finite_difference_values():
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    Dx = finite_difference(x)
    torch.testing.assert_close(Dx[0, :-1], x[1:] - x[:-1])
    torch.testing.assert_close(Dx[1, :, :, :-1], x[:, :, 1:] - x[:, :, :-1])
    torch.testing.assert_close(Dx[2, ..., :-1], x[..., 1:] - x[..., :-1])
    assert Dx[0, -1].abs().max() == 0 and Dx[1, :, :, -1].abs().max() == 0 and Dx[2, ..., -1].abs().max() == 0
    assert finite_difference(torch.ones(3, 3, 4, 4)).abs().max() == 0


def test_soft_threshold():
    v = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5])
    torch.testing.assert_close(soft_threshold(v, 0.5), torch.tensor([-1.5, 0.0, 0.0, 0.0, 1.0]))
    out = torch.empty_like(v)
    assert soft_threshold(v, 0.5, out=out) is out and torch.equal(out, soft_threshold(v, 0.5))


# ── the previous ADMM-TV (torch.diff / torch.stack, CG x-update), kept here as the reference ──

def reference_difference(x):
    return torch.stack([torch.diff(x, dim=d, append=x.narrow(d, -1, 1)) for d in (0, 2, 3)])


def reference_difference_adjoint(v):
    out = torch.zeros_like(v[0])
    for v_d, d in zip(v, (0, 2, 3)):
        inner = v_d.narrow(d, 0, v_d.shape[d] - 1)
        edge = list(inner.shape)
        edge[d] = 1
        zero = inner.new_zeros(edge)
        out = out - torch.diff(inner, dim=d, prepend=zero, append=zero)
    return out


def reference_admm_tv(op, y, outer=30, inner=20, rho=1.0, lam=1e-3):
    Aty = op.A_adjoint(y)
    x = torch.zeros_like(Aty)
    z = torch.zeros((3, *x.shape), dtype=x.dtype)
    u = torch.zeros_like(z)

    def normal(v):
        return op.A_adjoint_A(v) + rho * reference_difference_adjoint(reference_difference(v))

    for _ in range(outer):
        x = conjugate_gradient(normal, Aty + rho * reference_difference_adjoint(z - u), x, inner)
        Dx = reference_difference(x)
        z = torch.sign(Dx + u) * torch.clamp((Dx + u).abs() - lam / rho, min=0)
        u = u + Dx - z
    return x.clamp(0, 1)


@pytest.mark.parametrize("shape", [(5, 3, 7, 9), (1, 2, 4, 6), (4, 2, 1, 5)])
def test_finite_differences_equal_the_reference_and_fill_buffers(shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = torch.randn((3, *shape), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    Dx, DTv = torch.full_like(v, torch.nan), torch.full_like(x, torch.nan)   # stale contents must not leak
    assert finite_difference(x, out=Dx) is Dx and finite_difference_adjoint(v, out=DTv) is DTv
    torch.testing.assert_close(Dx, reference_difference(x), rtol=0, atol=0)
    torch.testing.assert_close(DTv, reference_difference_adjoint(v), rtol=0, atol=1e-14)


@pytest.mark.parametrize("spec", ["temporal:uniform:3", "temporal:uniform:3+sr:2", "inpaint:0.5"])
def test_admm_tv_with_cg_equals_the_previous_algorithm_in_fp64(spec):
    x_true = moving_square(n=6, h=8, w=10)
    op = from_spec(spec, x_true.shape, dtype=torch.float64, kernels="torch")
    y = op.A(x_true)
    y = y + 0.02 * torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = admm_tv(op, y, outer=8, inner=6, x_update="cg")
    torch.testing.assert_close(x, reference_admm_tv(op, y, outer=8, inner=6), rtol=0, atol=1e-10)


def test_dct_basis_diagonalises_the_neumann_laplacian():
    for n in (1, 2, 7, 16):
        mu, V = dct_basis(n)
        torch.testing.assert_close(V.T @ V, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-13)
        torch.testing.assert_close(neumann_laplacian(n) @ V, V * mu, rtol=0, atol=1e-13)
    L = neumann_laplacian(4)
    eye = torch.eye(4, dtype=torch.float64)
    D = torch.cat([eye[1:] - eye[:-1], torch.zeros(1, 4, dtype=torch.float64)])   # (D₁x)[i] = x[i+1] − x[i], last 0
    assert torch.equal(L, D.T @ D)


@pytest.mark.parametrize("spec", ["temporal:uniform:3:circular", "temporal:uniform:4:replicate",
                                  "temporal:gaussian:1.0:zero"])
def test_exact_x_update_equals_a_dense_solve(spec):
    shape, rho = (5, 2, 6, 7), 0.7
    op = from_spec(spec, shape, dtype=torch.float64, kernels="torch")
    like = torch.zeros(shape, dtype=torch.float64)
    normal = tv_normal(op, rho, like)
    basis = torch.eye(like.numel(), dtype=torch.float64)
    M = torch.stack([normal(e.reshape(shape)).reshape(-1).clone() for e in basis], dim=1)   # AᵀA + ρDᵀD
    b = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    dense = torch.linalg.solve(M, b.reshape(-1)).reshape(shape)
    torch.testing.assert_close(tv_exact_solver(op, rho, like)(b), dense, rtol=0, atol=1e-10 * dense.abs().max())


def test_exact_admm_tv_equals_the_previous_algorithm_with_converged_inner_solves():
    x_true = moving_square(n=7, h=9, w=11)
    op = from_spec("temporal:uniform:3", x_true.shape, dtype=torch.float64, kernels="torch")
    y = op.A(x_true) + 0.02 * torch.randn(x_true.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x = admm_tv(op, y, outer=5)
    torch.testing.assert_close(x, reference_admm_tv(op, y, outer=5, inner=70), rtol=0, atol=1e-10)
    assert (x - reference_admm_tv(op, y, outer=5, inner=3)).abs().max() > 1e-4   # the test can tell the two apart


def test_admm_tv_refuses_an_x_update_it_cannot_run():
    op = from_spec("temporal:uniform:3+sr:2", (4, 3, 8, 8), dtype=torch.float64, kernels="torch")
    y = torch.zeros(op.out_shape, dtype=torch.float64)
    with pytest.raises(InputError, match="temporal PSF alone"):
        admm_tv(op, y, x_update="exact")
    with pytest.raises(InputError, match="unknown ADMM x-update"):
        admm_tv(op, y, x_update="fft")


def test_cg_baseline_matches_a_dense_solve():
    shape = (2, 3, 3, 3)
    n = 54
    matrix = torch.randn(2 * n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) / (2 * n) ** 0.5
    op = MatrixOperator(matrix, shape)
    x_true = uniform(shape, 0.1, 0.9, seed=4)
    y = op.A(x_true)
    dense = torch.linalg.solve(matrix.T @ matrix, matrix.T @ y).reshape(shape)
    x = cg_baseline(op, y, iters=80)
    torch.testing.assert_close(x, dense, rtol=0, atol=1e-8)
    torch.testing.assert_close(x, x_true, rtol=0, atol=1e-8)


def test_regularised_cg_baseline_solves_the_samplers_system_with_aty_for_x_hat():
    shape = (2, 3, 3, 3)
    n, gamma = 54, 0.7
    matrix = torch.randn(2 * n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(8)) / (2 * n) ** 0.5
    op = MatrixOperator(matrix, shape)
    y = op.A(uniform(shape, 0.1, 0.9, seed=9)) + 0.05 * torch.randn(2 * n, dtype=torch.float64,
                                                                    generator=torch.Generator().manual_seed(1))
    aty = matrix.T @ y
    dense = torch.linalg.solve(torch.eye(n, dtype=torch.float64) + gamma * matrix.T @ matrix, (1 + gamma) * aty)
    x = cg_baseline(op, y, iters=80, gamma=gamma)
    torch.testing.assert_close(x, dense.reshape(shape).clamp(0, 1), rtol=0, atol=1e-8)
    assert not torch.allclose(x, cg_baseline(op, y, iters=80), atol=1e-3)


def test_cg_baseline_clamps_and_takes_a_start():
    op = CircularBox((4, 3, 5, 5))
    y = op.A(uniform(op.in_shape, -0.5, 1.5, seed=5))
    x = cg_baseline(op, y, iters=0, x0=torch.full(op.in_shape, 2.0, dtype=torch.float64))
    assert torch.equal(x, torch.ones(op.in_shape, dtype=torch.float64))
    x = cg_baseline(op, y, iters=10)
    assert 0 <= x.min() and x.max() <= 1


def test_cg_baseline_on_the_registered_temporal_blur():
    operators = pytest.importorskip("engine.operators")
    if not hasattr(operators, "from_spec"):
        pytest.skip("engine.operators.from_spec is not there yet")
    shape = (4, 3, 5, 6)
    op = operators.from_spec("temporal:uniform:3", shape, dtype=torch.float64)
    x_true = uniform(shape, 0.1, 0.9, seed=6)
    x = cg_baseline(op, op.A(x_true), iters=20)
    torch.testing.assert_close(x, x_true, rtol=0, atol=1e-6)


def test_admm_tv_decreases_the_objective_and_beats_the_adjoint():
    x_true = moving_square()
    op = CircularBox(x_true.shape)  # 9 frames, k = 3: a null space at frequencies 3 and 6
    y = op.A(x_true) + 0.01 * torch.randn(x_true.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    objective = [float(tv_objective(op, y, x, 1e-3)) for x in
                 (torch.zeros_like(x_true), admm_tv(op, y, outer=3), admm_tv(op, y))]
    assert objective == sorted(objective, reverse=True)
    assert objective[-1] < 0.01 * objective[0]
    assert psnr(admm_tv(op, y), x_true) > psnr(op.A_adjoint(y), x_true) + 5


def test_admm_tv_regularises_noise_better_than_cg():
    x_true = moving_square(n=8)
    op = CircularBox(x_true.shape)  # invertible, but noise is amplified at frequency 3
    y = op.A(x_true) + 0.01 * torch.randn(x_true.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    assert psnr(admm_tv(op, y, lam=1e-2), x_true) > psnr(cg_baseline(op, y, iters=20), x_true) + 2


@pytest.mark.parametrize("spec", ["temporal:uniform:3", "blur:gaussian:2.0:13", "sr:4", "inpaint:0.5", "temporal:uniform:3+sr:4"])
def test_admm_tv_on_the_registered_operators(spec):
    operators = pytest.importorskip("engine.operators")
    if not hasattr(operators, "from_spec"):
        pytest.skip("engine.operators.from_spec is not there yet")
    x_true = moving_square(n=7)
    op = operators.from_spec(spec, x_true.shape, dtype=torch.float64)
    y = op.A(x_true)
    x = admm_tv(op, y, outer=10)
    assert x.shape == x_true.shape and 0 <= x.min() and x.max() <= 1
    assert psnr(x, x_true) > psnr(op.A_adjoint(y).clamp(0, 1), x_true) + 3


def test_cg_baseline_is_stable_past_convergence_on_a_singular_operator():
    x_true = moving_square(n=6)
    op = CircularBox(x_true.shape)  # 6 frames, k = 3: a null space at frequencies 2 and 4
    y = op.A(x_true)
    # With a null space, rounding noise in ⟨p, M p⟩ ≈ 0 must not turn into huge steps past convergence.
    assert psnr(cg_baseline(op, y, iters=20), x_true) > psnr(cg_baseline(op, y, iters=5), x_true) - 0.1
