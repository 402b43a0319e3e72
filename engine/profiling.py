"""NVTX ranges for Nsight Systems: `nvtx_range(name, enabled)` around a stage of the work.

The `nvtx` package (the [profile] extra) is used when installed, else torch.cuda.nvtx; either is
imported only when a range is enabled, so a disabled range costs one branch and imports nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def nvtx_range(name: str, enabled: bool) -> Iterator[None]:
    """One NVTX range named `name` around the block when `enabled`, else nothing."""
    if not enabled:
        yield
        return
    try:
        import nvtx
    except ImportError:
        nvtx = None
    if nvtx is not None:
        with nvtx.annotate(name):
            yield
        return
    import torch.cuda.nvtx

    with torch.cuda.nvtx.range(name):
        yield
