"""Every Triton kernel compiles for sm_90 (H100/H200) without spilling, on this machine without a GPU.

The interpreter (the other kernel tests) checks what the kernels compute; this checks that
Triton's real compiler accepts them for Hopper and what they cost in registers, and, since
the reverse loops run on meta tensors there, that the Triton path has no host sync. It runs
bench/compile_check.py in a child process, since the interpreter is on in this one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


#: Kernels that stream whole clips: every variant must use vector loads.
STREAMING = {"_tweedie_kernel", "_ddim_update_kernel", "_cg_residual_kernel", "_cg_dot_kernel", "_cg_update_kernel",
             "_mask_kernel", "_frame_mix_kernel"}


def jit_kernels() -> set[str]:
    """Names of every `@triton.jit` kernel (`_name_kernel`) defined in kernels/."""
    names = set()
    for path in (ROOT / "kernels").glob("*.py"):
        names |= set(re.findall(r"@triton\.jit\s*\ndef (_\w+_kernel)\(", path.read_text()))
    return names


def test_every_kernel_compiles_for_hopper_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "compile_check.py"), "--frames", "16", "--size", "64",
                          "--dtypes", "fp32,bf16", "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert {r["kernel"] for r in rows} == jit_kernels()
    assert {r["dtype"] for r in rows} == {"fp32", "bf16"}
    for r in rows:
        assert r["arch"] == 90 and 0 < r["registers"] <= 255 and r["spill_stores"] == r["spill_loads"] == 0, r
        assert 0 < r["occupancy"] <= 1 and r["ptx_lines"] > 0, r
        if r["kernel"] in STREAMING:                                    # 8- or 16-byte loads per thread
            assert r["vector_loads"] > 0, r
    for kernel in ("_gn_stats_kernel", "_gn_apply_kernel"):             # vectors at the large levels (the
        assert any(r["vector_loads"] for r in rows if r["kernel"] == kernel), kernel   # smallest ones need none)


def test_jit_kernels_are_found():
    assert {"_frame_mix_kernel", "_cg_update_kernel", "_band_pass_kernel", "_ddim_update_kernel"} <= jit_kernels()


def test_compile_only_refuses_the_interpreter():
    from bench.aot import compile_only
    from kernels.common import INTERPRET

    if not INTERPRET:
        pytest.skip("the interpreter is off in this process")
    with pytest.raises(InputError, match="TRITON_INTERPRET"):
        with compile_only(90):
            pass


def test_launch_nothing_runs_the_launchers_but_no_kernel():
    from kernels import common, groupnorm
    from bench.aot import launch_nothing

    kind, before = type(groupnorm._gn_stats_kernel), common.HOST_TENSORS
    launch = kind.run
    x = torch.full((1, 32, 2, 2), 7.0)
    with launch_nothing():
        y = groupnorm.group_norm(x, torch.ones(32), torch.zeros(32), 32, 1e-5, out=torch.full_like(x, -1.0))
    assert torch.equal(y, torch.full_like(x, -1.0))                     # allocated and checked, never written
    assert kind.run is launch and common.HOST_TENSORS == before
    with pytest.raises(InputError, match="do not split"), launch_nothing():
        groupnorm.group_norm(x, torch.ones(32), torch.zeros(32), 5, 1e-5)
    assert kind.run is launch and common.HOST_TENSORS == before
