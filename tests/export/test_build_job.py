"""export.build.BuildJob: the command line parses into one frozen job, and a job built in Python is checked as the
command line checks its flags (one-line InputError)."""

import dataclasses
from pathlib import Path

import pytest

from engine.errors import InputError
from export.build import BuildJob, parse_args


def test_the_command_line_is_its_job():
    job = parse_args(["--batch", "8", "--checkpoint", "m.pt", "--preset", "tiny", "--precision", "bf16",
                      "--out", "o", "--onnx-only", "--opset", "17", "--onnx-dtype", "fp16",
                      "--parity-batches", "N,2,2", "--device", "cpu", "--seed", "3", "-v"])
    assert job == BuildJob(checkpoint=Path("m.pt"), batch=8, preset="tiny", precision="bf16", out=Path("o"),
                           onnx_only=True, opset=17, onnx_dtype="fp16", parity_batches=(2, 8), device="cpu",
                           seed=3, verbose=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.batch = 4


def test_the_flags_defaults_are_the_jobs():
    assert parse_args(["--random-weights"]) == BuildJob(random_weights=True)
    assert BuildJob(random_weights=True, batch=4).parity_batches == (1, 3, 4)   # "1,3,N"
    assert BuildJob(random_weights=True, batch=1).parity_batches == (1, 3)


@pytest.mark.parametrize("fields, message", [
    ({}, "choose the weights"),
    ({"random_weights": True, "checkpoint": Path("m.pt")}, "choose the weights"),
    ({"random_weights": True, "batch": 0}, "--batch must be ≥ 1, got 0"),
    ({"random_weights": True, "precision": "fp32"}, "--precision takes one of fp16, bf16, fp8, got 'fp32'"),
    ({"random_weights": True, "opset": 18}, "--opset takes one of auto, 21, 17, got 18"),
    ({"random_weights": True, "preset": "adm"}, "--preset takes one of "),
    ({"random_weights": True, "parity_batches": (0, 2)}, "--parity-batches must list batch sizes ≥ 1"),
])
def test_a_bad_job_is_refused_in_one_line(fields, message):
    with pytest.raises(InputError, match=message) as err:
        BuildJob(**fields)
    assert "\n" not in str(err.value)
