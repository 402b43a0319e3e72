"""Every backend that runs here gives the reference's result within its precision's tolerance.

A UNet with random weights predicts junk ε, and Tweedie's 1/√ᾱ_t turns any rounding
difference into a different clip. So the loop tests use a calibrated ε model: the
oracle ε of a known clip (computed in fp32) plus a small UNet term that runs in the
backend's precision and memory format.
"""

import pytest
import torch

from bench.common import in_new_thread
from engine.backends import torch_eps
from engine.runtime import Solver, SolverConfig
from engine.sampler import sample
from engine.schedule import alphas_cumprod
from engine.testclips import camera_clip
from engine.unet import ADMConfig, ADMUNet

FRAMES, NFE = 8, 3
CLIP = camera_clip(frames=FRAMES, size=32)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Relative L2 error against fp32, per network precision: ε alone, and the restored clip.
EPS_TOLERANCE = {"fp32": 1e-5, "bf16": 3e-2, "fp16": 5e-3}
CLIP_TOLERANCE = {"fp32": 1e-5, "bf16": 2e-3, "fp16": 5e-4}  # measured: 6e-7, 9e-4, 1.1e-4


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    model = ADMUNet(ADMConfig.preset("tiny")).eval()
    with torch.no_grad():   # the zero-initialised output convs would make ε ≡ 0: give them weights
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def record_calls(module, seen: list):
    """Append (dtype, channels_last, cudnn.benchmark) of the input x of each of module's calls to seen."""
    module.register_forward_pre_hook(lambda _, args: seen.append(
        (args[0].dtype, args[0].is_contiguous(memory_format=torch.channels_last), torch.backends.cudnn.benchmark)))


class Calibrated(torch.nn.Module):
    """ε = oracle ε of CLIP (fp32) + 0.5·UNet(x, t) (in the UNet's dtype)."""

    def __init__(self, seed=0):
        super().__init__()
        self.unet = tiny_unet(seed)
        self.ab = alphas_cumprod().float()     # plain attributes: .to(dtype) leaves them fp32
        self.x0 = 2 * CLIP - 1
        self.on_device = {}                    # their copies per device, made by the first (warm-up) call

    def forward(self, x, t):
        if x.device not in self.on_device:
            self.on_device[x.device] = self.ab.to(x.device), self.x0.to(x.device)
        ab, x0 = self.on_device[x.device]
        a = ab[t].view(-1, 1, 1, 1)
        oracle = (x.float() - a.sqrt() * x0) / (1 - a).sqrt()
        return oracle + 0.5 * self.unet(x, t)[:, :3].float()


@pytest.fixture(scope="module")
def problem():
    # 4× SR leaves a null space that only the network fills, so the network shows in the clip.
    cfg = SolverConfig(spec="temporal:uniform:3+sr:4", frames=FRAMES, size=32, nfe=NFE, eta=0.5, cg_iters=5)
    model = Calibrated()
    solver = Solver(model, cfg)
    y = solver.measure(CLIP)
    with torch.no_grad():
        ref = sample(model, y, solver.op, nfe=NFE, eta=cfg.eta, cg_iters=cfg.cg_iters, seed=11)
    return cfg, y, ref


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_eps_backend_matches_the_fp32_network(precision, channels_last):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500, 990])
    net, seen = tiny_unet(), []
    record_calls(net, seen)
    with torch.no_grad():
        ref = tiny_unet()(x, t)
        out = torch_eps(net, precision=precision, channels_last=channels_last)(x, t)
    assert seen == [(DTYPES[precision], channels_last, False)] and out.dtype == DTYPES[precision]
    err = _rel(out.float(), ref)
    assert err < EPS_TOLERANCE[precision] and (precision == "fp32" or err > 0)   # half precision did run


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_cudnn_benchmark_mode_restores_the_flag():
    from engine.backends.torch import cudnn_benchmark_mode

    before = torch.backends.cudnn.benchmark
    with cudnn_benchmark_mode():
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before
    with pytest.raises(RuntimeError), cudnn_benchmark_mode():
        raise RuntimeError("the flag comes back after an error too")
    assert torch.backends.cudnn.benchmark == before


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_backend_matches_reference(problem, precision, channels_last):
    cfg, y, ref = problem
    solver = Solver(Calibrated(), SolverConfig(**{**cfg.to_dict(), "precision": precision,
                                                  "channels_last": channels_last}))
    out = solver.solve(y, seed=11)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = _rel(out, ref)
    assert err < CLIP_TOLERANCE[precision] and (precision == "fp32" or err > 0)


def test_solver_runs_its_network_as_configured(problem):
    """precision and channels_last reach every network call of the Solver's loop; cudnn_benchmark is on
    for the construction's warm-up call only (cuDNN keeps the plans it timed), not flipped on every forward."""
    cfg, y, _ = problem
    model, seen = Calibrated(), []
    record_calls(model.unet, seen)
    before = torch.backends.cudnn.benchmark
    solver = Solver(model, SolverConfig(**{**cfg.to_dict(), "precision": "bf16", "channels_last": True,
                                           "cudnn_benchmark": True}))
    assert seen == [(torch.bfloat16, True, True)] and torch.backends.cudnn.benchmark == before
    solver.solve(y, seed=11)
    assert seen[1:] == [(torch.bfloat16, True, before)] * NFE


def test_network_matters(problem):
    """The comparison above can fail: another UNet's weights give another clip."""
    cfg, y, ref = problem
    assert _rel(Solver(Calibrated(seed=1), cfg).solve(y, seed=11), ref) > 2 * CLIP_TOLERANCE["fp16"]


@pytest.mark.slow
def test_compile_backend_matches_reference(problem):
    cfg, y, ref = problem
    solver = Solver(Calibrated(), SolverConfig(**{**cfg.to_dict(), "backend": "compile"}))
    assert _rel(solver.solve(y, seed=11), ref) < CLIP_TOLERANCE["fp32"]


@pytest.mark.gpu
def test_graph_backend_with_timed_cudnn_algorithms_on_gpu(problem):
    """cudnn_benchmark: the warm-up times the algorithms and the captured graph keeps them; the clip
    matches the fp32 reference within fp16's tolerance, as the eager fp16 Solver's does.

    The tuned Solver is built in a thread of its own: cuDNN keeps its plans per thread, blind to the
    flag, so in this thread it would reuse the plans the eager Solver's heuristics chose."""
    cfg, y, ref = problem
    fp16 = {**cfg.to_dict(), "device": "cuda", "precision": "fp16"}
    eager = Solver(Calibrated().cuda(), SolverConfig(**fp16))
    model, seen = Calibrated().cuda(), []
    record_calls(model.unet, seen)
    tuned = in_new_thread(lambda: Solver(model, SolverConfig(**{**fp16, "backend": "torch+graph",
                                                               "cudnn_benchmark": True})))
    assert tuned._graph is not None and seen and all(benchmark for *_, benchmark in seen)   # warm-up, capture
    a, b = eager.solve(y, seed=11).cpu(), tuned.solve(y, seed=11).cpu()
    assert _rel(a, ref) < CLIP_TOLERANCE["fp16"] and _rel(b, ref) < CLIP_TOLERANCE["fp16"]
    assert torch.equal(tuned.solve(y, seed=11).cpu(), b)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_graph_backend_matches_eager_on_gpu(precision):
    cfg = SolverConfig.from_task("temporal-k7-sr4", frames=8, size=32, nfe=4, device="cuda", precision=precision)
    clip = camera_clip(frames=8, size=32)
    eager = Solver(tiny_unet().cuda(), cfg)
    graph = Solver(tiny_unet().cuda(), SolverConfig(**{**cfg.to_dict(), "backend": "torch+graph"}))
    y = eager.measure(clip)
    a, b = eager.solve(y, seed=3), graph.solve(y, seed=3)
    assert graph._graph is not None and eager._graph is None
    assert _rel(b, a) < 1e-3
    assert torch.equal(graph.solve(y, seed=3), b)
