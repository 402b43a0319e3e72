"""engine.evaluation.metrics_extra: LPIPS and FVD plumbing with stand-in weights (the real ones cannot be downloaded here),
the Fréchet distance against scipy's matrix square root, and the error for every missing file.

The LPIPS and I3D numbers themselves are only as right as the user's weight files; these tests
check the architecture's wiring, the key layout of the published files, and the formulas. Where the
lpips package is installed, LPIPS is also checked against it with the same weights; everywhere, against
distances the package computed once on seeded weights (LPIPS_PACKAGE_VALUES).
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.evaluation.metrics_extra import ALEXNET_CHANNELS, I3DFeatures, LPIPS, frechet_distance, i3d_preprocess
from engine.testclips import camera_clip
from stand_in_weights import write_i3d, write_lpips_files


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


# torchvision's alexnet().features: conv index → (out channels, in channels, kernel size)
ALEXNET_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}

# The `lpips` package's distances (lpips 0.1.4 on torch 2.11 / torchvision 0.26, computed in float64 with
# lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True) after loading exactly the weights of
# `seeded_lpips_weights()` into its AlexNet slices and lin0..lin4; ref(x, y, normalize=True) on
# `seeded_frame_pair()`). The package's float32 run agrees to 1.4e-7. Where lpips is installed,
# test_stored_values_are_the_lpips_packages recomputes them.
LPIPS_PACKAGE_VALUES = (0.016883623785726241, 0.057556227475949948, 0.16451438431957721)


def seeded_lpips_weights(seed=2018):
    """AlexNet trunk (torchvision's keys, He-scaled weights, biases large enough to matter) and positive
    v0.1 heads, from torch's CPU generator (the same bytes under torch 2.11 and 2.13)."""
    g = torch.Generator().manual_seed(seed)
    backbone = {}
    for i, (c_out, c_in, k) in ALEXNET_CONVS.items():
        backbone[f"features.{i}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * math.sqrt(2 / (c_in * k * k))
        backbone[f"features.{i}.bias"] = 0.2 * torch.randn(c_out, generator=g)
    heads = {f"lin{l}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for l, c in enumerate(ALEXNET_CHANNELS)}
    return backbone, heads


def seeded_frame_pair(seed=7, size=64):
    """Three blocky random frames with unequal channel means, and copies with noise of σ = 0.05, 0.1, 0.2."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(3, 3, size // 8, size // 8, generator=g).repeat_interleave(8, 2).repeat_interleave(8, 3)
    tint = torch.tensor([0.25, 0.45, 0.65]).view(1, 3, 1, 1)
    x = (0.5 * blocks + 0.2 * torch.rand(3, 3, size, size, generator=g) + tint - 0.1).clamp(0, 1)
    sigma = torch.tensor([0.05, 0.1, 0.2]).view(3, 1, 1, 1)
    y = (x + sigma * torch.randn(3, 3, size, size, generator=g)).clamp(0, 1)
    return x, y


def test_lpips_matches_stored_package_values(tmp_path):
    """The LPIPS formula itself, without the lpips package or torchvision: on seeded weights saved in the
    published files' layouts, our per-frame distances equal those the lpips package computed once on
    the same weights and frames (LPIPS_PACKAGE_VALUES). This fails if the 2x − 1 input scaling, the
    channel unit normalisation or a ScalingLayer constant (a scale by 0.2%) is wrong. rtol 1e-5:
    float32 rounding moves our value by at most 7e-7 relative (measured over thread counts, oneDNN on
    and off, channels-last, frame by frame); torch 2.13 CPU is 1.7e-7 from the package's float64 value."""
    backbone, heads = seeded_lpips_weights()
    torch.save(backbone, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save(heads, tmp_path / "alex.pth")
    lpips = LPIPS.from_files(tmp_path / "alex.pth", tmp_path / "alexnet-owt-7be5be79.pth")
    x, y = seeded_frame_pair()
    expected = torch.tensor(LPIPS_PACKAGE_VALUES, dtype=torch.float64)
    torch.testing.assert_close(lpips(x, y), expected, rtol=1e-5, atol=0)


def test_stored_values_are_the_lpips_packages():
    """LPIPS_PACKAGE_VALUES, recomputed with the lpips package (where it is installed) in float64."""
    lpips = pytest.importorskip("lpips")
    pytest.importorskip("torchvision")
    backbone, heads = seeded_lpips_weights()
    ref = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False).eval()
    state = {f"net.slice{s}.{name}": backbone[f"features.{name}"]         # slice s holds features.<i> as "<i>"
             for s, part in enumerate((ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4,
                                       ref.net.slice5), 1)
             for name, _ in part.named_parameters()}
    state |= heads | {k.replace("lin", "lins.", 1): v for k, v in heads.items()}   # lins: lin0..lin4 again
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("scaling_layer.") for k in missing)
    x, y = seeded_frame_pair()
    with torch.no_grad():
        got = ref.double()(x.double(), y.double(), normalize=True).flatten()
    torch.testing.assert_close(got, torch.tensor(LPIPS_PACKAGE_VALUES, dtype=torch.float64), rtol=1e-12, atol=0)


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
