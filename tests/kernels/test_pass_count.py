"""How many passes over the clip the Triton step makes, counted, against its budget (docs/results.md, "Kernels, compiled").

A *pass* is a Triton launch with a clip-sized tensor argument, or a torch operation outside
the kernels that reads or writes a clip-sized tensor (views and allocations excluded). The
budget for one reverse step on the Triton kernels, with `n` the passes of the operator's AᵀA:

    Tweedie 1,  CG setup n + 1 (AᵀA x̂, the residual),  each CG iteration n + 2 (AᵀA r, dots, update),
    DDIM update 1 — and no torch pass over the clip at all.

Counted on small clips, in the interpreter on the CPU (compiled on a GPU): a launch is a launch.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.operators import from_spec
from engine import triton_steps
from engine.sampler import reverse_process, step_kernels
from engine.schedule import ddim_steps
from kernels import cg
from kernels.common import INTERPRET

DEVICE = "cpu" if INTERPRET else "cuda"
SHAPE = (8, 3, 16, 16)
NUMEL = 8 * 3 * 16 * 16

#: AᵀA's passes for the paper's degradations and their parts (spatial blur: one banded pass per axis).
NORMAL_PASSES = {
    "temporal:uniform:7": 1,
    "temporal:gaussian:1.0": 1,
    "sr:4": 1,
    "inpaint:0.5": 1,
    "blur:gaussian:1.0:5": 2,
    "temporal:uniform:7+sr:4": 1,
    "temporal:uniform:7+inpaint:0.5": 1,
    "temporal:uniform:7+blur:gaussian:1.0:5": 3,
}


@dataclass
class Passes:
    """What ran over the clip: Triton kernels by name, torch operators by name."""

    kernels: list[str] = field(default_factory=list)
    torch_ops: list[str] = field(default_factory=list)
    paused: bool = False            # inside a kernel launch or an uncounted call

    @property
    def total(self) -> int:
        return len(self.kernels) + len(self.torch_ops)

    def uncounted(self, fn):
        """fn, whose passes (the network's) are not counted."""
        def call(*args, **kwargs):
            paused, self.paused = self.paused, True
            try:
                return fn(*args, **kwargs)
            finally:
                self.paused = paused
        return call


def _clip_sized(values) -> bool:
    return any(isinstance(v, torch.Tensor) and v.numel() >= NUMEL for v in values)


class _TorchPasses(TorchDispatchMode):
    """Records torch operators that touch a clip-sized tensor, outside Triton launches."""

    def __init__(self, passes: Passes):
        super().__init__()
        self.passes = passes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        moves_data = not (func.is_view or "empty" in name)
        flat = [*torch.utils._pytree.tree_leaves((args, kwargs)), *torch.utils._pytree.tree_leaves(out)]
        if not self.passes.paused and moves_data and _clip_sized(flat):
            self.passes.torch_ops.append(name)
        return out


@contextmanager
def count_passes():
    """Count the passes over a clip of NUMEL elements made inside the block."""
    passes = Passes()
    launcher = type(cg._cg_dot_kernel)          # InterpretedFunction in the interpreter, JITFunction compiled
    run = launcher.run
    mode = _TorchPasses(passes)

    def counted(self, *args, **kwargs):
        if not passes.paused and _clip_sized([*args, *kwargs.values()]) and not kwargs.get("warmup", False):
            passes.kernels.append(self.__name__)
        return passes.uncounted(run)(self, *args, **kwargs)

    launcher.run = counted
    try:
        with mode:
            yield passes
    finally:
        launcher.run = run


def clip(seed: int, shape=SHAPE, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def triton_op(spec: str):
    return from_spec(spec, SHAPE, seed=0, device=DEVICE, dtype=torch.float32, kernels="triton")


@pytest.mark.parametrize("spec", NORMAL_PASSES)
def test_normal_operator_passes(spec):
    op, x = triton_op(spec), clip(1)
    op.A_adjoint_A(x)                                   # builds its constants once
    with count_passes() as passes:
        op.A_adjoint_A(x)
    assert passes.torch_ops == []
    assert len(passes.kernels) == NORMAL_PASSES[spec], passes.kernels


@pytest.mark.parametrize("gamma", [None, 0.5], ids=["noiseless", "regularised"])
@pytest.mark.parametrize("spec", NORMAL_PASSES)
def test_cg_passes(spec, gamma):
    """Setup n + 1, each iteration n + 2 (three for the one-pass operators), no torch pass."""
    op, x_hat = triton_op(spec), clip(2)
    y = op.A(clip(3))
    aty = op.A_adjoint(y)
    n = NORMAL_PASSES[spec]
    counts = {}
    for iters in (1, 3):
        with count_passes() as passes:
            cg.data_consistency(op, y, x_hat, iters, gamma, aty=aty)
        assert passes.torch_ops == [], f"torch passes over the clip: {passes.torch_ops}"
        counts[iters] = passes.total
    per_iteration = (counts[3] - counts[1]) / 2
    assert per_iteration == n + 2
    assert counts[1] - per_iteration == n + 1


@pytest.mark.parametrize("spec", ["temporal:uniform:7", "temporal:uniform:7+sr:4"])
def test_reverse_step_passes(spec):
    """One more step of Algorithm 1 costs Tweedie + CG (setup, l iterations) + the update: nothing in torch."""
    op, n = triton_op(spec), NORMAL_PASSES[spec]
    y = op.A(clip(9))

    def network(x, t):                                  # learned-σ fp16 output, as the Solver's default
        return torch.cat([x, x], 1).half() * 0.1

    counts = {}
    for nfe in (2, 3):
        noise = clip(10, (nfe + 1, 1, *SHAPE[1:]))
        with count_passes() as passes:
            reverse_process(passes.uncounted(network), y, op, noise, ddim_steps(nfe, 0.5), cg_iters=3, gamma=None,
                            kernels=step_kernels("triton"))
        counts[nfe] = passes
    assert counts[3].torch_ops == counts[2].torch_ops, "a torch pass over the clip in every step"
    assert len(counts[3].kernels) - len(counts[2].kernels) == 1 + (n + 1) + 3 * (n + 2) + 1


def test_tweedie_and_ddim_update_one_pass_each():
    """One pass each, reading ε as the network leaves it: the first 3 of 6 channels, in half precision."""
    x, xbar, noise = clip(4), clip(5), clip(6, (1, *SHAPE[1:]))
    out = clip(7, (SHAPE[0], 6, *SHAPE[2:]), torch.float16)
    s = ddim_steps(10, 0.5)[3]
    eps = triton_steps.take_eps(out, torch.float32)
    with count_passes() as passes:
        triton_steps.tweedie(x, eps, s)
        triton_steps.ddim_update(xbar, noise, eps, s)
    assert passes.torch_ops == []
    assert passes.kernels == ["_tweedie_kernel", "_ddim_update_kernel"]


def test_counter_sees_torch_passes():
    """The counter is not blind: a torch operation over the clip, or a copy, is a pass."""
    x = clip(8)
    with count_passes() as passes:
        x.square().sum()
        x[:, :1].clone()                            # a third of the clip: not a pass
        x.contiguous()                              # already contiguous: no copy, no pass
        x.transpose(2, 3).contiguous()
        x.to(torch.float16)
    assert passes.torch_ops == ["pow", "sum", "clone", "_to_copy"]
    assert passes.kernels == []
