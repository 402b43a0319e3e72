"""The per-frame kernels (spatial blur, pooling, mask, the DDIM steps, the temporal pass) take clips of
2³¹ elements or more: a CG over a long 720p video has no size limit below memory.

Each program offsets its pointers to its frame or plane in int64 and indexes inside it in int32, so one
frame (or plane) must stay under 2³¹ − 2¹⁶ elements (common.MAX_FRAME), a clear error otherwise. A real
2³¹-element clip does not fit this machine, so a child process (the interpreter is on in this one)
launches the kernels on meta tensors of 1000 frames of 720p (2.76·10⁹ elements) under
bench.aot.compile_only, the variants a GPU run compiles for sm_90, and reads Triton's IR: every
pointer argument moved by one scalar int64 offset (the frame's first element), the tiles' offsets
int32, and no int32 product widened after the fact (it would have wrapped already).
"""

from __future__ import annotations


import pytest
from compiled_child import compiled_report
import torch

from engine.errors import InputError
from kernels import blur, mask, pool, steps, temporal


CHILD = r'''
import json, os, re
os.environ.pop("TRITON_INTERPRET", None)
import torch
from triton.runtime.jit import JITFunction
from bench.aot import compile_only
from engine.errors import InputError
from kernels import blur, compose, mask, pool, steps, temporal

DEF = re.compile(r"^\s*(%[\w.]+) = ([\w.]+) (.*?) : (.*?)(?: loc\(.*\))?$")


def defs(ttir):
    """SSA name → (op, operand names, type)."""
    table = {}
    for line in ttir.splitlines():
        m = DEF.match(line)
        if m:
            table[m[1]] = (m[2], re.findall(r"%[\w.]+", m[3]), m[4])
    return table


def narrow_products(name, table, seen):
    """int32 multiplications that `name` is computed from: in an int64 offset they were widened after they
    had wrapped."""
    if name in seen or name not in table:
        return []
    seen.add(name)
    op, operands, type_ = table[name]
    found = [f"{name} = {op} : {type_}"] if op == "arith.muli" and type_ == "i32" else []
    return found + [p for o in operands for p in narrow_products(o, table, seen)]


def read(ttir):
    table = defs(ttir)
    bases = re.findall(r"tt\.addptr (%\w+_ptr), (%[\w.]+) : !tt\.ptr<\w+>, (i\d+)", ttir)
    return {"bases": sorted({f"{p} {t}" for p, _, t in bases}),
            "tiles": sorted(set(re.findall(r"tt\.addptr %[\w.]+, %[\w.]+ : tensor<[\dx]+!tt\.ptr<\w+>>, "
                                           r"tensor<[\dx]+(i\d+)>", ttir))),
            "narrow": sorted({p for _, v, t in bases if t == "i64" for p in narrow_products(v, table, set())})}


def merge(a, b):
    return {k: sorted(set(a[k]) | set(b[k])) for k in a}


report = {}
family = compile_instead = None


def capture(self, *args, **kwargs):
    kernel = compile_instead(self, *args, **kwargs)
    name = self.fn.__name__
    if name != "_band_table_kernel":                   # the taps' table: [H or W, 2R + 1], no clip
        seen = report[family].setdefault(name, read(kernel.asm["ttir"]))
        report[family][name] = merge(seen, read(kernel.asm["ttir"]))
    return kernel


x = torch.empty((1000, 3, 720, 1280), dtype=torch.float16, device="meta")      # 2.76·10⁹ elements
y = torch.empty((1000, 3, 180, 320), dtype=torch.float16, device="meta")
eps = torch.empty((1000, 6, 720, 1280), dtype=torch.float16, device="meta")[:, :3]
taps = torch.full((7,), 1 / 7, device="meta")
uhd = torch.empty((256, 3, 2160, 3840), dtype=torch.float16, device="meta")   # 6.4·10⁹ elements
LAUNCHES = {
    "blur": lambda: [f(x, taps, b) for b in ("reflect", "circular")
                     for f in (blur.spatial_blur, blur.spatial_blur_adjoint, blur.spatial_blur_normal)],
    "pool": lambda: [pool.avg_pool(x, 4), pool.avg_pool_adjoint(y, 4), pool.avg_pool_normal(x, 4)],
    "mask": lambda: mask.apply_mask(x, torch.empty((1, 1, 720, 1280), device="meta")),
    "steps": lambda: [steps.tweedie_step(x, eps, 0.6, 0.8),
                      steps.ddim_step(x, x[:1], eps, 0.6, 0.1, 0.7), steps.ddim_step(x, x, eps, 0.6, 0.1, 0.7)],
    "temporal": lambda: [temporal.frame_mix(uhd, taps.half(), temporal.FORWARD, "circular", out=torch.empty_like(uhd)),
                         compose.temporal_pool_normal(uhd, taps, torch.ones(13, device="meta"), "circular", 8)],
}
for family, launch in LAUNCHES.items():
    report[family] = {}
    with compile_only(90):
        compile_instead = JITFunction.run                # compile_only's: compiles, launches nothing
        JITFunction.run = capture
        try:
            launch()
        except InputError as e:
            report[family] = {"refused": str(e)}
        finally:
            JITFunction.run = compile_instead
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def report():
    return compiled_report(CHILD)


@pytest.mark.parametrize("family,kernel,bases", [
    ("blur", "_band_pass_kernel", ["%out_ptr i64", "%x_ptr i64"]),
    ("pool", "_pool_kernel", ["%dst_ptr i64", "%src_ptr i64"]),
    ("mask", "_mask_kernel", ["%out_ptr i64", "%x_ptr i64"]),
    ("steps", "_tweedie_kernel", ["%eps_ptr i64", "%out_ptr i64", "%x_ptr i64"]),
    ("steps", "_ddim_update_kernel", ["%eps_ptr i64", "%noise_ptr i64", "%out_ptr i64", "%xbar_ptr i64"]),
])
def test_clip_pointers_are_offset_to_the_frame_in_int64(report, family, kernel, bases):
    """The launches on 1000 × 3 × 720 × 1280 are accepted; every clip pointer moves by an int64 frame (plane)
    offset, widened before it multiplies (`narrow`), and the tiles inside a frame stay int32."""
    assert report[family].get(kernel) == {"bases": bases, "tiles": ["i32"], "narrow": []}, report[family]


def test_temporal_passes_take_an_output_and_large_pooling_factors(report):
    """frame_mix with `out` given and temporal ∘ 8×8 pooling (two passes) on 256 frames of 2160×3840."""
    assert sorted(report["temporal"]) == ["_frame_mix_kernel", "_pool_kernel"], report["temporal"]


BIG_PLANE = (1, 1, 2**16, 2**15)                         # one plane of 2³¹ elements > MAX_FRAME


@pytest.mark.parametrize("launch", [
    lambda x: blur.band_pass(x, torch.empty((2**16, 3), device="meta"), 0, "zero"),
    lambda x: pool.avg_pool(x, 2),
    lambda x: mask.masked(x, torch.empty(BIG_PLANE, device="meta")),
    lambda x: steps.tweedie_step(x, x, 0.6, 0.8),
    lambda x: temporal.frame_mix(x, torch.ones(1, device="meta"), temporal.FORWARD, "zero"),
], ids=["blur", "pool", "mask", "steps", "temporal"])
def test_one_frame_past_the_limit_is_refused(launch):
    with pytest.raises(InputError, match=r"one (frame|plane) must have at most 2³¹ − 2¹⁶ elements"):
        launch(torch.empty(BIG_PLANE, device="meta"))
