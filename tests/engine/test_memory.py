"""Memory: chunked scores equal whole-clip scores in flat memory; the planner's choice from a budget."""

import json

import numpy as np
import pytest
import torch

from bench.common import LiveBytes
from engine import memory
from engine.errors import InputError
from engine.metrics import clip_summary, psnr, ssim
from engine.solve import main
from engine.testclips import camera_clip
from engine.video_io import read_video
from engine.windows import REPEAT_SHARE, default_lag, default_lead, enough_window, least_window, split_spec


def _pair(frames, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ref = torch.rand(frames, 3, 24, 40, generator=gen, dtype=torch.float64)
    return (ref + 0.1 * torch.randn(ref.shape, generator=gen, dtype=torch.float64)).clamp(0, 1), ref


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_chunked_scores_equal_the_whole_clip(chunk):
    x, ref = _pair(10)
    whole = len(x)
    for metric in (psnr, ssim):
        np.testing.assert_allclose(metric(x, ref, chunk=chunk).numpy(), metric(x, ref, chunk=whole).numpy(),
                                   rtol=0, atol=1e-12)
    assert clip_summary(x, ref, chunk=chunk)["ssim"] == pytest.approx(clip_summary(x, ref, chunk=whole)["ssim"],
                                                                      rel=0, abs=1e-12)


def test_an_8bit_reference_scores_as_its_decoded_floats():
    x, ref = _pair(5)
    ref8 = (ref * 255).round().to(torch.uint8)
    decoded = ref8.to(torch.float32) / 255
    assert clip_summary(x, ref8) == clip_summary(x, decoded)


def _work(metric, x, ref, chunk) -> int:
    """Peak bytes of the tensors `metric` makes, less the inputs (the counter meets them through their views)."""
    with LiveBytes() as counter:
        metric(x, ref, chunk=chunk)
    return counter.peak - x.untyped_storage().nbytes() - ref.untyped_storage().nbytes()


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_the_scoring_peak_does_not_grow_with_the_clip(metric):
    short, long = [tuple(t.float() for t in _pair(n, seed=n)) for n in (4, 16)]
    chunked = [_work(metric, *clip, chunk=2) for clip in (short, long)]
    assert chunked[1] <= 1.05 * chunked[0]
    whole = [_work(metric, *clip, chunk=len(clip[0])) for clip in (short, long)]
    assert whole[1] > 3 * whole[0]                      # the counter sees a clip-sized work space


@pytest.fixture
def no_process(monkeypatch):
    """The planner's fixed part without this test process (a constant, not whatever pytest holds)."""
    monkeypatch.setattr(memory, "process_bytes", lambda device: 0)


FRAME = (272, 640)


def _peak_of(frames, buffers, **kw):
    net = memory.network_bytes(FRAME, prior="gaussian", checkpoint=False, batch=16, frames=frames)
    return memory.predicted_peak(frames, FRAME, fixed=memory.ALLOCATOR_SLACK, network=net, buffers=buffers)


def test_the_whole_video_when_it_fits(no_process):
    need = _peak_of(250, memory.WHOLE_BUFFERS)
    chosen = memory.plan(250, FRAME, budget=need, device="cpu", prior="gaussian", context=6, least_window=7)
    assert chosen.window is None and chosen.whole_bytes == need
    assert "whole video" in chosen.line() and chosen.record()["choice"] == "whole video"


@pytest.mark.parametrize("frames,budget_gb", [(250, 3.0), (1000, 7.0), (1000, 1.0)])
def test_windows_of_the_largest_w_that_fits(no_process, frames, budget_gb):
    budget = budget_gb * 1e9
    chosen = memory.plan(frames, FRAME, budget=budget, device="cpu", prior="gaussian", context=6, least_window=7)
    w = chosen.window
    assert w is not None and 7 <= w < frames
    assert _peak_of(w + 6, memory.WINDOW_BUFFERS) <= budget < _peak_of(w + 7, memory.WINDOW_BUFFERS)
    assert chosen.window_bytes <= budget < chosen.whole_bytes
    assert f"windows of {w} frames" in chosen.line()


@pytest.mark.parametrize("frames", [400, 1000, 4000])
def test_windows_stop_growing_where_longer_ones_buy_nothing(no_process, frames):
    """Past the longest useful window the plan, and so the peak, no longer depends on the video's length."""
    term = split_spec("temporal:uniform:7:replicate")[0]
    longest = enough_window(term)
    chosen = memory.plan(frames, FRAME, budget=8e9, device="cpu", prior="gaussian", context=term.context,
                         least_window=least_window(term), longest_window=longest)
    assert chosen.window == longest and "longer ones buy nothing" in chosen.line()
    assert chosen.window_bytes == _peak_of(longest + term.context, memory.WINDOW_BUFFERS)
    assert chosen.record()["longest_window"] == longest
    tight = memory.plan(frames, FRAME, budget=_peak_of(100, memory.WINDOW_BUFFERS), device="cpu", prior="gaussian",
                        context=term.context, least_window=least_window(term), longest_window=longest)
    assert tight.window == 100 - term.context and "buy nothing" not in tight.line()     # the budget still rules


def test_the_longest_window_solves_each_frame_at_most_1_15_times():
    for width in (3, 7, 15):
        term = split_spec(f"temporal:uniform:{width}:replicate")[0]
        w, repeated = enough_window(term), default_lag(term) + default_lead(term)
        assert w / (w - repeated) <= 1 + REPEAT_SHARE < (w - 1) / (w - 1 - repeated)


def test_nothing_fits_is_one_line(no_process):
    with pytest.raises(InputError) as err:
        memory.plan(250, FRAME, budget=0.2e9, device="cpu", prior="gaussian", context=6, least_window=7)
    assert "\n" not in str(err.value) and "windows of 7 frames need" in str(err.value)
    with pytest.raises(InputError, match="--baselines need the whole clip"):
        memory.plan(250, FRAME, budget=3e9, device="cpu", prior="gaussian", windows_allowed="--baselines need the "
                                                                                            "whole clip")


def test_a_larger_batch_or_a_checkpoint_needs_more():
    small = memory.network_bytes(FRAME, prior="ffdnet", checkpoint=False, batch=4, frames=100)
    assert memory.network_bytes(FRAME, prior="ffdnet", checkpoint=False, batch=16, frames=100) == 4 * small
    assert memory.network_bytes(FRAME, prior="ffdnet", checkpoint=False, batch=16, frames=2) == small // 2
    tiles = memory.network_bytes((720, 1280), prior="ffdnet", checkpoint=True, batch=16, frames=100)
    assert tiles == 16 * memory.ADM_TILE_BYTES["fp32"]


# ── the command ─────────────────────────────────────────────────────────────

N, SIZE, W = 20, 32, 9
RUN = ["--simulate", "--degrade", "temporal:uniform:3", "--prior", "gaussian", "--nfe", "2", "--cg-iters", "2",
       "--device", "cpu",
       "--batch", "4"]


@pytest.fixture(scope="module")
def clip_npy(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.npy"
    np.save(path, camera_clip(frames=N, size=SIZE).numpy())
    return path


def _budget_for_windows(window: int) -> float:
    """GB that hold windows of `window` free frames of this clip (2 pinned) and not of one more (no process part),
    with the temporal prior a video's held ends get (`motion`)."""
    def peak(frames):
        net = memory.network_bytes((SIZE, SIZE), prior="gaussian", checkpoint=False, batch=4, frames=frames)
        return memory.predicted_peak(frames, (SIZE, SIZE), fixed=memory.ALLOCATOR_SLACK, network=net,
                                     buffers=memory.WINDOW_BUFFERS + memory.MOTION_BUFFERS)   # a video: "motion"

    return (peak(window + 2) + peak(window + 3)) / 2e9


def _run(tmp_path, clip, name, *extra):
    out = tmp_path / name
    assert main([str(clip), *RUN, "--out", str(out), *extra]) == 0
    return json.loads((out / "metrics.json").read_text()), read_video(out / "frames", size=None)


def test_a_planned_run_is_the_run_of_its_plan(tmp_path, clip_npy, no_process):
    planned, frames = _run(tmp_path, clip_npy, "planned", "--memory-budget", repr(_budget_for_windows(W)))
    assert planned["settings"]["memory_plan"]["window"] == W and planned["windows"]["max_frames"] == W
    explicit, expected = _run(tmp_path, clip_npy, "explicit", "--max-frames", str(W))
    assert torch.equal(frames, expected)
    assert planned["restored"]["psnr"] == explicit["restored"]["psnr"]

    whole, whole_frames = _run(tmp_path, clip_npy, "whole", "--memory-budget", "1000")
    assert whole["settings"]["memory_plan"]["window"] is None and "windows" not in whole
    assert not torch.equal(whole_frames, frames)        # the windows differ from the whole video: the test can fail
    unplanned, unplanned_frames = _run(tmp_path, clip_npy, "default")
    assert torch.equal(whole_frames, unplanned_frames)


def test_a_budget_below_the_default_windows_plans_the_shortest_lag(tmp_path, clip_npy, no_process, caplog):
    """Windows of 5 frames fit and the default ones (8: a lag of 6 and a lead of 1 for a blur over 3 frames) do
    not: the plan takes the least lag (w − 1 = 2, no lead), says so, and the run holds to it."""
    with caplog.at_level("WARNING", logger="engine.job_checks"):
        planned, frames = _run(tmp_path, clip_npy, "short", "--memory-budget", repr(_budget_for_windows(5)))
    plan = planned["settings"]["memory_plan"]
    assert plan["window"] == 5 and (plan["lag"], plan["lead"]) == (2, 0)
    assert (planned["windows"]["lag"], planned["windows"]["lead"], planned["windows"]["max_frames"]) == (2, 0, 5)
    assert frames.shape[0] == N and "do not fit the memory budget" in caplog.text


def test_nothing_fits_stops_before_any_work(tmp_path, clip_npy, no_process, capsys, monkeypatch):
    import engine.job

    monkeypatch.setattr(engine.job, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    assert main([str(clip_npy), *RUN, "--out", str(out), "--memory-budget", "0.001"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: not enough memory") and "\n" not in err and "--memory-budget" in err
    assert not out.exists() and not any(tmp_path.iterdir())
