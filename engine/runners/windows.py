"""A video longer than a window: read, restored in windows (engine.windows), scored and written frame by frame.

    restore_in_windows(tmp, job, cfg, model, head, rest, notes)     # head: the first W + 1 frames read

Holds about one window of frames, never the whole video: the measurement frames are written and
kept for the sheet as the restorer pulls them (`_tapped`), the clean frames held until their restored
frame comes back and is scored (`_kept`), comparison.png shows the first SHEET_FRAMES frames only.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch
from tqdm import tqdm

from engine.distributed import gather_records
from engine.errors import InputError
from engine.fileio import atomic_write_json
from engine.figures import contact_sheet, save_png
from engine.job import Job, fitted_config, output_fps, weighed_noise, with_sigma_y
from engine.job_input import compact, declared_frames, unit_float
from engine.memory import peak_record
from engine.metrics import Scores, json_safe
from engine.output import in_input_format, metrics_record
from engine.probe import is_grey
from engine.profiling import StageClock
from engine.polish import polish, polish_record, polish_sigma
from engine.realvideo import StreamGuard, grey_clip, noise_level, residual_record
from engine.runners.progress import stage_seconds
from engine.runtime import SolverConfig

log = logging.getLogger(__name__)

SHEET_FRAMES = 16                     # a streamed run's comparison.png shows frames of its first SHEET_FRAMES

__all__ = ["restore_in_windows", "FirstFrames", "SHEET_FRAMES"]


def restore_in_windows(folder: Optional[Path], job: Job, cfg: SolverConfig, model, head: list,
                       rest: Iterator, notes: list[str], group=None) -> Optional[dict]:
    """Algorithm 1 in windows of --max-frames frames (engine.windows), streamed; returns the report it wrote.

    INPUT's frames (`head`, then `rest`; [3, H, W], clean or measured; `cfg` is fitted to them here) are
    measured (y[n] = S(Σ_m T[n, m] x[m]) + σ_y·w[n], `VideoRestorer.measure`, its noise drawn frame after
    frame), restored a window at a time, scored
    (the per-frame PSNR and SSIM of `clip_summary`, so its means are those of the whole clip) and written
    as they come: restored.mp4, frames/ and measurement.mp4, then metrics.json and comparison.png
    (the first SHEET_FRAMES frames only). Holds about W + 3r frames, never the whole video.

    With a process `group` (torchrun) every process measures (or reads) the same frames and restores
    its share of each window; the group's rank 0 writes (into `folder`) and records every process's
    seconds; the others return None.
    """
    from engine.video_io import frames_writer, video_writer
    from engine.windows import VideoRestorer

    cfg = fitted_config(job, cfg, tuple(head[0].shape[-2:]), frames=None)
    first = torch.stack(head)                         # the first W + 1 frames: the noise and the colour of INPUT
    noise = noise_level(first, job.sigma_y) if job.measured else None
    if noise is not None:
        job, cfg = with_sigma_y(job, cfg, noise.sigma_y)
    grey = is_grey(first)
    _, changes = in_input_format(first[:1], grey=grey)
    del first
    frames = _drained(head, rest)
    if cfg.noise != "shared":
        raise InputError("--max-frames restores in windows with the shared noise image only; drop --noise independent")
    restorer = VideoRestorer(model, cfg, window=job.max_frames, lag=job.window_lag, lead=job.window_lead, group=group,
                             clock=StageClock(cfg.device) if group is not None else None)
    if restorer.rank != 0:
        return _restore_windows_elsewhere(job, restorer, frames)
    held = deque()                                    # clean frames read and not yet scored
    guard = StreamGuard(cfg.spec, cfg.frame, job.sigma_y) if job.measured else None     # as whole.restore's input_guard
    sigma_p = polish_sigma(weighed_noise(job, cfg)) if job.measured else 0.0            # and its last denoise
    finish = lambda x: polish(restorer.eps_model, x, sigma_p)                           # [B, 3, H, W]
    y = guard.tap(frames) if job.measured else restorer.measure(_kept(frames, held), sigma_y=job.sigma_y,
                                                                 seed=job.seed + 1)
    scores, sheet, fps, total = Scores(), FirstFrames(SHEET_FRAMES), output_fps(job), declared_frames(job)
    every = max(1, total // 10) if total else job.max_frames
    t0, count = time.perf_counter(), 0
    with video_writer(folder / "restored.mp4", fps) as restored_mp4, frames_writer(folder / "frames") as png, \
            video_writer(folder / "measurement.mp4", fps) as measured_mp4, \
            tqdm(total=total, desc="restoring", unit="frame", disable=None) as bar:
        restored = restorer.restore(_tapped(y, measured_mp4, sheet), seed=job.seed)
        for count, x in enumerate(guard.frames(restored, finish) if guard else restored, 1):
            x = grey_clip(x[None].cpu())[0] if grey else x.cpu()
            restored_mp4(x)
            png(x)
            sheet.add("restored", x)
            if not job.measured:
                ref = held.popleft()
                scores.add(x, ref)
                sheet.add("clean", ref)
            bar.update()
            if bar.disable and count % every == 0:
                log.info("restored %d frames", count)
    seconds = time.perf_counter() - t0
    cfg = dataclasses.replace(cfg, frames=count)                         # the frames read
    fields = {"kernels_used": restorer.kernels_used.arithmetic,
              "windows": {"max_frames": job.max_frames, "lag": restorer.lag, "lead": restorer.lead, "streamed": True,
                          "measurement_frames_held_peak": restorer.frames_held_peak},
              **_window_ranks(restorer, seconds), "memory": peak_record(cfg.device), "comparison": sheet.note(),
              **({"guard": guard.record(), "polish": polish_record(sigma_p)} if guard else {})}
    if not job.measured:
        fields["restored"] = scores.summary()
        log.info("PSNR %.2f dB in windows of %d frames, %d frames, %.1f s", fields["restored"]["psnr_mean"],
                 job.max_frames, count, seconds)
    elif guard.residuals() is not None:               # a video-space measurement: its residual, as whole.restore's
        fields["residual"] = residual_record(guard.residuals(), job.sigma_y, weighed=weighed_noise(job, cfg),
                                             registered=cfg.register)
    report = metrics_record(job, cfg, frames=count, seconds=seconds, model=model, noise=noise,
                            input_changes=notes, output_changes=changes, **fields)
    atomic_write_json(folder / "metrics.json", json_safe(report))
    save_png(folder / "comparison.png", sheet.image())
    return report


def _restore_windows_elsewhere(job: Job, restorer, frames: Iterator) -> None:
    """A process other than rank 0 of `restore_in_windows`: its share of every window, nothing written."""
    y = frames if job.measured else restorer.measure(frames, sigma_y=job.sigma_y, seed=job.seed + 1)
    t0 = time.perf_counter()
    for _ in restorer.restore(y, seed=job.seed):      # rank 0 alone yields frames
        pass
    _window_ranks(restorer, time.perf_counter() - t0)


def _window_ranks(restorer, seconds: float) -> dict:
    """{"world_size", "ranks": each process's seconds, split windows and seconds of the network, the CG, the
    warm start's CG and the communication inside both} on rank 0 ({} elsewhere, or for one process)."""
    if restorer.group is None:
        return {}
    record = {"rank": restorer.rank, "seconds": seconds, "windows_split": restorer.windows_split,
              **stage_seconds(restorer.clock)}
    records = gather_records(record, restorer.group)
    return {} if records is None else {"world_size": restorer.world, "ranks": records}


class FirstFrames:
    """The first `count` frames of each labelled stream (clean, measured, restored), for comparison.png."""

    def __init__(self, count: int):
        self.count = count
        self.rows: dict[str, list[torch.Tensor]] = {}

    def add(self, label: str, frame: torch.Tensor) -> None:
        row = self.rows.setdefault(label, [])
        if len(row) < self.count:                                   # as the 8-bit sheet will show it
            row.append((frame.detach().cpu().float().clamp(0, 1) * 255).round_().to(torch.uint8)
                       if frame.is_floating_point() else frame.cpu())

    def ids(self) -> list[int]:
        n = min(len(row) for row in self.rows.values())
        return sorted({0, n // 3, 2 * n // 3, n - 1})

    def image(self):
        """The contact sheet: clean (when scored), measured, restored; one column per frame of `ids`."""
        order = [label for label in ("clean", "measured", "restored") if label in self.rows]
        return contact_sheet([(label, unit_float(torch.stack(self.rows[label]))) for label in order], self.ids())

    def note(self) -> str:
        return (f"frames {', '.join(map(str, self.ids()))}: a streamed run keeps only its first "
                f"{self.count} frames for the sheet")


def _kept(frames: Iterable, held: deque) -> Iterator:
    """`frames`, each also appended to `held` (the clean frames the restorer has not returned yet, as uint8
    when they hold 8-bit levels only: engine.job_input.compact)."""
    for frame in frames:
        held.append(compact(frame))
        yield frame


def _tapped(y: Iterable, write, sheet: FirstFrames) -> Iterator:
    """The measurement frames as the restorer pulls them, each written (clamped to [0, 1]) and kept for the sheet."""
    for frame in y:
        view = frame.detach().cpu().clamp(0, 1)
        write(view)
        sheet.add("measured", view)
        yield frame


def _drained(head: list, rest: Iterator) -> Iterator:
    """The frames of `head` (released as they go), then those of `rest`."""
    while head:
        yield head.pop(0)
    yield from rest
