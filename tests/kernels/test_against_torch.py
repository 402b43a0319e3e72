"""Triton kernels against their torch references (engine.operators, engine.cg, engine.sampler).

The default tier runs small odd sizes in float32 and float64: on the CPU in Triton's
interpreter (conftest sets TRITON_INTERPRET=1 before `kernels` is imported), compiled
on the GPU where there is one. The `gpu` tests run the
paper's size, 16×3×256×256, in float32, float16 and bfloat16 storage, with every output
poisoned with NaN before the launch so that each element is proven written.
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch

from engine import cg as torch_cg
from engine import sampler, triton_steps
from engine.errors import InputError
from engine.operators import REGISTRY, from_spec
from engine.operators import blur as torch_blur
from engine.operators import inpaint as torch_inpaint
from engine.operators import sr as torch_sr
from engine.operators import temporal as torch_temporal
from engine.operators.temporal import autocorrelation, gaussian_kernel, uniform_kernel
from engine.priors import GaussianPrior
from engine.schedule import ddim_steps
from kernels import blur, cg, compose, mask, pool, steps, temporal
from kernels.common import INTERPRET

SHAPE = (5, 3, 13, 17)       # odd sizes, not block multiples
SHAPE_SR = (5, 3, 12, 20)    # H, W divisible by 4 (and 2)
SKEW3 = [0.2, 0.7, 0.1]                  # not symmetric: exercises the flip in Aᵀ
SKEW4 = [0.1, 0.5, 0.3, 0.1]             # even width

#: Per-dtype tolerance (relative to the reference's largest magnitude), one table for every test.
TOL = {torch.float64: 1e-12, torch.float32: 5e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float64, torch.float32]
DEVICE = "cpu" if INTERPRET else "cuda"


def on(t, dtype=torch.float64):
    """A constant (taps, mask) on the test device, from its float64 value (a list is not rounded to fp32 first)."""
    return torch.as_tensor(t, dtype=torch.float64).to(DEVICE, dtype)


def rand(shape, seed, dtype=torch.float64, device=DEVICE):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device, dtype)


def assert_close(out, ref, dtype=None):
    """|out − ref| ≤ TOL[dtype] · max|ref| elementwise, and out finite everywhere."""
    tol = TOL[dtype or out.dtype]
    assert out.shape == ref.shape
    assert torch.isfinite(out).all(), "an output element was not written (NaN or Inf)"
    err = (out.double() - ref.double()).abs().max().item()
    scale = max(ref.double().abs().max().item(), 1e-30)
    assert err <= tol * scale, f"max error {err:.3e} > {tol:.1e} × {scale:.3e}"


# ── every kernel against its torch reference ─────────────────────────────────

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel,boundary", [
    (uniform_kernel(3), "circular"), (SKEW4, "circular"), (SKEW3, "zero"), (gaussian_kernel(1.0), "zero"),
    (SKEW4, "replicate"), (uniform_kernel(7), "replicate"), (gaussian_kernel(1.0), "replicate"),
], ids=["uniform3-circular", "skew4-circular", "skew3-zero", "gauss1-width7>N-zero", "skew4-replicate",
        "uniform7>N-replicate", "gauss1-replicate"])
def test_temporal(kernel, boundary, dtype):
    k = torch.as_tensor(kernel, dtype=torch.float64)
    T = torch_temporal.temporal_matrix(k, SHAPE[0], boundary)      # read by the replicate boundary
    x, a, T, TtT = rand(SHAPE, 0, dtype), on(autocorrelation(k), dtype), on(T, dtype), on(T.T @ T, dtype)
    k = on(k, dtype)
    assert_close(temporal.temporal_conv(x, k, boundary, T), torch_temporal.temporal_conv(x, k, boundary))
    assert_close(temporal.temporal_conv_adjoint(x, k, boundary, T),
                 torch_temporal.temporal_conv_adjoint(x, k, boundary))
    assert_close(temporal.temporal_conv_normal(x, k, a, boundary, TtT),
                 torch_temporal.temporal_conv_normal(x, k, a, boundary))


def test_replicate_needs_its_frame_matrix():
    x, k = rand(SHAPE, 0), on(SKEW3)
    with pytest.raises(InputError, match="replicate boundary needs the frame matrix"):
        temporal.temporal_conv(x, k, "replicate")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_frame_matmul(dtype):
    """z[m] = Σ_n P[m, n] x[n] for a dense, non-symmetric P (the CG preconditioner's pass)."""
    P = rand((SHAPE[0], SHAPE[0]), 3) - 0.5
    x = rand(SHAPE, 4, dtype)
    assert_close(temporal.frame_matmul(P.to(dtype), x), torch_temporal.FRAME_MATMUL["torch"](P.to(dtype), x))


SKEW5 = [0.1, 0.4, 0.25, 0.15, 0.1]       # not symmetric: a missing flip in Bᵀ shows

@pytest.mark.parametrize("boundary,taps,dtype", [
    ("reflect", gaussian_kernel(1.0, 5), torch.float32), ("reflect", gaussian_kernel(1.0, 5), torch.float64),
    ("circular", gaussian_kernel(1.0, 5), torch.float64), ("zero", gaussian_kernel(2.0, 13), torch.float64),
    ("reflect", SKEW5, torch.float64), ("circular", SKEW5, torch.float64), ("zero", SKEW3, torch.float64),
], ids=["reflect5-f32", "reflect5-f64", "circular5-f64", "zero13-f64", "reflect-skew5", "circular-skew5",
        "zero-skew3"])
def test_blur(boundary, taps, dtype):
    k = on(taps, dtype)
    x = rand(SHAPE, 1, dtype)
    assert_close(blur.spatial_blur(x, k, boundary), torch_blur.spatial_blur(x, k, boundary))
    assert_close(blur.spatial_blur_adjoint(x, k, boundary), torch_blur.spatial_blur_adjoint(x, k, boundary))
    assert_close(blur.spatial_blur_normal(x, k, boundary), torch_blur.spatial_blur_normal(x, k, boundary))


def test_blur_reflect_on_tiny_images():
    """p = L − 1 (the largest reflect padding) and a 2×2 image: every pixel is a border pixel."""
    k = on([0.2, 0.5, 0.3])
    x = rand((2, 1, 2, 2), 2)
    for name in ("spatial_blur", "spatial_blur_adjoint", "spatial_blur_normal"):
        assert_close(getattr(blur, name)(x, k, "reflect"), getattr(torch_blur, name)(x, k, "reflect"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("s,shape", [(4, SHAPE_SR), (2, SHAPE_SR), (3, (5, 3, 9, 15)), (1, SHAPE),
                                     (128, (2, 1, 256, 256)), (96, (1, 2, 192, 288))],
                         ids=["s4", "s2", "s3", "s1", "s128-window-in-chunks", "s96-padded-window-in-chunks"])
def test_pool(s, shape, dtype):
    x = rand(shape, 3, dtype)
    y = torch_sr.avg_pool(x, s)
    assert_close(pool.avg_pool(x, s), y)
    assert_close(pool.avg_pool_adjoint(y, s), torch_sr.avg_pool_adjoint(y, s))
    assert_close(pool.avg_pool_normal(x, s), torch_sr.avg_pool_normal(x, s))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mask(dtype):
    keep = on(torch_inpaint.random_mask(SHAPE[2], SHAPE[3], 0.5, 0), dtype)
    x = rand(SHAPE, 4, dtype)
    assert_close(mask.apply_mask(x, keep), torch_inpaint.apply_mask(x, keep))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("boundary", ["circular", "zero", "replicate"])
def test_fused_compositions(boundary, dtype):
    """One-pass AᵀA of temporal ∘ pooling and temporal ∘ mask = Tᵀ(SᵀS(T x)) computed plainly (skewed taps;
    s = 3 leaves lanes of the power-of-two block tile unused)."""
    k = on(SKEW3, dtype)
    a = on(autocorrelation(on(SKEW3)), dtype)
    T = torch_temporal.temporal_matrix(on(SKEW3), SHAPE_SR[0], boundary)
    TtT = (T.T @ T).to(dtype)                                       # read by the replicate boundary
    x = rand(SHAPE_SR, 5, dtype)
    for s, xs in ((4, x), (2, x), (3, rand((5, 3, 9, 15), 7, dtype))):
        ref = torch_temporal.temporal_conv_adjoint(
            torch_sr.avg_pool_normal(torch_temporal.temporal_conv(xs, k, boundary), s), k, boundary)
        assert_close(compose.temporal_pool_normal(xs, k, a, boundary, s, normal=TtT), ref)
    keep = on(torch_inpaint.random_mask(SHAPE_SR[2], SHAPE_SR[3], 0.5, 1), dtype)
    ref = torch_temporal.temporal_conv_adjoint(keep * torch_temporal.temporal_conv(x, k, boundary), k, boundary)
    assert_close(compose.temporal_mask_normal(x, k, a, boundary, keep, normal=TtT), ref)


def test_half_storage_in_the_interpreter():
    """float16 and bfloat16 storage, float32 arithmetic: within the storage's rounding of the fp64 result."""
    k = on(uniform_kernel(3))
    x = rand(SHAPE_SR, 6)
    ref = torch_temporal.temporal_conv_normal(x, k, autocorrelation(k), "circular")
    for dtype in (torch.float16, torch.bfloat16):
        kh = k.to(dtype)
        out = temporal.temporal_conv_normal(x.to(dtype), kh, autocorrelation(kh.double()).to(dtype), "circular")
        assert out.dtype == dtype
        assert_close(out, ref, dtype)
        assert_close(pool.avg_pool_normal(x.to(dtype), 4), torch_sr.avg_pool_normal(x, 4), dtype)


# ── the operators on the Triton kernels: dot test and the torch kernels' values ─

#: (spec, clean shape): every registry entry, every boundary, the paper's compositions in both orders.
SPECS = [
    ("temporal:uniform:3", SHAPE),
    ("temporal:kernel:0.1,0.5,0.3,0.1:circular", SHAPE),
    ("temporal:kernel:0.2,0.7,0.1:zero", SHAPE),
    ("temporal:gaussian:1.0:zero", SHAPE),
    ("blur:gaussian:1.0:5:reflect", SHAPE),
    ("blur:gaussian:1.0:5:circular", SHAPE),
    ("blur:gaussian:2.0:13:zero", SHAPE),
    ("sr:4", SHAPE_SR),
    ("sr:1", SHAPE),
    ("inpaint:0.5", SHAPE),
    ("temporal:uniform:3+sr:4", SHAPE_SR),
    ("sr:2+temporal:uniform:3:zero", SHAPE_SR),
    ("temporal:gaussian:0.6+inpaint:0.5", SHAPE),
    ("inpaint:0.3:7+temporal:uniform:3", SHAPE),
    ("temporal:uniform:5:zero+blur:gaussian:1.0:5", SHAPE),
    ("temporal:uniform:3+blur:gaussian:1.0:5:zero+sr:4", SHAPE_SR),
    ("temporal:uniform:7:replicate", SHAPE),
    ("temporal:kernel:0.2,0.7,0.1:replicate+sr:4", SHAPE_SR),
    ("inpaint:0.3:7+temporal:gaussian:1.0:replicate", SHAPE),
]


def test_specs_cover_every_entry_and_boundary():
    terms = [t for s, _ in SPECS for t in s.split("+")]
    assert {t.split(":")[0] for t in terms} == set(REGISTRY)
    for name, boundaries in (("temporal", torch_temporal.BOUNDARIES), ("blur", torch_blur.BOUNDARIES)):
        named = [t for t in terms if t.startswith(name)]
        for boundary in boundaries:
            assert any(t.endswith(":" + boundary) for t in named), boundary


@pytest.mark.parametrize("spec,shape", SPECS, ids=[s for s, _ in SPECS])
def test_dot_test_and_torch_kernels(spec, shape):
    op, ref = from_spec(spec, shape, kernels="triton"), from_spec(spec, shape)
    assert op.kernels == "triton"
    x, y = rand(op.in_shape, 7), rand(op.out_shape, 8) - 0.5
    Ax, Aty, AtAx = op.A(x), op.A_adjoint(y), op.A_adjoint_A(x)
    gap = abs(torch.sum(Ax * y) - torch.sum(x * Aty)) / (Ax.norm() * y.norm())
    assert gap < 1e-10, f"{spec}: relative dot-test gap {gap:.2e}"
    assert_close(Ax, ref.A(x))
    assert_close(Aty, ref.A_adjoint(y))
    assert_close(AtAx, ref.A_adjoint_A(x))


# ── CG and the sampler ───────────────────────────────────────────────────────

@pytest.mark.parametrize("spec,shape,dtype", [
    ("temporal:uniform:3+sr:4", SHAPE_SR, torch.float64),
    ("temporal:uniform:3+sr:4", SHAPE_SR, torch.float32),
    ("temporal:uniform:3+inpaint:0.5", SHAPE, torch.float64),
    ("blur:gaussian:1.0:5", SHAPE, torch.float64),
], ids=["temporal+sr-f64", "temporal+sr-f32", "temporal+inpaint-f64", "blur-f64"])
def test_cg_matches_torch(spec, shape, dtype):
    op, ref = from_spec(spec, shape, kernels="triton"), from_spec(spec, shape)
    y = ref.A(rand(shape, 9, dtype))
    x_hat = rand(shape, 10, dtype)
    for gamma in (None, 1.0):
        out = cg.data_consistency(op, y, x_hat, 5, gamma)
        # Chronopoulos–Gear vs textbook CG, fp32 vs fp64 sums for fp32: a few units of rounding apart
        tol = 1e-11 if dtype == torch.float64 else 2e-5
        expected = torch_cg.data_consistency(ref, y, x_hat, 5, gamma)
        assert (out - expected).abs().max() <= tol * expected.abs().max(), (gamma, (out - expected).abs().max())


@pytest.mark.parametrize("spec,shape,dtype", [
    ("temporal:uniform:3+sr:4", SHAPE_SR, torch.float64),
    ("temporal:uniform:3+sr:4", SHAPE_SR, torch.float32),
    ("inpaint:0.3:7+temporal:uniform:5:replicate", SHAPE, torch.float64),
    ("temporal:gaussian:1.0:replicate", SHAPE, torch.float32),
], ids=["temporal+sr-f64", "temporal+sr-f32", "inpaint+replicate-f64", "replicate-f32"])
def test_preconditioned_cg_matches_torch(spec, shape, dtype):
    """The Triton PCG (P by frame_matmul, four partial sums per pass) against engine.cg's, noiseless and
    regularised (a large γ: ill-conditioned), after 1 and 3 iterations (1: the first step size alone,
    which later ones can make up for, and where PCG differs from plain CG, so P is applied)."""
    op, ref = from_spec(spec, shape, kernels="triton"), from_spec(spec, shape)
    y = ref.A(rand(shape, 9, dtype))
    x_hat = rand(shape, 10, dtype)
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    for gamma, iters in itertools.product((None, 50.0), (1, 3)):
        P, P_ref = (torch_cg.preconditioner(o, gamma, 1e-3, device=DEVICE, dtype=dtype) for o in (op, ref))
        out = cg.data_consistency(op, y, x_hat, iters, gamma, precond=P)
        expected = torch_cg.data_consistency(ref, y, x_hat, iters, gamma, precond=P_ref)
        # fp32: P amplifies rounding by up to 1/(2δ); bound by what the torch PCG itself misses in fp32
        exact = torch_cg.data_consistency(ref, y.double(), x_hat.double(), iters, gamma,
                                          precond=torch_cg.preconditioner(ref, gamma, 1e-3, device=DEVICE))
        bound = max(tol * exact.abs().max(), 2 * (expected.double() - exact).abs().max())
        assert (out.double() - exact).abs().max() <= bound, (gamma, iters, (out.double() - exact).abs().max(), bound)
        if iters == 1:
            plain = torch_cg.data_consistency(ref, y, x_hat, iters, gamma)
            assert (plain - expected).abs().max() > 100 * tol * expected.abs().max()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gamma", [None, 0.5], ids=["noiseless", "regularised"])
def test_cg_residual_and_its_rounding_floor_sums(gamma, dtype):
    """r₀ = c(Aᵀy − AᵀA x̂) and the partial sums of ⟨b, b⟩, b = Aᵀy or x̂ + γAᵀy, in one pass."""
    aty, q, x_hat = rand(SHAPE, 30, dtype), rand(SHAPE, 31, dtype), rand(SHAPE, 32, dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    bb = torch.full((cg.GMAX,), float("nan"), dtype=acc, device=DEVICE)
    c = 1.0 if gamma is None else gamma
    out = torch.full(SHAPE, float("nan"), dtype=dtype, device=DEVICE)
    r, programs = cg.cg_residual(aty, q, c, bb, x_hat=None if gamma is None else x_hat, out=out)
    aty, q, x_hat = aty.double(), q.double(), x_hat.double()
    assert_close(r, c * (aty - q), dtype)
    b = aty if gamma is None else x_hat + gamma * aty
    assert torch.isnan(bb[programs:]).all()
    assert_close(bb[:programs].sum().reshape(1), b.square().sum().reshape(1), dtype)


def test_reducing_passes_stride_over_large_clips():
    """More than GMAX · DOT_BLOCK elements: each program of the residual and dot passes loops over
    several blocks (its grid stride), and the partial sums still add up to the whole clip's."""
    shape = (5, 3, 200, 200)
    assert torch.Size(shape).numel() > cg.GMAX * cg.DOT_BLOCK
    aty, q, x_hat = rand(shape, 33, torch.float32), rand(shape, 34, torch.float32), rand(shape, 35, torch.float32)
    bb, part = torch.empty(cg.GMAX, device=DEVICE), torch.empty((2, cg.GMAX), device=DEVICE)
    r, programs = cg.cg_residual(aty, q, 0.5, bb, x_hat=x_hat)
    assert programs == cg.GMAX and cg.cg_dot(r, q, part) == cg.GMAX
    aty, q, x_hat, r64 = aty.double(), q.double(), x_hat.double(), r.double()
    b = x_hat + 0.5 * aty
    assert_close(bb.sum().reshape(1), b.square().sum().reshape(1), torch.float32)
    assert_close(part.sum(1), torch.stack([r64.square().sum(), (r64 * q).sum()]), torch.float32)


def test_cg_edge_cases():
    op = from_spec("sr:1", (2, 1, 3, 3), kernels="triton")
    x0 = rand(op.in_shape, 11)
    assert torch.equal(cg.data_consistency(op, x0, x0, 5), x0)          # r₀ = 0: every step is 0, no NaN
    assert torch.equal(cg.data_consistency(op, x0, x0, 5, 1.0), x0)
    x_hat = rand(op.in_shape, 12)
    x = cg.data_consistency(op, x0, x_hat, 1)                           # A = I: one step solves it
    assert_close(x, x0)
    out = cg.data_consistency(op, x0, x_hat, 0)
    assert torch.equal(out, x_hat) and out.data_ptr() != x_hat.data_ptr()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_steps(dtype):
    s = ddim_steps(20, 0.15)[3]
    x = rand(SHAPE, 13, dtype) * 2 - 1
    eps = (rand((SHAPE[0], 6, *SHAPE[2:]), 14, dtype) * 2 - 1)[:, :3]  # a learned-σ output's ε: not copied
    assert_close(triton_steps.tweedie(x, eps, s), sampler.tweedie(x, eps, s))
    for batch in (1, SHAPE[0]):                                          # shared and independent noise
        noise = rand((batch, *SHAPE[1:]), 15, dtype)
        assert_close(triton_steps.ddim_update(x, noise, eps, s), sampler.ddim_update(x, noise, eps, s))
    assert_close(triton_steps.tweedie(x, eps.transpose(2, 3).contiguous().transpose(2, 3), s), sampler.tweedie(x, eps, s))
    assert sampler.step_kernels("triton").tweedie is triton_steps.tweedie


@pytest.mark.parametrize("spec,gamma", [("temporal:uniform:3+sr:4", None), ("temporal:uniform:3", 1.0)])
def test_sampler_triton_matches_torch(spec, gamma):
    shape = (5, 3, 16, 16)
    ref, op = from_spec(spec, shape, dtype=torch.float64), from_spec(spec, shape, dtype=torch.float64, kernels="triton")
    y = ref.A(rand(shape, 16))
    prior = GaussianPrior()
    options = dict(nfe=3, eta=0.8, cg_iters=3, gamma=gamma, seed=1)
    out, expected = sampler.sample(prior, y, op, **options), sampler.sample(prior, y, ref, **options)
    assert_close(out, expected, torch.float64)


# ── launchers check their inputs ─────────────────────────────────────────────

def test_launchers_check_inputs():
    x = rand(SHAPE, 17, torch.float32)
    k = on(uniform_kernel(3), torch.float32)
    with pytest.raises(InputError, match="float32, float64"):
        mask.masked(x.int(), on(torch.ones(SHAPE[2:]), torch.int32))
    with pytest.raises(InputError, match="contiguous"):
        temporal.frame_mix(x.transpose(2, 3), k, temporal.FORWARD, "circular")
    with pytest.raises(InputError, match="one dtype"):
        temporal.frame_mix(x, k.double(), temporal.FORWARD, "circular")
    with pytest.raises(InputError, match="out has shape"):
        pool.pool(x[..., :12, :16].contiguous(), 4, pool.NORMAL, out=x[:1])
    with pytest.raises(InputError, match="needs at least 7 frames"):
        temporal.temporal_conv(x, on(uniform_kernel(7), torch.float32), "circular")
    with pytest.raises(InputError, match="unknown boundary"):
        blur.spatial_blur(x, k, "mirror")
    with pytest.raises(InputError, match=r"partials \[256\]"):
        cg.cg_residual(x, x, 1.0, torch.empty(1, device=DEVICE))
    with pytest.raises(InputError, match="shapes"):
        steps.tweedie_step(x, x[:, :2], 1.0, 0.0)
    with pytest.raises(InputError, match="tensors on meta and"):
        steps.tweedie_step(x, x.to("meta"), 1.0, 0.0)
    # the torch-facing functions accept any layout: the launcher gets a contiguous copy
    assert_close(temporal.temporal_conv(x.transpose(2, 3), k, "zero"),
                 torch_temporal.temporal_conv(x.transpose(2, 3), k, "zero"))


def test_importing_the_operators_does_not_import_triton():
    code = "import sys, engine.operators; assert 'triton' not in sys.modules and 'kernels' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))


# ── the paper's size on a GPU ────────────────────────────────────────────────

PAPER = (16, 3, 256, 256)
HALF = [torch.float32, torch.float16, torch.bfloat16]


def poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_gpu_operators_every_element_written(dtype):
    x = rand(PAPER, 20, dtype, "cuda")
    x64 = x.double()
    k7, kg = uniform_kernel(7), gaussian_kernel(2.0, 13)
    kt, at = k7.to("cuda", dtype), autocorrelation(k7.to(dtype).double()).to("cuda", dtype)
    k7_64, at_64 = kt.double(), autocorrelation(kt.double())
    for mode, ref in ((temporal.FORWARD, torch_temporal.temporal_conv(x64, k7_64, "circular")),
                      (temporal.ADJOINT, torch_temporal.temporal_conv_adjoint(x64, k7_64, "zero")),
                      (temporal.NORMAL, torch_temporal.temporal_conv_normal(x64, k7_64, at_64, "circular"))):
        boundary = "zero" if mode == temporal.ADJOINT else "circular"
        assert_close(temporal.frame_mix(x, kt, mode, boundary, autocorr=at, out=poisoned(PAPER, dtype)), ref, dtype)
    ref = torch_temporal.temporal_conv_adjoint(torch_sr.avg_pool_normal(
        torch_temporal.temporal_conv(x64, k7_64, "circular"), 4), k7_64, "circular")
    assert_close(temporal.frame_mix(x, kt, temporal.NORMAL, "circular", autocorr=at, pool=4,
                                    out=poisoned(PAPER, dtype)), ref, dtype)
    keep = torch_inpaint.random_mask(256, 256, 0.5, 0).to("cuda", dtype)
    ref = keep.double() * torch_temporal.temporal_conv_normal(x64, k7_64, at_64, "circular")
    assert_close(temporal.frame_mix(x, kt, temporal.NORMAL, "circular", autocorr=at, mask=keep,
                                    out=poisoned(PAPER, dtype)), ref, dtype)
    assert_close(mask.masked(x, keep, out=poisoned(PAPER, dtype)), keep.double() * x64, dtype)
    y = pool.pool(x, 4, pool.FORWARD, out=poisoned((16, 3, 64, 64), dtype))
    assert_close(y, torch_sr.avg_pool(x64, 4), dtype)
    assert_close(pool.pool(y, 4, pool.ADJOINT, out=poisoned(PAPER, dtype)), torch_sr.avg_pool_adjoint(y.double(), 4),
                 dtype)
    assert_close(pool.pool(x, 4, pool.NORMAL, out=poisoned(PAPER, dtype)), torch_sr.avg_pool_normal(x64, 4), dtype)
    kb = kg.to("cuda", dtype)
    for boundary in torch_blur.BOUNDARIES if dtype == torch.float32 else ("reflect",):   # fewer compiles
        for mode, f in ((blur.FORWARD, torch_blur.spatial_blur), (blur.ADJOINT, torch_blur.spatial_blur_adjoint),
                        (blur.NORMAL, torch_blur.spatial_blur_normal)):
            tab = blur.band_table(kb, 256, mode, boundary)
            first, second = (1, 0) if mode == blur.ADJOINT else (0, 1)
            mid = blur.band_pass(x, tab, first, boundary, out=poisoned(PAPER, dtype))
            out = blur.band_pass(mid, tab, second, boundary, out=poisoned(PAPER, dtype))
            assert_close(out, f(x64, kb.double(), boundary), dtype)    # rounded to storage after each axis


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_gpu_steps_every_element_written(dtype):
    s = ddim_steps(20, 0.15)[3]
    x = rand(PAPER, 21, dtype, "cuda") * 2 - 1
    eps = (rand((16, 6, 256, 256), 22, dtype, "cuda") * 2 - 1)[:, :3]
    noise = rand((1, *PAPER[1:]), 23, dtype, "cuda")
    assert_close(steps.tweedie_step(x, eps, s.sqrt_ab, s.sqrt_1m_ab, out=poisoned(PAPER, dtype)),
                 sampler.tweedie(x.double(), eps.double(), s), dtype)
    assert_close(steps.ddim_step(x, noise, eps, s.sqrt_ab_next, s.c1, s.c2, out=poisoned(PAPER, dtype)),
                 sampler.ddim_update(x.double(), noise.double(), eps.double(), s), dtype)
    eps, bb = eps.contiguous(), torch.full((cg.GMAX,), float("nan"), device="cuda")
    r, programs = cg.cg_residual(x, eps, 0.5, bb, out=poisoned(PAPER, dtype))
    assert_close(r, 0.5 * (x.double() - eps.double()), dtype)
    assert_close(bb[:programs].sum().reshape(1), x.double().square().sum().reshape(1), torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["temporal:uniform:7+sr:4", "temporal:uniform:7+blur:gaussian:2.0:13",
                                  "temporal:uniform:7+inpaint:0.5"])
def test_gpu_cg_matches_torch_and_captures_in_a_cuda_graph(spec):
    op = from_spec(spec, PAPER, device="cuda", dtype=torch.float32, kernels="triton")
    ref = from_spec(spec, PAPER, device="cuda", dtype=torch.float64, kernels="torch")
    y = ref.A(rand(PAPER, 24, torch.float64, "cuda")).float()
    x_hat = rand(PAPER, 25, torch.float32, "cuda")
    out = cg.data_consistency(op, y, x_hat, 5)
    # no host synchronisation inside: the whole call captures, and its replay equals the eager call
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        cg.data_consistency(op, y, x_hat, 5)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = cg.data_consistency(op, y, x_hat, 5)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, out)
    # fp32 against fp64: rounding stays ~1e-5 for a few iterations, then the fifth amplifies it to ~1e-3
    # (torch's fp32 CG with fp64 dots does the same at this size)
    for iters, tol in ((3, 1e-4), (5, 1e-2)):
        got = cg.data_consistency(op, y, x_hat, iters)
        expected = torch_cg.data_consistency(ref, y.double(), x_hat.double(), iters)
        assert (got.double() - expected).abs().max() <= tol * expected.abs().max(), iters


def test_fused_cg_is_stable_past_convergence_on_a_singular_operator():
    """Like engine.cg: once ⟨r, r⟩ reaches the rounding floor, no more steps (a null space makes ⟨p, Mp⟩ ≈ 0)."""
    from engine.operators import from_spec
    from kernels.cg import data_consistency as fused

    op = from_spec("temporal:uniform:3", (6, 3, 5, 7), kernels="triton")   # 6 frames, k = 3: a null space
    x_true = torch.rand(op.in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = op.A(x_true)
    start = torch.zeros_like(x_true)
    few, many = fused(op, y, start, 5), fused(op, y, start, 40)
    # Without the floor the null-space part grows (measured: ‖x − x_true‖ 4.0 after 5 steps, 45 after 40).
    assert (many - x_true).norm() <= (few - x_true).norm() * (1 + 1e-6)


def test_interpreter_version_clash_is_named():
    from kernels.common import interpreter_clash

    assert "numpy<2.4" in interpreter_clash("3.6.0", "2.4.6") and "3.6.0" in interpreter_clash("3.6.0", "2.5.2")
    for triton_version, numpy_version in (("3.6.0", "2.3.5"), ("3.7.0", "2.4.6"), ("3.9.0", "2.5.2"),
                                          ("4.0.0", "3.0.0")):
        assert interpreter_clash(triton_version, numpy_version) is None
