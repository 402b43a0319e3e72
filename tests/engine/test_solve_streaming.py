"""engine.solve --max-frames: a video longer than a window is read, restored and written frame by frame."""

import json

import pytest
import torch

from engine import video_io
from engine.metrics import clip_summary
from engine.priors import make_prior
from engine.runtime import SolverConfig
from engine.metrics import Scores as FrameScores
from engine.solve import main
from engine.testclips import camera_clip
from engine.video_io import UnreadableError, frame_rate, read_video, write_video
from engine.windows import VideoRestorer

N, H, W, FPS, WINDOW = 40, 24, 40, 12, 12
SPEC = "temporal:uniform:3"
STREAM = ["--simulate", "--degrade", SPEC, "--prior", "gaussian", "--nfe", "3", "--cg-iters", "2", "--device", "cpu",
          "--max-frames", str(WINDOW)]


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory):
    """A 40-frame 40×24 (non-square) mp4 at 12 frames/s."""
    clip = camera_clip(frames=N, size=48)[..., 12:12 + H, 4:4 + W]                   # [40, 3, 24, 40]
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", clip, fps=FPS)


def written_frames(out):
    return read_video(out / "frames", size=None)


def test_a_long_non_square_clip_is_streamed_at_its_own_size_and_rate(tmp_path, clip_mp4):
    out = tmp_path / "out"
    assert main([str(clip_mp4), *STREAM, "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["windows"]["streamed"] is True and report["settings"]["frames"] == N
    assert report["settings"]["size"] == [H, W] and report["settings"]["fps"] == pytest.approx(FPS)
    frames = written_frames(out)
    assert frames.shape == (N, 3, H, W)
    assert read_video(out / "restored.mp4", size=None).shape == (N, 3, H, W)
    assert read_video(out / "measurement.mp4", size=None).shape == (N, 3, H, W)
    assert frame_rate(out / "restored.mp4") == pytest.approx(FPS)
    assert len(report["restored"]["psnr"]) == N and "first 16 frames" in report["comparison"]

    # the same restoration without streaming I/O: VideoRestorer on the decoded clip, as engine.windows documents
    s = report["settings"]
    clean = read_video(clip_mp4, size=None)
    cfg = SolverConfig(spec=s["spec"], size=(H, W), nfe=s["nfe"], eta=s["eta"], cg_iters=s["cg_iters"],
                       temporal_prior=s["temporal_prior"], register=s["register"])
    restorer = VideoRestorer(make_prior("gaussian"), cfg, window=WINDOW)
    expected = torch.stack(list(restorer.restore(torch.stack(list(restorer.measure(clean))), seed=s["seed"])))
    assert (frames * 255 - (expected * 255).round()).abs().max().item() <= 1.0          # within one 8-bit level
    streamed, whole = report["restored"], clip_summary(expected, clean)
    assert streamed["psnr"] == pytest.approx(whole["psnr"], rel=1e-4)
    assert streamed["psnr_mean"] == pytest.approx(whole["psnr_mean"], rel=1e-4)
    assert streamed["ssim_mean"] == pytest.approx(whole["ssim_mean"], rel=1e-4)


def test_the_input_is_not_decoded_whole(tmp_path, clip_mp4, monkeypatch):
    """Frames pulled from the decoder before the first frame is written: one window, its context and the
    read-ahead, not the video."""
    pulled, at_first_write = [0], []
    decode, write_png = video_io.iter_frames, video_io._write_png

    def counted(path):
        for frame in decode(path):
            pulled[0] += 1
            yield frame

    def first_noted(iio, path, frame):
        at_first_write.append(pulled[0])
        write_png(iio, path, frame)

    monkeypatch.setattr(video_io, "iter_frames", counted)
    monkeypatch.setattr(video_io, "_write_png", first_noted)
    assert main([str(clip_mp4), *STREAM, "--out", str(tmp_path / "out")]) == 0
    assert pulled[0] == N + 1 and len(at_first_write) == N                # + the first frame, decoded by the checks
    reach = 1                                                             # temporal:uniform:3
    assert at_first_write[0] <= 1 + WINDOW + 2 * reach + 2 < N            # W free frames, one read ahead, c, ℓ


@pytest.mark.parametrize("error, status", [(UnreadableError, 2), (RuntimeError, None)])
def test_a_failure_mid_stream_leaves_no_output_and_no_temporary_folder(tmp_path, clip_mp4, monkeypatch, capsys,
                                                                       error, status):
    decode = video_io.iter_frames

    def breaks_at_frame_20(path):
        for i, frame in enumerate(decode(path)):
            if i == 20:
                raise error(f"{path}: cannot decode frame 20")
            yield frame

    monkeypatch.setattr(video_io, "iter_frames", breaks_at_frame_20)
    out = tmp_path / "out"
    if status is None:                                     # not a user error: it reaches the caller
        with pytest.raises(RuntimeError, match="frame 20"):
            main([str(clip_mp4), *STREAM, "--out", str(out)])
    else:
        assert main([str(clip_mp4), *STREAM, "--out", str(out)]) == status
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "frame 20" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_frame_scores_equal_the_whole_clip_summary():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(5, 3, 16, 20, generator=g, dtype=torch.float64)
    x = (ref + 0.05 * torch.randn(ref.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    x[2] = ref[2]                                                          # a perfect frame: PSNR inf
    scores = FrameScores()
    for frame, r in zip(x, ref):
        scores.add(frame, r)
    assert scores.summary() == clip_summary(x, ref)
    x[3] = ref[3]
    assert scores.summary() != clip_summary(x, ref)                        # the comparison can fail


def test_a_measured_video_is_streamed(tmp_path):
    from engine.operators import from_spec

    clean = camera_clip(frames=20, size=32)
    y = from_spec(f"{SPEC}:replicate+sr:2", clean.shape).A(clean)                     # [20, 3, 16, 16]
    path = tmp_path / "y.pt"
    torch.save(y, path)
    out = tmp_path / "out"
    assert main([str(path), *STREAM[1:], "--degrade", f"{SPEC}+sr:2", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["windows"]["streamed"] and "restored" not in report and report["settings"]["size"] == [32, 32]
    assert written_frames(out).shape == (20, 3, 32, 32)
    assert read_video(out / "measurement.mp4", size=None).shape == (20, 3, 16, 16)


def test_a_clip_within_one_window_is_restored_whole(tmp_path):
    path = tmp_path / "short.pt"
    torch.save(camera_clip(frames=WINDOW, size=32), path)
    out = tmp_path / "out"
    assert main([str(path), *STREAM, "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert "windows" not in report and len(report["restored"]["psnr"]) == WINDOW


def test_the_demo_streams_without_baselines(tmp_path):
    out = tmp_path / "demo"
    assert main(["--demo", "--frames", "12", "--size", "32", *STREAM, "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["baselines"] == [] and len(report["restored"]["psnr"]) == 12


@pytest.mark.parametrize("argv, match", [
    (["--baselines", "cg"], "--baselines need the whole clip in memory"),
    (["--blind", "--init", "x.mp4"], "--blind fits the PSF to the whole clip"),
    (["--noise", "independent"], "shared noise image only"),
    (["--degrade", "temporal:uniform:3:circular"], "circular boundary"),
])
def test_what_windows_cannot_do_is_one_line_and_no_output(tmp_path, clip_mp4, capsys, argv, match):
    out = tmp_path / "never"
    assert main([str(clip_mp4), *STREAM, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and match in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []
