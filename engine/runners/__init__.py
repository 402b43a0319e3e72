"""Run a job: the one entry point over the three runners (whole video, windows, torchrun shards).

    from engine.job import Job
    from engine.runners import run
    from engine.runtime import SolverConfig

    out = run(Job(input=Path("blurred.mp4"), out=Path("out")), SolverConfig(spec="temporal:uniform:7"))

INPUT and the output location are checked first (engine.job_checks, engine.output), the memory plan
made, then the model loaded. With --max-frames W (or a plan of windows) the first W + 1 frames are
read: a longer video is streamed through `engine.runners.windows`; a shorter one is restored whole
(`engine.runners.whole`). Under torchrun the processes restore the video together
(`engine.runners.sharded`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from engine.distributed import launched_by_torchrun
from engine.job import Job, load_eps_model
from engine.job_checks import checked_input, planned
from engine.job_input import longer_than_a_window, split_head
from engine.output import claimed_output
from engine.runners.sharded import run_sharded
from engine.runners.whole import restore_whole
from engine.runners.windows import restore_in_windows
from engine.runtime import SolverConfig

log = logging.getLogger(__name__)

__all__ = ["run"]


def run(job: Job, cfg: SolverConfig) -> Optional[Path]:
    """The whole job; returns the output folder (None on a torchrun process other than the first)."""
    if launched_by_torchrun():
        return run_sharded(job, cfg)
    job = planned(job, cfg, checked_input(job, cfg))
    with claimed_output(job) as tmp:
        model = load_eps_model(job, cfg)
        head, frames, notes = split_head(job)
        if longer_than_a_window(job, head):
            restore_in_windows(tmp, job, cfg, model, head, frames, notes)
        else:
            restore_whole(tmp, job, cfg, model, [*head, *frames], notes)
    log.info("wrote restored.mp4, measurement.mp4, frames/, metrics.json and comparison.png to %s", job.out)
    return job.out.resolve()
