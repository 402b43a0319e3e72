"""One video sharded by frames over 2 and 3 processes (gloo on 127.0.0.1) gives the one-process result.

The processes are spawned by tests/helpers/sharded_workers.py; each compares its own frames with the
single-process computation it also runs, in float64.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sharded_workers as workers
from engine.distributed import even_split, frame_ranges, free_port, run_local
from engine.errors import InputError
from engine.operators.banded import band, local_matrix
from engine.operators.temporal import temporal_matrix, uniform_kernel

ROOT = Path(__file__).resolve().parents[2]


def _values(results):
    assert all(ok for ok, _ in results), [v for ok, v in results if not ok]
    return [value for _, value in results]


def test_frame_ranges_are_contiguous_and_even():
    assert frame_ranges(13, 3) == [(0, 5), (5, 9), (9, 13)]
    assert frame_ranges(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert even_split(10, 3) == [4, 3, 3]
    with pytest.raises(InputError, match="at most 3 processes"):
        frame_ranges(3, 4)


@pytest.mark.parametrize("boundary, expected", [("circular", (3, 3)), ("replicate", (3, 3)), ("zero", (3, 3))])
def test_band_of_a_temporal_psf(boundary, expected):
    T = temporal_matrix(uniform_kernel(7), 16, boundary)
    assert band(T, ring=boundary == "circular") == expected
    assert band(T.T @ T, ring=boundary == "circular") == (6, 6)


def test_local_matrix_refuses_a_band_wider_than_its_halo():
    T = temporal_matrix(uniform_kernel(7), 16, "zero")
    with pytest.raises(InputError, match="reach frames beyond"):
        local_matrix(T, 4, 8, 2, 3, ring=False)


@pytest.mark.parametrize("world, frames", [(2, 13), (3, 20)])
def test_sharded_operators_equal_the_single_process_ones(world, frames):
    """A, Aᵀ, AᵀA, the preconditioner, noiseless and regularised PCG, and the dot test over all ranks,
    for unequal shards (13 = 7 + 6; 20 = 7 + 7 + 6), every boundary and compositions."""
    for errors in _values(run_local(workers.operator_errors, world, frames)):
        assert set(errors) == set(workers.SPECS)
        worst = max(errors.items(), key=lambda kv: kv[1])
        assert worst[1] < 1e-12, worst


@pytest.mark.parametrize("spec, gamma, start", [
    ("temporal:uniform:7", None, None),
    ("temporal:uniform:7:replicate+sr:2", 1.0, None),
    ("temporal:gaussian:1.0+blur:gaussian:1.0:5", None, 500),
    ("temporal:uniform:5+inpaint:0.5", 1.0, 500),
])
def test_algorithm_1_sharded_equals_one_process(spec, gamma, start):
    """The whole reverse process (network on each rank's frames, CG across ranks), gathered on rank 0, equals
    one process to 1e-12, or to 10× what a rounding-sized change of y moves the one-process result: noiseless
    PCG through a blur (near-null modes) turns 1e-16 into 1e-11 on one process alone."""
    results = _values(run_local(workers.sampler_error, 3, 19, spec, gamma, start))
    for rank, (own, whole, sensitivity) in enumerate(results):
        assert own < max(1e-12, 10 * sensitivity), (own, sensitivity)
        assert (whole is None) == (rank != 0)
    assert results[0][1] < max(1e-12, 10 * results[0][2])


@pytest.mark.parametrize("noise", ["shared", "independent"])
def test_solver_with_a_process_group_equals_one_solver(noise):
    from engine.priors import make_prior
    from engine.runtime import Solver, SolverConfig

    results = _values(run_local(workers.solver_frames, 2, 9, noise))
    cfg = SolverConfig("temporal:uniform:5:replicate+sr:2", frames=9, size=(8, 12), nfe=3, noise=noise, gamma=1.0,
                       start=600)
    solver = Solver(make_prior("gaussian"), cfg)
    clean = torch.rand(cfg.shape, generator=torch.Generator().manual_seed(4))
    y = solver.measure(clean, sigma_y=0.05, seed=7)
    x = solver.solve(y, seed=2)
    assert [(a, b) for a, b, *_ in results] == [(0, 5), (5, 9)]
    for a, b, y_part, x_part in results:
        y_part, x_part = torch.from_numpy(y_part), torch.from_numpy(x_part)
        torch.testing.assert_close(y_part, y[a:b], rtol=0, atol=1e-6)        # the video's noise at its frames
        torch.testing.assert_close(x_part, x[a:b], rtol=0, atol=1e-5)


def test_a_solver_over_processes_runs_torch_arithmetic_and_says_so():
    """Frames split over processes: the operator, CG and steps on torch ops whatever was asked
    (engine.runtime.kernels_run); the network's norms as asked."""
    from engine.runtime import ResolvedKernels

    assert _values(run_local(workers.solver_kernels, 2)) == [(ResolvedKernels("torch", "triton"), "torch")] * 2


@pytest.mark.parametrize("world, frames", [(2, 13), (3, 20)])
def test_halos_and_operators_hold_when_point_to_point_pairs_in_issue_order(world, frames):
    """NCCL ignores tags and pairs the sends and receives between two ranks in the order they were issued
    (tests/helpers/nccl_order.py makes gloo do the same). On 2 ranks around a ring left and right are one peer: the
    halos must still arrive in their places, for equal and unequal reaches, around a ring and with open ends,
    and the sharded operators (circular and replicate boundaries) must equal the one-process ones."""
    for halos, operators, operations in _values(run_local(workers.halo_errors_in_nccl_order, world, frames,
                                                          timeout=150)):
        assert operations > 0                                   # the exchanges went through the wrapper
        wrong = {case: error for case, error in halos.items() if error != 0}
        assert not wrong, wrong
        worst = max(operators.items(), key=lambda kv: kv[1])
        assert worst[1] < 1e-12, worst


def test_a_shard_shorter_than_the_psf_reach_is_refused_on_every_rank():
    results = run_local(workers.build_sharded, 3, 13, "temporal:uniform:7")
    assert all(not ok and "reaches 6 frames" in err and "at most 2 processes" in err for ok, err in results)
    assert _values(run_local(workers.build_sharded, 2, 13, "temporal:uniform:7")) == ["built", "built"]


def test_a_rank_that_raises_stops_the_others():
    results = run_local(workers.failing_rank, 2, 8, timeout=120)
    assert results[1] == (False, "RuntimeError: rank 1 fails on purpose")
    assert results[0][0] is False                  # its halo exchange broke: it did not wait for ever


# ── the command line under torchrun ─────────────────────────────────────────

def _clip(tmp_path) -> Path:
    from engine.testclips import camera_clip                   # a real photo, panned

    path = tmp_path / "clip.npy"
    clip = camera_clip(frames=12, size=32)[..., 4:28, :]       # 24×32 frames
    np.save(path, clip.permute(1, 0, 2, 3).numpy())            # the public code's [3, N, H, W]
    return path


def _torchrun(args, tmp_path, nproc=2, script=None, env=None):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    command += [str(script)] if script else ["-m", "engine.solve"]
    return subprocess.run(command + args, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})})


def _same_frames_as_one_process(args, tmp_path):
    """`engine.solve ARGS` in one process (--out one) and under torchrun with 2 (--out two): both succeed
    and write the same 12 frames (within one 8-bit level). Returns the torchrun run."""
    import imageio.v3 as iio

    one = subprocess.run([sys.executable, "-m", "engine.solve", *args, "--out", "one"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert one.returncode == 0, one.stderr
    two = _torchrun([*args, "--out", "two"], tmp_path)
    assert two.returncode == 0, two.stderr
    a, b = sorted((tmp_path / "one" / "frames").iterdir()), sorted((tmp_path / "two" / "frames").iterdir())
    assert len(a) == len(b) == 12
    assert max(np.abs(iio.imread(p).astype(int) - iio.imread(q).astype(int)).max() for p, q in zip(a, b)) <= 1
    return two


ARGS = ["--simulate", "--degrade", "temporal:uniform:5", "--sigma-y", "0.02", "--prior", "gaussian", "--nfe", "4",
        "--baselines", "none"]


#: the whole video split over processes keeps the per-frame prior's null modes (the motion prior spans the video)
WHOLE = ["--temporal-prior", "none"]


def test_torchrun_writes_the_frames_one_process_writes(tmp_path):
    two = _same_frames_as_one_process([str(_clip(tmp_path)), *ARGS, *WHOLE], tmp_path)
    assert two.stdout.count(str(tmp_path / "two")) == 1                  # process 0 alone answers
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert [r["frames"] for r in metrics["ranks"]] == [[0, 6], [6, 12]]
    assert all(r["communication_s"] > 0 and r["cg_s"] > 0 and r["network_s"] > 0 for r in metrics["ranks"])


def test_torchrun_whole_video_leaves_the_motion_prior_out_and_says_so(tmp_path):
    """--temporal-prior auto over two processes on the whole video: the per-frame prior's null modes, with a
    warning, and no registration (the motion prior's last step; --simulate would otherwise ask for it)."""
    run = _torchrun([str(_clip(tmp_path)), *ARGS, "--out", "auto"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "splits the whole video over 2 processes" in run.stderr
    settings = json.loads((tmp_path / "auto" / "metrics.json").read_text())["settings"]
    assert settings["temporal_prior"] == "none" and settings["register"] is False
    asked = _torchrun([str(_clip(tmp_path)), *ARGS, "--register", "--out", "asked"], tmp_path)
    assert asked.returncode != 0                        # both processes say why (their lines may interleave)
    assert asked.stderr.count("--register moves the frames after the motion prior") == 2, asked.stderr


def test_torchrun_records_the_kernels_that_ran(tmp_path):
    """metrics.json's kernels_used under torchrun with --kernels triton: Triton in one process (in the
    interpreter on the CPU), torch ops with the frames split over two (engine.runtime.kernels_run)."""
    clip = _clip(tmp_path)
    for nproc, used in ((1, "triton"), (2, "torch")):
        run = _torchrun([str(clip), *ARGS, *WHOLE, "--kernels", "triton", "--out", f"n{nproc}"], tmp_path, nproc=nproc)
        assert run.returncode == 0, run.stderr
        assert json.loads((tmp_path / f"n{nproc}" / "metrics.json").read_text())["kernels_used"] == used


@pytest.mark.parametrize("failing", ["0", "1"])
def test_torchrun_a_failing_process_stops_every_process_with_its_message(tmp_path, failing):
    script = tmp_path / "failing.py"
    script.write_text(
        "import os, sys\n"
        "import engine.runtime as rt\n"
        "from engine.errors import ModelError\n"
        "if os.environ['RANK'] == os.environ['FAIL_RANK']:\n"
        "    def solve(self, *a, **k):\n"
        "        raise ModelError('the ε model broke')\n"
        "    rt.Solver.solve = solve\n"
        "from engine.solve import main\n"
        "sys.exit(main())\n")
    run = _torchrun([str(_clip(tmp_path)), *ARGS, "--out", "out"], tmp_path, script=script,
                    env={"FAIL_RANK": failing})
    assert run.returncode != 0
    message = f"process {failing} of 2: the ε model broke"
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all(message in line for line in errors), run.stderr
    assert not any(p.name.startswith(("out", ".out")) for p in tmp_path.iterdir())   # no output, no temporary


def test_a_clean_video_is_decoded_by_process_0_alone(tmp_path):
    """Under torchrun a clean input is read and measured by process 0, which scatters the measurement:
    the others learn its frame count and size and never decode it."""
    results = _values(run_local(workers.read_on_first, 2, str(_clip(tmp_path))))
    assert results == [(True, True, 12, (24, 32)), (False, False, 12, (24, 32))]


def test_torchrun_measured_video_each_process_reads_its_frames(tmp_path):
    """--measured under torchrun: every process keeps only its frames of the file; the frames written
    equal those of one process (within one 8-bit level)."""
    from engine.runners.sharded import own_measurement
    from engine.solve import parse

    clip = _clip(tmp_path)
    args = [str(clip), "--measured", "--degrade", "temporal:uniform:5", "--sigma-y", "0.02", "--prior", "gaussian",
            "--nfe", "4", *WHOLE]
    job, _, _ = parse([*args, "--out", "unused"])
    frames, first, own = own_measurement(job, rank=1, world=2)
    whole = torch.from_numpy(np.load(clip)).permute(1, 0, 2, 3).float()
    assert frames == 12 and torch.equal(own, whole[6:12]) and torch.equal(first, whole[0])
    _same_frames_as_one_process(args, tmp_path)
    one, two = (json.loads((tmp_path / out / "metrics.json").read_text()) for out in ("one", "two"))
    assert two["residual"]["explained"] == one["residual"]["explained"]                            # process 0's check
    assert two["residual"]["rms"] == pytest.approx(one["residual"]["rms"], rel=1e-3)
    assert two["polish"] == one["polish"] and one["polish"]["sigma"] > 0                          # and last denoise


# ── windows with pinned context, each window sharded ────────────────────────

@pytest.mark.parametrize("spec, rows, cols, end", [
    ("temporal:uniform:7:replicate", (0, 17), (0, 20), None),            # a first window: rows stop c early
    ("temporal:uniform:5:zero+sr:2", (8, 20), (6, 22), 22),              # a last window: rows past it dropped
    ("temporal:gaussian:1.0:replicate+inpaint:0.5", (4, 17), (1, 20), None),
])
def test_a_sharded_window_operator_equals_the_window_operator(spec, rows, cols, end):
    """Its A (rows whole on every rank), Aᵀ, AᵀA, preconditioner and PCG steps on each of 3 ranks' frames
    equal the one-process window operator's in fp64, and ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ with x sharded."""
    for error, frames in _values(run_local(workers.window_operator_errors, 3, spec, rows, cols, end)):
        assert frames > 0 and error < 1e-12, error


@pytest.mark.parametrize("spec, window, start", [("temporal:uniform:5:replicate+sr:2", 16, None),
                                                 ("temporal:uniform:3:zero", 9, None),
                                                 ("temporal:uniform:5:replicate", 16, 400)])
def test_windows_sharded_over_processes_equal_one_process(spec, window, start):
    """VideoRestorer(group=WORLD) with 2 processes yields on rank 0 the one-process video (fp64, 1e-12),
    nothing on rank 1; the windows are split over the processes except a last one too short to split
    (cold, or each window warm from t₀)."""
    from engine.runtime import SolverConfig
    from engine.windows import VideoRestorer

    frames = 29
    results = _values(run_local(workers.windows_restored, 2, frames, spec, window, start))
    cfg = SolverConfig(spec=spec, size=(8, 12), nfe=3, gamma=1.0, start=start)
    restorer = VideoRestorer(None, cfg, window=window, eps_model=workers._frame_local_eps, dtype=torch.float64)
    clean = torch.rand((frames, 3, 8, 12), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = torch.stack(list(restorer.restore(restorer.measure(clean, sigma_y=0.05, seed=3), seed=5)))
    (video, split0), (count, split1) = results
    assert count == 0 and split0 == split1 >= 2
    got = torch.from_numpy(video)
    assert got.shape == ref.shape == (frames, 3, 8, 12)
    assert float((got - ref).norm() / ref.norm()) < 1e-12


def test_torchrun_windows_write_the_frames_one_process_writes(tmp_path):
    """--max-frames under torchrun: each window split over 2 processes; the frames equal the one-process
    windows' (within one 8-bit level) and metrics.json names both processes."""
    clip = _clip(tmp_path)
    # k = 3, whose lag and lead leave two windows of 10 frames on the 12; torchrun would take --start
    args = [str(clip), *ARGS, "--degrade", "temporal:uniform:3", "--max-frames", "10", "--warm-start", "600"]
    two = _same_frames_as_one_process(args, tmp_path)
    assert two.stderr.count("wrote restored.mp4") == 1                        # process 0 says where, once
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["windows"]["streamed"] and metrics["world_size"] == 2
    assert [r["rank"] for r in metrics["ranks"]] == [0, 1] and all(r["windows_split"] == 2 for r in metrics["ranks"])
    assert all(r["network_s"] > 0 and r["cg_s"] > 0 and r["communication_s"] > 0 for r in metrics["ranks"])
