"""The main command end to end on small clips, and every bad-input case (one line, exit 2, no output)."""

import json

import numpy as np
import pytest

from engine.solve import main
from engine.testclips import camera_clip
from kernels.common import INTERPRET

FAST = ["--nfe", "3", "--cg-iters", "2", "--size", "32", "--device", "cpu"]   # on the CPU on any machine
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
    assert report["settings"]["spec"] == "temporal:uniform:7" and report["settings"]["nfe"] == 3
    assert len(report["restored"]["psnr"]) == 8 and report["restored"]["psnr_mean"] > 15
    (baseline,) = report["baselines"].values()
    assert len(baseline["ssim"]) == 8


def test_settings_record_the_cudnn_and_layout_choices(tmp_path, clip_npy):
    out = tmp_path / "out"
    assert main([str(clip_npy), "--task", "temporal-k7", *FAST, "--cudnn-benchmark", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    settings = report["settings"]
    assert settings["cudnn_benchmark"] is True and settings["channels_last"] is False      # NCHW on the CPU
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


def test_long_input_restores_the_first_default_frames(tmp_path):
    from engine.solve import DEFAULT_FRAMES

    path = tmp_path / "long.npy"
    np.save(path, camera_clip(frames=DEFAULT_FRAMES + 4, size=32).numpy())          # [N, 3, H, W]
    out = tmp_path / "out"
    assert main([str(path), "--task", "temporal-k7", *FAST, "--out", str(out)]) == 0
    assert len(list((out / "frames").glob("frame_*.png"))) == DEFAULT_FRAMES


def test_measured_input_with_sr(tmp_path):
    from engine.operators import from_spec

    clean = camera_clip(frames=8, size=32)
    y = from_spec("temporal:uniform:3+sr:4", clean.shape).A(clean)
    path = tmp_path / "y.npy"
    np.save(path, y.permute(1, 0, 2, 3).numpy())
    out = tmp_path / "out"
    assert main([str(path), "--degrade", "temporal:uniform:3+sr:4", "--measured", *FAST, "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert "restored" not in report and report["settings"]["size"] == 32


def test_demo(tmp_path):
    out = tmp_path / "demo"
    assert main(["--demo", "--frames", "8", *FAST, "--out", str(out)]) == 0
    assert (out / "comparison.png").stat().st_size > 0


def _bad(tmp_path, capsys, argv, match):
    out = tmp_path / "never"
    assert main([*argv, *FAST, "--out", str(out)]) == 2
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
    _bad(tmp_path, capsys, [str(clip_npy), "--task", "temporal-k13"], "frames")


def test_measurement_of_the_wrong_size(tmp_path, capsys, clip_npy):
    _bad(tmp_path, capsys, [str(clip_npy), "--degrade", "sr:4", "--measured"], "shape")


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
