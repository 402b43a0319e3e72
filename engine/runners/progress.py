"""What a run reports while it runs: the sampler's steps on a progress bar, each process's stage seconds."""

from __future__ import annotations

import logging

from engine.backends import GRAPH_BACKENDS
from engine.profiling import StageClock
from engine.runtime import SolverConfig

log = logging.getLogger(__name__)

__all__ = ["step_counter", "stage_seconds"]


def step_counter(bar, cfg: SolverConfig):
    """A sampler callback that advances the progress bar, or logs every tenth of the steps when the bar
    is off (output not a terminal); None for a captured loop (it cannot call back)."""
    if cfg.backend in GRAPH_BACKENDS:
        return None
    every = max(1, cfg.nfe // 10)

    def count(k, *_):
        bar.update()
        if bar.disable and ((k + 1) % every == 0 or k + 1 == cfg.nfe):
            log.info("step %d/%d", k + 1, cfg.nfe)

    return count


def stage_seconds(clock: StageClock) -> dict:
    """A process's seconds in the network, the CG, the warm start's CG and the communication inside both."""
    stages = clock.seconds()
    return {"network_s": stages.get("UNet", 0.0), "cg_s": stages.get("CG", 0.0),
            "warm_start_s": stages.get("warm start", 0.0), "communication_s": stages.get("communication", 0.0)}
