"""Property tests over every registered degradation (docs/design.md, "Operators"), with fp64 references written plainly here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.errors import InputError
from engine.operators import REGISTRY, Composition, Inpainting, SpatialBlur, SuperResolution, TemporalPSF, from_spec
from engine.operators import blur as blur_module
from engine.operators import temporal as temporal_module
from engine.operators.temporal import gaussian_kernel, uniform_kernel

F64 = dict(dtype=torch.float64)
SHAPE = (5, 2, 13, 17)      # odd sizes everywhere
SHAPE7 = (7, 2, 13, 17)
SHAPE_SR = (5, 2, 12, 20)   # H, W divisible by 4 (and 2)
SKEW3 = [0.2, 0.7, 0.1]                  # not symmetric: exercises the flip in Aᵀ
SKEW4 = [0.1, 0.5, 0.3, 0.1]             # even width
SKEW5 = [0.05, 0.1, 0.5, 0.25, 0.1]

#: (spec, clean shape); "{npy}" / "{png}" stand for mask files written by the test.
SPECS = [
    ("temporal:uniform:3", SHAPE),
    ("temporal:uniform:5:circular", SHAPE),
    ("temporal:uniform:5:zero", SHAPE),
    ("temporal:uniform:7", SHAPE7),
    ("temporal:gaussian:0.6", SHAPE),
    ("temporal:gaussian:1.0:zero", SHAPE),          # width 7 > N = 5: allowed with zero boundary
    ("temporal:kernel:0.2,0.7,0.1", SHAPE),
    ("temporal:kernel:0.1,0.5,0.3,0.1:circular", SHAPE),
    ("temporal:kernel:0.1,0.5,0.3,0.1:zero", SHAPE),
    ("temporal:uniform:7:replicate", SHAPE),         # width 7 > N = 5: allowed with replicate boundary
    ("temporal:gaussian:0.6:replicate", SHAPE7),
    ("temporal:kernel:0.1,0.5,0.3,0.1:replicate", SHAPE),
    ("blur:gaussian:1.0:5", SHAPE),
    ("blur:gaussian:2.0:13:reflect", SHAPE),        # p = 6 ≤ 12
    ("blur:gaussian:2.0:13:circular", SHAPE),
    ("blur:gaussian:2.0:13:zero", SHAPE),
    ("blur:gaussian:3.0:27:zero", SHAPE),           # p = 13 ≥ H
    ("sr:4", SHAPE_SR),
    ("sr:2", SHAPE_SR),
    ("sr:1", SHAPE),
    ("inpaint:0.5", SHAPE),
    ("inpaint:0.3:7", SHAPE),
    ("inpaint:file={npy}", SHAPE),
    ("inpaint:file={png}", SHAPE),
    # compositions, applied left to right
    ("temporal:uniform:3+sr:4", SHAPE_SR),
    ("temporal:uniform:5:zero+blur:gaussian:1.0:5", SHAPE),
    ("temporal:kernel:0.1,0.5,0.3,0.1+blur:gaussian:2.0:13", SHAPE),
    ("temporal:gaussian:0.6+inpaint:0.5", SHAPE),
    ("blur:gaussian:2.0:13+sr:4", SHAPE_SR),
    ("blur:gaussian:1.0:5:circular+sr:2", SHAPE_SR),
    ("temporal:uniform:3+blur:gaussian:1.0:5:zero+sr:4", SHAPE_SR),
    ("temporal:kernel:0.2,0.7,0.1:replicate+sr:2", SHAPE_SR),
    ("inpaint:0.5+temporal:uniform:3:replicate", SHAPE),
]


@pytest.fixture
def mask_files(tmp_path):
    """A .npy and an RGB .png mask of SHAPE's size (nonzero = keep)."""
    from PIL import Image

    keep = np.random.default_rng(3).random(SHAPE[-2:]) > 0.4
    np.save(tmp_path / "mask.npy", keep.astype(np.float32))
    rgb = np.zeros(SHAPE[-2:] + (3,), np.uint8)
    rgb[..., 1] = keep * 255
    Image.fromarray(rgb).save(tmp_path / "mask.png")
    return {"npy": tmp_path / "mask.npy", "png": tmp_path / "mask.png", "keep": torch.from_numpy(keep)}


def build(spec, shape, mask_files, **options):
    return from_spec(spec.format(npy=mask_files["npy"], png=mask_files["png"]), shape, **options)


def rand(shape, seed, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_specs_cover_every_entry_and_boundary():
    names = {term.split(":")[0] for spec, _ in SPECS for term in spec.split("+")}
    assert names == set(REGISTRY)
    temporal_terms = [t for s, _ in SPECS for t in s.split("+") if t.startswith("temporal")]
    blur_terms = [t for s, _ in SPECS for t in s.split("+") if t.startswith("blur")]
    for boundary in temporal_module.BOUNDARIES:
        assert any(t.endswith(":" + boundary) for t in temporal_terms), boundary
    for boundary in blur_module.BOUNDARIES:
        assert any(t.endswith(":" + boundary) for t in blur_terms), boundary


# ── the properties, over every spec ──────────────────────────────────────────

@pytest.mark.parametrize("spec,shape", SPECS, ids=[s for s, _ in SPECS])
def test_dot_test_and_normal_operator(spec, shape, mask_files):
    op = build(spec, shape, mask_files)
    assert tuple(op.in_shape) == shape
    for seed in range(3):
        x, y = rand(op.in_shape, 2 * seed), rand(op.out_shape, 2 * seed + 1) - 0.5
        Ax, Aty = op.A(x), op.A_adjoint(y)
        assert Ax.shape == tuple(op.out_shape) and Aty.shape == tuple(op.in_shape)
        gap = abs(torch.sum(Ax * y) - torch.sum(x * Aty)) / (Ax.norm() * y.norm())
        assert gap < 1e-10, f"{spec}: relative dot-test gap {gap:.2e}"
        torch.testing.assert_close(op.A_adjoint_A(x), op.A_adjoint(Ax), rtol=0, atol=1e-12)


@pytest.mark.parametrize("spec,shape", SPECS, ids=[s for s, _ in SPECS])
def test_dtype_follows_the_input(spec, shape, mask_files):
    op = build(spec, shape, mask_files, dtype=torch.float64)   # constants placed in fp64, used in fp32
    x, y = rand(op.in_shape, 0), rand(op.out_shape, 1)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-2)):
        for f, v in ((op.A, x), (op.A_adjoint, y), (op.A_adjoint_A, x)):
            out = f(v.to(dtype))
            assert out.dtype == dtype
            torch.testing.assert_close(out.double(), f(v), rtol=tol, atol=tol)


def test_registry_examples_build_for_the_paper_size():
    for name, entry in REGISTRY.items():
        assert entry.doc and entry.usage and entry.example.startswith(name + ":")
        op = from_spec(entry.example, (16, 3, 256, 256))
        assert op.in_shape == (16, 3, 256, 256)


# ── dense fp64 references built from the definitions ─────────────────────────

def dense(f, in_shape):
    """The matrix of a linear map by applying it to every basis vector.  [out numel, in numel]"""
    numel = math.prod(in_shape)
    basis = torch.eye(numel, **F64)
    return torch.stack([f(basis[i].reshape(in_shape)).reshape(-1) for i in range(numel)], dim=1)


@pytest.mark.parametrize("boundary", ["circular", "zero", "replicate"])
@pytest.mark.parametrize("kernel", [uniform_kernel(3), gaussian_kernel(0.6), SKEW3, SKEW4, uniform_kernel(7)],
                         ids=["uniform3", "gauss0.6", "skew3", "skew4", "uniform7"])
def test_temporal_matches_its_matrix(kernel, boundary):
    k = torch.as_tensor(kernel, **F64)
    n, w = 5, len(k)
    if boundary == "circular" and w > n:
        with pytest.raises(InputError, match="circular"):
            TemporalPSF((n, 1, 1, 1), k, boundary)
        return
    c = (w - 1) // 2
    T = torch.zeros(n, n, **F64)                    # y[i] = Σ_j k[j] x[i + c − j]
    for i in range(n):
        for j in range(w):
            m = i + c - j
            if boundary == "circular":
                T[i, m % n] += k[j]
            elif boundary == "replicate":           # the nearest end frame
                T[i, min(max(m, 0), n - 1)] += k[j]
            elif 0 <= m < n:
                T[i, m] += k[j]
    op = TemporalPSF((n, 1, 1, 1), k, boundary)
    torch.testing.assert_close(dense(op.A, op.in_shape), T, rtol=0, atol=1e-14)
    torch.testing.assert_close(dense(op.A_adjoint, op.out_shape), T.T, rtol=0, atol=1e-14)
    torch.testing.assert_close(dense(op.A_adjoint_A, op.in_shape), T.T @ T, rtol=0, atol=1e-14)


def _source(t, length, boundary):
    """The pixel a padded index t copies (None: a zero)."""
    if boundary == "circular":
        return t % length
    if 0 <= t < length:
        return t
    if boundary == "reflect":
        return -t if t < 0 else 2 * (length - 1) - t
    return None


@pytest.mark.parametrize("boundary", ["reflect", "circular", "zero"])
@pytest.mark.parametrize("h,w,kernel", [(5, 6, SKEW5), (5, 6, gaussian_kernel(1.0, 9)), (6, 7, gaussian_kernel(2.0, 11)),
                                        (3, 4, SKEW3)], ids=["skew5", "gauss9", "gauss11", "skew3"])
def test_blur_matches_its_matrix(h, w, kernel, boundary):
    k = torch.as_tensor(kernel, **F64)
    p = len(k) // 2
    shape = (1, 1, h, w)
    if (boundary == "reflect" and p > min(h, w) - 1) or (boundary == "circular" and p > min(h, w)):
        with pytest.raises(InputError, match=boundary):
            SpatialBlur(shape, k, boundary)
        return
    K = torch.outer(k, k)                           # y[i, j] = Σ_uv K[u, v] x[src(i + p − u), src(j + p − v)]
    B = torch.zeros(h * w, h * w, **F64)
    for i in range(h):
        for j in range(w):
            for u in range(len(k)):
                for v in range(len(k)):
                    a, b = _source(i + p - u, h, boundary), _source(j + p - v, w, boundary)
                    if a is not None and b is not None:
                        B[i * w + j, a * w + b] += K[u, v]
    op = SpatialBlur(shape, k, boundary)
    torch.testing.assert_close(dense(op.A, shape), B, rtol=0, atol=1e-14)
    torch.testing.assert_close(dense(op.A_adjoint, shape), B.T, rtol=0, atol=1e-14)
    torch.testing.assert_close(dense(op.A_adjoint_A, shape), B.T @ B, rtol=0, atol=1e-14)


@pytest.mark.parametrize("boundary,mode", [("reflect", "reflect"), ("circular", "circular"), ("zero", "constant")])
def test_blur_equals_pad_then_valid_conv2d(boundary, mode):
    """DPS: ReflectionPad2d(p) then a valid Conv2d (a correlation, hence the flipped kernel)."""
    x = rand(SHAPE, 0)
    op = SpatialBlur(SHAPE, SKEW5, boundary)
    K = torch.outer(torch.tensor(SKEW5, **F64), torch.tensor(SKEW5, **F64)).flip(0, 1)
    n, c, h, w = SHAPE
    ref = F.conv2d(F.pad(x.reshape(n * c, 1, h, w), (2, 2, 2, 2), mode=mode), K[None, None]).reshape(SHAPE)
    torch.testing.assert_close(op.A(x), ref, rtol=0, atol=1e-14)


def test_sr_matches_its_matrix():
    s, h, w = 2, 4, 6
    S = torch.zeros(h // s * (w // s), h * w, **F64)
    for a in range(h):
        for b in range(w):
            S[(a // s) * (w // s) + b // s, a * w + b] = 1 / s**2
    op = SuperResolution((1, 1, h, w), s)
    torch.testing.assert_close(dense(op.A, op.in_shape), S, rtol=0, atol=1e-15)
    torch.testing.assert_close(dense(op.A_adjoint, op.out_shape), S.T, rtol=0, atol=1e-15)
    torch.testing.assert_close(dense(op.A_adjoint_A, op.in_shape), S.T @ S, rtol=0, atol=1e-15)


def test_inpaint_matches_its_matrix():
    op = Inpainting.random((1, 1, 4, 5), 0.5, seed=1)
    D = torch.diag(op.mask.reshape(-1).to(torch.float64))
    for f in (op.A, op.A_adjoint, op.A_adjoint_A):
        torch.testing.assert_close(dense(f, op.in_shape), D, rtol=0, atol=0)


# ── kernels, constants, masks ────────────────────────────────────────────────

def test_kernels_sum_to_one():
    for width in (1, 4, 7, 13):
        assert uniform_kernel(width).shape == (width,)
        assert abs(uniform_kernel(width).sum().item() - 1) < 1e-15
    for sigma, width in ((0.5, 5), (1.0, 7), (2.0, 13)):       # width 2⌈3σ⌉ + 1
        g = gaussian_kernel(sigma)
        assert g.shape == (width,) and abs(g.sum().item() - 1) < 1e-15
        torch.testing.assert_close(g, g.flip(0))
    K = SpatialBlur.gaussian(SHAPE, 2.0, 13).kernel
    assert K.shape == (13, 13) and abs(K.sum().item() - 1) < 1e-14


@pytest.mark.parametrize("spec,shape", [("sr:4", SHAPE_SR), ("temporal:uniform:5", SHAPE), ("temporal:gaussian:0.6", SHAPE),
                                        ("blur:gaussian:2.0:13:reflect", SHAPE), ("blur:gaussian:2.0:13:circular", SHAPE),
                                        ("temporal:uniform:3+sr:4", SHAPE_SR)])
def test_a_constant_video_stays_constant(spec, shape):
    op = from_spec(spec, shape)
    x = torch.full(shape, 0.37, **F64)
    torch.testing.assert_close(op.A(x), torch.full(op.out_shape, 0.37, **F64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.77, 1.0])
def test_inpaint_drops_exactly_round_hw_r_pixels(rate):
    op = from_spec(f"inpaint:{rate}", SHAPE)
    h, w = SHAPE[-2:]
    assert op.mask.shape == (1, 1, h, w)
    assert int((~op.mask).sum()) == round(h * w * rate)


def test_inpaint_mask_is_shared_by_frames_and_channels_and_seeded():
    op = from_spec("inpaint:0.5", SHAPE, seed=11)
    kept = op.A(torch.ones(SHAPE, **F64))
    assert torch.equal(kept, op.mask.to(torch.float64).expand(SHAPE))
    assert torch.equal(from_spec("inpaint:0.5", SHAPE, seed=11).mask, op.mask)
    assert torch.equal(from_spec("inpaint:0.5:11", SHAPE, seed=0).mask, op.mask)
    assert not torch.equal(from_spec("inpaint:0.5", SHAPE, seed=12).mask, op.mask)


def test_inpaint_masks_from_tensor_and_files(mask_files):
    keep = mask_files["keep"]
    for op in (Inpainting(SHAPE, keep), Inpainting(SHAPE, keep[None, None].double()),
               from_spec(f"inpaint:file={mask_files['npy']}", SHAPE), from_spec(f"inpaint:file={mask_files['png']}", SHAPE)):
        assert torch.equal(op.mask[0, 0], keep)


def test_composition_applies_left_to_right():
    op = from_spec("temporal:uniform:3+sr:4", SHAPE_SR)
    assert isinstance(op, Composition) and op.out_shape == (5, 2, 3, 5)
    x = rand(SHAPE_SR, 0)
    ref = SuperResolution(SHAPE_SR, 4).A(TemporalPSF.uniform(SHAPE_SR, 3).A(x))
    torch.testing.assert_close(op.A(x), ref, rtol=0, atol=0)
    with pytest.raises(InputError, match="cannot compose"):
        Composition([SuperResolution(SHAPE_SR, 4), SuperResolution(SHAPE_SR, 2)])


def test_composition_runs_on_its_operators_kernels_and_refuses_a_mix():
    """A composition's kernels are its operators' (the Solver reads no other), and operators on
    different kernels are refused in one line naming each, not composed as a "mixed" arithmetic."""
    temporal = TemporalPSF.uniform(SHAPE_SR, 3, kernels="triton")
    assert Composition([temporal, SuperResolution(SHAPE_SR, 4, kernels="triton")]).kernels == "triton"
    assert from_spec("temporal:uniform:3+sr:4", SHAPE_SR, kernels="torch").kernels == "torch"
    with pytest.raises(InputError, match="different kernels .TemporalPSF on triton, SuperResolution on torch.") as err:
        Composition([temporal, SuperResolution(SHAPE_SR, 4)])
    assert "\n" not in str(err.value)


# ── bad input ────────────────────────────────────────────────────────────────

BAD_SPECS = [
    ("", SHAPE, "accepted"),
    ("motion:3", SHAPE, "accepted: temporal:uniform:K"),
    ("temporal:uniform:3++sr:4", SHAPE_SR, "empty term"),
    ("temporal:uniform:3+", SHAPE, "empty term"),
    ("temporal", SHAPE, "usage"),
    ("temporal:uniform", SHAPE, "expected 2 or 3 fields"),
    ("temporal:uniform:0", SHAPE, "width ≥ 1"),
    ("temporal:uniform:7.5", SHAPE, "integer"),
    ("temporal:uniform:3:mirror", SHAPE, "circular, zero"),
    ("temporal:box:3", SHAPE, "uniform, gaussian, kernel"),
    ("temporal:uniform:7", SHAPE, "wrap onto itself"),          # width 7 > N = 5, circular
    ("temporal:gaussian:-1", SHAPE, "σ > 0"),
    ("temporal:gaussian:nan", SHAPE, "finite"),
    ("temporal:kernel:0.5,x", SHAPE, "number"),
    ("blur:gaussian:2.0", SHAPE, "expected 3 or 4 fields"),
    ("blur:gaussian:2.0:12", SHAPE, "odd"),
    ("blur:gaussian:0:13", SHAPE, "σ > 0"),
    ("blur:box:2.0:13", SHAPE, "accepted: gaussian"),
    ("blur:gaussian:2.0:13:wrap", SHAPE, "reflect, circular, zero"),
    ("blur:gaussian:5.0:31", SHAPE, "reflect padding by 15"),   # p = 15 > H − 1
    ("sr:3", SHAPE, "divisible by 3"),
    ("sr:0", SHAPE, "≥ 1"),
    ("sr:four", SHAPE, "integer"),
    ("sr:4:2", SHAPE_SR, "expected 1 field"),
    ("inpaint:1.5", SHAPE, "[0, 1]"),
    ("inpaint:0.5:x", SHAPE, "seed"),
    ("inpaint:", SHAPE, "expected 1 or 2 fields"),
    ("inpaint:file=/no/such/mask.npy", SHAPE, "not found"),
    ("inpaint:file=mask.jpg", SHAPE, ".npy, .png"),
    ("temporal:uniform:3+sr:3", SHAPE, "divisible by 3"),
]


@pytest.mark.parametrize("spec,shape,hint", BAD_SPECS, ids=[s or "empty" for s, _, _ in BAD_SPECS])
def test_bad_specs_say_what_is_accepted(spec, shape, hint):
    with pytest.raises(InputError) as err:
        from_spec(spec, shape)
    assert hint in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_masks_shapes_and_kernels(tmp_path):
    np.save(tmp_path / "small.npy", np.ones((4, 4)))
    with pytest.raises(InputError, match=r"mask has shape \[4, 4\]"):
        from_spec(f"inpaint:file={tmp_path / 'small.npy'}", SHAPE)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot be read"):
        from_spec(f"inpaint:file={tmp_path / 'broken.png'}", SHAPE)
    for shape in ((5, 13, 17), (5, 2, 0, 17), (5, 2, 13.0, 17)):
        with pytest.raises(InputError, match=r"\[N, C, H, W\]"):
            from_spec("sr:1", shape)
    with pytest.raises(InputError, match="kernels 'cuda'; accepted: torch, triton"):
        from_spec("temporal:uniform:3", SHAPE, kernels="cuda")
    with pytest.raises(InputError, match="kernels 'cuda'; accepted: torch, triton"):
        TemporalPSF.uniform(SHAPE, 3, kernels="cuda")


def test_auto_kernels_are_triton_on_cuda_and_torch_elsewhere(monkeypatch):
    """from_spec's default: what runs where the operator lives (choosing needs no GPU)."""
    from engine.operators import common
    from kernels.temporal import MAX_FRAMES

    assert from_spec("temporal:uniform:3", SHAPE).kernels == "torch"
    assert from_spec("temporal:uniform:3", SHAPE, device="meta").kernels == "torch"
    assert common.resolve_kernels("auto", "cuda", SHAPE[0]) == "triton"
    assert common.resolve_kernels("auto", torch.device("cuda:1"), MAX_FRAMES + 1) == "torch"   # past its limit
    assert common.resolve_kernels("auto", "cuda", None) == "triton"                # no frame limit (the norms)
    assert common.resolve_kernels("torch", "cuda", SHAPE[0]) == "torch"

    monkeypatch.setattr(common, "triton_installed", lambda: False)
    assert common.resolve_kernels("auto", "cuda", SHAPE[0]) == "torch"
    with pytest.raises(InputError, match="the triton kernels need the triton package"):
        from_spec("temporal:uniform:3", SHAPE, kernels="triton")
