"""`compiled_report(code)`: run a Python snippet that compiles Triton kernels for a GPU target in a child
process (compiled, not interpreted: TRITON_INTERPRET is dropped) and return the JSON it prints last.

Shared by the tests that read offsets and types in the compiled IR (tests/kernels/: test_int64_offsets_cg,
test_int64_offsets_per_frame, test_groupnorm); skips when Triton's CUDA compiler is not available here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def compiled_report(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    if done.returncode != 0 and "ptxas" in done.stderr and "not found" in done.stderr:
        pytest.skip("Triton's compiler for CUDA is not available here")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
