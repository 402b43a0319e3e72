import math

import pytest
import torch

from engine.schedule import alphas_cumprod, ddim_steps, ddim_timesteps, linear_betas


def test_linear_betas_and_alphas_cumprod():
    b = linear_betas()
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    ab = alphas_cumprod()
    expected = 1.0
    for t in range(1000):
        expected *= 1.0 - float(b[t])
    assert ab[-1].item() == pytest.approx(expected, rel=1e-12)
    assert torch.all(ab[1:] < ab[:-1])


def test_ddim_timesteps_k20_matches_design():
    pairs = ddim_timesteps(20)
    assert [t for t, _ in pairs] == list(range(950, -1, -50))
    assert pairs[0] == (950, 900) and pairs[-2] == (50, 0) and pairs[-1] == (0, -1)


def test_ddim_timesteps_k100():
    pairs = ddim_timesteps(100)
    assert pairs[0] == (990, 980) and pairs[-1] == (0, -1) and len(pairs) == 100


def test_ddim_coefficients():
    ab = alphas_cumprod()
    steps = ddim_steps(20, 0.15)
    s = steps[0]
    assert s.sqrt_ab == pytest.approx(math.sqrt(ab[950].item()))
    assert s.sqrt_1m_ab == pytest.approx(math.sqrt(1 - ab[950].item()))
    assert s.sqrt_ab_next == pytest.approx(math.sqrt(ab[900].item()))
    assert s.c1 == pytest.approx(0.15 * math.sqrt(1 - ab[900].item()))
    assert s.c2 == pytest.approx(math.sqrt(1 - 0.15**2) * math.sqrt(1 - ab[900].item()))
    last = steps[-1]
    assert last.sqrt_ab_next == 1.0 and last.c1 == 0.0 and last.c2 == 0.0


@pytest.mark.parametrize("bad", [0, 1001, -3])
def test_bad_nfe(bad):
    with pytest.raises(ValueError, match="nfe"):
        ddim_timesteps(bad)


def test_bad_eta():
    with pytest.raises(ValueError, match="eta"):
        ddim_steps(20, 1.5)
