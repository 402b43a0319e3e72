"""bench.free_modes: the band decomposition, the motion-compensated mean, and a whole run on a small clip."""

import json

import pytest
import torch

from bench.free_modes import (EDGES, band_errors, band_projectors, clean_jitter, main, mc_mean, neighbour_flows,
                               replace_modes)
from engine.operators import from_spec

SPEC = "temporal:uniform:7:replicate"


def test_band_errors_sum_to_the_mse_and_each_band_holds_its_own_modes():
    shape = (20, 3, 6, 5)
    op = from_spec(SPEC, shape, kernels="torch")
    g = torch.Generator().manual_seed(0)
    x, clean = torch.rand(shape, generator=g, dtype=torch.float64), torch.rand(shape, generator=g, dtype=torch.float64)
    projectors = band_projectors(op)
    parts = band_errors(x, clean, projectors)
    assert len(parts) == len(EDGES) - 1 and min(parts) > 0
    assert sum(parts) == pytest.approx(((x - clean) ** 2).mean().item(), rel=1e-12)
    first = projectors[0]
    inside = first(x - clean)                                  # a vector of the first band only
    assert band_errors(clean + inside, clean, projectors)[1:] == pytest.approx([0] * (len(EDGES) - 2), abs=1e-24)


def test_replace_modes_swaps_the_projected_part_only():
    shape = (14, 3, 4, 4)
    op = from_spec(SPEC, shape, kernels="torch")
    project = band_projectors(op)[0]
    g = torch.Generator().manual_seed(1)
    x, source = torch.rand(shape, generator=g, dtype=torch.float64), torch.rand(shape, generator=g, dtype=torch.float64)
    out = replace_modes(x, source, project)
    torch.testing.assert_close(project(out), project(source), rtol=0, atol=1e-12)
    torch.testing.assert_close(out - project(out), x - project(x), rtol=0, atol=1e-12)


def test_mc_mean_keeps_a_still_clip_and_follows_a_moving_one():
    g = torch.Generator().manual_seed(2)
    frame = torch.rand(1, 3, 40, 48, generator=g)
    still = frame.expand(9, -1, -1, -1).contiguous()
    torch.testing.assert_close(mc_mean(still, neighbour_flows(still, 3)), still, rtol=0, atol=1e-5)   # float32 grid
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(60.0), indexing="ij")
    scene = torch.stack([0.5 + 0.3 * torch.sin(xs / 4 + c) * torch.cos(ys / 5 - c) for c in range(3)])
    moving = torch.stack([scene[..., n:n + 48] for n in range(9)])       # the content moves 1 pixel left a frame
    inside = (..., slice(6, -6), slice(8, -8))                         # away from the borders the warp repeats
    error = lambda x: (x[inside] - moving[inside]).abs().mean()
    followed, unmoved = neighbour_flows(moving, 3), neighbour_flows(still, 3)    # the motion, and none
    assert error(mc_mean(moving, followed)) < 0.01 and error(mc_mean(moving, unmoved)) > 2 * error(mc_mean(moving, followed))
    jitter = torch.stack([-torch.arange(9.0), torch.zeros(9)], 1)      # the same motion as global jitter: exact
    assert error(mc_mean(moving, unmoved, jitter)) < 1e-5
    exact = {j: torch.tensor([-float(j), 0.0]).reshape(1, 2, 1, 1).expand(9, 2, 40, 48) for j in followed}
    assert clean_jitter(exact, exact).abs().max() == 0
    torch.testing.assert_close(clean_jitter({j: torch.zeros_like(f) for j, f in exact.items()}, exact), jitter)


def test_a_run_on_a_small_clip_scores_every_estimate(capsys):
    main(["--clip", "photo:coffee", "--frames", "10", "--height", "32", "--prior", "gaussian", "--nfe", "2", "--json"])
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    names = [r["estimate"] for r in found]
    assert names == ["input", "loop", "motion", "y in free", "mc mean", "mc mean, fitted jitter", "mc mean, clean jitter",
                     "mc mean, clean flow", "clean in free"]
    by = {r["estimate"]: r for r in found}
    free_bands = sum(1 for e in EDGES[1:] if e <= 0.03)                  # the bands under DEFAULT_FREE
    oracle, loop = by["clean in free"]["band_mse"], by["loop"]["band_mse"]
    assert sum(oracle[:free_bands]) < 0.05 * sum(loop[:free_bands])        # the oracle's free modes are the clean clip's
    assert by["input"]["psnr"] == pytest.approx(by["input"]["input_psnr"])
