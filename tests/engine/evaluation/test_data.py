"""engine.evaluation.data (python -m engine.data): the paper's DAVIS preparation (crop, size, clip count, remainder dropped), the cache and its resumption."""
import numpy as np
import pytest
import torch
from PIL import Image

import engine.evaluation.data as data
from engine.evaluation.data import Dataset, Prep, find_sequences, prepare_frames
from engine.errors import InputError
from engine.testclips import camera_clip

W, H = 60, 48           # DAVIS 480p frames (854x480, 600x480, ...) at a tenth of the size
SMALL = Prep(size=16, frames=4)
LENGTHS = {"bear": 9, "car-turn": 5, "dog": 3}  # → 2, 1 and 0 clips of 4 frames


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    """A DAVIS-like root: JPEGImages/480p/<seq>/00000.jpg … with LENGTHS textured frames each,
    brighter with time (so frame order is visible after resizing)."""
    root = tmp_path_factory.mktemp("data") / "DAVIS"
    photo = camera_clip("astronaut", frames=1, size=W, pan=(0, 0))[0, :, :H].permute(1, 2, 0).numpy()
    for i, (seq, n) in enumerate(LENGTHS.items()):
        folder = root / "JPEGImages" / "480p" / seq
        folder.mkdir(parents=True)
        for k in range(n):
            frame = (np.clip(0.5 * photo + 0.04 * k + 0.05 * i, 0, 1) * 255).round().astype(np.uint8)
            Image.fromarray(frame).save(folder / f"{k:05d}.jpg", quality=95)
    (root / "Annotations").mkdir()
    return root


def test_paper_defaults():
    assert Prep() == Prep(size=256, crop=None, frames=16)
    frame = torch.rand(1, 3, 480, 854)                       # a DAVIS 480p frame
    centre = frame[..., 187:667]                             # the paper's centred 480x480 crop
    torch.testing.assert_close(prepare_frames(frame, Prep(size=480)), centre, rtol=0, atol=0)
    torch.testing.assert_close(prepare_frames(frame, Prep(size=480, crop=480)), centre, rtol=0, atol=0)
    assert prepare_frames(frame[..., :96, :171], Prep()).shape == (1, 3, 256, 256)


def test_davis_clip_count_size_and_remainder(davis, tmp_path):
    ds = Dataset(davis, tmp_path / "cache", SMALL)
    assert [name for name, _ in ds.sequences] == sorted(LENGTHS)
    assert ds.count() == 3
    clips = list(ds.clips())
    assert [c.name for c in clips] == ["bear_000", "bear_001", "car-turn_000"]
    for clip in clips:
        assert clip.video.shape == (4, 3, 16, 16) and clip.video.dtype == torch.float32
        assert 0 <= clip.video.min() and clip.video.max() <= 1
        assert (clip.video.mean(dim=(1, 2, 3)).diff() > 0).all()  # frames in time order
    assert clips[1].video.mean() > clips[0].video.mean()           # bear_001 holds frames 4–7 (frame 8 dropped)


def test_davis_crop_is_centred(davis, tmp_path):
    """The centre square of each JPEG, resized bilinearly with antialiasing (as PIL does)."""
    clip = next(Dataset(davis, tmp_path / "cache", SMALL).clips()).video
    jpeg = Image.open(davis / "JPEGImages/480p/bear/00002.jpg")
    side = min(W, H)
    left = (W - side) // 2
    want = np.asarray(jpeg.crop((left, 0, left + side, side)).resize((16, 16), Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(clip[2].permute(1, 2, 0).numpy(), want, atol=3 / 255)
    cropped = next(Dataset(davis, tmp_path / "cache2", Prep(size=16, crop=32, frames=4)).clips()).video
    want = np.asarray(jpeg.crop(((W - 32) // 2, (H - 32) // 2, (W + 32) // 2, (H + 32) // 2)).resize((16, 16), Image.BILINEAR))
    np.testing.assert_allclose(cropped[2].permute(1, 2, 0).numpy(), want / 255.0, atol=3 / 255)


def test_crop_larger_than_frames(davis, tmp_path):
    with pytest.raises(InputError, match="smaller than the 64x64 crop"):
        list(Dataset(davis, tmp_path / "cache", Prep(size=16, crop=64, frames=4)).clips())


def test_interrupted_preparation_resumes(davis, tmp_path, monkeypatch):
    reference = {c.name: c.video for c in Dataset(davis, tmp_path / "fresh", SMALL).clips()}
    real = data.iter_frames
    decoded = []

    def failing(path):
        if path.name == "car-turn":
            raise KeyboardInterrupt  # killed while preparing the second sequence
        decoded.append(path.name)
        return real(path)

    monkeypatch.setattr(data, "iter_frames", failing)
    with pytest.raises(KeyboardInterrupt):
        list(Dataset(davis, tmp_path / "cache", SMALL).clips())
    monkeypatch.setattr(data, "iter_frames", lambda path: decoded.append(path.name) or real(path))
    decoded.clear()
    resumed = {c.name: c.video for c in Dataset(davis, tmp_path / "cache", SMALL).clips()}
    assert decoded == ["car-turn", "dog"]       # bear was cached whole
    assert resumed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], rtol=0, atol=0)
    decoded.clear()
    assert len(list(Dataset(davis, tmp_path / "cache", SMALL).clips())) == 3 and decoded == []


def test_cache_made_differently_is_refused(davis, tmp_path):
    list(Dataset(davis, tmp_path / "cache", SMALL).clips(limit=1))
    with pytest.raises(InputError, match="cache made with prep"):
        Dataset(davis, tmp_path / "cache", Prep(size=8, frames=4))


def test_limit_and_skip(davis, tmp_path):
    ds = Dataset(davis, tmp_path / "cache", SMALL)
    assert [c.name for c in ds.clips(limit=2)] == ["bear_000", "bear_001"]
    assert [c.name for c in ds.clips(limit=2, skip={"bear_000"})] == ["bear_001"]


def test_npy_clips_and_videos(tmp_path):
    from engine.video_io import write_video

    src = tmp_path / "src"
    src.mkdir()
    clip = camera_clip("coffee", frames=9, size=24)
    np.save(src / "public.npy", clip.permute(1, 0, 2, 3).numpy())  # the public code's [3, N, H, W]
    write_video(src / "movie.mp4", camera_clip("chelsea", frames=8, size=24))
    ds = Dataset(src, tmp_path / "cache", Prep(size=24, frames=4))
    assert ds.count() is None  # videos need decoding to count
    clips = {c.name: c.video for c in ds.clips()}
    assert sorted(clips) == ["movie_000", "movie_001", "public_000", "public_001"]
    torch.testing.assert_close(clips["public_001"], clip[4:8])
    assert clips["movie_000"].shape == (4, 3, 24, 24)
    # the cache's clips folder is itself a source
    again = {c.name: c.video for c in Dataset(tmp_path / "cache" / "clips", tmp_path / "cache2", Prep(size=24, frames=4)).clips()}
    torch.testing.assert_close(again["public_001_000"], clips["public_001"])


def test_sources_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        find_sequences(tmp_path / "missing")
    with pytest.raises(InputError, match="no sequences"):
        find_sequences(tmp_path)
    np.save(tmp_path / "a.npy", np.zeros((3, 4, 8, 8), np.float32))
    (tmp_path / "a.gif").write_bytes(b"")
    with pytest.raises(InputError, match="several sequences named a"):
        find_sequences(tmp_path)


def test_single_frame_folder_and_natural_order(tmp_path):
    for k in (1, 2, 10):  # natural order: 1, 2, 10 (not 1, 10, 2)
        Image.fromarray(np.full((8, 8, 3), 20 * k, np.uint8)).save(tmp_path / f"f{k}.png")
    (name, path), = find_sequences(tmp_path)
    frames = torch.stack(list(data.iter_frames(path)))
    assert name == tmp_path.name and frames[:, 0, 0, 0].tolist() == [20, 40, 200]


def test_command_line(davis, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert data.main([str(davis), "--cache", str(cache), "--size", "16", "--frames", "4"]) == 0
    assert capsys.readouterr().out.strip() == f"3 clips in {cache}"
    assert len(list((cache / "clips").glob("*.npy"))) == 3
    assert data.main([str(tmp_path / "nothing"), "--cache", str(cache)]) == 2
    assert capsys.readouterr().err.startswith("error:")
