"""The paper's six tasks as named presets (Kwon & Ye, ICLR 2025, §5; docs/design.md, "The sampler" and "Operators").

Each names its degradation spec (engine.operators.from_spec) and the sampler
settings the paper uses for it: K network evaluations (nfe), stochasticity η
and l CG iterations per step.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import InputError


@dataclass(frozen=True)
class Task:
    """One of the paper's experiments: a degradation spec and its sampler settings."""

    name: str
    spec: str       # degradation, see engine.operators.from_spec
    nfe: int        # K, network evaluations
    eta: float      # η, DDIM stochasticity
    cg_iters: int   # l, CG iterations per step
    description: str


_TEMPORAL = dict(nfe=20, eta=0.15, cg_iters=5)        # the paper's temporal tasks
_SPATIO_TEMPORAL = dict(nfe=100, eta=0.8, cg_iters=5)  # temporal blur + one spatial degradation

#: The paper's tasks by name.
TASKS: dict[str, Task] = {task.name: task for task in (
    Task("temporal-k7", "temporal:uniform:7", **_TEMPORAL,
         description="temporal deblurring, uniform PSF of 7 frames"),
    Task("temporal-k13", "temporal:uniform:13", **_TEMPORAL,
         description="temporal deblurring, uniform PSF of 13 frames"),
    Task("temporal-gaussian1", "temporal:gaussian:1.0", **_TEMPORAL,
         description="temporal deblurring, Gaussian PSF σ = 1 (7 frames)"),
    Task("temporal-k7-sr4", "temporal:uniform:7+sr:4", **_SPATIO_TEMPORAL,
         description="temporal deblurring (uniform, 7 frames) and 4× super-resolution"),
    Task("temporal-k7-deblur", "temporal:uniform:7+blur:gaussian:2.0:13", **_SPATIO_TEMPORAL,
         description="temporal deblurring (uniform, 7 frames) and spatial Gaussian deblurring σ = 2, width 13"),
    Task("temporal-k7-inpaint50", "temporal:uniform:7+inpaint:0.5", **_SPATIO_TEMPORAL,
         description="temporal deblurring (uniform, 7 frames) and inpainting of 50% random pixels"),
)}


def get_task(name: str) -> Task:
    """The preset `name`; InputError listing the known names otherwise."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; accepted: {', '.join(TASKS)}")
    return TASKS[name]
