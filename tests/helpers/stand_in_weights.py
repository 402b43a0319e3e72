"""Weight files in the published layouts, filled with seeded stand-in values (the real LPIPS and I3D
weights cannot be downloaded here): for the tests of engine.evaluation's LPIPS and FVD columns."""

import torch

from engine.evaluation.metrics_extra import ALEXNET_CHANNELS, LPIPS


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
    """A TorchScript StandInI3D saved at `path` (where the published i3d_torchscript.pt would be)."""
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(StandInI3D()), str(path))
    return path
