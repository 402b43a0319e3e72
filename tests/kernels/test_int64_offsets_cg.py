"""The CG passes and the temporal operator's pass index with int64 offsets: a video-sized CG has no
size limit below memory.

`pid * BLOCK + arange` and the grid-stride `start += step` in int32 would wrap between
2³¹ − 2¹⁹ and 2³¹ elements. A real 2³¹-element clip does not fit this machine, so the
checks read what Triton's real compiler makes of the kernels for sm_90 (in a child process:
the interpreter is on in this one): every clip pointer is offset by an i64 tensor and the
grid-stride loops run on i64, also when the clip's element count is specialised as i32; and
the launchers accept meta tensors of more than 2³¹ elements under bench.aot.compile_only.
The same child runs the Triton PCG on meta tensors (no data: any host sync would raise).
"""

from __future__ import annotations


import pytest
from compiled_child import compiled_report


CHILD = r'''
import json, os, re
os.environ.pop("TRITON_INTERPRET", None)
import torch
import triton, triton.language as tl
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from kernels import cg
from bench.aot import compile_only

T = "*fp32"
KERNELS = {
    "_cg_residual_kernel": ({"aty_ptr": T, "q_ptr": T, "x_ptr": T, "r_ptr": T, "bb_ptr": T, "numel": "i32",
                             "c_hi": "fp32", "c_lo": "fp32"}, {"REG": True, "BLOCK": 2048, "ACC": tl.float32}),
    "_cg_dot_kernel": ({"r_ptr": T, "u_ptr": T, "q_ptr": T, "part_ptr": T, "numel": "i32"},
                       {"PRECOND": True, "GMAX": 256, "BLOCK": 2048, "ACC": tl.float32}),
    "_cg_update_kernel": ({"x_in_ptr": T, "x_out_ptr": T, "r_ptr": T, "u_ptr": T, "p_ptr": T, "s_ptr": T,
                           "q_ptr": T, "part_ptr": T, "state_ptr": T, "prev_ptr": T, "bb_ptr": T, "numel": "i32",
                           "G": "i32", "eps2": "fp32", "c1_hi": "fp32", "c1_lo": "fp32"},
                          {"REG": True, "PRECOND": True, "FIRST": False, "LAST": False, "GMAX": 256,
                           "BLOCK": 1024, "ACC": tl.float32}),
}
report = {}
for name, (signature, constexprs) in KERNELS.items():
    fn = getattr(cg, name)
    signature = {**signature, **{k: "constexpr" for k in constexprs}}
    ttir = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                          target=GPUTarget("cuda", 90, 32)).asm["ttir"]
    block = constexprs["BLOCK"]                          # the clip's tiles (the partial sums' are GMAX wide)
    clip_offsets = re.findall(rf"tt\.addptr %\w+, %\w+ : tensor<{block}x!tt\.ptr<f32>>, tensor<{block}x(i\d+)>", ttir)
    loops = re.findall(r"scf\.for .*: (i\d+) \{", ttir)
    report[name] = {"clip_offsets": sorted(set(clip_offsets)), "loops": sorted(set(loops))}
n = 2**31 + 4096                                         # more than 2³¹ elements, on meta tensors
r, q, u = (torch.empty(n, device="meta") for _ in range(3))
part = torch.empty((4, cg.GMAX), device="meta")
with compile_only(90) as compiled:
    cg.cg_dot(r, q, part, u=u)
report["meta_launch"] = [c.name for c in compiled]
# the temporal operator's pass: the frame offsets n·P ([NP, 1]) in int64, with P (the elements of one frame)
# in i32; the offsets within a frame ([NP, BQ], < P) may stay i32
from kernels import temporal
sig = {name: "*fp32" for name in ("x_ptr", "k_ptr", "a_ptr", "g_ptr", "mask_ptr", "out_ptr")}
sig.update({name: "i32" for name in ("N", "P", "Q", "HW", "hb", "wb", "W", "WIDTH", "CENTER")})
consts = {"MODE": 2, "CIRCULAR": True, "MATRIX": False, "POOL": 1, "MASKED": False, "NP": 16, "BQ": 256, "SP": 1,
          "ACC": tl.float32}
ttir = triton.compile(ASTSource(fn=temporal._frame_mix_kernel, signature={**sig, **{k: "constexpr" for k in consts}},
                                constexprs=consts), target=GPUTarget("cuda", 90, 32)).asm["ttir"]
report["_frame_mix_kernel"] = {"clip_offsets": sorted(set(re.findall(
    r"tt\.addptr %\w+, %\w+ : tensor<16x1x!tt\.ptr<f32>>, tensor<16x1x(i\d+)>", ttir)))}
x = torch.empty((256, 3, 2048, 1500), device="meta")                # 2.36·10⁹ elements
with compile_only(90) as compiled:
    temporal.temporal_conv(x, torch.full((7,), 1 / 7, device="meta"), "circular")
report["meta_launch"] += [c.name for c in compiled]
# the Triton PCG's whole launch sequence on meta tensors (no data): a host sync would raise
from engine.cg import preconditioner
from engine.operators import from_spec
launched = []
for spec in ("temporal:uniform:7+sr:4", "temporal:uniform:7:replicate+inpaint:0.5"):
    op = from_spec(spec, (16, 3, 32, 32), device="meta", dtype=torch.float32, kernels="triton")
    x, y = torch.empty(op.in_shape, device="meta"), torch.empty(op.out_shape, device="meta")
    with compile_only(90) as compiled:
        for gamma in (None, 0.5):
            cg.data_consistency(op, y, x, 3, gamma, precond=preconditioner(op, gamma, device="meta"))
    launched += [c.name for c in compiled]
report["pcg_meta"] = sorted(set(launched))
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def report():
    return compiled_report(CHILD)


@pytest.mark.parametrize("kernel", ["_cg_residual_kernel", "_cg_dot_kernel", "_cg_update_kernel",
                                    "_frame_mix_kernel"])
def test_cg_passes_offset_the_clip_in_int64(report, kernel):
    assert report[kernel]["clip_offsets"] == ["i64"], report[kernel]
    if kernel in ("_cg_residual_kernel", "_cg_dot_kernel"):            # the reducing passes' grid stride
        assert report[kernel]["loops"] == ["i64"], report[kernel]


def test_cg_launchers_take_clips_of_more_than_2_31_elements(report):
    """The CG dot pass and the temporal operator's pass (A, AᵀA, P along frames) accept them."""
    assert report["meta_launch"] == ["_cg_dot_kernel", "_frame_mix_kernel"]


def test_triton_pcg_runs_on_meta_tensors(report):
    """The Triton PCG (P's dense frame pass included) launches on meta tensors: no host synchronisation."""
    assert report["pcg_meta"] == ["_cg_dot_kernel", "_cg_residual_kernel", "_cg_update_kernel", "_frame_mix_kernel",
                                  "_mask_kernel", "_pool_kernel"]
