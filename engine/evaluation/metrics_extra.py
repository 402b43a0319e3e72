"""LPIPS and FVD, the paper's perceptual metrics, from network weights the user names.

Nothing is downloaded: each metric is built from local files, and a missing file is
an `InputError` that names it and says where such a file comes from.

- **LPIPS** (Zhang et al. 2018, v0.1, AlexNet), the `lpips` package's default: the
  ImageNet AlexNet of torchvision (`alexnet-owt-7be5be79.pth`, keys `features.{0,3,6,8,10}.*`)
  and the learned linear heads of LPIPS v0.1 (`alex.pth` of the lpips package, keys
  `lin{0..4}.model.1.weight`). Per frame, with images x in [0, 1]:

      z = ((2x − 1) − shift) / scale                    (the lpips ScalingLayer)
      d(x, x') = Σ_l mean_hw ⟨w_l, (φ̂_l(z) − φ̂_l(z'))²⟩,  φ̂ = φ / (‖φ‖_channels + 1e-10)

  over the ReLU outputs φ_l of AlexNet's five conv layers.

- **FVD** (Unterthiner et al. 2018) with the Kinetics-400 I3D that StyleGAN-V ships as
  TorchScript (`i3d_torchscript.pt`), called as `detector(x, rescale=False, resize=False,
  return_features=True)` on clips resized (bilinear) so the short side is 224,
  centre-cropped to 224×224 and mapped to [−1, 1] ([B, 3, T, 224, 224]). FVD is the
  Fréchet distance between Gaussians fitted to the 400-d features of the clean and the
  restored clips of the whole data set; the paper reports it × 1e-3 (`FVD_SCALE`).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InputError

log = logging.getLogger(__name__)
Tensor = torch.Tensor

FVD_SCALE = 1e-3                       # the paper reports FVD × 1e-3
I3D_SIZE = 224
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # lpips ScalingLayer, in the [−1, 1] range
LPIPS_SCALE = (0.458, 0.448, 0.450)
ALEXNET_TAPS = (1, 4, 7, 9, 11)         # indices of the ReLUs whose outputs LPIPS compares
ALEXNET_CHANNELS = (64, 192, 384, 256, 256)

__all__ = ["FVD_SCALE", "I3DFeatures", "LPIPS", "frechet_distance", "i3d_preprocess"]


def _require(path, what: str) -> Path:
    """`path` as a Path if the file exists, else an InputError saying which file is missing."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: {path} not found (nothing is downloaded; give the path of your copy)")
    return path


def _load_state(path: Path, what: str) -> dict:
    """A state dict from a `.pt`/`.pth` file (weights only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, ...
        raise InputError(f"{what}: cannot load {path} ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise InputError(f"{what}: {path} holds a {type(state).__name__}, not a state dict")
    return state


def _alexnet_features() -> nn.Sequential:
    """torchvision's `alexnet().features` (same layers, same indices, same state-dict keys)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )


class LPIPS(nn.Module):
    """LPIPS v0.1 (AlexNet) distance per frame; build it with `LPIPS.from_files`. See the module docstring."""

    def __init__(self):
        super().__init__()
        self.features = _alexnet_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in ALEXNET_CHANNELS)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, heads: str | Path, backbone: str | Path, device="cpu") -> "LPIPS":
        """LPIPS from the lpips package's `alex.pth` (heads) and torchvision's `alexnet-owt-7be5be79.pth` (backbone)."""
        heads = _require(heads, "LPIPS needs its linear heads (alex.pth of the lpips package, v0.1)")
        backbone = _require(backbone, "LPIPS needs the ImageNet AlexNet (torchvision's alexnet-owt-7be5be79.pth)")
        model = cls()
        features = {k[len("features."):]: v for k, v in _load_state(backbone, "LPIPS backbone").items()
                    if k.startswith("features.")}
        lins = {k[len("lin"):].replace(".model.1.", "."): v for k, v in _load_state(heads, "LPIPS heads").items()}
        _load_strict(model.features, features, backbone)
        _load_strict(model.lins, lins, heads)
        log.info("LPIPS (AlexNet, v0.1) from %s and %s", heads, backbone)
        return model.to(device)

    def _taps(self, x: Tensor) -> list[Tensor]:
        """Channel-normalised ReLU outputs φ̂_l of the five conv layers, for x in [0, 1]."""
        z = (2 * x - 1 - self.shift) / self.scale
        taps = []
        for i, layer in enumerate(self.features):
            z = layer(z)
            if i in ALEXNET_TAPS:
                taps.append(z / (z.square().sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return taps

    @torch.no_grad()
    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        """d(x, ref) per frame: `[N, 3, H, W]` ×2 in [0, 1] → `[N]` float64."""
        if x.shape != ref.shape or x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"LPIPS needs two clips [N, 3, H, W] of one shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
        device = self.shift.device
        a, b = self._taps(x.to(device, torch.float32)), self._taps(ref.to(device, torch.float32))
        d = sum(lin((fa - fb).square()).mean(dim=(1, 2, 3)) for lin, fa, fb in zip(self.lins, a, b))
        return d.double().cpu()


def _load_strict(module: nn.Module, state: dict, path: Path) -> None:
    """load_state_dict, with one InputError naming the file and the first differences."""
    want = module.state_dict()
    missing = [k for k in want if k not in state]
    wrong = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in want.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise InputError(f"{path}: not the expected weights (missing {missing[:3]}, shape mismatches {wrong[:3]})")
    module.load_state_dict({k: state[k] for k in want})


# ----------------------------------------------------------------------------- FVD


def i3d_preprocess(clip: Tensor, size: int = I3D_SIZE) -> Tensor:
    """`[N, 3, H, W]` in [0, 1] → `[3, N, size, size]` in [−1, 1]: short side to `size` (bilinear), centre crop."""
    h, w = clip.shape[-2:]
    scale = size / min(h, w)
    target = (size, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), size)
    x = F.interpolate(clip.float(), size=target, mode="bilinear", align_corners=False)  # [N, 3, h', w']
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    return (2 * x - 1).transpose(0, 1).contiguous()


class I3DFeatures:
    """400-d I3D features of clips, from StyleGAN-V's TorchScript detector (`i3d_torchscript.pt`)."""

    def __init__(self, path: str | Path, device="cpu"):
        path = _require(path, "FVD needs the I3D detector (StyleGAN-V's i3d_torchscript.pt)")
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated, but the published detector is TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                self.detector = torch.jit.load(str(path), map_location=device).eval()
        except Exception as err:  # RuntimeError for anything that is not TorchScript
            raise InputError(f"FVD: cannot load {path} as TorchScript ({type(err).__name__}: {err})") from err
        self.device = torch.device(device)
        log.info("FVD detector from %s", path)

    @torch.no_grad()
    def __call__(self, clip: Tensor) -> np.ndarray:
        """Features of one clip `[N, 3, H, W]` in [0, 1] → float64 `[D]`."""
        x = i3d_preprocess(clip)[None].to(self.device)  # [1, 3, N, 224, 224]
        feats = self.detector(x, rescale=False, resize=False, return_features=True)
        return feats.reshape(-1).double().cpu().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½) of features `[n, D]` and `[m, D]` (sample covariances).

    tr((Σ_a Σ_b)^½) = Σ √λ_i(Σ_a^½ Σ_b Σ_a^½), a symmetric eigenproblem (no complex sqrtm).
    """
    if len(a) < 2 or len(b) < 2:
        raise InputError(f"a Fréchet distance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(vals.clip(min=0))) @ vecs.T
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)).sum()
    return float(np.square(mu_a - mu_b).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
