"""Synthetic clips with a known camera motion, rendered from photos that scikit-image ships.

A virtual camera looks at a still photo and moves smoothly: frame `k` shows the square
window centred at `c_k = c_0 + k·a·pan` of side `a·(size − 1)·zoom^(−k)` photo pixels,
sampled on a `size × size` grid with bilinear interpolation. So between consecutive
frames of a pure pan the picture moves by exactly `−pan` output pixels, and `zoom > 1`
magnifies it by `zoom` per frame about the frame centre. The scale `a` (photo pixels
per output pixel in frame 0) is the largest that keeps every sample inside the photo,
so no frame shows a border; a photo with more pixels than needed is first shrunk with
an antialiased resize, so that no frame samples it coarser than its pixel grid (no aliasing).
Everything is deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.errors import InputError

TEST_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "brick", "grass", "gravel")
DEMO_IMAGE, DEMO_PAN, DEMO_ZOOM = "astronaut", (2.0, 1.0), 1.01

__all__ = ["TEST_IMAGES", "camera_clip", "demo_clip", "load_photo"]


def demo_clip(frames: int = 16, size: int = 256) -> torch.Tensor:
    """The `--demo` clip: a smooth pan (2, 1) px/frame with a gentle 1 %/frame zoom on astronaut → `[N, 3, S, S]`."""
    return camera_clip(DEMO_IMAGE, frames=frames, size=size, pan=DEMO_PAN, zoom=DEMO_ZOOM)


def camera_clip(
    image: str = "astronaut",
    frames: int = 16,
    size: int = 256,
    pan: tuple[float, float] = (2.0, 1.0),
    zoom: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Render a photo seen by a panning / zooming camera → `[frames, 3, size, size]` in [0, 1].

    `pan = (x, y)`: camera motion per frame in frame-0 output pixels (the picture moves by `−pan`);
    `zoom`: magnification per frame about the frame centre (1 = none, > 1 zooms in).
    """
    if frames < 1 or size < 2 or not zoom > 0:
        raise InputError(f"camera_clip needs frames >= 1, size >= 2, zoom > 0; got {frames}, {size}, {zoom}")
    photo = load_photo(image)  # [3, P_h, P_w] float64
    centres, steps = _camera_path(photo.shape[-2:], frames, size, pan, zoom)
    finest = steps.max().item()  # photo pixels per output pixel in the widest frame
    if finest > 1:
        shrunk = (round(photo.shape[-2] / finest), round(photo.shape[-1] / finest))
        photo = F.interpolate(photo[None], size=shrunk, mode="bilinear", antialias=True, align_corners=False)[0]
        centres, steps = _camera_path(photo.shape[-2:], frames, size, pan, zoom)
    grid = _sampling_grid(photo.shape[-2:], centres, steps, size)  # [N, S, S, 2]
    clip = F.grid_sample(photo.expand(frames, -1, -1, -1), grid, mode="bilinear", align_corners=True)
    return clip.clamp_(0.0, 1.0).to(dtype)


def load_photo(name: str) -> torch.Tensor:
    """A photo from `skimage.data` as float64 `[3, H, W]` in [0, 1] (grey photos repeated to 3 channels)."""
    if name not in TEST_IMAGES:
        raise InputError(f"unknown test image {name!r}; available: {', '.join(TEST_IMAGES)}")
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError("test clips need scikit-image: pip install 'video-inverse-engine[video]'") from err
    pixels = torch.from_numpy(getattr(skimage.data, name)()).to(torch.float64) / 255.0
    if pixels.dim() == 2:
        return pixels.expand(3, -1, -1).contiguous()
    return pixels[..., :3].permute(2, 0, 1).contiguous()


def _camera_path(
    photo_hw: tuple[int, int], frames: int, size: int, pan: tuple[float, float], zoom: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window centres `[N, 2]` (x, y) and steps `[N]`, in photo pixels, of the widest motion that fits.

    Frame k samples x = c_k + s_k·(u − (size − 1)/2), u = 0 … size − 1, with
    s_k = a·zoom^(−k) and c_k = c_0 + a·k·pan; `a` and `c_0` make the samples of all
    frames fill the photo's pixel-centre range [0, P − 1] along the tighter axis.
    """
    k = torch.arange(frames, dtype=torch.float64)
    relative = zoom ** -k  # [N] window scale relative to frame 0
    offsets = k[:, None] * torch.tensor(pan, dtype=torch.float64)  # [N, 2] in frame-0 output px
    half = (relative * (size - 1) / 2)[:, None]  # [N, 1]
    lo, hi = (offsets - half).amin(dim=0), (offsets + half).amax(dim=0)  # [2] bounding box
    extent = torch.tensor([photo_hw[1] - 1, photo_hw[0] - 1], dtype=torch.float64)  # (x, y)
    a = (extent / (hi - lo)).min()
    centres = extent / 2 - a * (lo + hi) / 2 + a * offsets  # [N, 2]
    return centres, a * relative


def _sampling_grid(photo_hw: tuple[int, int], centres: torch.Tensor, steps: torch.Tensor, size: int) -> torch.Tensor:
    """grid_sample coordinates `[N, S, S, 2]` (x, y in [−1, 1], align_corners=True) of each frame's samples."""
    u = torch.arange(size, dtype=torch.float64) - (size - 1) / 2  # [S]
    xs = centres[:, 0, None] + steps[:, None] * u  # [N, S] photo px
    ys = centres[:, 1, None] + steps[:, None] * u
    gx = 2 * xs / (photo_hw[1] - 1) - 1
    gy = 2 * ys / (photo_hw[0] - 1) - 1
    return torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
