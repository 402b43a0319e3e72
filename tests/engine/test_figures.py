"""engine.figures: the comparison grid with its enlarged crop, and the PIL line plots."""
import math
import os
import stat

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.figures import (BOX_COLOUR, GAP, LABEL_HEIGHT, MARGIN, MAX_WIDTH, PALETTE, _ticks, comparison_grid,
                            contact_sheet, line_plot, save_png, tile_size)
from engine.testclips import camera_clip


@pytest.fixture(scope="module")
def clip():
    return camera_clip("chelsea", frames=6, size=32)


def test_grid_layout_and_enlarged_crop(clip):
    tile, frame_ids = 32, [0, 2, 4]                                     # the frames' own size: the default
    box = (0.25, 0.5, 0.25, 0.25)
    grid = comparison_grid([("clean", clip), ("half", clip * 0.5)], frame_ids, box=box)
    assert grid.shape == (2 * (LABEL_HEIGHT + tile), len(frame_ids) * tile + GAP + tile, 3) and grid.dtype == np.uint8
    # the last tile of a row is the region (rows 8–15, columns 16–23) of the middle frame, enlarged 4x (nearest)
    region = clip[2, :, 8:16, 16:24]
    want = F.interpolate(region[None], size=(tile, tile), mode="nearest")[0].permute(1, 2, 0).numpy()
    zoom = grid[LABEL_HEIGHT:LABEL_HEIGHT + tile, -tile:] / 255.0
    np.testing.assert_allclose(zoom, want, atol=0.5 / 255)
    # the region is outlined in red on the middle frame only
    red = np.all(grid[LABEL_HEIGHT:LABEL_HEIGHT + tile, : len(frame_ids) * tile] == BOX_COLOUR, axis=-1)
    rows, columns = np.nonzero(red)
    assert (columns.min(), columns.max()) == (tile + 16, tile + 23)   # middle tile starts at column `tile`
    assert (rows.min(), rows.max()) == (8, 15)


def test_grid_rows_of_other_sizes(clip):
    measured = clip[:, :, ::4, ::4]  # e.g. a 4x super-resolution measurement
    grid = comparison_grid([("clean", clip), ("measured", measured)], [0, 5], tile=(24, 24))
    assert grid.shape == (2 * (LABEL_HEIGHT + 24), 2 * 24 + GAP + 24, 3)


def test_sheets_keep_the_frames_size_up_to_a_total_width():
    """comparison.png tiles were 128 px whatever the frames: 256-px frames lost half their pixels."""
    big = torch.rand(4, 3, 256, 320)
    sheet = contact_sheet([("clean", big), ("measured", big[:, :, ::4, ::4])], [0, 1, 2, 3])
    assert sheet.shape == (2 * (LABEL_HEIGHT + 256), 4 * 320, 3)
    assert np.array_equal(sheet[LABEL_HEIGHT:LABEL_HEIGHT + 256, :320],
                          (big[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    wide = torch.rand(16, 3, 720, 1280)                                 # 16 columns of 720p: shrunk to fit
    assert tile_size([("clean", wide)], 16) == (72, 128) and tile_size([("clean", wide)], 1) == (720, 1280)
    grid = comparison_grid([("clean", wide)], list(range(4)))
    assert grid.shape[1] <= MAX_WIDTH and grid.shape[1] > MAX_WIDTH - 5 * 8


def test_line_plot_draws_every_series(tmp_path):
    xs = list(range(8))
    image = line_plot([("a", xs, [30.0, 31, 32, math.inf, 33, 31, 30, 29]), ("b", xs, [25.0] * 8)],
                      title="PSNR per frame", xlabel="frame", ylabel="PSNR [dB]", references=[("clean", 27.5)],
                      size=(500, 300))
    assert image.shape == (300, 500, 3) and image.dtype == np.uint8
    # the plot frame: MARGIN on three sides, the legend (44 + 7 px per character of "clean") on the right
    left, top, bottom = MARGIN["left"], MARGIN["top"], 300 - MARGIN["bottom"]
    right = 500 - MARGIN["right"] - (44 + 7 * len("clean"))
    inside = image[top + 1:bottom, left + 1:right]                      # away from the legend's swatches
    yt = _ticks(25.0, 33.0)                                             # the y axis spans yt[0] … yt[-1]

    def row_of(y):                                                      # larger values higher up
        return bottom - (y - yt[0]) / (yt[-1] - yt[0]) * (bottom - top)

    a, b = (np.all(inside == colour, axis=-1) for colour in PALETTE[:2])
    assert a.sum() > 50 and b.sum() > 50                                # both lines are drawn in the frame
    # "b" is flat at 25: every pixel of it lies at that height (an inverted y axis puts it near the top)
    assert np.all(np.abs(np.nonzero(b)[0] + top + 1 - row_of(25.0)) <= 3)
    # "a" passes through (5, 31): its pixels in that column lie at the height of 31
    column = round(left + 5 / 7 * (right - left)) - (left + 1)
    rows = np.nonzero(a[:, column])[0] + top + 1
    assert rows.size and np.all(np.abs(rows - row_of(31.0)) <= 4), rows
    assert save_png(tmp_path / "plot.png", image).stat().st_size > 0


@pytest.mark.parametrize("ys", [[math.nan, math.inf], [2.0, 2.0, 2.0], [0.0, 0.0]])
def test_line_plot_edge_cases(ys):
    image = line_plot([("s", range(len(ys)), ys)], size=(320, 200))
    assert image.shape == (200, 320, 3)


def test_ticks_are_round_and_cover_the_range():
    for lo, hi in [(0.0, 1.0), (23.7, 31.2), (-0.003, 0.017), (5.0, 5.0), (950.0, 0.0 + 1000)]:
        ticks = _ticks(lo, hi)
        assert ticks[0] <= lo and ticks[-1] >= hi and 3 <= len(ticks) <= 12
        step = ticks[1] - ticks[0]
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-9
        assert np.allclose(np.diff(ticks), step)


def test_saved_pictures_get_the_umask_permissions(tmp_path):
    """comparison.png was 0600 (a mkstemp name) beside 0644 files: engine.fileio gives the umask's."""
    old = os.umask(0o022)
    try:
        path = save_png(tmp_path / "comparison.png", np.zeros((4, 4, 3), np.uint8))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and [p.name for p in tmp_path.iterdir()] == ["comparison.png"]
