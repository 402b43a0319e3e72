import pytest
import torch

from engine.cg import conjugate_gradient, data_consistency, preconditioner
from engine.operators import from_spec
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


# ── preconditioned CG ────────────────────────────────────────────────────────


def _clip(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dense_normal(op):
    """AᵀA as a dense matrix on flattened clips.  [numel, numel]"""
    n = _clip(op.in_shape, 0).numel()
    basis = torch.eye(n, dtype=torch.float64)
    return torch.stack([op.A_adjoint_A(basis[i].reshape(op.in_shape)).reshape(-1) for i in range(n)], dim=1)


@pytest.mark.parametrize("boundary", ["circular", "replicate"])
def test_pcg_solves_an_invertible_system_in_two_steps(boundary):
    """Circular uniform 7 on 16 frames (replicate on 9) is invertible but ill-conditioned: PCG in fp64
    reaches the exact solution in 2 iterations (its P is TᵀT's inverse up to δ²/λ² ≈ 1e-6); plain
    CG after 2 iterations is far from it (what makes the test able to fail)."""
    shape = (16 if boundary == "circular" else 9, 1, 2, 3)
    op = from_spec(f"temporal:uniform:7:{boundary}", shape, kernels="torch")
    x_true, x_hat = _clip(shape, 1), _clip(shape, 2)
    y = op.A(x_true)
    exact = torch.linalg.solve(_dense_normal(op), op.A_adjoint(y).reshape(-1)).reshape(shape)
    P = preconditioner(op, None, 1e-7)
    pcg = data_consistency(op, y, x_hat, 2, precond=P)
    plain = data_consistency(op, y, x_hat, 2)
    assert (pcg - exact).abs().max() < 1e-8 * exact.abs().max()
    assert (plain - exact).abs().max() > 1e-3 * exact.abs().max()
    # the regularised system: P = (I + γTᵀT)⁻¹ is its exact inverse, one iteration suffices
    g = 0.3
    lhs = torch.eye(x_hat.numel(), dtype=torch.float64) + g * _dense_normal(op)
    exact_r = torch.linalg.solve(lhs, (x_hat + g * op.A_adjoint(y)).reshape(-1)).reshape(shape)
    pcg_r = data_consistency(op, y, x_hat, 1, g, precond=preconditioner(op, g))
    assert (pcg_r - exact_r).abs().max() < 1e-12 * exact_r.abs().max()


@pytest.mark.parametrize("spec,shape", [
    ("temporal:uniform:3+sr:2", (6, 1, 4, 4)),                  # |H|² has exact zeros at 6 frames; SR's null space
    ("inpaint:0.5:3+temporal:uniform:5:replicate", (8, 1, 3, 5)),
    ("temporal:uniform:7", (28, 1, 1, 2)),                      # width 7 on 28 frames: exact zeros of |H|²
])
def test_pcg_keeps_the_null_space_component_of_x_hat(spec, shape):
    """PCG from x̂ moves only in range(AᵀA): the part of the result in A's null space is x̂'s, to rounding
    (fp64). A preconditioner that does not commute with AᵀA (a per-pixel diagonal) leaks into it."""
    op = from_spec(spec, shape, kernels="torch")
    x_hat, y = _clip(shape, 3), op.A(_clip(shape, 4))
    lam, V = torch.linalg.eigh(_dense_normal(op))
    null = V[:, lam < 1e-10 * lam.max()]                       # an orthonormal basis of null(A)
    assert null.shape[1] > 0

    def null_part(v):
        return null.T @ v.reshape(-1)

    x = data_consistency(op, y, x_hat, 5, precond=preconditioner(op, None, 1e-4))
    assert (null_part(x) - null_part(x_hat)).abs().max() < 1e-9
    assert (op.A(x) - y).norm() < 1e-2 * (op.A(x_hat) - y).norm()      # and it did fit the measurement
    diagonal = 1 + _clip(shape, 5)
    leaky = data_consistency(op, y, x_hat, 5, precond=lambda v: diagonal * v)
    assert (null_part(leaky) - null_part(x_hat)).abs().max() > 1e-3


def test_preconditioner_only_where_there_is_a_temporal_part():
    assert preconditioner(from_spec("sr:2", (4, 1, 4, 4)), None) is None
    assert preconditioner(from_spec("temporal:uniform:3+temporal:uniform:3", (6, 1, 2, 2)), None) is None
    assert preconditioner(from_spec("temporal:uniform:3", (6, 1, 2, 2)), None, None) is None
    assert preconditioner(from_spec("temporal:uniform:3+sr:2", (6, 1, 4, 4)), 1.0) is not None


def test_pcg_reverse_loop_has_no_host_sync():
    """PCG through the sampler's loop on meta tensors (no data: any host sync would raise), every
    paper task, noiseless and regularised; the preconditioner is built once, before the loop."""
    from engine.priors import GaussianPrior
    from engine.sampler import draw_noise, reverse_process
    from engine.schedule import ddim_steps
    from engine.tasks import TASKS

    shape = (13, 3, 16, 16)
    for task in TASKS.values():
        op = from_spec(task.spec, shape, device="meta", dtype=torch.float32)
        y = torch.empty(op.out_shape, device="meta")
        noise = draw_noise(0, 2, shape).to("meta")
        for gamma in (None, 0.5):
            P = preconditioner(op, gamma, device="meta", dtype=torch.float32)
            assert P is not None
            out = reverse_process(GaussianPrior(), y, op, noise, ddim_steps(2, task.eta), cg_iters=3, gamma=gamma,
                                  precond=P)
            assert out.device.type == "meta" and tuple(out.shape) == shape


def test_solver_config_takes_the_preconditioner_delta():
    from engine.cg import DEFAULT_DELTA
    from engine.errors import InputError
    from engine.runtime import SolverConfig

    assert SolverConfig(spec="temporal:uniform:7").cg_precond == DEFAULT_DELTA
    assert SolverConfig(spec="temporal:uniform:7", cg_precond=None).cg_precond is None
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(InputError, match="cg_precond"):
            SolverConfig(spec="temporal:uniform:7", cg_precond=bad)


def test_the_default_gamma_falls_as_the_noise_grows():
    """γ = min(0.04 / σ_y, 4) (measured, engine.cg's docstring); the noiseless CG at σ_y = 0; a given γ is kept."""
    from engine.cg import default_gamma, gamma_at

    assert [default_gamma(s) for s in (0.01, 0.02, 0.05, 0.1)] == [4.0, 2.0, 0.8, 0.4]
    assert default_gamma(0.002) == default_gamma(0.0011) == 4.0          # capped where a real video's noise lies
    assert default_gamma(0.0) is None and gamma_at(None, 0.0) is None and gamma_at(3.0, 0.0) is None
    assert gamma_at(None, 0.05) == 0.8 and gamma_at(3.0, 0.05) == 3.0


def test_a_diffusion_checkpoint_keeps_dds_gamma():
    """With --checkpoint the sampler is the paper's DDS, γ = 1 whatever σ_y; a prior gets 0.04/σ_y."""
    from engine.cg import default_gamma
    from engine.solve import parse

    assert default_gamma(0.05, diffusion=True) == 1.0 and default_gamma(0.0, diffusion=True) is None
    argv = ["clip.npy", "--degrade", "temporal:uniform:7", "--sigma-y", "0.05", "--out", "out"]
    assert parse(argv)[1].gamma == 0.8
    assert parse([*argv, "--checkpoint", "adm.pt"])[1].gamma == 1.0
    assert parse([*argv, "--checkpoint", "adm.pt", "--gamma", "0.3"])[1].gamma == 0.3
