import torch

from engine.cg import conjugate_gradient, data_consistency
from engine.operators.base import LinearOperator


class DenseOp(LinearOperator):
    """A dense matrix acting on flattened videos: a tiny independent test operator."""

    def __init__(self, M, in_shape):
        self.M, self.in_shape, self.out_shape = M, in_shape, (M.shape[0],)

    def A(self, x):
        return self.M @ x.reshape(-1)

    def A_adjoint(self, y):
        return (self.M.T @ y).reshape(self.in_shape)


def _spd(n, gen):
    Q = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return Q @ Q.T + 0.5 * torch.eye(n, dtype=torch.float64)


def test_cg_matches_dense_solve_in_n_iterations():
    gen = torch.Generator().manual_seed(0)
    shape = (2, 1, 2, 3)
    n = 12
    M = _spd(n, gen)
    b = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: (M @ v.reshape(-1)).reshape(shape), b, torch.zeros(shape, dtype=torch.float64), n)
    exact = torch.linalg.solve(M, b.reshape(-1)).reshape(shape)
    assert torch.allclose(x, exact, atol=1e-8)


def test_cg_zero_residual_gives_zero_step():
    shape = (1, 1, 2, 2)
    x0 = torch.ones(shape, dtype=torch.float64)
    x = conjugate_gradient(lambda v: 2 * v, 2 * x0, x0, 5)   # already exact: every denominator is 0
    assert torch.equal(x, x0)


def test_cg_does_not_touch_its_start():
    x0 = torch.zeros(1, 1, 2, 2)
    conjugate_gradient(lambda v: v, torch.ones_like(x0), x0, 2)
    assert torch.count_nonzero(x0) == 0


def test_data_consistency_noiseless_and_regularised():
    gen = torch.Generator().manual_seed(1)
    shape = (2, 1, 2, 2)
    A = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    op = DenseOp(A, shape)
    x_true = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = op.A(x_true)
    x_hat = torch.rand(shape, generator=gen, dtype=torch.float64)
    # Noiseless: the minimum-norm correction of x̂ onto {Ax = y} (CG from x̂ stays in x̂ + range(Aᵀ)).
    x = data_consistency(op, y, x_hat, iters=8)
    expected = x_hat + (A.T @ torch.linalg.solve(A @ A.T, y - A @ x_hat.reshape(-1))).reshape(shape)
    assert torch.allclose(x, expected, atol=1e-8)
    # Regularised: (I + γAᵀA) x = x̂ + γAᵀy exactly after 8 iterations (8 unknowns).
    g = 0.3                                   # not 1: a dropped γ would go unseen
    xr = data_consistency(op, y, x_hat, iters=8, gamma=g)
    lhs = torch.eye(8, dtype=torch.float64) + g * A.T @ A
    exact = torch.linalg.solve(lhs, x_hat.reshape(-1) + g * A.T @ y).reshape(shape)
    assert torch.allclose(xr, exact, atol=1e-8)


def test_solver_config_takes_the_preconditioner_delta():
    from engine.cg import DEFAULT_DELTA
    from engine.errors import InputError
    from engine.runtime import SolverConfig

    assert SolverConfig(spec="temporal:uniform:7").cg_precond == DEFAULT_DELTA
    assert SolverConfig(spec="temporal:uniform:7", cg_precond=None).cg_precond is None
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(InputError, match="cg_precond"):
            SolverConfig(spec="temporal:uniform:7", cg_precond=bad)
