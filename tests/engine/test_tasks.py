"""The paper's six task presets: their settings, and that each builds an exact operator."""

import dataclasses

import pytest
import torch

from engine.errors import InputError
from engine.operators import from_spec
from engine.tasks import TASKS, Task, get_task

PAPER = {  # name: (spec, K, η, l)
    "temporal-k7": ("temporal:uniform:7", 20, 0.15, 5),
    "temporal-k13": ("temporal:uniform:13", 20, 0.15, 5),
    "temporal-gaussian1": ("temporal:gaussian:1.0", 20, 0.15, 5),
    "temporal-k7-sr4": ("temporal:uniform:7+sr:4", 100, 0.8, 5),
    "temporal-k7-deblur": ("temporal:uniform:7+blur:gaussian:2.0:13", 100, 0.8, 5),
    "temporal-k7-inpaint50": ("temporal:uniform:7+inpaint:0.5", 100, 0.8, 5),
}


def test_the_six_tasks_have_the_papers_settings():
    assert set(TASKS) == set(PAPER)
    for name, (spec, nfe, eta, cg_iters) in PAPER.items():
        task = get_task(name)
        assert (task.name, task.spec, task.nfe, task.eta, task.cg_iters) == (name, spec, nfe, eta, cg_iters)
        assert task.description


def test_tasks_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASKS["temporal-k7"].nfe = 50
    assert isinstance(TASKS["temporal-k7"], Task)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_each_task_builds_an_exact_operator(name):
    shape = (16, 3, 16, 16)  # 16 frames as the paper; a small frame keeps the test fast
    op = from_spec(get_task(name).spec, shape)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = torch.rand(op.out_shape, generator=g, dtype=torch.float64)
    Ax = op.A(x)
    gap = abs(torch.sum(Ax * y) - torch.sum(x * op.A_adjoint(y))) / (Ax.norm() * y.norm())
    assert gap < 1e-10


def test_unknown_task_lists_the_names():
    with pytest.raises(InputError) as err:
        get_task("temporal-k9")
    for name in PAPER:
        assert name in str(err.value)
