"""The network in micro-batches of frames and in tiles of a frame (engine.tiling)."""

import pytest
import torch

from engine.errors import InputError
from engine.operators import from_spec
from engine.priors import GaussianPrior
from engine.runtime import Solver, SolverConfig
from engine.sampler import sample
from engine.testclips import camera_clip
from engine.tiling import TiledEps, micro_batched, ramp, tile_starts
from engine.unet import ADMConfig, ADMUNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def unet64():
    torch.manual_seed(0)
    return ADMUNet(ADMConfig.preset("tiny")).double().eval()


def _eps(model):
    @torch.no_grad()
    def eps(x, t):
        return model(x, t)
    return eps


@pytest.mark.parametrize("batch", [1, 3, 5, 16])
def test_the_result_does_not_depend_on_the_network_batch(unet64, batch):
    """Micro-batches of B frames (dividing 10 or not) give the whole-batch sampler's clip in fp64."""
    clean = camera_clip(frames=10, size=32, dtype=torch.float64)
    op = from_spec("temporal:uniform:3+sr:2", clean.shape, dtype=torch.float64)
    y = op.A(clean)
    whole = sample(_eps(unet64), y, op, nfe=3, eta=0.5, cg_iters=2, seed=1)
    sliced = sample(micro_batched(_eps(unet64), batch), y, op, nfe=3, eta=0.5, cg_iters=2, seed=1)
    assert ((sliced - whole).norm() / whole.norm()).item() < 1e-12


def test_micro_batches_call_the_network_on_at_most_b_frames():
    sizes = []

    def eps(x, t):
        sizes.append(x.shape[0])
        return x

    micro_batched(eps, 4)(torch.zeros(10, 3, 2, 2), torch.zeros(10, dtype=torch.long))
    assert sizes == [4, 4, 2]


def test_tile_starts_cover_the_frame_with_the_overlap():
    for length, tile, overlap in [(32, 32, 8), (48, 32, 8), (80, 32, 8), (640, 256, 64), (272, 256, 64), (33, 32, 0)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))     # neighbours overlap enough
        assert len(starts) == 1 or len(tile_starts(length, tile, overlap)) == len(set(starts))


def test_ramps_sum_to_one_where_they_overlap():
    up, down = ramp(32, 8, rise=True, fall=False), ramp(32, 8, rise=False, fall=True)
    torch.testing.assert_close(down[-8:] + up[:8], torch.ones(8, dtype=torch.float64))


def test_one_tile_is_the_network_itself(unet64):
    x, t = torch.randn(5, 3, 32, 32, dtype=torch.float64), torch.full((5,), 300)
    assert torch.equal(TiledEps(_eps(unet64), (32, 32), 32, overlap=8, batch=16)(x, t), _eps(unet64)(x, t))


def test_tiles_are_placed_and_blended_exactly():
    """A pixel-wise ε model gives the same ε tiled or whole: every pixel's weights sum to one, and each
    tile's ε lands where it was cut."""
    def pointwise(x, t):
        return torch.cat([2 * x + t[:, None, None, None], x.square()], dim=1)        # [N, 6, H, W]

    x, t = torch.randn(3, 3, 48, 80, dtype=torch.float64), torch.tensor([5, 50, 500])
    tiled = TiledEps(pointwise, (48, 80), 32, overlap=8, batch=4)
    assert tiled.tiles == 2 * 3
    torch.testing.assert_close(tiled(x, t), pointwise(x, t), rtol=1e-12, atol=1e-12)


def test_tiles_leave_no_seam():
    """On a smooth video, a tiled prior's restoration is no rougher across tile borders than inside tiles."""
    clean = camera_clip(frames=8, size=96, pan=(1.0, 0.5))[..., 16:80, :]             # 64×96, smooth photo pan
    op = from_spec("temporal:uniform:3", clean.shape)
    y = op.A(clean) + 0.02 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    tiled = TiledEps(GaussianPrior(), (64, 96), 32, overlap=8, batch=16)
    out = sample(tiled, y, op, nfe=10, eta=0.5, cg_iters=3, gamma=1.0, seed=0)
    dx = (out[..., 1:] - out[..., :-1]).square().mean(dim=(0, 1, 2))                  # [W − 1]
    borders = sorted({c for c in tiled.cols[1:]} | {c + 32 - 1 for c in tiled.cols[:-1]})
    inside = [c for c in range(95) if all(abs(c - b) > 2 for b in borders)]
    assert dx[borders].mean() <= 1.2 * dx[inside].mean()


def test_the_solver_tiles_frames_larger_than_the_network():
    torch.manual_seed(0)
    model = ADMUNet(ADMConfig.preset("tiny")).eval()
    cfg = SolverConfig(spec="temporal:uniform:3", frames=4, size=(40, 56), nfe=2, cg_iters=1, batch=3)
    solver = Solver(model, cfg)
    clean = camera_clip(frames=4, size=56)[..., 8:48, :]
    out = solver.solve(solver.op.A(clean), seed=0)
    assert out.shape == (4, 3, 40, 56) and torch.isfinite(out).all()


def test_an_axis_shorter_than_the_tile_is_one_tile():
    """A 24×80 frame under 32-pixel tiles: one row of 24×32 tiles (the network is convolutional)."""
    def pointwise(x, t):
        return 3 * x

    tiled = TiledEps(pointwise, (24, 80), 32, overlap=8, batch=4)
    assert tiled.tile == (24, 32) and tiled.rows == [0] and tiled.tiles == 3
    x = torch.randn(2, 3, 24, 80, dtype=torch.float64)
    torch.testing.assert_close(tiled(x, torch.tensor([1, 2])), 3 * x, rtol=1e-12, atol=1e-12)


def test_bad_tiles_are_one_clear_line():
    with pytest.raises(InputError, match="overlap must lie in"):
        TiledEps(lambda x, t: x, (64, 64), 32, overlap=32, batch=4)
    with pytest.raises(InputError, match="smaller than the network's 32-pixel tiles"):
        tile_starts(24, 32, 8)
