"""What a job learns before the model is loaded: INPUT checked against every setting, and the memory plan.

    facts = checked_input(job, cfg)        # readable, --frames, the spec against the frame size, windows
    job = planned(job, cfg, facts)         # whole video, or windows that fit the budget

Both read INPUT's first frame and its container only (engine.probe), so a bad setting costs no
model load and no decode of the video.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

from engine.errors import InputError
from engine.job import MIN_SCORED_SIZE, Job, clean_frame, temporal_prior_for, video_boundary
from engine.job_input import frames_and_size
from engine.operators.spec import parse as parse_spec
from engine.operators.spec import split_temporal, time_boundary, with_time_boundary
from engine.probe import InputFacts, check_spec, probe_input, temporal_width
from engine.runtime import SolverConfig
from engine.windows import enough_window, least_window, split_spec

log = logging.getLogger(__name__)

__all__ = ["checked_input", "planned"]


def checked_input(job: Job, cfg: SolverConfig) -> Optional[InputFacts]:
    """INPUT's facts (None for --demo), after every check that needs INPUT and not the model: readable,
    --frames against its count, the spec against its frame size, --max-frames against the PSF's reach.
    A clip shorter than the temporal PSF is warned about (its boundary supplies the missing frames), and so is a
    measured video cut short by --frames (its last frames' blur reached frames the run does not read)."""
    if job.init is not None:
        probe_input(job.init)
    if job.input is None:
        if job.register:
            _refuse_register("the demo's clip has circular ends in time, the paper's")
        return None
    facts = probe_input(job.input, frames=job.frames)
    if job.blind and job.measured:                         # no spec: the PSF is what the run finds
        return facts
    frame = facts.frame
    if not job.measured and job.size is not None:
        frame = (job.size, job.size)
    elif not job.measured and min(frame) < MIN_SCORED_SIZE:
        raise InputError(f"frames of {frame[1]}x{frame[0]} are too small to score (SSIM needs "
                         f"{MIN_SCORED_SIZE}x{MIN_SCORED_SIZE}); leave out --simulate to restore without scoring")
    clean = clean_frame(cfg.spec, frame) if job.measured else frame
    if job.measured and job.size is not None and clean != (job.size, job.size):
        raise InputError(f"{job.input}'s frames of {frame[1]}x{frame[0]} under {cfg.spec} come from {clean[1]}x"
                         f"{clean[0]} frames, not the {job.size}x{job.size} of --size")
    boundary = video_boundary(job, facts.frames)
    prior = temporal_prior_for(job.temporal_prior, with_time_boundary(cfg.spec, boundary))
    if job.register and prior != "motion":
        _refuse_register("--temporal-prior none" if job.temporal_prior == "none" else
                         f"{cfg.spec} has no temporal blur" if not split_temporal(cfg.spec)[0] else
                         f"it needs a temporal blur with held or zero ends, and {cfg.spec}'s are {boundary} here")
    try:
        op = check_spec(with_time_boundary(cfg.spec, boundary), clean, frames=facts.frames,
                        measured=frame if job.measured else None, mask_seed=cfg.mask_seed)
    except InputError as err:
        raise InputError(_as_typed(str(err), cfg.spec, boundary)) from None
    if job.max_frames is not None:
        term, _ = split_spec(with_time_boundary(cfg.spec, video_boundary(job, None)))
        least = least_window(term)
        if job.max_frames < least:
            raise InputError(f"--max-frames {job.max_frames} is too short for {cfg.spec}: a window needs at least "
                             f"{least} frames (more than the temporal blur's reach {term.reach} and than the "
                             f"{least - 1} frames each window solves again at its ends)")
    width = temporal_width(op)
    if facts.frames is not None and facts.frames < width:
        log.warning("INPUT has %d frame(s), fewer than the temporal blur's %d: the frames it reads before the first "
                    "and after the last are %s", facts.frames, width,
                    "the other end of the clip (circular boundary)" if video_boundary(job, facts.frames) == "circular"
                    else "the end frames repeated (replicate boundary)")
    cut = facts.declared is not None and facts.frames is not None and facts.frames < facts.declared
    if job.measured and cut and width > 1 and boundary != "circular":
        log.warning("--frames %d stops before INPUT's end (%d frames): its last %d frame(s) were blurred with frames "
                    "after %d that this run does not read and takes as its last one repeated, so they may come out "
                    "worse than INPUT; restore to the end of the video, or read those frames and drop them after",
                    facts.frames, facts.declared, (width - 1) // 2, facts.frames)
    return facts


def _refuse_register(why: str) -> None:
    """--register where the motion prior does not run: one line saying why."""
    raise InputError(f"--register moves the frames after the motion prior, which this run does not take ({why}); "
                     f"drop --register")


def _as_typed(message: str, spec: str, boundary: str) -> str:
    """`message` about `spec` with `boundary` appended by `with_time_boundary`, in the terms the user typed."""
    for term in map(str, parse_spec(spec)):
        message = message.replace(with_time_boundary(term, boundary), term)
    return message


def planned(job: Job, cfg: SolverConfig, facts: Optional[InputFacts] = None) -> Job:
    """`job` with its memory plan (engine.memory.plan, logged in one line): --max-frames W when the whole
    video's predicted peak does not fit the budget (--memory-budget, else a fraction of the memory
    available). Made before decoding: the frame count from the container (counted, a frame at a time,
    when it declares none), the frame size from the first frame. An explicit --max-frames is kept as it
    is. Not even the smallest window fits: one line, before any work. `facts` (`checked_input`'s) spare
    decoding INPUT's first frame again when its container declares the count."""
    from engine.memory import GB, plan

    if job.max_frames is not None:
        return dataclasses.replace(job, plan={"choice": f"windows of {job.max_frames} frames (--max-frames)"})
    if facts is not None and facts.frames is not None:
        frames, first = facts.frames, (job.size, job.size) if job.size and not job.measured else facts.frame
    else:
        frames, first = frames_and_size(job)
    frame = clean_frame(cfg.spec, first) if job.measured and cfg.spec else first
    spec = with_time_boundary(cfg.spec, video_boundary(job, frames)) if cfg.spec else ""
    context, least, enough, why_not = 0, 2, None, _why_not_windows(job, spec)
    if why_not is None:
        term = split_spec(spec)[0]
        context, least, enough = term.context, max(2, least_window(term)), enough_window(term)
    checkpoint = job.checkpoint.stat().st_size if job.checkpoint is not None and job.checkpoint.is_file() else None

    def planned_for(fewest: int):
        return plan(frames, frame, budget=None if job.memory_budget is None else job.memory_budget * GB,
                    device=cfg.device, prior=job.prior, checkpoint_bytes=checkpoint, batch=cfg.batch,
                    precision=cfg.precision, context=context, least_window=fewest, longest_window=enough,
                    windows_allowed=why_not,
                    motion=temporal_prior_for(job.temporal_prior, spec) == "motion" if spec else False)

    try:
        chosen, short = planned_for(least), False
    except InputError as default_refused:
        if why_not is not None:
            raise
        try:                                  # the least a window may re-solve: the lag w − 1, no lead
            chosen, short = planned_for(max(2, least_window(term, lag=term.context, lead=0))), True
        except InputError:
            raise default_refused from None
        log.warning("the default windows (at least %d frames, re-solving %d at their ends) do not fit the memory "
                    "budget: windows of %d frames re-solve only the temporal blur's %d, which costs quality at their seams "
                    "(about 0.6 dB at windows of 32, more below: docs/results.md, Windows); a larger --memory-budget "
                    "gives the default windows",
                    least, least - 1, chosen.window, term.context)
    log.info("%s", chosen.line())
    if not short:
        return dataclasses.replace(job, max_frames=chosen.window, plan=chosen.record())
    return dataclasses.replace(job, max_frames=chosen.window, plan={**chosen.record(), "lag": term.context, "lead": 0},
                               window_lag=term.context, window_lead=0)


def _why_not_windows(job: Job, spec: str) -> Optional[str]:
    """Why this run cannot be restored in windows (engine.windows), or None."""
    if job.baselines:
        return "--baselines need the whole clip"
    if job.blind:
        return "--blind fits the PSF to the whole clip"
    if any(time_boundary(term) == "circular" for term in split_temporal(spec)[0]) if spec else False:
        return "the circular boundary cannot be restored in windows"
    return None
