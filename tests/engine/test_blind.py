"""Blind temporal deblurring (the paper's Algorithm 2): the PSF fit, the two stages, and the command line."""

import json

import numpy as np
import pytest
import torch

from engine import blind
from engine.blind import blind_deblur, fit_psf, psf_family
from engine.errors import InputError
from engine.operators import from_spec
from engine.priors import GaussianPrior
from engine.runtime import SolverConfig
from engine.solve import main
from engine.testclips import camera_clip

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--nfe", "3", "--cg-iters", "2", "--size", "32"]


@pytest.fixture(scope="module")
def clip():
    return camera_clip(frames=16, size=32).double()


def blurred(x, spec):
    return from_spec(spec, tuple(x.shape), dtype=x.dtype).A(x)


def test_family_fits_the_clip():
    family = psf_family(16)
    assert "temporal:uniform:1:circular" in family and "temporal:uniform:15:circular" in family
    assert "temporal:gaussian:2.0:circular" in family                  # width 13
    assert "temporal:gaussian:2.5:circular" not in family              # width 17 > 16 frames
    assert "temporal:uniform:7:circular" not in psf_family(6)
    assert len(psf_family(6, "zero")) == len(blind.UNIFORM_WIDTHS) + len(blind.GAUSSIAN_SIGMAS)


@pytest.mark.parametrize("true", ["temporal:uniform:7:circular", "temporal:uniform:13:circular",
                                  "temporal:gaussian:1.0:circular", "temporal:uniform:1:circular"])
def test_the_true_clip_gives_the_true_psf_exactly(clip, true):
    fits = fit_psf(clip, blurred(clip, true), psf_family(16))
    assert fits[0].spec == true and fits[0].residual < 1e-20 < fits[1].residual


def test_a_noisy_first_reconstruction_still_gives_the_true_psf(clip):
    noisy = (clip + 0.05 * torch.randn(clip.shape, generator=torch.Generator().manual_seed(0), dtype=clip.dtype))
    for true in ("temporal:uniform:7:circular", "temporal:gaussian:1.0:circular"):
        assert fit_psf(noisy.clamp(0, 1), blurred(clip, true), psf_family(16))[0].spec == true


def test_a_blurred_first_reconstruction_gives_no_blur(clip):
    """Why the first reconstruction must come from outside: y itself (or anything that fits y
    under an assumed PSF) is best explained by that PSF, here by no blur at all."""
    y = blurred(clip, "temporal:uniform:7:circular")
    assert fit_psf(y, y, psf_family(16))[0].spec == "temporal:uniform:1:circular"


def test_fit_rejects_bad_inputs(clip):
    y = blurred(clip, "temporal:uniform:3")
    with pytest.raises(InputError, match="keeps the clip's shape"):
        fit_psf(clip[:8], y, psf_family(16))
    bad = clip.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="first reconstruction holds NaN"):
        fit_psf(bad, y, psf_family(16))
    with pytest.raises(InputError, match="empty"):
        fit_psf(clip, y, [])


def test_two_stages_and_the_skip(clip, monkeypatch):
    x, true = clip.float(), "temporal:uniform:7:circular"
    y = blurred(x, true)
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    steps, fitted = [], []
    real_fit = blind.fit_psf
    monkeypatch.setattr(blind, "fit_psf", lambda xk, yk, family: fitted.append((xk, yk)) or real_fit(xk, yk, family))
    cfg = SolverConfig(spec=true, frames=x.shape[0], size=x.shape[-1], nfe=3, cg_iters=2)
    result = blind_deblur(GaussianPrior(), y, noisy, cfg, callback=lambda stage, *_: steps.append(stage))
    assert result.psf == true and result.clip.shape == x.shape
    # Algorithm 2: stage 1 fits to the first reconstruction, stage 2 to stage 1's restoration (here the result)
    assert len(fitted) == 2 and fitted[0][0] is noisy, "stage 1 must fit the PSF to the first reconstruction"
    assert fitted[1][0] is result.clip, "stage 2 must fit the PSF to stage 1's restoration"
    assert all(measured is y for _, measured in fitted)
    assert [(s["stage"], s["psf"], s["skipped"]) for s in result.stages] == [(1, true, False), (2, true, True)]
    assert steps == [1, 1, 1]                                           # stage 2 repeated stage 1: not run
    assert result.stages[0]["fits"][0]["residual"] <= result.stages[0]["fits"][1]["residual"]


def test_stage_two_restores_again_when_the_fit_moves(clip, monkeypatch):
    x = clip.float()
    y = blurred(x, "temporal:uniform:5")
    answers = iter(["temporal:uniform:3:circular", "temporal:uniform:5:circular"])
    fitted, restored = [], []
    monkeypatch.setattr(blind, "fit_psf", lambda xk, yk, _: fitted.append((xk, yk)) or [blind.Fit(next(answers), 0.0)])

    class RecordingSolver(blind.Solver):
        def solve(self, *args, **kwargs):
            restored.append(super().solve(*args, **kwargs))
            return restored[-1]

    monkeypatch.setattr(blind, "Solver", RecordingSolver)
    steps = []
    cfg = SolverConfig(spec="temporal:uniform:5", frames=x.shape[0], size=x.shape[-1], nfe=2, cg_iters=1)
    result = blind_deblur(GaussianPrior(), y, x, cfg, callback=lambda stage, *_: steps.append(stage))
    assert result.psf == "temporal:uniform:5:circular" and steps == [1, 1, 2, 2]
    assert [s["skipped"] for s in result.stages] == [False, False]
    # Algorithm 2: stage 1 fits to init, stage 2 to stage 1's restoration, and the result is stage 2's
    assert len(fitted) == len(restored) == 2
    assert fitted[0][0] is x, "stage 1 must fit the PSF to the first reconstruction"
    assert fitted[1][0] is restored[0], "stage 2 must fit the PSF to stage 1's restoration"
    assert result.clip is restored[1]
    assert not torch.equal(restored[0], x) and all(measured is y for _, measured in fitted)


# ---------------------------------------------------------------- the command line

def save(path, video):
    np.save(path, video.permute(1, 0, 2, 3).numpy())                   # the public code's [3, N, H, W]
    return str(path)


def test_cli_clean_input(tmp_path, clip):
    x = clip.float()
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    out = tmp_path / "out"
    argv = [save(tmp_path / "x.npy", x), "--simulate", "--degrade", "temporal:uniform:7", "--blind",
            "--init", save(tmp_path / "init.npy", noisy), *FAST, "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["blind"]["psf"] == "temporal:uniform:7:circular" and report["blind"]["true_psf"] == "temporal:uniform:7:circular"
    assert len(report["blind"]["stages"]) == 2 and "first reconstruction (--init)" in report["baselines"]
    assert report["restored"]["psnr_mean"] > 15                       # the weight-free prior at 3 NFE: scored, not judged
    assert (out / "comparison.png").stat().st_size > 0


def test_cli_measured_input(tmp_path, clip):
    x = clip.float()
    y = blurred(x, "temporal:gaussian:1.0")
    out = tmp_path / "out"
    assert main([save(tmp_path / "y.npy", y), "--sigma-y", "0", "--blind", "--init", save(tmp_path / "i.npy", x),
                 *FAST, "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["blind"]["psf"] == "temporal:gaussian:1.0:circular" and "restored" not in report


@pytest.mark.parametrize("argv,message", [
    (["--blind"], "--blind needs --init"),
    (["--init", "x.npy"], "--init is for --blind"),
    (["--blind", "--init", "x.npy", "--measured"], "leave out --task and --degrade"),
])
def test_cli_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "x.npy"), "--degrade", "temporal:uniform:7", *argv, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("degrade,init_frames,message", [
    ("temporal:uniform:3+sr:4", 16, "temporal PSF alone"),
    ("temporal:uniform:3", 8, "frames"),
])
def test_cli_bad_inputs_leave_no_output(tmp_path, capsys, clip, degrade, init_frames, message):
    out = tmp_path / "never"
    argv = [save(tmp_path / "x.npy", clip.float()), "--simulate", "--degrade", degrade, "--blind",
            "--init", save(tmp_path / "i.npy", clip.float()[:init_frames]), *FAST, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]
