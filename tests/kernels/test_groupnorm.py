"""The fused GroupNorm + scale-shift + SiLU kernel (kernels.groupnorm) and the UNet that uses it.

The reference is written plainly here in float64. On the CPU the kernel runs in Triton's
interpreter; the `gpu` tests run it at the ADM-256 sizes, outputs poisoned first.
"""

import math

import pytest
from compiled_child import compiled_report
import torch

from engine.backends import torch_eps
from engine.errors import InputError
from engine.unet import ADMConfig, ADMUNet, GroupNorm32
from export.contract import full_fp32
from kernels.common import INTERPRET
from kernels.groupnorm import group_norm

DEVICE = "cpu" if INTERPRET else "cuda"
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# At the ADM sizes the interpreter's exact arithmetic already reaches 9.5e-7 in fp32 (16, 2048, 8, 8);
# a GPU adds its approximate exp and division and another summation order.
GPU_TOL = {**TOL, torch.float32: 4e-6}

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(x, weight, bias, groups, eps=1e-5, scale=None, shift=None, silu=False):
    """Float64: biased variance over each group's channels and pixels, affine, scale-shift, SiLU."""
    x = x.double()
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    y = y * weight.double()[:, None, None] + bias.double()[:, None, None]
    if scale is not None:
        y = y * (1 + scale.double().reshape(n, c, 1, 1)) + shift.double().reshape(n, c, 1, 1)
    return y * torch.sigmoid(y) if silu else y


def rel_err(got, ref) -> float:
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


def inputs(shape, dtype, *, offset=0.0, channels_last=False, seed=0):
    """x [N, C, H, W] ~ 3·N(0, 1) + offset in `dtype`; γ, β [C] in float32; scale, shift [N, C, 1, 1] views."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    n, c = shape[:2]
    x = (3 * torch.randn(shape, generator=gen, device=DEVICE, dtype=torch.float64) + offset).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    weight, bias = (torch.randn(c, generator=gen, device=DEVICE) for _ in range(2))
    e = 0.5 * torch.randn(n, 2 * c, 1, 1, generator=gen, device=DEVICE, dtype=torch.float64)
    scale, shift = e.to(dtype).chunk(2, 1)
    return x, weight, bias, scale, shift


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape,groups", [((2, 8, 5, 7), 4), ((2, 12, 9, 11), 4), ((1, 6, 1, 1), 3)])
def test_matches_reference(shape, groups, channels_last, dtype):
    x, weight, bias, scale, shift = inputs(shape, dtype, channels_last=channels_last)
    for ss, silu in ((False, False), (True, True), (False, True)):
        s, t = (scale, shift) if ss else (None, None)
        y = group_norm(x, weight, bias, groups, 1e-5, scale=s, shift=t, silu=silu)
        assert y.dtype == x.dtype and y.stride() == x.stride()
        assert rel_err(y.cpu(), reference(x.cpu(), weight.cpu(), bias.cpu(), groups, 1e-5,
                                          None if s is None else s.cpu(), None if t is None else t.cpu(),
                                          silu)) < TOL[dtype]


def test_a_large_mean_does_not_cancel():
    """|μ| = 1000σ: E[x²] − E[x]² in float32 would lose the variance; the shifted sums keep it."""
    x, weight, bias, _, _ = inputs((2, 64, 16, 16), torch.float32, offset=3000.0)
    y = group_norm(x, weight, bias, 32, 1e-5)
    # μ itself rounds to ½ ulp(3000) in float32: about 4e-5 of σ; unshifted sums put the output off by ~1e-1
    assert rel_err(y.cpu(), reference(x.cpu(), weight.cpu(), bias.cpu(), 32)) < 1e-4


def test_many_programs_per_group_add_up():
    """More pixels than one tile: several programs per group, their partial sums combined."""
    x, weight, bias, scale, shift = inputs((1, 32, 64, 97), torch.float32, offset=2.0)
    y = group_norm(x, weight, bias, 32, 1e-6, scale=scale, shift=shift, silu=True)
    assert rel_err(y.cpu(), reference(x.cpu(), weight.cpu(), bias.cpu(), 32, 1e-6, scale.cpu(), shift.cpu(),
                                      True)) < TOL[torch.float32]


def test_bad_inputs_get_clear_errors():
    x, weight, bias, scale, shift = inputs((2, 8, 4, 4), torch.float32)
    cases = [
        (dict(x=x[0]), "expected x"),
        (dict(groups=3), "do not split"),
        (dict(x=x[:, :, :, ::2]), "contiguous or channels_last"),
        (dict(x=x.int()), "float32, float64"),
        (dict(weight=weight[:4]), "weight must be"),
        (dict(scale=scale), "both scale and shift"),
        (dict(scale=scale[:1], shift=shift[:1]), "scale must have shape"),
        (dict(out=torch.empty_like(x).to(memory_format=torch.channels_last)), "out must match"),
        (dict(out=x), "must not be x"),
    ]
    for change, message in cases:
        args = dict(x=x, weight=weight, bias=bias, groups=4, eps=1e-5) | change
        with pytest.raises(InputError, match=message):
            group_norm(**args)


@pytest.fixture
def fused_calls(monkeypatch):
    """The inputs' shapes of each call of the fused kernel's launcher, kernels.groupnorm.group_norm (which runs)."""
    import kernels.groupnorm

    calls, launch = [], kernels.groupnorm.group_norm
    monkeypatch.setattr(kernels.groupnorm, "group_norm", lambda x, *a, **k: calls.append(x.shape) or launch(x, *a, **k))
    return calls


def test_groupnorm32_fused_equals_plain(fused_calls):
    """GroupNorm32.norm with kernels="triton" against its plain torch path, half storage included."""
    torch.manual_seed(0)
    norm = GroupNorm32(64).to(DEVICE)
    with torch.no_grad():
        norm.weight.add_(torch.randn(64, device=DEVICE))
        norm.bias.add_(torch.randn(64, device=DEVICE))
    for dtype in (torch.float32, torch.float16):
        x, _, _, scale, shift = inputs((2, 64, 6, 6), dtype, channels_last=True, seed=1)
        plain = norm.norm(x, scale, shift, silu=True)
        assert fused_calls == []
        norm.kernels = "triton"
        fused = norm.norm(x, scale, shift, silu=True)
        norm.kernels = "torch"
        assert fused_calls.pop() == x.shape
        assert fused.stride() == plain.stride()
        assert rel_err(fused.cpu(), plain.double().cpu()) < (2e-6 if dtype == torch.float32 else 4e-3)


def test_groupnorm32_fused_takes_any_layout(fused_calls):
    """A strided view (neither contiguous nor channels_last) is made contiguous for the kernel."""
    norm = GroupNorm32(32).to(DEVICE)
    x = inputs((2, 32, 6, 12), torch.float32)[0][..., ::2]
    plain = norm.norm(x, silu=True)
    norm.kernels = "triton"
    assert rel_err(norm.norm(x, silu=True).cpu(), plain.double().cpu()) < 2e-6
    assert fused_calls == [x.shape]


def micro_model() -> ADMUNet:
    """Every block type (down/up ResBlocks, skip convs, attention, scale-shift) at 8×8, 25 GroupNorms."""
    torch.manual_seed(0)
    cfg = ADMConfig(image_size=8, num_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                    attention_resolutions=(4,), num_head_channels=16, learn_sigma=True, resblock_updown=True)
    model = ADMUNet(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def test_unet_with_fused_norms_equals_plain_in_float64(fused_calls):
    model = micro_model()
    x, t = torch.randn(1, 3, 8, 8, dtype=torch.float64), torch.tensor([500])
    with torch.no_grad():
        plain = model(x, t)
        assert fused_calls == []
        fused = model.use_kernels("triton")(x, t)
    assert len(fused_calls) == sum(isinstance(m, GroupNorm32) for m in model.modules()) == 25
    assert rel_err(fused, plain.double()) < 1e-12
    with pytest.raises(ValueError, match="'torch' or 'triton'"):
        model.use_kernels("cuda")


def test_traces_and_exports_see_the_plain_ops(monkeypatch):
    """The fused kernel is an eager-mode path: while tracing (ONNX, torch.compile) the norm is plain."""
    import engine.unet as unet

    model = micro_model().use_kernels("triton")
    monkeypatch.setattr(unet, "_tracing", lambda: True)
    monkeypatch.setattr("kernels.groupnorm.group_norm", lambda *a, **k: pytest.fail("fused kernel while tracing"))
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 8, dtype=torch.float64), torch.tensor([3]))


def test_torch_eps_picks_the_norm_kernels():
    def kernels_of(model):
        return {m.kernels for m in model.modules() if isinstance(m, GroupNorm32)}

    model = micro_model()
    assert kernels_of(torch_eps(model, kernels="triton").module) == {"triton"}
    assert kernels_of(model) == {"torch"}                       # the caller's model is left alone
    assert kernels_of(torch_eps(model).module) == {"torch"}


# ---------------------------------------------------------------- 2³¹ elements and more: int64 offsets

#: Compiles (in a child: the interpreter is on in this process) the variants that group_norm launches for
#: ADM-256's first decoder block at N = 64, [64, 512, 256, 256] fp16 = 2³¹ elements, on meta tensors under
#: bench.aot.compile_only, and reports the integer types of the offsets in Triton's IR for sm_90.
OFFSETS_CHILD = r'''
import json, os, re
os.environ.pop("TRITON_INTERPRET", None)
import torch
from triton.runtime.jit import JITFunction
from bench.aot import compile_only
from kernels.groupnorm import group_norm

report = {}
n, c, h, w = 64, 512, 256, 256
for layout in ("contiguous", "channels_last"):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.empty((n, c, h, w), dtype=torch.float16, device="meta").contiguous(memory_format=fmt)
    weight, bias = torch.empty(c, device="meta"), torch.empty(c, device="meta")
    scale = shift = torch.empty((n, c, 1, 1), dtype=torch.float16, device="meta")
    with compile_only(90):
        compile_instead = JITFunction.run

        def capture(self, *args, **kwargs):
            kernel = compile_instead(self, *args, **kwargs)
            ttir = kernel.asm["ttir"]
            report[f"{self.fn.__name__} {layout}"] = {
                "bases": sorted(" ".join(m) for m in set(re.findall(            # x and y offset to the group
                    r"tt\.addptr %(x_ptr|y_ptr), %\w+ : !tt\.ptr<f16>, (i\d+)", ttir))),
                "narrow": [line.strip() for line in ttir.splitlines()           # stride_n used before widening
                           if re.search(r"%stride_n\b", line) and "tt.func" not in line
                           and not re.search(r"arith\.extsi %stride_n : i32 to i64", line)]}
            return kernel

        JITFunction.run = capture
        try:
            group_norm(x, weight, bias, 32, 1e-5, scale=scale, shift=shift, silu=True)
        finally:
            JITFunction.run = compile_instead
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def offsets():
    return compiled_report(OFFSETS_CHILD)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("kernel,bases", [("_gn_stats_kernel", ["x_ptr i64"]),
                                          ("_gn_apply_kernel", ["x_ptr i64", "y_ptr i64"])])
def test_x_and_y_are_offset_to_each_group_in_int64(offsets, kernel, bases, layout):
    """The launch for [64, 512, 256, 256] (2³¹ elements) is accepted, and each program offsets x and y to its
    group's first element, sample · stride_n + group channel · stride_c, in int64, stride_n widened before
    it multiplies (`narrow`: no int32 use of it); offsets within a sample stay int32. The variant is the
    one a GPU run compiles: the same strides and sizes, specialised the same way (i32)."""
    assert offsets[f"{kernel} {layout}"] == {"bases": bases, "narrow": []}


def test_one_sample_of_2_31_elements_is_refused():
    x = torch.empty((2, 32, 2**15, 2**11), device="meta")               # C·H·W = 2³¹
    with pytest.raises(InputError, match="one sample of x must have fewer than 2³¹ elements"):
        group_norm(x, torch.ones(32, device="meta"), torch.zeros(32, device="meta"), 32, 1e-5)


# ---------------------------------------------------------------- GPU, at the ADM-256 sizes

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(16, 256, 256, 256), (16, 512, 128, 128), (16, 2048, 8, 8)])
def test_gpu_adm_sizes_every_element_written_and_deterministic(shape, dtype):
    x, weight, bias, scale, shift = inputs(shape, dtype, channels_last=True, offset=1.0)
    out = torch.full_like(x, math.nan)
    y = group_norm(x, weight, bias, 32, 1e-5, scale=scale, shift=shift, silu=True, out=out)
    assert torch.isfinite(y).all()
    ref = reference(x, weight, bias, 32, 1e-5, scale, shift, True)
    assert rel_err(y, ref) < GPU_TOL[dtype]
    assert torch.equal(group_norm(x, weight, bias, 32, 1e-5, scale=scale, shift=shift, silu=True), y)


@pytest.mark.gpu
def test_gpu_adm256_fused_is_as_accurate_as_upstreams_half_path(fused_calls):
    """ADM-256 in fp16, batch 2: the fused norms' error against fp32 is no worse than upstream's path."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = ADMUNet(ADMConfig.preset("adm256_uncond")).eval()
        x, t = torch.randn(2, 3, 256, 256), torch.tensor([999, 20])
    with torch.no_grad(), full_fp32():                                 # no TF32 in the reference
        ref = model(x, t).double()
    with torch.no_grad():
        half = model.convert_to(torch.float16).to(memory_format=torch.channels_last)
        xh = x.contiguous(memory_format=torch.channels_last)
        plain = half(xh, t)
        fused = half.use_kernels("triton")(xh, t)
    assert len(fused_calls) == sum(isinstance(m, GroupNorm32) for m in model.modules())
    assert torch.isfinite(fused).all()
    assert rel_err(fused, ref) <= 1.5 * rel_err(plain, ref) + 1e-3
