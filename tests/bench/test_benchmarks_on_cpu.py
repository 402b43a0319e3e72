"""The benchmarks' own code on the CPU: what bench/kernel_speed.py times pairs equal work, and
bench/fps.py runs end to end on a CPU-only machine (their numbers need a GPU; these do not)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import torch

from bench import fps
from bench import kernel_speed as kbench
from bench import profile_unet
from bench.common import append_jsonl, in_new_thread
from kernels.common import INTERPRET

pytestmark = pytest.mark.usefixtures("one_thread")
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="Triton kernels on CPU tensors need TRITON_INTERPRET=1")

SHAPE = (13, 3, 8, 8)          # 13 frames for k = 13; 8 pixels for 4× pooling and 13-tap blur
NOT_THE_SAME_RESULT = ("CG dot", "CG update", "CG vector work")   # different state (see kernel_rows)


@needs_interpreter
def test_every_kernel_row_runs_and_pairs_with_the_same_torch_result():
    rows = kbench.kernel_rows(SHAPE, torch.float32, dev="cpu")
    assert len({name for name, *_ in rows}) == len(rows)
    for name, fast, slow, nbytes in rows:
        got = fast()
        assert nbytes > 0, name
        if slow is None or name.startswith(NOT_THE_SAME_RESULT):
            continue
        want = slow()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


@needs_interpreter
def test_norm_rows_pair_the_fused_and_upstream_group_norms():
    torch.manual_seed(0)                                            # norm_rows draws its inputs
    rows = kbench.norm_rows(2, 4, dev="cpu")
    assert len(rows) == 2
    for name, fast, slow, nbytes in rows:
        got, want = fast(), slow()
        assert nbytes == 2 * got.numel() * 2 and got.is_contiguous(memory_format=torch.channels_last), name
        # upstream rounds to fp16 after the norm and after the scale-shift, the fused kernel once at the end:
        # up to an fp16 ulp of the largest intermediate apart (measured on 560 seeds: 1.6% of them beyond
        # 2e-3 absolute, all at one ulp of values near 10), so the bound is relative to the largest output
        scale = want.float().abs().max().item()
        torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=2e-3 * scale, msg=name)


@needs_interpreter
@pytest.mark.parametrize("task", ["temporal-k7-sr4", "temporal-k7-deblur"])
def test_task_rows_run(monkeypatch, task):
    timed = []
    monkeypatch.setattr(kbench, "bench", lambda fn, rep_ms=50, dev="cuda": (timed.append(fn()), 2.0)[1])
    monkeypatch.setattr(kbench, "graphed", lambda fn, dev="cuda": fn)          # CUDA graphs need CUDA
    rows = kbench.task_rows(task, SHAPE, torch.float32, dev="cpu")
    assert [what for what, *_ in rows][0].startswith("CG_5") and len(rows) == 5
    assert all(isinstance(t, torch.Tensor) and torch.isfinite(t).all() for t in timed)
    for what, ms, torch_ms in rows:
        assert ms == (0.0 if "iteration" in what else 2.0) and torch_ms in (0.0, 2.0), what


def test_task_rows_run_the_cg_as_the_solver_runs_it(monkeypatch):
    """The CG rows apply the Solver's preconditioner (engine.cg.preconditioner with the task's γ and the Solver's
    δ) at every iteration: the CG_l row's result equals preconditioned CG and differs from plain CG."""
    from engine.cg import data_consistency, preconditioner
    from engine.operators import from_spec
    from engine.runtime import SolverConfig
    from engine.tasks import TASKS

    results = []
    monkeypatch.setattr(kbench, "bench", lambda fn, rep_ms=50, dev="cuda": (results.append(fn()), 1.0)[1])
    monkeypatch.setattr(kbench, "step_kernels", lambda kernels: kbench.StepKernels())   # torch ops both sides
    shape = (16, 3, 8, 8)                                # plain CG_5 does not converge at 16 frames
    kbench.task_rows("temporal-k7", shape, torch.float64, dev="cpu")
    cg_l = results[-4]                                   # the torch CG_l of the "CG_l, eager launches" row
    gen = torch.Generator(device="cpu").manual_seed(1)   # the inputs task_rows draws, in its order
    x = torch.rand(shape, generator=gen).to(torch.float64) * 2 - 1
    torch.randn((shape[0], 6, *shape[2:]), generator=gen)
    torch.randn((1, *shape[1:]), generator=gen)
    op = from_spec(TASKS["temporal-k7"].spec, shape, dtype=torch.float64, kernels="torch")
    y = op.A(torch.rand(shape, generator=gen).to(torch.float64))
    cfg = SolverConfig.from_task("temporal-k7", frames=16, size=8)
    P = preconditioner(op, cfg.gamma, cfg.cg_precond, dtype=torch.float64)
    assert P is not None
    l = TASKS["temporal-k7"].cg_iters
    torch.testing.assert_close(cg_l, data_consistency(op, y, x, l, cfg.gamma, precond=P), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(cg_l, data_consistency(op, y, x, l, cfg.gamma), rtol=1e-6, atol=1e-8)


def test_unet_rows_run_as_the_engine_runs_the_network():
    """bench/kernel_speed.py's UNet forward, plain and with cudnn.benchmark, on the CPU at a toy size: the
    benchmark's call into the engine (engine.backends.torch_eps) must match the engine's signature."""
    assert kbench.unet_ms(2, 32, "torch", preset="tiny", dev="cpu") > 0
    assert kbench.unet_ms(2, 32, "torch", True, preset="tiny", dev="cpu") > 0
    assert torch.backends.cudnn.benchmark is False                      # the flag is restored after


def test_kernel_speed_main_runs_every_kind_of_row_on_the_cpu(monkeypatch, capsys, tmp_path):
    """bench/kernel_speed.py end to end on the CPU at a toy size (kernel and GroupNorm rows, checked above,
    cut to their first two): copy, kernel, UNet and task rows, none an error row, each saved as measured."""
    rows_of = kbench.kernel_rows
    monkeypatch.setattr(kbench, "kernel_rows", lambda *a: rows_of(*a)[:2])
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    code = kbench.main(["--device", "cpu", "--frames", "7", "--size", "8", "--preset", "tiny", "--norms", "torch",
                        "--tasks", "temporal-k7-sr4", "--json", "--save"])
    rows = json_rows(capsys)
    assert [r for r in rows if r["kind"] == "error"] == [] and code == 0
    kinds = [r["kind"] for r in rows]
    assert kinds == ["copy", "kernel", "kernel", "unet", "unet", "task", "task", "task", "task", "task"], kinds
    assert all(r["device"] == "cpu" for r in rows)
    saved = [json.loads(line) for line in (tmp_path / "kernels.jsonl").read_text().splitlines()]
    assert [r["name"] for r in saved] == [r["name"] for r in rows]


def test_speedup_guards_non_positive_times():
    assert kbench.speedup(4.0, 2.0) == 2.0
    assert kbench.speedup(None, 2.0) is None and kbench.speedup(4.0, 0.0) is None and kbench.speedup(-1.0, 2.0) is None


def test_fps_runs_on_the_cpu(capsys):
    code = fps.main(["--preset", "tiny", "--frames", "7", "--nfe", "2", "--cg-iters", "1", "--repeats", "1",
                     "--backends", "torch", "--json", "--cold-start", "--stage-repeats", "1"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    *rows, cold = rows
    assert cold["kind"] == "cold_start" and cold["backend"] == "torch" and cold["cold_start_s"] > 0
    assert [r["backend"] for r in rows] == ["reference", "torch"] and rows[0]["speedup_vs_reference"] == 1.0
    reference_s = rows[0]["seconds_per_clip"]
    for r in rows:
        assert {"backend", "device", "frames", "size", "nfe", "cg_iters", "seconds_per_clip", "fps",
                "speedup_vs_reference", "peak_mem_bytes", "stages"} <= set(r)
        assert r["seconds_per_clip"] > 0 and r["frames"] == 7 and r["nfe"] == 2
        # frames per second of a clip, and how many times faster than the reference each backend is
        assert r["fps"] == pytest.approx(7 / r["seconds_per_clip"])
        assert r["speedup_vs_reference"] == pytest.approx(reference_s / r["seconds_per_clip"])


def test_fps_times_the_learned_prior(capsys):
    """--prior ffdnet: the default prior in the network's place, warm start, no reference row; its FLOPs
    are FFDNet's at the frame size."""
    from engine.ffdnet import FFDNet

    code = fps.main(["--prior", "ffdnet", "--start", "400", "--frames", "8", "--size", "32", "--nfe", "2",
                     "--cg-iters", "1", "--repeats", "1", "--backends", "torch", "--json", "--stage-repeats", "1"])
    assert code == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert row["backend"] == "torch" and row["prior"] == "ffdnet" and row["preset"] is None and row["start"] == 400
    assert row["size"] == [32, 32] and row["tiles"] == 1 and row["speedup_vs_reference"] is None
    assert row["unet_flops_per_forward"] == 8 * FFDNet().flops(32, 32) and row["unet_tflops"] > 0


def test_fps_stages_are_timed_in_the_solvers_own_loop(monkeypatch):
    """The stage split runs the loop the timed clips run: the Solver's preconditioner and warm start."""
    import engine.runtime as runtime

    args = fps.parse_args(["--preset", "tiny", "--frames", "7", "--nfe", "2", "--cg-iters", "1", "--start", "500"])
    args.engine_labels = {}
    solver, _ = fps.build_solver(args, "torch", 7)
    seen, loop = [], runtime.reverse_process

    def spy(*a, **kw):
        seen.append(kw)
        return loop(*a, **kw)

    monkeypatch.setattr(runtime, "reverse_process", spy)
    y = solver.measure(torch.rand(solver.op.in_shape, generator=torch.Generator().manual_seed(0)))
    shares = fps.stage_shares(solver, y, repeats=1)
    assert len(seen) == 1 and seen[0]["precond"] is not None and seen[0]["warm"] is not None
    assert seen[0]["precond"] is solver._precond and seen[0]["stage"] is not None
    assert shares["unet_s"] > 0 and sum(shares.values()) <= 1


def test_fps_reports_the_peak_without_the_callers_model_and_extrapolates_the_nfe(capsys, monkeypatch):
    """A row's peak with the benchmark's fp32 model alive during the build, the clips' own peak once it is gone,
    the model's size; --extrapolate-nfe scales the timed clip linearly to K steps, says so, and the targets
    are checked on the K-step figures."""
    from engine.unet import ADMConfig, ADMUNet

    monkeypatch.setattr(fps, "time_fn", lambda fn, device, repeats, warmup: (fn(), [0.5])[1])
    assert fps.main([*SWEEP, "--frames", "7", "--backends", "torch", "--no-reference", "--json",
                     "--extrapolate-nfe", "20", "--target-fps", "1"]) == 0
    (row,) = json_rows(capsys)
    weights = sum(p.numel() * 4 for p in ADMUNet(ADMConfig.preset("tiny")).parameters())
    assert row["caller_model_bytes"] >= weights > 0
    assert 0 < row["peak_mem_solve_bytes"] <= row["peak_mem_bytes"]
    e = row["extrapolated"]
    assert e["to_nfe"] == 20 and e["from_nfe"] == 2 and "linear" in e["method"]
    assert e["seconds_per_clip"] == pytest.approx(5.0) and e["fps"] == pytest.approx(7 / 5.0)
    assert row["targets"]["fps"] == {"target": 1.0, "measured": pytest.approx(1.4), "met": True}
    fps.print_table([dict(row, seconds_per_frame_ratio=1.0, flat=True, growth_bytes_per_frame=None)])
    assert "extrapolated to 20 NFE from 2: 5.000 s/clip" in capsys.readouterr().out


def test_fps_times_several_engines_side_by_side(tmp_path):
    """--engine given twice: one tensorrt row per engine, labelled by its file, with the settings it was built
    with (read from its record) so that two builds can be compared."""
    a, b = tmp_path / "unet-a.engine", tmp_path / "unet-b.engine"
    for path, outputs in ((a, False), (b, True)):
        path.write_bytes(b"engine")
        (tmp_path / (path.name + ".json")).write_text(json.dumps(
            {"fields": {"settings": {"fp32_islands": True, "norm_outputs_fp32": outputs}}}))
    args = fps.parse_args(["--backends", "torch,tensorrt", "--engine", str(a), "--engine", str(b)])
    labels = fps.engine_labels(args.backends.split(","), args.engine)
    assert fps.expand_backends(["torch", "tensorrt"], labels) == ["torch", "tensorrt[unet-a]", "tensorrt[unet-b]"]
    assert fps.engine_settings(labels["tensorrt[unet-b]"])["norm_outputs_fp32"] is True
    assert fps.engine_labels(["tensorrt"], [a]) == {"tensorrt": a} and fps.engine_settings(tmp_path / "x") is None


def test_ffdnet_flops_count_every_convolution_weight_per_half_resolution_pixel():
    from engine.ffdnet import FFDNet

    net = FFDNet()
    weights = sum(p.numel() for name, p in net.named_parameters() if name.endswith("weight"))
    assert weights == 852_108 - (11 * 96 + 12)                                   # the parameters less the biases
    assert net.flops(64, 48) == 2 * weights * 32 * 24 and net.flops(63, 47) == net.flops(64, 48)


def test_fps_procs_rows_split_each_process_time(monkeypatch, capsys, tmp_path):
    """--procs 1,2: one row per process count, each with every process's frames and its time split;
    the communication of two processes is measured, that of one is none."""
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code = fps.main(["--preset", "tiny", "--frames", "12", "--size", "16", "--nfe", "1", "--cg-iters", "2",
                     "--repeats", "1", "--procs", "1,2", "--save"])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "fps.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["procs"]) for r in rows] == [("procs", 1), ("procs", 2)]
    assert [r["frames"] for r in rows[1]["ranks"]] == [[0, 6], [6, 12]]
    assert rows[0]["ranks"][0]["communication_s"] == 0 and all(r["communication_s"] > 0 for r in rows[1]["ranks"])
    assert rows[1]["speedup_vs_first"] == pytest.approx(rows[0]["seconds_per_clip"] / rows[1]["seconds_per_clip"])
    assert "P=2" in capsys.readouterr().out


def test_fps_stages_split_the_clips_they_were_measured_in(monkeypatch, capsys, tmp_path):
    """The torch row once showed a UNet stage (0.199 s) longer than its whole clip (0.183 s): the stages were
    timed alone after the clips, on a shared CPU whose load had changed. Here the network slows down call
    after call (a growing load); the stages, measured inside the loop, still split the clip's own time.
    Without --save nothing is written (not even to $BENCH_RESULTS); --no-reference measures only the backends."""
    build = fps.build_solver

    def slowing(args, backend, frames):
        solver, seconds = build(args, backend, frames)
        net, calls = solver.eps_model, []

        def eps(x, t):
            calls.append(1)
            time.sleep(0.002 * len(calls))
            return net(x, t)

        solver.eps_model = eps
        return solver, seconds

    monkeypatch.setattr(fps, "build_solver", slowing)
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    assert fps.main(["--preset", "tiny", "--frames", "7", "--nfe", "2", "--cg-iters", "1", "--repeats", "2",
                     "--backends", "torch", "--json", "--no-reference"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert row["backend"] == "torch" and row["speedup_vs_reference"] is None
    assert sum(row["stages"].values()) <= row["seconds_per_clip"]
    assert row["stages"]["unet_s"] == pytest.approx(row["stage_shares"]["unet_s"] * row["seconds_per_clip"])
    assert row["stage_shares"]["unet_s"] > 0.5 and list(tmp_path.iterdir()) == []


def test_in_new_thread_returns_or_raises_from_another_thread():
    import threading

    assert in_new_thread(lambda: threading.current_thread() is not threading.main_thread())
    with pytest.raises(ValueError, match="planted"):
        in_new_thread(lambda: int("planted"))


def test_kernel_rows_log_their_numbers():
    row = dict(kind="kernel", ms=0.0125, gbps=2012.4, copy_fraction=0.81, torch_ms=0.05, speedup=4.0)
    assert kbench.summary(row) == "0.0125 ms, 2012 GB/s (81% of copy), torch 0.05 ms, 4.00×"
    step = dict(kind="task", ms=0.5, torch_ms=3.0, speedup=6.0, unet_fraction=0.004)
    assert kbench.summary(step) == "0.5 ms, torch 3 ms, 6.00×, 0.40% of the UNet forward"
    assert kbench.summary(dict(kind="error", error="RuntimeError: boom")) == "RuntimeError: boom"


def test_results_go_where_bench_results_points(monkeypatch, tmp_path):
    """bench/device_check.sh points BENCH_RESULTS at $OUT: each row lands there as it is measured."""
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "out"))
    path = append_jsonl("fps", [{"backend": "torch"}])
    append_jsonl("fps", [{"backend": "torch+graph"}])
    assert path == tmp_path / "out" / "fps.jsonl"
    assert [json.loads(line)["backend"] for line in path.read_text().splitlines()] == ["torch", "torch+graph"]


def test_fps_records_a_failing_backend_and_measures_the_others(monkeypatch, capsys):
    measure = fps.bench_backend

    def flaky(args, backend, *rest):
        if backend == "reference":
            raise RuntimeError("CUDA out of memory (planted)")
        return measure(args, backend, *rest)

    monkeypatch.setattr(fps, "bench_backend", flaky)
    code = fps.main(["--preset", "tiny", "--frames", "7", "--nfe", "2", "--cg-iters", "1", "--repeats", "1",
                     "--backends", "torch", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 1 and [r["backend"] for r in rows] == ["reference", "torch"]
    assert rows[0]["kind"] == "error" and "planted" in rows[0]["error"]
    assert rows[1]["seconds_per_clip"] > 0 and rows[1]["speedup_vs_reference"] is None
    fps.print_table(rows)                                               # the table names the failure
    assert "not measured: RuntimeError: CUDA out of memory (planted)" in capsys.readouterr().out


@pytest.mark.parametrize("name,kind", [
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x256x64", "convolution + matmul"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__half>", "convolution + matmul"),
    ("ampere_fp16_s16816gemm_fp16_128x128_ldg8_f2f_stages_32x5_tn", "convolution + matmul"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>", "attention"),
    ("_gn_apply_kernel", "groupnorm"),
    ("void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<float>(long, float, float const*)", "groupnorm"),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::"
     "(anonymous namespace)::GroupNormKernelImplInternal<float, float>", "groupnorm"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel(at::TensorIteratorBase&)", "elementwise"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy_contig<at::native::(anonymous namespace)::OpaqueType<2u>",
     "concatenation"),
    ("void at::native::(anonymous namespace)::upsample_nearest2d_nhwc_out_frame<c10::Half>", "resampling"),
    ("aten::native_group_norm", "groupnorm"), ("aten::mkldnn_convolution", "convolution + matmul"),
    ("aten::cat", "concatenation"), ("aten::silu_", "elementwise"), ("aten::randperm", "other"),
])
def test_profile_kinds(name, kind):
    assert profile_unet.kind_of(name) == kind


def test_profile_unet_runs_on_the_cpu(capsys):
    assert profile_unet.main(["--preset", "tiny", "--frames", "1", "--repeats", "2", "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert row["norms"] == "torch" and row["forward_ms"] > 0
    assert row["kinds"]["convolution + matmul"] > 0 and row["kinds"]["groupnorm"] > 0
    assert row["kernel_ms"] == pytest.approx(sum(row["kinds"].values()))
    assert row["kernel_ms"] > 0                      # per forward: test_profile_kernel_ms_is_per_forward
    assert profile_unet.main(["--norms", "cudnn"]) == 2


def test_profile_unet_keeps_each_row_as_it_is_measured(monkeypatch, tmp_path):
    """bench/device_check.sh may cut the run at its time limit: the rows measured before stay on disk."""
    def second_never_ends(args, model, norms, common):
        if norms == "triton":
            raise TimeoutError("cut by the step's limit (planted)")
        return dict(common, norms=norms, kinds={}, kernel_ms=1.0, forward_ms=1.0)

    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    monkeypatch.setattr(profile_unet, "profile_row", second_never_ends)
    with pytest.raises(TimeoutError):
        profile_unet.main(["--preset", "tiny", "--frames", "1", "--norms", "torch,triton", "--save"])
    assert [json.loads(line)["norms"] for line in (tmp_path / "profile.jsonl").read_text().splitlines()] == ["torch"]


def test_profile_kernel_ms_is_per_forward(monkeypatch):
    """kernel_ms divides the profiled totals by the forwards run: a fake profiler that logs 3 ms of
    convolution and 1 ms of SiLU per forward gives exactly that for any number of repeats."""
    forwards = []

    class FakeProfiler:
        def __init__(self, activities):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def key_averages(self):
            n = len(forwards)
            return [SimpleNamespace(key="aten::convolution", self_cpu_time_total=3000.0 * n),
                    SimpleNamespace(key="aten::silu", self_cpu_time_total=1000.0 * n),
                    SimpleNamespace(key="ProfilerStep#1", self_cpu_time_total=1e6)]   # not an aten op: skipped

    monkeypatch.setattr(torch.profiler, "profile", FakeProfiler)
    for repeats in (1, 3):
        forwards.clear()
        kinds = profile_unet.kernel_ms(lambda x, t: forwards.append(x), None, None, torch.device("cpu"), repeats)
        assert len(forwards) == repeats
        assert kinds == pytest.approx({"convolution + matmul": 3.0, "elementwise": 1.0})


def test_live_bytes_counts_creation_to_release():
    from bench.memory import LiveBytes

    with LiveBytes() as counter:
        a = torch.empty(1000, device="meta")                            # 4000 bytes
        b = a * 2
        view = b[:10]                                                   # a view: no new bytes
        del a
        c = b + 1
        assert counter.live == 8000
    assert counter.peak == 8000 and view.shape == (10,) and c.shape == (1000,)


def test_memory_of_one_step_fits_the_issue_targets():
    """Tensor bytes of one ADM-256 fp16 step (meta tensors), the network run B = 16 frames at a time: the
    chunked GroupNorm keeps 16 frames under 6 GB (8.6 GB before); the fused norms (the CUDA path) need
    less still. At 64 frames the total grows only by the video-sized buffers: a few fp32 frames' bytes
    per extra frame (measured 4.8 MB, about 6 frames of 786 kB), not the network's ~250 MB per frame
    (what a whole-clip network batch costs: see the last line). A GPU adds its allocator's overhead."""
    from bench.memory import step_memory

    frame = 3 * 256 * 256 * 4
    plain = step_memory("adm256_uncond", 16, "temporal-k7", 20, "fp16", True, norms="torch")
    fused = step_memory("adm256_uncond", 16, "temporal-k7", 20, "fp16", True, norms="triton")
    assert plain["weights_bytes"] > 1.1e9 and plain["step_peak_bytes"] > 4e9
    assert plain["total_bytes"] <= 6.0e9, plain
    assert 0.8 * plain["step_peak_bytes"] < fused["step_peak_bytes"] < plain["step_peak_bytes"], fused
    long = step_memory("adm256_uncond", 64, "temporal-k7", 20, "fp16", True, norms="torch", batch=16)
    growth = (long["total_bytes"] - plain["total_bytes"]) / 48
    assert 2 * frame <= growth <= 10 * frame, growth
    whole = step_memory("adm256_uncond", 32, "temporal-k7", 20, "fp16", True, norms="torch", batch=32)
    assert (whole["total_bytes"] - plain["total_bytes"]) / 16 > 100 * frame


def test_memory_rows_report_bytes_per_frame(capsys):
    from bench import memory

    assert memory.main(["--preset", "tiny", "--frames", "8,12,20", "--batch", "4", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["frames"] for r in rows] == [8, 12, 20] and {r["batch"] for r in rows} == {4}
    first = rows[0]
    assert first["growth_bytes_per_frame"] is None and first["baseline_frames"] == 8
    for r in rows:
        assert r["bytes_per_frame"] == pytest.approx(r["total_bytes"] / r["frames"])
    for r in rows[1:]:
        assert r["growth_bytes_per_frame"] == pytest.approx(
            (r["total_bytes"] - first["total_bytes"]) / (r["frames"] - 8))
        assert r["growth_bytes_per_frame"] > 0


SWEEP = ["--preset", "tiny", "--nfe", "2", "--cg-iters", "1", "--repeats", "1", "--stage-repeats", "0"]


def json_rows(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_fps_sweep_gives_one_row_per_frame_count_with_batch_memory_and_bytes_per_frame(capsys):
    assert fps.main([*SWEEP, "--frames", "7,10", "--batch", "4", "--backends", "torch", "--no-reference",
                     "--json"]) == 0
    rows = json_rows(capsys)
    assert [(r["backend"], r["frames"]) for r in rows] == [("torch", 7), ("torch", 10)]
    for r in rows:
        assert r["batch"] == 4 and r["tiles"] == 1 and r["size"] == [32, 32] and r["baseline_frames"] == 7
        assert r["seconds_per_frame"] == pytest.approx(r["seconds_per_clip"] / r["frames"])
        assert r["peak_mem_method"].startswith("peak live torch tensor bytes")
        assert r["peak_bytes_per_frame"] == pytest.approx(r["peak_mem_bytes"] / r["frames"])
        assert r["stages"] is None and r["unet_tflops"] is None                  # --stage-repeats 0
    first, second = rows
    assert first["seconds_per_frame_ratio"] == 1.0 and first["growth_bytes_per_frame"] is None
    # the network runs 4 frames at a time in both rows: the peak grows by the video-sized buffers only
    frame = 3 * 32 * 32 * 4
    assert frame <= second["growth_bytes_per_frame"] <= 40 * frame
    assert second["growth_bytes_per_frame"] == pytest.approx(
        (second["peak_mem_bytes"] - first["peak_mem_bytes"]) / 3)


def test_fps_ratios_divide_by_the_same_runs_first_row_of_each_backend(monkeypatch, capsys):
    """Planted clip times (seconds per frame 0.1 and 0.2 at 7 frames, 0.1 and 0.4 at 9): each backend's ratio
    is against its own first row (torch: 2.0, not 4.0 against the reference's), the speed-up against the
    reference at the same frame count, and a ratio beyond 15 % is flagged in the row and in the table."""
    planted = iter([[0.7], [1.4], [0.9], [3.6]])                        # reference 7, torch 7, reference 9, torch 9
    monkeypatch.setattr(fps, "time_fn", lambda fn, device, repeats, warmup: next(planted))
    assert fps.main([*SWEEP, "--frames", "7,9", "--backends", "torch", "--json", "--target-fps", "8",
                     "--target-peak-gb", "1"]) == 0
    rows = {(r["backend"], r["frames"]): r for r in json_rows(capsys)}
    assert rows["reference", 9]["seconds_per_frame_ratio"] == pytest.approx(1.0)
    assert rows["torch", 7]["seconds_per_frame_ratio"] == pytest.approx(1.0) and rows["torch", 7]["flat"]
    assert rows["torch", 9]["seconds_per_frame_ratio"] == pytest.approx(2.0) and not rows["torch", 9]["flat"]
    assert rows["torch", 7]["speedup_vs_reference"] == pytest.approx(0.5)
    assert rows["torch", 9]["speedup_vs_reference"] == pytest.approx(0.25)
    assert rows["reference", 7]["targets"]["fps"] == {"target": 8.0, "measured": pytest.approx(10.0), "met": True}
    assert rows["torch", 9]["targets"]["fps"]["met"] is False and rows["torch", 9]["targets"]["peak_gb"]["met"]
    fps.print_table(list(rows.values()))
    table = capsys.readouterr().out
    assert "    2.00!" in table and "target fps 8: measured 2.5, NOT met" in table


class CutByTimeLimit(BaseException):
    """What bench/device_check.sh's `timeout` does to a step: the process ends mid-sweep."""


def test_fps_save_appends_each_row_as_it_is_measured(monkeypatch, capsys, tmp_path):
    """--save writes every row of the sweep to $BENCH_RESULTS/fps.jsonl as it is measured: a run cut during its
    second row (planted) leaves the first on disk; without --save nothing is written."""
    measure = fps.bench_backend

    def cut_at_9(args, backend, frames, *rest):
        if frames == 9:
            raise CutByTimeLimit
        return measure(args, backend, frames, *rest)

    argv = [*SWEEP, "--frames", "7,9", "--backends", "torch", "--no-reference", "--json"]
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    assert fps.main([*argv, "--frames", "7"]) == 0 and list(tmp_path.iterdir()) == []
    printed = json_rows(capsys)
    monkeypatch.setattr(fps, "bench_backend", cut_at_9)
    with pytest.raises(CutByTimeLimit):
        fps.main([*argv, "--save"])
    (saved,) = [json.loads(line) for line in (tmp_path / "fps.jsonl").read_text().splitlines()]
    assert saved["frames"] == 7 and saved["device_name"] and saved["seconds_per_frame"] > 0
    assert set(saved) == set(printed[0])


def test_fps_size_runs_tiles_of_the_networks_size(capsys):
    """--size HxW larger than the tiny network's 32 pixels: the Solver blends tiles (engine.tiling), and the row
    says how many: 40 rows → 2 tiles, 56 columns → 2 tiles (overlap 8)."""
    assert fps.main([*SWEEP, "--frames", "7", "--size", "40x56", "--backends", "torch", "--no-reference",
                     "--json"]) == 0
    (row,) = json_rows(capsys)
    assert row["size"] == [40, 56] and row["tiles"] == 4 and row["seconds_per_frame"] > 0


def test_fps_frames_and_size_flags_parse_or_refuse():
    from engine.runtime import SolverConfig

    args = fps.parse_args(["--frames", "16,64,256", "--size", "720x1280", "--batch", "8"])
    assert args.frames == [16, 64, 256] and args.size == (720, 1280) and args.batch == 8
    assert fps.parse_args(["--size", "48"]).size == (48, 48)
    for bad in (["--frames", "16,x"], ["--frames", "0"], ["--size", "720x"], ["--size", "1x2x3"]):
        with pytest.raises(SystemExit):
            fps.parse_args(bad)
    assert fps.network_tiles(SolverConfig("temporal:uniform:7", size=(720, 1280)), 256) == 28
    assert fps.network_tiles(SolverConfig("temporal:uniform:7", size=256), 256) == 1


def test_ghosts_names_a_missing_clip_without_a_traceback(tmp_path, capsys):
    from bench import ghosts

    assert ghosts.main(["--clips", "nosuch:4", "--clip-dir", str(tmp_path), "--no-save"]) == 2
    assert "nosuch:4" in capsys.readouterr().err
