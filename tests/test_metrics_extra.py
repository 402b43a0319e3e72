"""engine.metrics_extra: LPIPS and FVD plumbing with stand-in weights (the real ones cannot be downloaded here),
the Fréchet distance against scipy's matrix square root, and the error for every missing file.

The LPIPS and I3D numbers themselves are only as right as the user's weight files; these tests
check the architecture's wiring, the key layout of the published files, and the formulas. Where the
lpips package is installed, LPIPS is also checked against it with the same weights.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.metrics_extra import ALEXNET_CHANNELS, I3DFeatures, LPIPS, frechet_distance, i3d_preprocess
from engine.testclips import camera_clip


def write_lpips_files(folder, seed=0):
    """Random weights laid out as torchvision's alexnet-owt-7be5be79.pth and the lpips package's alex.pth."""
    g = torch.Generator().manual_seed(seed)
    backbone = {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in LPIPS().features.state_dict().items()}
    backbone = {f"features.{k}": v for k, v in backbone.items()}
    backbone["classifier.1.weight"] = torch.zeros(2, 9216)  # the classifier is ignored (a slice of the real one)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(ALEXNET_CHANNELS)}
    torch.save(backbone, folder / "alexnet-owt-7be5be79.pth")
    torch.save(heads, folder / "alex.pth")
    return folder / "alex.pth", folder / "alexnet-owt-7be5be79.pth"


class StandInI3D(torch.nn.Module):
    """Same call signature as StyleGAN-V's i3d_torchscript.pt, 400 features; not an I3D."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        pooled = torch.nn.functional.adaptive_avg_pool3d(x, (1, 4, 4)).flatten(1)  # [B, 48]
        return self.proj(pooled)


def write_i3d(path):
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(StandInI3D()), str(path))
    return path


def test_lpips_from_files(tmp_path):
    lpips = LPIPS.from_files(*write_lpips_files(tmp_path))
    x = camera_clip("astronaut", frames=2, size=48)
    y = camera_clip("coffee", frames=2, size=48)
    d = lpips(x, y)
    assert d.shape == (2,) and d.dtype == torch.float64 and (d > 0).all()
    torch.testing.assert_close(lpips(y, x), d)
    torch.testing.assert_close(lpips(x, x), torch.zeros(2, dtype=torch.float64))
    assert (lpips(x, (x + 0.05).clamp(0, 1)) < d).all()


def test_lpips_matches_the_lpips_package(tmp_path):
    """Against the reference implementation, where it is installed (it needs torchvision, whose
    PyPI build does not load against the CPU torch of CI): the package's own v0.1 heads, and its
    randomly initialised AlexNet written out as a torchvision checkpoint."""
    lpips = pytest.importorskip("lpips")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    alexnet = torchvision.models.alexnet(weights=None)
    for part in (ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5):
        for index, layer in part.named_children():
            alexnet.features[int(index)].load_state_dict(layer.state_dict())
    torch.save(alexnet.state_dict(), tmp_path / "alexnet.pth")
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"

    ours = LPIPS.from_files(heads, tmp_path / "alexnet.pth")
    x = camera_clip("astronaut", frames=3, size=64)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        expected = ref(x, y, normalize=True).flatten().double()
    torch.testing.assert_close(ours(x, y), expected, rtol=1e-5, atol=1e-7)


def test_lpips_missing_and_wrong_files(tmp_path):
    heads, backbone = write_lpips_files(tmp_path)
    with pytest.raises(InputError, match=r"alexnet-owt-7be5be79\.pth.*nope\.pth not found"):
        LPIPS.from_files(heads, tmp_path / "nope.pth")
    with pytest.raises(InputError, match=r"alex\.pth of the lpips package.*gone\.pth not found"):
        LPIPS.from_files(tmp_path / "gone.pth", backbone)
    with pytest.raises(InputError, match="not the expected weights"):
        LPIPS.from_files(backbone, backbone)  # the backbone where the heads belong


def test_i3d_preprocess():
    x = i3d_preprocess(camera_clip("rocket", frames=5, size=32))
    assert x.shape == (3, 5, 224, 224) and -1 <= x.min() and x.max() <= 1
    wide = i3d_preprocess(torch.rand(2, 3, 100, 300))  # short side to 224, centre crop
    assert wide.shape == (3, 2, 224, 224)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit: the published detector is TorchScript
def test_i3d_features_from_torchscript(tmp_path):
    feats = I3DFeatures(write_i3d(tmp_path / "i3d_torchscript.pt"))
    f = feats(camera_clip("astronaut", frames=4, size=32))
    assert f.shape == (400,) and f.dtype == np.float64
    with pytest.raises(InputError, match=r"i3d_torchscript\.pt.*missing\.pt not found"):
        I3DFeatures(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(InputError, match="cannot load"):
        I3DFeatures(tmp_path / "junk.pt")


def reference_frechet(a, b):
    """The formula as StyleGAN-V / pytorch-fid compute it, with scipy's sqrtm."""
    linalg = pytest.importorskip("scipy.linalg")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(sa @ sb)
    return float(np.real(np.square(mu_a - mu_b).sum() + np.trace(sa + sb - 2 * root)))


@pytest.mark.parametrize("n, d", [(50, 8), (6, 20)])  # full-rank and rank-deficient covariances
def test_frechet_distance_against_scipy(n, d):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = 0.5 + rng.normal(size=(n + 3, d))
    assert frechet_distance(a, b) == pytest.approx(reference_frechet(a, b), rel=1e-6, abs=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6 * np.trace(np.cov(a, rowvar=False)))


def test_frechet_distance_needs_two_samples():
    with pytest.raises(InputError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
