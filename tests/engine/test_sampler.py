import pytest
import torch

from engine.errors import InputError
from engine.operators.base import LinearOperator
from engine.sampler import draw_noise, sample
from engine.schedule import alphas_cumprod, ddim_steps

SHAPE = (4, 3, 8, 8)


class FrameAverage(LinearOperator):
    """y = mean over frames of pairs (a small temporal blur with an exact adjoint)."""

    in_shape = SHAPE
    out_shape = (SHAPE[0] - 1,) + SHAPE[1:]

    def A(self, x):
        return (x[1:] + x[:-1]) / 2

    def A_adjoint(self, y):
        x = torch.zeros(self.in_shape, dtype=y.dtype)
        x[1:] += y / 2
        x[:-1] += y / 2
        return x


def oracle(clean01):
    """ε from a known clean clip: ε = (X − √ᾱ·x₀)/√(1−ᾱ), so Tweedie returns x₀ exactly."""
    ab = alphas_cumprod()
    x0 = 2 * clean01 - 1

    def eps_model(x, t):
        a = ab[t].to(x.dtype).view(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return eps_model


def zero_eps(x, t):
    return torch.zeros(x.shape[0], 6, *x.shape[2:], dtype=x.dtype)


def test_oracle_eps_recovers_the_clip():
    clean = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    op = FrameAverage()
    out = sample(oracle(clean), op.A(clean), op, nfe=10, eta=0.5, cg_iters=3)
    assert torch.allclose(out, clean, atol=1e-10)


def test_same_seed_same_output_other_seed_differs():
    op = FrameAverage()
    y = op.A(torch.rand(SHAPE, dtype=torch.float64))
    a = sample(zero_eps, y, op, nfe=5, seed=3)
    b = sample(zero_eps, y, op, nfe=5, seed=3)
    c = sample(zero_eps, y, op, nfe=5, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def _inputs_seen(noise, eta=1.0):
    op = FrameAverage()
    y = op.A(torch.rand(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    seen = []

    def eps_model(x, t):
        seen.append((x.clone(), int(t[0])))
        return zero_eps(x, t)

    sample(eps_model, y, op, nfe=4, eta=eta, cg_iters=0, noise=noise)
    return seen


def _renoise_residuals(seen):
    """With ε = 0 and no CG, X_next − √ᾱ_next/√ᾱ_t·X_t = c1·E_b: the noise of each step."""
    ab = alphas_cumprod()
    out = []
    for (x, t), (x_next, t_next) in zip(seen, seen[1:]):
        out.append(x_next - (ab[t_next] / ab[t]).sqrt() * x)
    return out


def test_shared_noise_is_one_image_per_step():
    seen = _inputs_seen("shared")
    x_init = seen[0][0]
    assert torch.equal(x_init, x_init[:1].expand_as(x_init))
    for r in _renoise_residuals(seen):
        assert r.abs().max() > 1e-3
        assert torch.allclose(r, r[:1].expand_as(r), atol=1e-12)


def test_independent_noise_differs_per_frame():
    seen = _inputs_seen("independent")
    for r in [seen[0][0]] + _renoise_residuals(seen):
        assert (r[0] - r[1]).abs().max() > 1e-3


def test_callback_sees_every_step():
    """callback(k, t, X̂): the step's index, its timestep and its Tweedie estimate (the clip, for the oracle ε)."""
    clean = torch.rand(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    op = FrameAverage()
    calls = []
    sample(oracle(clean), op.A(clean), op, nfe=6, callback=lambda k, t, x0: calls.append((k, t, x0.clone())))
    assert [(k, t) for k, t, _ in calls] == [(0, 830), (1, 664), (2, 498), (3, 332), (4, 166), (5, 0)]
    assert all(torch.allclose(x0, clean, atol=1e-10) for *_, x0 in calls)


def test_three_steps_by_hand():
    """Algorithm 1 written out from ᾱ for three steps, with an ε that is not the oracle's, a null space for
    CG to respect and η ∈ (0, 1): Tweedie, the CG projection, the re-noising with E_b and ε, the clamp.

    FrameAverage's AᵀA has three distinct non-zero eigenvalues on each pixel's 4 frames, so 3 CG
    iterations from X̂ reach its projection onto {A x = y}: X̂ + Aᵀ(AAᵀ)⁻¹(y − A X̂). The projection
    keeps only the null-space part (+1, −1, +1, −1) of what varies, so the noise is drawn per frame and
    ε varies over frames: frame-constant terms would vanish in it, whatever their coefficients."""
    eta, seed, nfe = 0.5, 5, 3
    op = FrameAverage()
    clean = torch.rand(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = op.A(clean)
    M = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.float64) / 2   # A on each pixel's frames
    ramp = torch.arange(SHAPE[0], dtype=torch.float64).view(-1, 1, 1, 1) / 10

    def project(x):
        rhs = y.reshape(3, -1) - M @ x.reshape(4, -1)
        return x + (M.T @ torch.linalg.solve(M @ M.T, rhs)).reshape(SHAPE)

    def eps_of(x, t):
        return 0.3 * x + ramp + t / 1000

    def eps_model(x, t):                                 # learned-σ layout: the last 3 channels are ignored
        e = eps_of(x, t.to(x.dtype).view(-1, 1, 1, 1))
        return torch.cat([e, 100 + e], 1)

    ab = alphas_cumprod()
    E = draw_noise(seed, nfe, SHAPE, "independent").double()
    x, estimates = E[0], []
    for k, step in enumerate(ddim_steps(nfe, eta)):     # only the timesteps are the schedule's
        a, a_next = float(ab[step.t]), float(ab[step.t_next]) if step.t_next >= 0 else 1.0
        eps = eps_of(x, step.t)
        estimates.append(((x - (1 - a) ** 0.5 * eps) / a ** 0.5 + 1) / 2)
        xbar = project(estimates[-1])
        x = a_next ** 0.5 * (2 * xbar - 1) + (1 - a_next) ** 0.5 * (eta * E[k + 1] + (1 - eta ** 2) ** 0.5 * eps)
    seen = []
    out = sample(eps_model, y, op, nfe=nfe, eta=eta, cg_iters=3, noise="independent", seed=seed,
                 callback=lambda k, t, x0: seen.append(x0.clone()))
    for got, want in zip(seen, estimates, strict=True):            # unclamped: every step's arithmetic shows
        assert torch.allclose(got, want, atol=1e-10, rtol=0)
    assert torch.allclose(out, xbar.clamp(0, 1), atol=1e-10, rtol=0)


def test_draw_noise_shapes():
    assert draw_noise(0, 20, SHAPE, "shared").shape == (21, 1, 3, 8, 8)
    assert draw_noise(0, 20, SHAPE, "independent").shape == (21, 4, 3, 8, 8)
    with pytest.raises(InputError, match="noise"):
        draw_noise(0, 20, SHAPE, "per-pixel")


def test_draw_noise_is_drawn_once_per_seed_with_the_same_numbers():
    """A seed seen before gives the kept draw back (no second draw), with the numbers one CPU generator
    of that seed gives; another seed, size or mode draws afresh."""
    want = torch.randn((5, 1, 3, 8, 8), generator=torch.Generator().manual_seed(11))
    first = draw_noise(11, 4, SHAPE)
    assert torch.equal(first, want) and draw_noise(11, 4, SHAPE) is first
    assert not torch.equal(draw_noise(12, 4, SHAPE), first)
    independent = torch.randn((5, 4, 3, 8, 8), generator=torch.Generator().manual_seed(11))
    assert torch.equal(draw_noise(11, 4, SHAPE, "independent"), independent)


@pytest.mark.gpu
def test_pinned_noise_has_the_cpu_numbers():
    pinned = draw_noise(3, 2, SHAPE, pin=True)
    assert pinned.is_pinned() and torch.equal(pinned, draw_noise(3, 2, SHAPE))


def test_bad_measurements():
    op = FrameAverage()
    with pytest.raises(InputError, match="shape"):
        sample(zero_eps, torch.zeros(SHAPE, dtype=torch.float64), op)
    y = torch.zeros(op.out_shape, dtype=torch.float64)
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        sample(zero_eps, y, op)


@pytest.mark.parametrize("prior", ["adm-fp16", "gaussian", "ffdnet-fp16"])
def test_reverse_loop_has_no_host_sync(prior):
    """The whole loop of every paper task runs on meta tensors, which have no data: any host
    synchronisation in it (.item(), bool(tensor), .cpu(), .tolist(), nonzero) would raise here.
    The torch backend's loop is what the `torch+graph` backend captures as one CUDA graph. The
    learned prior (FFDNet in fp16, channels_last) takes its device path there, as on a GPU."""
    from engine.backends import torch_eps
    from engine.operators import from_spec
    from engine.priors import GaussianPrior
    from engine.sampler import reverse_process
    from engine.schedule import ddim_steps
    from engine.tasks import TASKS
    from engine.unet import ADMConfig, ADMUNet

    size = ADMConfig.preset("tiny").image_size
    if prior == "adm-fp16":
        with torch.device("meta"):
            eps = torch_eps(ADMUNet(ADMConfig.preset("tiny")), precision="fp16")
    elif prior == "ffdnet-fp16":
        from engine.ffdnet import FFDNet
        from engine.priors import DenoiserPrior

        with torch.device("meta"):
            denoiser = FFDNet()
        eps = torch_eps(DenoiserPrior(denoiser), precision="fp16", channels_last=True)
    else:
        eps = torch_eps(GaussianPrior())                                 # its buffers follow the input's device
    with pytest.raises(RuntimeError, match="meta"):
        torch.empty(1, device="meta").item()                             # the premise
    shape = (13, 3, size, size)
    for task in TASKS.values():
        op = from_spec(task.spec, shape, device="meta", dtype=torch.float32)
        y = torch.empty(op.out_shape, device="meta")
        noise = draw_noise(0, 3, shape).to("meta")
        for gamma in (None, 0.5):
            out = reverse_process(eps, y, op, noise, ddim_steps(3, task.eta), cg_iters=3, gamma=gamma)
            assert out.device.type == "meta" and tuple(out.shape) == shape
