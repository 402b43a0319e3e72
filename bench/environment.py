"""The machine a benchmark run measured: package versions and the GPU's clocks, power and temperature.

    python -m bench.environment --when before     # prints it, appends one row to environment.jsonl
                                                  # (bench/results, or $BENCH_RESULTS)

bench/device_check.sh records it before its first step and after its last, so that a throttled
card (clocks down, temperature up) shows beside the numbers it gave. Versions are read from the
installed distributions (nothing heavy imported but torch); the GPU's state from `nvidia-smi`
when there is one.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import io
import json
import shutil
import subprocess
import sys

import torch

from bench.common import append_jsonl, machine

PACKAGES = ("torch", "triton", "cupy-cuda12x", "cupy-cuda13x", "onnx", "onnxruntime", "tensorrt", "torch-tensorrt",
            "nvtx", "numpy")
#: nvidia-smi --query-gpu fields: the clocks, power and temperature that move under load
GPU_FIELDS = ("name", "driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
              "power.draw", "power.limit", "temperature.gpu", "utilization.gpu", "memory.used", "memory.total")


def versions() -> dict:
    """Installed versions of PACKAGES (None when absent), torch's CUDA and cuDNN."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return out


def gpu_state() -> list[dict] | str:
    """One dict of GPU_FIELDS per card from nvidia-smi, or why there is none."""
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi on this machine"
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as err:
        return f"nvidia-smi failed: {err}"
    if done.returncode != 0:
        return f"nvidia-smi failed: {done.stderr.strip() or done.returncode}"
    return [dict(zip(GPU_FIELDS, (v.strip() for v in values))) for values in csv.reader(io.StringIO(done.stdout))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--when", default="now", help="a label for the row (before, after)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    row = {"kind": "environment", "when": args.when, **machine(device), "versions": versions(), "gpus": gpu_state()}
    print(json.dumps(row, indent=1))
    append_jsonl("environment", [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
