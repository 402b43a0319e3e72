"""Warm start: the schedule from t₀, X_{t₀} = √ᾱ_{t₀}·X_init + √(1−ᾱ_{t₀})·E_b, and t₀ = T is the cold start."""

import math

import pytest
import torch

from engine.cg import conjugate_gradient
from engine.errors import InputError
from engine.operators import from_spec
from engine.priors import GaussianPrior
from engine.runtime import Solver, SolverConfig
from engine.sampler import sample
from engine.schedule import alphas_cumprod, ddim_steps, ddim_timesteps, warm_start

SHAPE = (6, 3, 8, 8)


def test_start_at_T_is_the_cold_schedule():
    assert ddim_timesteps(20, start=1000) == ddim_timesteps(20)
    assert ddim_steps(20, 0.15, start=1000) == ddim_steps(20, 0.15)
    assert warm_start(1000) is None and warm_start(None) is None


def test_schedule_from_t0():
    assert ddim_timesteps(8, start=400) == [(350, 300), (300, 250), (250, 200), (200, 150), (150, 100),
                                            (100, 50), (50, 0), (0, -1)]
    w = warm_start(400, cg_iters=3)
    ab = float(alphas_cumprod()[400])
    assert (w.start, w.cg_iters) == (400, 3)
    assert w.sqrt_ab == pytest.approx(math.sqrt(ab)) and w.sqrt_1m_ab == pytest.approx(math.sqrt(1 - ab))


@pytest.mark.parametrize("nfe, start", [(8, 7), (8, 1001), (0, 500)])
def test_bad_starts(nfe, start):
    with pytest.raises(ValueError):
        ddim_timesteps(nfe, start=start)


def test_warm_start_at_T_equals_cold_start():
    op = from_spec("temporal:uniform:3", SHAPE, dtype=torch.float64)
    y = op.A(torch.rand(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    prior = GaussianPrior()
    cold = sample(prior, y, op, nfe=4, seed=1)
    assert torch.equal(sample(prior, y, op, nfe=4, seed=1, start=1000), cold)
    assert not torch.equal(sample(prior, y, op, nfe=4, seed=1, start=999), cold)


def test_first_network_input_is_the_noised_cg_estimate():
    """The ε model first sees √ᾱ_{t₀}·(2·X_init − 1) + √(1−ᾱ_{t₀})·E_0 at t = t₀ − t₀ // K."""
    op = from_spec("temporal:uniform:3", SHAPE, dtype=torch.float64)
    clean = torch.rand(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = op.A(clean)
    seen = []

    def eps_model(x, t):
        seen.append((x.clone(), t.clone()))
        return torch.zeros_like(x)

    sample(eps_model, y, op, nfe=4, cg_iters=2, seed=3, start=200)
    aty = op.A_adjoint(y)
    x_init = conjugate_gradient(op.A_adjoint_A, aty, aty, 2).clamp(0, 1)
    e0 = torch.randn((5, 1, *SHAPE[1:]), generator=torch.Generator().manual_seed(3))[0].double()
    ab = float(alphas_cumprod()[200])
    expected = math.sqrt(ab) * (2 * x_init - 1) + math.sqrt(1 - ab) * e0
    torch.testing.assert_close(seen[0][0], expected.expand(SHAPE), rtol=0, atol=1e-6)
    assert seen[0][1].tolist() == [150] * SHAPE[0]


def test_solver_warm_start_matches_sample_and_validates():
    cfg = SolverConfig(spec="temporal:uniform:3", frames=4, size=8, nfe=3, start=300)
    solver = Solver(GaussianPrior(), cfg)
    clean = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    y = solver.measure(clean)
    torch.testing.assert_close(solver.solve(y, seed=5), sample(GaussianPrior(), y, solver.op, nfe=3, seed=5, start=300,
                                                              eta=cfg.eta, cg_iters=cfg.cg_iters))
    with pytest.raises(InputError):
        SolverConfig(spec="temporal:uniform:3", nfe=20, start=10)
