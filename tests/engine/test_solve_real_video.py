"""The command on what a user brings: a degraded video (the default), its noise estimated, every check
on INPUT before the model loads, odd sizes and grey frames kept, a killed run's leftovers removed."""

import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import engine.job as job_module
from engine.errors import InputError
from engine.fileio import RUN_MARKER
from engine.operators import from_spec
from engine.polish import POLISH_SPAN, polish
from engine.priors import GaussianPrior
from engine.realvideo import (GUARD_SPAN, MOVING, MOVING_CAP, STILL, StreamGuard, frame_residuals, frame_slopes,
                              guard_weights, input_guard, residual_record)
from engine.solve import main
from engine.testclips import camera_clip
from engine.video_io import read_video

REAL = ["--prior", "gaussian", "--nfe", "3", "--cg-iters", "2", "--device", "cpu"]
SPEC = "temporal:uniform:3"


def blurred_npy(path, *, frames=8, size=32, sigma=0.0, spec=SPEC, grey=False):
    """A clean panned photo degraded by `spec` (+ Gaussian noise σ), saved as [N, 3, H, W]; returns the path."""
    clean = camera_clip(frames=frames, size=size)
    y = from_spec(f"{spec}:replicate", clean.shape).A(clean)
    y = (y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    if grey:
        y = y.mean(1, keepdim=True).expand_as(y).contiguous()
    np.save(path, y.numpy())
    return path


def report(out):
    return json.loads((out / "metrics.json").read_text())


def test_input_is_the_measurement_by_default_and_its_noise_is_estimated(tmp_path):
    path = blurred_npy(tmp_path / "y.npy", sigma=0.03)
    out = tmp_path / "out"
    assert main([str(path), "--degrade", SPEC, *REAL, "--out", str(out)]) == 0
    r = report(out)
    assert "restored" not in r                                            # nothing to score against
    noise = r["noise"]
    assert noise["estimated"] and 0.015 < noise["sigma_y"] < 0.06        # the noise added: 0.03
    assert r["settings"]["sigma_y"] == noise["sigma_y"]
    assert r["settings"]["gamma"] == pytest.approx(0.04 / noise["sigma_y"], rel=1e-4)   # the regularised CG
    assert r["residual"]["sigma_y"] == noise["sigma_y"] and r["residual"]["rms"] > 0
    weighed = r["residual"]["weighed"]                                        # σ_w = 0.04/γ
    assert weighed > 0 and r["polish"]["sigma"] == pytest.approx(POLISH_SPAN * weighed)    # the last denoise
    assert r["settings"]["size"] == [32, 32] and read_video(out / "restored.mp4", size=None).shape == (8, 3, 32, 32)


def test_measured_is_a_no_op_and_simulate_is_the_papers_protocol(tmp_path, capsys):
    path = blurred_npy(tmp_path / "y.npy", sigma=0.03)
    assert main([str(path), "--degrade", SPEC, "--measured", *REAL, "--out", str(tmp_path / "a")]) == 0
    assert "restored" not in report(tmp_path / "a")
    np.save(tmp_path / "x.npy", camera_clip(frames=8, size=32).numpy())
    assert main([str(tmp_path / "x.npy"), "--simulate", "--degrade", SPEC, *REAL, "--out", str(tmp_path / "b")]) == 0
    r = report(tmp_path / "b")
    assert "noise" not in r and r["settings"]["sigma_y"] == 0 and len(r["restored"]["psnr"]) == 8
    assert "guard" not in r                                  # a simulated run is scored as restored, never guarded
    with pytest.raises(SystemExit):
        main([str(path), "--degrade", SPEC, "--simulate", "--measured", "--out", str(tmp_path / "c")])
    assert "not allowed with" in capsys.readouterr().err


def test_a_stated_noiseless_run_on_a_noisy_video_is_warned_about(tmp_path, caplog):
    path = blurred_npy(tmp_path / "y.npy", sigma=0.03)
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert main([str(path), "--degrade", SPEC, "--sigma-y", "0", *REAL, "--out", str(out)]) == 0
    r = report(out)
    assert r["settings"]["gamma"] is None and not r["noise"]["estimated"]       # what the user asked for
    assert "--sigma-y 0 runs the noiseless CG" in caplog.text


@pytest.mark.parametrize("frames, warned", [(6, True), (8, False)])
def test_a_measured_video_cut_short_by_frames_is_warned_about(tmp_path, caplog, frames, warned):
    """--frames below the video's count: the last frames' blur reached frames this run does not read (seen on a
    real H.264 clip: its last frame 1.08 dB below INPUT); the whole video gets no such warning."""
    path = blurred_npy(tmp_path / "y.npy", frames=8)
    with caplog.at_level("WARNING"):
        assert main([str(path), "--degrade", SPEC, "--frames", str(frames), *REAL, "--out", str(tmp_path / "o")]) == 0
    assert ("--frames 6 stops before INPUT's end (8 frames): its last 1 frame(s)" in caplog.text) is warned


@pytest.fixture
def spy_loader(monkeypatch):
    """Records every model load of a run (a check must come before it)."""
    calls = []
    real = job_module.load_model
    monkeypatch.setattr(job_module, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def _refused_before_the_model(tmp_path, capsys, spy_loader, argv, match):
    out = tmp_path / "never"
    assert main([*REAL, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and match in err and "\n" not in err, err
    assert spy_loader == [] and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]
    return err


def test_a_missing_input_is_refused_before_the_model_loads(tmp_path, capsys, spy_loader):
    _refused_before_the_model(tmp_path, capsys, spy_loader, [str(tmp_path / "nope.mp4"), "--degrade", SPEC],
                              "no such file")


def test_an_undecodable_video_is_refused_before_the_model_loads(tmp_path, capsys, spy_loader):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    _refused_before_the_model(tmp_path, capsys, spy_loader, [str(bad), "--degrade", SPEC], "broken.mp4")


def test_a_bad_spec_is_refused_in_the_words_typed(tmp_path, capsys, spy_loader):
    path = blurred_npy(tmp_path / "y.npy")
    err = _refused_before_the_model(tmp_path, capsys, spy_loader, [str(path), "--degrade", "temporal:uniform:x"],
                                    "'temporal:uniform:x'")
    assert ":replicate" not in err


@pytest.mark.parametrize("argv, match", [
    (["--frames", "50"], "has 8 frames; --frames 50 asks for more"),
    (["--max-frames", "2"], "--max-frames 2 is too short"),
    (["--simulate", "--degrade", "sr:3"], "super-resolution by 3"),
    (["--warm-start", "-1"], "--warm-start/--start"),
    (["--nfe", "0"], "--nfe must be"),
])
def test_settings_against_the_input_are_refused_before_the_model_loads(tmp_path, capsys, spy_loader, argv, match):
    path = blurred_npy(tmp_path / "y.npy")
    spec = [] if "--degrade" in argv else ["--degrade", SPEC]
    _refused_before_the_model(tmp_path, capsys, spy_loader, [str(path), *spec, *argv], match)


def test_a_clip_shorter_than_the_blur_is_warned_about(tmp_path, caplog):
    path = blurred_npy(tmp_path / "y.npy", frames=2, spec="temporal:uniform:7")
    with caplog.at_level("WARNING", logger="engine"):
        assert main([str(path), "--degrade", "temporal:uniform:7", *REAL, "--out", str(tmp_path / "out")]) == 0
    assert "fewer than the temporal blur's 7" in caplog.text and "replicate" in caplog.text


def test_odd_frame_sizes_are_kept_and_the_mp4_padding_recorded(tmp_path):
    clean = camera_clip(frames=6, size=40)[..., :27, :33]                # 33x27
    y = from_spec(f"{SPEC}:replicate", clean.shape).A(clean)
    np.save(tmp_path / "odd.npy", y.numpy())
    out = tmp_path / "out"
    assert main([str(tmp_path / "odd.npy"), "--degrade", SPEC, *REAL, "--out", str(out)]) == 0
    assert read_video(out / "frames", size=None).shape == (6, 3, 27, 33)
    assert read_video(out / "restored.mp4", size=None).shape == (6, 3, 28, 34)
    (change,) = report(out)["output_changes"]
    assert "restored.mp4 is 34x28" in change and "frames/ keeps 33x27" in change


def test_a_grey_video_comes_back_grey(tmp_path):
    path = blurred_npy(tmp_path / "grey.npy", grey=True, sigma=0.02)
    out = tmp_path / "out"
    assert main([str(path), "--degrade", SPEC, *REAL, "--out", str(out)]) == 0
    frames = read_video(out / "frames", size=None)
    assert torch.equal(frames[:, 0], frames[:, 1]) and torch.equal(frames[:, 1], frames[:, 2])
    assert any("grey" in change for change in report(out)["output_changes"])


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_runs_temporary_folder_is_removed_by_the_next_run(tmp_path, caplog):
    import socket

    host = socket.gethostname()
    stale, live, foreign = (tmp_path / f".out.tmp-{tag}" for tag in ("aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for folder, pid in ((stale, _dead_pid()), (live, sleeper.pid)):
            folder.mkdir()
            (folder / RUN_MARKER).write_text(json.dumps({"pid": pid, "host": host}))
        foreign.mkdir()                                                    # our pattern, not our marker
        path = blurred_npy(tmp_path / "y.npy")
        with caplog.at_level("WARNING", logger="engine.fileio"):
            assert main([str(path), "--degrade", SPEC, *REAL, "--out", str(tmp_path / "out")]) == 0
        assert not stale.exists() and live.exists() and foreign.exists()
        assert f"removed {stale}" in caplog.text
        assert RUN_MARKER not in {p.name for p in (tmp_path / "out").iterdir()}
    finally:
        sleeper.kill()


@pytest.mark.parametrize("choice, spec, expected", [
    ("auto", "temporal:uniform:7:replicate", "motion"),                # a video's held ends: its null modes
    ("auto", "temporal:uniform:7:zero+sr:2", "motion"),
    ("auto", "temporal:uniform:7:circular", "none"),                   # the paper's clips
    ("auto", "sr:4", "none"),                                          # no blur along time
    ("none", "temporal:uniform:7:replicate", "none"),                  # asked for
])
def test_the_temporal_prior_follows_the_boundary_in_time(choice, spec, expected):
    assert job_module.temporal_prior_for(choice, spec) == expected


def test_a_real_video_gets_the_motion_prior_and_the_papers_task_does_not(tmp_path):
    path = blurred_npy(tmp_path / "y.npy", sigma=0.01)
    assert main([str(path), "--degrade", SPEC, *REAL, "--out", str(tmp_path / "real")]) == 0
    assert report(tmp_path / "real")["settings"]["temporal_prior"] == "motion"
    np.save(tmp_path / "x.npy", camera_clip(frames=16, size=32).numpy())
    assert main([str(tmp_path / "x.npy"), "--simulate", "--task", "temporal-k7", *REAL, "--out", str(tmp_path / "paper")]) == 0
    assert report(tmp_path / "paper")["settings"]["temporal_prior"] == "none"


def test_the_residual_check_warns_for_a_wrong_blur_and_not_for_the_right_one(tmp_path, caplog):
    path = blurred_npy(tmp_path / "y.npy", spec="temporal:uniform:7")            # 8-bit, no noise added
    with caplog.at_level("INFO", logger="engine.realvideo"):
        assert main([str(path), "--degrade", "temporal:uniform:7", *REAL, "--out", str(tmp_path / "right")]) == 0
        right = caplog.text
        caplog.clear()
        assert main([str(path), "--degrade", "temporal:uniform:3+blur:gaussian:3.0:13", *REAL,
                     "--out", str(tmp_path / "wrong")]) == 0
    assert "does not explain INPUT" not in right and "data residual" in right
    assert "does not explain INPUT" in caplog.text


def test_the_residual_check_holds_a_capped_gamma_to_the_noise_it_weighs_for(caplog):
    """σ_y = 0.001, γ capped: the data weighed as for σ_w = 0.01. 0.005 is a fit (no warning, explained), 0.015 is not."""
    with caplog.at_level("INFO", logger="engine.realvideo"):
        fit = residual_record(torch.full((6,), 0.005), 0.001, weighed=0.01)
        assert "does not explain INPUT" not in caplog.text
        off = residual_record(torch.tensor([0.01, 0.02, 0.01, 0.02]), 0.001, weighed=0.01)
    assert fit["explained"] and fit["rms"] == pytest.approx(0.005) and fit["weighed"] == 0.01
    assert not off["explained"] and off["rms"] == pytest.approx((0.00025) ** 0.5)
    assert "does not explain INPUT" in caplog.text and "may be worse than INPUT" in caplog.text
    assert not residual_record(torch.full((6,), 0.005), 0.001)["explained"]          # no cap: 3σ_y is the bound


@pytest.mark.parametrize("windows", [[], ["--max-frames", "24"]])
def test_a_sharp_video_under_a_wider_blur_is_warned_about_whole_or_in_windows(tmp_path, caplog, windows):
    """INPUT not blurred along time at all, restored as if by 7 frames: the restoration cannot explain it."""
    sharp = blurred_npy(tmp_path / "y.npy", frames=32, spec="temporal:uniform:1", sigma=0.004)
    with caplog.at_level("WARNING", logger="engine.realvideo"):
        assert main([str(sharp), "--degrade", "temporal:uniform:7", *REAL, *windows, "--out", str(tmp_path / "out")]) == 0
    r = report(tmp_path / "out")
    assert r["residual"]["explained"] is False and r["residual"]["rms"] > r["residual"]["weighed"] > 0
    assert "does not explain INPUT" in caplog.text
    assert r.get("windows", {}).get("streamed", False) == bool(windows)


def _still_and_moving(sigma=0.004):
    """(operator, clean still clip, clean moving clip, their measurements): box of 3 frames with held ends,
    noise σ, 16 frames of 32²."""
    op = from_spec(f"{SPEC}:replicate", (16, 3, 32, 32))
    still = camera_clip(frames=16, size=32, pan=(0.0, 0.0))
    moving = camera_clip(frames=16, size=32, pan=(3.0, 2.0))
    noise = sigma * torch.randn(still.shape, generator=torch.Generator().manual_seed(5))
    return op, still, moving, (op.A(still) + noise).clamp(0, 1), (op.A(moving) + noise).clamp(0, 1)


def test_the_guard_keeps_a_still_clips_input_and_warns(caplog):
    op, still, _, y, _ = _still_and_moving()
    smoothed = torch.nn.functional.avg_pool2d(still, 3, stride=1, padding=1)       # a prior that costs detail
    with caplog.at_level("WARNING", logger="engine.realvideo"):
        x, record = input_guard(op, smoothed, y, 0.004)
    assert torch.equal(x, y) and record["frames_kept"] == list(range(16)) and record["alpha_mean"] == 1
    assert "16 kept as given" in caplog.text


def test_the_guard_judges_before_the_last_step_and_gives_it_to_both_sides():
    """finish (the last denoise) runs after the judging: the kept frames are finish(INPUT), the caller's
    restoration is left as it was, and α is that of the unfinished restoration."""
    op, still, _, y, _ = _still_and_moving()
    smoothed = torch.nn.functional.avg_pool2d(still, 3, stride=1, padding=1)
    before = smoothed.clone()
    finish = lambda v: v * 0.5                                                    # any step that changes residuals
    x, record = input_guard(op, smoothed, y, 0.004, finish=finish)
    plain, plain_record = input_guard(op, smoothed, y, 0.004)
    assert torch.equal(smoothed, before) and record == plain_record and record["alpha_mean"] == 1
    assert torch.allclose(x, finish(y)) and torch.equal(plain, y)


def test_the_guard_leaves_a_moving_clips_restoration(caplog):
    op, _, moving, _, y = _still_and_moving()
    with caplog.at_level("WARNING", logger="engine.realvideo"):
        x, record = input_guard(op, moving, y, 0.004)
    assert torch.equal(x, moving) and record["frames_kept"] == [] and record["alpha_mean"] == 0
    assert caplog.text == ""


def test_the_guard_blends_between_the_bounds():
    op, _, moving, _, _ = _still_and_moving()
    y = op.A(moving)
    e_in = frame_residuals(op, y, y)
    wrong = moving + 0.7 * (op.A(moving) - moving)      # A·wrong − y = 0.7·(A y − y): α = 1 − log(1/0.7)/log 1.5 ≈ 0.12
    x, record = input_guard(op, wrong, y, 0.0)
    alpha = ((x - wrong).flatten(1).norm(dim=1) / (y - wrong).flatten(1).norm(dim=1).clamp_min(1e-12))
    q = torch.log(e_in / frame_residuals(op, wrong, y)) / math.log(GUARD_SPAN)
    assert ((1 - q) < MOVING_CAP).all()                 # under the moving frames' cap: the residuals alone decide
    assert torch.allclose(alpha.double(), (1 - q).clamp(0, 1), atol=1e-4)
    assert 0 < record["alpha_mean"] < 1


def test_the_guard_keeps_only_a_still_input():
    """A moving clip's input explains its measurement better than a restoration that explains nothing (zeros),
    yet it is no still input: the frames take MOVING_CAP of it, none is kept."""
    op, _, moving, _, y = _still_and_moving()
    assert (frame_slopes(y) >= MOVING * 0.004).all()
    x, record = input_guard(op, torch.zeros_like(moving), y, 0.004)
    assert torch.allclose(x, MOVING_CAP * y) and record["frames_kept"] == []
    assert record["alpha_mean"] == pytest.approx(MOVING_CAP)


def test_the_still_cap_holds_alpha_by_the_input_s_slope():
    """α where the residuals alone keep the input (e_in = e_out): 1 up to a slope of STILL·σ, MOVING_CAP from
    MOVING·σ on, linear between; σ_y = 0 is taken as the 8-bit rounding's; a smaller α stays as it was."""
    from engine.noise import ROUNDING_FLOOR

    sigma = 0.004
    slopes = sigma * torch.tensor([0.0, STILL, (STILL + MOVING) / 2, MOVING, 4 * MOVING], dtype=torch.float64)
    same = torch.full((5,), 0.01, dtype=torch.float64)
    expected = torch.tensor([1.0, 1.0, (1 + MOVING_CAP) / 2, MOVING_CAP, MOVING_CAP], dtype=torch.float64)
    assert torch.allclose(guard_weights(same, same, slopes, sigma), expected, atol=1e-12)
    assert torch.allclose(guard_weights(same, same, slopes / sigma * ROUNDING_FLOOR, 0.0), expected, atol=1e-12)
    low = guard_weights(same, same / GUARD_SPAN ** 0.9, slopes, sigma)             # residuals' α 0.1 everywhere
    assert torch.allclose(low, torch.full_like(low, 0.1), atol=1e-12)


def test_frame_slopes_are_half_the_change_across_a_frame_with_the_ends_held():
    """A clip brightening by c per frame: slope c inside, c/2 at the two ends (their outer neighbour held)."""
    c = 0.01
    clip = (0.2 + c * torch.arange(6, dtype=torch.float64))[:, None, None, None].expand(6, 3, 4, 5)
    assert torch.allclose(frame_slopes(clip), torch.tensor([c / 2, c, c, c, c, c / 2], dtype=torch.float64),
                          atol=1e-15)


def test_the_guard_passes_an_operator_that_changes_the_frame_shape():
    op = from_spec("sr:2", (4, 3, 16, 16))
    x = torch.rand(4, 3, 16, 16)
    assert input_guard(op, x, op.A(x), 0.01) == (x, None)


def test_a_still_video_comes_back_as_given_and_says_so(tmp_path, caplog):
    """Every frame kept: the input, given the same last denoise as a restoration (engine.polish)."""
    still = camera_clip(frames=8, size=32, pan=(0.0, 0.0))
    np.save(tmp_path / "y.npy", from_spec(f"{SPEC}:replicate", still.shape).A(still).numpy())
    with caplog.at_level("WARNING", logger="engine.realvideo"):
        assert main([str(tmp_path / "y.npy"), "--degrade", SPEC, *REAL, "--out", str(tmp_path / "out")]) == 0
    r = report(tmp_path / "out")
    assert r["guard"]["frames_kept"] == list(range(8)) and "kept as given" in caplog.text
    restored = read_video(tmp_path / "out" / "frames", size=None)
    assert (restored - polish(GaussianPrior(), still, r["polish"]["sigma"])).abs().max() <= 1 / 255   # 8-bit rounding


def test_the_guard_only_logs_frames_it_blends(caplog):
    op, _, moving, _, _ = _still_and_moving()
    y = op.A(moving)
    with caplog.at_level("INFO", logger="engine.realvideo"):
        input_guard(op, moving + 0.7 * (y - moving), y, 0.0)                    # α ≈ 0.12 on every frame
    assert [r.levelname for r in caplog.records] == ["INFO"] and "0 kept as given or nearly (α ≥ ½), 16 blended" in caplog.text


def test_real_targets_reads_a_whole_video_from_the_frame_asked(tmp_path, monkeypatch):
    import bench.real_targets as real_targets
    from bench.real_clips import x264_roundtrip

    x264_roundtrip(camera_clip(frames=10, size=32), 18, mp4=tmp_path / "clip.mp4")
    video = read_video(tmp_path / "clip.mp4", size=None)
    monkeypatch.setattr(real_targets, "CLIPS_DIR", tmp_path)
    monkeypatch.setitem(real_targets.VIDEOS, "tiny", ("clip.mp4", 5, (0.5, 0.5)))
    assert torch.equal(real_targets.clean_video("tiny", 4, width=None, height=None, full=True), video[5:9])
    assert torch.equal(real_targets.clean_video("tiny", 4, width=None, height=None, full=True, start=1), video[1:5])
    whole = F.interpolate(video[2:6], size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(real_targets.clean_video("tiny", 4, width=16, height=None, full=True, start=2), whole.clamp(0, 1))
    with pytest.raises(InputError, match="run past its end"):
        real_targets.clean_video("tiny", 4, width=None, height=None, full=True, start=8)


def test_real_targets_crops_a_window_of_a_video_or_a_panned_photo(tmp_path, monkeypatch, capsys):
    import bench.real_targets as real_targets
    from bench.real_clips import clean_clip, x264_roundtrip

    x264_roundtrip(camera_clip(frames=10, size=32), 18, mp4=tmp_path / "clip.mp4")
    video = read_video(tmp_path / "clip.mp4", size=None)                           # [10, 3, 32, 32]
    monkeypatch.setattr(real_targets, "CLIPS_DIR", tmp_path)
    monkeypatch.setitem(real_targets.VIDEOS, "tiny", ("clip.mp4", 5, (0.5, 0.5)))
    window = real_targets.clean_video("tiny", 4, width=None, height=None, full=False, crop=(12, 8), at=(1.0, 0.25))
    assert torch.equal(window, video[5:9, :, 24:32, 5:17])                           # top 1·24, left 0.25·20
    centre = real_targets.clean_video("tiny", 3, width=None, height=None, full=False, start=2, crop=(12, 8))
    assert torch.equal(centre, video[2:5, :, 12:20, 10:22])
    photo = real_targets.clean_video("photo:camera", 3, width=None, height=None, full=False, crop=(24, 16))
    assert torch.equal(photo, clean_clip("photo:camera", frames=3, size=24)[:, :, 4:20, :])
    with pytest.raises(InputError, match="40x8 window"):
        real_targets.clean_video("tiny", 2, width=None, height=None, full=False, crop=(40, 8))
    with pytest.raises(InputError, match="no --start or --width"):
        real_targets.clean_video("photo:camera", 2, width=None, height=None, full=False, start=3, crop=(24, 16))
    flags = argparse.ArgumentParser()
    real_targets.add_clip_flags(flags, frames=4)
    for argv, why in ((["--clip", "photo:camera", "--at", "0", "0"], "give --crop"),
                      (["--clip", "photo:camera", "--crop", "24", "16", "--full"], "leave out --full")):
        with pytest.raises(InputError, match=why):
            real_targets.clip_of(flags.parse_args(argv))
    assert real_targets.main(["--clip", "photo:camera", "--at", "0", "0", "--no-save"]) == 2   # a message, no traceback
    assert "give --crop" in capsys.readouterr().err


@pytest.mark.parametrize("boundary", ["replicate", "zero"])
def test_the_streamed_guard_equals_the_whole_clips(boundary):
    spec = f"temporal:uniform:5:{boundary}"
    op = from_spec(spec, (14, 3, 16, 16))
    clip = torch.cat([camera_clip(frames=8, size=16, pan=(0.0, 0.0)), camera_clip(frames=6, size=16, pan=(3.0, 1.0))])
    y = op.A(clip) + 0.004 * torch.randn(clip.shape, generator=torch.Generator().manual_seed(2))
    smoothed = torch.nn.functional.avg_pool2d(clip, 3, stride=1, padding=1)       # a prior that costs detail
    restored = torch.cat([smoothed[:8], 0.5 * clip[8:]])                 # still part kept, moving part capped
    finish = lambda x: x.clamp(0.1, 0.9)                                           # a last step after the judging
    whole, record = input_guard(op, restored, y, 0.004, finish=finish)
    guard = StreamGuard(spec, (16, 16), 0.004)
    assert torch.equal(torch.stack(list(guard.tap(iter(y)))), y)                   # passed on as pulled
    streamed = torch.stack(list(guard.frames(iter(restored), finish)))
    streamed_record = guard.record()
    assert torch.allclose(streamed, whole, atol=1e-6)
    assert streamed_record["frames_kept"] == record["frames_kept"] and 0 < len(record["frames_kept"]) < 14
    assert streamed_record["alpha_mean"] == pytest.approx(record["alpha_mean"], abs=1e-9)
    assert len(guard.x) <= 2 * guard.reach                                          # frames dropped once used


def test_a_still_video_restored_in_windows_comes_back_as_given(tmp_path, caplog):
    still = camera_clip(frames=12, size=32, pan=(0.0, 0.0))
    np.save(tmp_path / "y.npy", from_spec(f"{SPEC}:replicate", still.shape).A(still).numpy())
    with caplog.at_level("WARNING", logger="engine.realvideo"):
        assert main([str(tmp_path / "y.npy"), "--degrade", SPEC, *REAL, "--max-frames", "8",
                     "--out", str(tmp_path / "out")]) == 0
    r = report(tmp_path / "out")
    assert r["windows"]["streamed"] and r["guard"]["frames_kept"] == list(range(12)) and "kept as given" in caplog.text
    weighed = r["residual"]["weighed"]
    assert weighed > 0 and r["polish"]["sigma"] == pytest.approx(POLISH_SPAN * weighed)
    kept = polish(GaussianPrior(), still, r["polish"]["sigma"])        # the input with the last denoise
    assert (read_video(tmp_path / "out" / "frames", size=None) - kept).abs().max() <= 1 / 255


def test_real_targets_relights_the_clean_clip_as_a_camera_records_a_fade_or_a_flash():
    import bench.real_targets as real_targets

    clip = torch.full((24, 3, 4, 5), 0.6)
    fade = real_targets.relit(clip, "fade")[:, 0, 0, 0]
    assert torch.allclose(fade[:9], torch.full((9,), 0.6)) and torch.allclose(fade[20:], torch.full((4,), 0.6))
    assert fade[14].item() == pytest.approx(0.6 * real_targets.FADE_FLOOR)        # the lowest light at 7N/12
    assert (fade[8:15].diff() < 0).all() and (fade[14:21].diff() > 0).all()
    flash = real_targets.relit(clip, "flash")[:, 0, 0, 0]
    lit = torch.nonzero(flash > 0.6 + 1e-6).flatten().tolist()
    assert lit == [10, 11, 12] and flash[10].item() == pytest.approx(0.6 * real_targets.FLASH_GAIN)
    assert real_targets.relit(torch.ones(24, 3, 2, 2), "flash").max() == 1                   # clipped as a sensor is
    with pytest.raises(InputError, match="unknown --light"):
        real_targets.relit(clip, "strobe")
