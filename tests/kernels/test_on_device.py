"""Every Triton launch runs under kernels.common.on_device(t) for a tensor t it launches on.

Triton launches on the current CUDA device, not on the tensor's: data on cuda:1 in a process whose
current device is cuda:0 would be read from the wrong device. Each launcher therefore enters
`on_device` around its launches. A machine with one device (or none) cannot show the wrong
device, so the test checks the structure instead: `on_device` is replaced in every kernels module
by a recorder, Triton's launch by one that runs nothing, and every public launcher is called
(through the engine's entry points where it has them); each launch must happen inside the
recorder, entered with one of the launch's own tensors, and every kernel must be launched.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import kernels
from engine import triton_steps
from engine.cg import preconditioner
from engine.operators import from_spec, sr
from engine.operators import temporal as torch_temporal
from engine.schedule import ddim_steps
from kernels import blur, cg, common, compose, groupnorm, mask, pool, temporal
from kernels.common import INTERPRET

DEVICE = "cpu" if INTERPRET else "cuda"
SHAPE = (8, 3, 32, 32)

pytestmark = pytest.mark.usefixtures("one_thread")


def kernel_modules():
    return [importlib.import_module(f"kernels.{info.name}") for info in pkgutil.iter_modules(kernels.__path__)]


def jit_kernels() -> set[str]:
    """Every `@triton.jit` kernel (`_name_kernel`) defined in kernels/."""
    names = set()
    for path in Path(kernels.__file__).parent.glob("*.py"):
        names |= set(re.findall(r"@triton\.jit\s*\ndef (_\w+_kernel)\(", path.read_text()))
    return names


@pytest.fixture
def launches(monkeypatch):
    """Each launch as (kernel, the tensor its launcher entered on_device with or None, the launch's tensors);
    no kernel runs (the launchers' outputs are left uninitialised)."""
    entered, records = [], []

    @contextmanager
    def recording(t):
        entered.append(t)
        try:
            yield
        finally:
            entered.pop()

    for module in kernel_modules():
        if hasattr(module, "on_device"):
            monkeypatch.setattr(module, "on_device", recording)

    def launch(self, *args, grid, warmup, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        records.append((self.fn.__name__, entered[-1] if entered else None, tensors))

    monkeypatch.setattr(type(temporal._frame_mix_kernel), "run", launch)
    return records


def rand(shape, dtype=torch.float32):
    return torch.rand(shape, dtype=dtype, device=DEVICE)


def call_every_launcher():
    """Every public launcher of kernels/, at least once per kernel, on small tensors."""
    x = rand(SHAPE)
    k = torch.full((3,), 1 / 3, device=DEVICE)
    a = torch.tensor([1 / 9, 2 / 9, 3 / 9, 2 / 9, 1 / 9], device=DEVICE)
    temporal.temporal_conv(x, k, "circular")
    temporal.temporal_conv_adjoint(x, k, "zero")
    temporal.temporal_conv_normal(x, k, a, "circular")
    temporal.frame_matmul(rand((8, 8)), x)
    blur.spatial_blur(x, torch.full((5,), 0.2, device=DEVICE), "reflect")
    blur.spatial_blur_adjoint(x, torch.full((3,), 1 / 3, device=DEVICE), "circular")
    blur.spatial_blur_normal(x, torch.full((3,), 1 / 3, device=DEVICE), "zero")
    pool.avg_pool_adjoint(pool.avg_pool(x, 4), 4)
    pool.avg_pool_normal(x, 4)
    keep = (rand((1, 1, 32, 32)) > 0.5).float()
    mask.apply_mask(x, keep)
    compose.temporal_pool_normal(x, k, a, "circular", 2)                # one pass
    compose.temporal_pool_normal(x, k, a, "circular", 32)               # two passes (a window too large)
    compose.temporal_mask_normal(x, k, a, "circular", keep)
    for spec, gamma in (("temporal:uniform:3+sr:2", None), ("temporal:uniform:3:replicate+inpaint:0.5", 0.5)):
        op = from_spec(spec, SHAPE, device=DEVICE, dtype=torch.float32, kernels="triton")
        y = op.A(x)
        cg.data_consistency(op, y, x, 2, gamma, precond=preconditioner(op, gamma, device=DEVICE))
    step = ddim_steps(2, 0.5)[0]
    eps = rand((8, 6, 32, 32))
    x0 = triton_steps.tweedie(x, triton_steps.take_eps(eps, x.dtype), step)
    triton_steps.ddim_update(x0, rand((1, 3, 32, 32)), triton_steps.take_eps(eps, x.dtype), step)
    h = rand((2, 64, 4, 4)).contiguous(memory_format=torch.channels_last)
    groupnorm.group_norm(h, torch.ones(64, device=DEVICE), torch.zeros(64, device=DEVICE), 32, 1e-5, silu=True)


def test_every_launch_runs_on_its_tensors_device(launches):
    call_every_launcher()
    assert {name for name, _, _ in launches} == jit_kernels()
    for name, entered, tensors in launches:
        assert entered is not None, f"{name} was launched outside kernels.common.on_device"
        assert any(entered is t for t in tensors), f"{name} was launched on_device of a tensor it does not take"
        assert all(t.device == entered.device for t in tensors), name


def test_a_launch_outside_on_device_is_caught(launches, monkeypatch):
    """The check above can fail: a launcher that skips on_device (pool's, made to) is seen."""
    monkeypatch.setattr(pool, "on_device", lambda t: nullcontext())
    pool.avg_pool(rand(SHAPE), 2)
    assert [(name, entered) for name, entered, _ in launches] == [("_pool_kernel", None)]


def test_on_device_makes_a_cuda_tensors_device_current(monkeypatch):
    """For a CUDA tensor on_device is torch.cuda.device(t.device); for CPU and meta tensors it does nothing."""
    entered = []

    class Device:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Device)
    with common.on_device(SimpleNamespace(device=torch.device("cuda", 1))):
        pass
    with common.on_device(torch.zeros(1)), common.on_device(torch.empty(1, device="meta")):
        pass
    assert entered == [torch.device("cuda", 1)]


@pytest.mark.gpu
def test_launchers_on_a_device_that_is_not_current():
    """Data on cuda:1 while cuda:0 is current: the results are those of the torch references."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    x = torch.rand(SHAPE, device="cuda:1", dtype=torch.float64)
    k = torch.full((3,), 1 / 3, device="cuda:1", dtype=torch.float64)
    with torch.cuda.device(0):
        pooled, blurred = pool.avg_pool(x, 4), temporal.temporal_conv(x, k, "circular")
    torch.testing.assert_close(pooled, sr.avg_pool(x, 4))
    torch.testing.assert_close(blurred, torch_temporal.temporal_conv(x, k, "circular"))
