"""A simulated measurement y = A x + σ_y·w: the noise w drawn one way for every path.

    w[n] ~ N(0, I),  n = 0, 1, …   one frame [C, H', W'] after another, float32, from one CPU
                                   generator seeded with `seed`

so frame n of the noise is the same whether a whole video is measured at once (engine.runtime.measure,
Solver.measure), a process measures its own frames [a, b) of a sharded video (the frames before a are
drawn and dropped), or a stream is measured frame by frame (engine.windows.VideoRestorer.measure).
Drawn on the CPU, it does not depend on the device either.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

Tensor = torch.Tensor


def noise_frames(seed: int, frame: tuple[int, ...], start: int = 0) -> Iterator[Tensor]:
    """w[start], w[start + 1], … (without end), each [*frame] float32 on the CPU (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    n = 0
    while True:
        w = torch.randn(frame, generator=gen, dtype=torch.float32)
        if n >= start:
            yield w
        n += 1


def noisy_frames(frames: Iterable[Tensor], sigma_y: float, seed: int, start: int = 0) -> Iterator[Tensor]:
    """y[n] + σ_y·w[n] for the measurement frames y[start], y[start + 1], … as they come.  each [C, H', W']

    σ_y = 0 gives the frames themselves (nothing drawn)."""
    if sigma_y <= 0:
        yield from frames
        return
    noise = None
    for y in frames:
        noise = noise_frames(seed, tuple(y.shape), start) if noise is None else noise
        yield y + sigma_y * next(noise).to(device=y.device, dtype=y.dtype)


def add_noise(y: Tensor, sigma_y: float, seed: int, start: int = 0) -> Tensor:
    """y + σ_y·w[start : start + n] for the measurement frames start … start + n − 1.  y: [n, C, H', W'] → same"""
    return y if sigma_y <= 0 else torch.stack(list(noisy_frames(y, sigma_y, seed, start)))
