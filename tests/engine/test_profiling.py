"""NVTX ranges inside the sampler (engine.profiling): one per stage of every step, and nothing when off."""
import sys
import types
from contextlib import contextmanager

import pytest
import torch

from engine.priors import GaussianPrior
from engine.runtime import Solver, SolverConfig

STAGES = ["UNet", "Tweedie", "CG", "update"]


@pytest.fixture
def ranges(monkeypatch):
    """A stand-in `nvtx` package that records the ranges opened."""
    opened = []

    @contextmanager
    def annotate(name):
        opened.append(name)
        yield

    monkeypatch.setitem(sys.modules, "nvtx", types.SimpleNamespace(annotate=annotate))
    return opened


@pytest.mark.parametrize("nvtx", [True, False])
def test_one_range_per_stage_of_every_step(ranges, nvtx):
    solver = Solver(GaussianPrior(), SolverConfig.from_task("temporal-k7", frames=8, size=16, nfe=3, cg_iters=2,
                                                            kernels="torch", nvtx=nvtx))
    kernels = solver.kernels
    solver.solve(torch.rand(solver.op.out_shape), seed=0)
    assert ranges == (STAGES * 3 if nvtx else [])
    assert solver.kernels is kernels                       # the Solver's own step arithmetic, not a wrapped copy
