"""A job's output folder: claimed before any work, written atomically, described by one metrics.json.

    with claimed_output(job) as tmp:                       # refuses a bad --out first; swapped in on success
        report = metrics_record(job, cfg, frames=n, seconds=s, model=model, **fields)
        write_outputs(tmp, job, clean, y, restored, report, fps=output_fps(job))

The folder holds OUTPUT_NAMES only: restored.mp4, measurement.mp4, frames/, metrics.json and
comparison.png. --overwrite replaces only a folder whose metrics.json says it was written by
WRITTEN_BY and that holds nothing else, never one that holds an input, the current directory or a
parent of either. `metrics_record` is the one place metrics.json's shared keys are named; each
runner adds what only it measures (scores, windows, processes, the residual).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch

from engine.errors import InputError
from engine.figures import contact_sheet, save_png
from engine.fileio import atomic_folder, atomic_write_json, mark_in_progress, remove_stale_runs
from engine.job import Job, output_fps
from engine.job_input import unit_float
from engine.metrics import json_safe
from engine.realvideo import grey_clip
from engine.runtime import SolverConfig

log = logging.getLogger(__name__)

#: what a run writes into --out; a folder holding anything else is never replaced
OUTPUT_NAMES = frozenset({"restored.mp4", "measurement.mp4", "frames", "metrics.json", "comparison.png"})
WRITTEN_BY = "engine.solve"           # metrics.json's "written_by": the mark --overwrite checks

__all__ = ["OUTPUT_NAMES", "WRITTEN_BY", "claimed_output", "check_output", "write_outputs", "in_input_format",
           "metrics_record", "settings", "prior_name", "model_record"]


@contextmanager
def claimed_output(job: Job) -> Iterator[Path]:
    """`with claimed_output(job) as tmp:` — refuses a bad --out before any work (`check_output`), removes
    what a killed run to the same --out left (engine.fileio.remove_stale_runs), yields a new temporary
    folder beside it (engine.fileio.atomic_folder: the user's umask) marked as this run's while it
    works, swapped in for --out on success; on failure the temporary folder and any parent folders
    it created are removed."""
    out = Path(os.path.abspath(job.out))
    inputs = [p for p in (job.input, job.init, job.checkpoint, job.engine) if p is not None]
    check_output(out, overwrite=job.overwrite, protected=[Path.cwd(), *inputs])
    remove_stale_runs(out)
    created = _first_missing(out.parent)
    try:
        with ExitStack() as stack:
            try:
                tmp = stack.enter_context(atomic_folder(out))
            except OSError as err:
                raise InputError(f"cannot create the output folder {out}: {err.strerror or err}") from None
            marker = mark_in_progress(tmp)
            yield tmp
            marker.unlink()
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def check_output(out: Path, *, overwrite: bool, protected: list[Path]) -> None:
    """One line, before any work, for an --out that cannot or must not be (re)placed."""
    for path in protected:
        path = Path(os.path.abspath(path))
        if out == path or out in path.parents:
            raise InputError(f"--out {out} would replace {path} (an input or the current folder); choose a new folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace an output of this command, or choose a new folder")
    if not any(out.iterdir()):
        return                                          # an empty folder holds nothing to lose
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES)
    if foreign:
        raise InputError(f"--overwrite refused: {out} holds files this command did not write "
                         f"({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''})")
    if _written_by(out / "metrics.json") != WRITTEN_BY:
        raise InputError(f"--overwrite refused: {out} was not written by {WRITTEN_BY} (its metrics.json does not "
                         f"say so); remove it yourself if you mean it")


def _written_by(metrics: Path) -> Optional[str]:
    try:
        return json.loads(metrics.read_text()).get("written_by")
    except (OSError, ValueError, AttributeError):
        return None


def _first_missing(folder: Path) -> Optional[Path]:
    """The outermost ancestor of `folder` (or itself) that does not exist yet, or None."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing = path
    return missing


def write_outputs(folder: Path, job: Job, clean, y, restored, report, *, fps: float, init=None) -> None:
    """restored.mp4, measurement.mp4, frames/, metrics.json, comparison.png into `folder`: the encoders fed
    a frame at a time, the sheet made of its four frames only (no second copy of any clip). The writing's
    seconds join the report's `seconds` (and `fps`) as `write_s`: a run's seconds count the same work on
    every path (the streamed windows write as they restore)."""
    from engine.video_io import frames_writer, video_writer

    n, t0 = restored.shape[0], time.perf_counter()
    with video_writer(folder / "restored.mp4", fps) as mp4, \
            frames_writer(folder / "frames", digits=max(4, len(str(n - 1)))) as png:
        for frame in restored:
            mp4(frame)
            png(frame)
    with video_writer(folder / "measurement.mp4", fps) as mp4:
        for frame in y:
            mp4(frame.detach().cpu().clamp(0, 1))
    report["write_s"] = time.perf_counter() - t0
    report["seconds"] += report["write_s"]
    report["fps"] = n / report["seconds"]
    atomic_write_json(folder / "metrics.json", json_safe(report))
    ids = sorted({0, n // 3, 2 * n // 3, n - 1})
    rows = ([("clean", clean)] if clean is not None else []) + [("measured", y)]
    rows += ([("first estimate", init)] if init is not None else []) + [("restored", restored)]
    sheet = [(label, unit_float(clip[ids].detach().cpu()).clamp(0, 1)) for label, clip in rows]
    save_png(folder / "comparison.png", contact_sheet(sheet, range(len(ids))))


def in_input_format(restored: torch.Tensor, *, grey: bool) -> tuple[torch.Tensor, list[str]]:
    """(the restored clip in INPUT's format, the changes recorded): grey stays grey; an odd frame size
    is kept in frames/ and padded by one row/column in the mp4 (yuv420p needs even sides)."""
    changes = []
    if grey:
        restored = grey_clip(restored)
        changes.append("INPUT is grey: restored in colour, written grey (each pixel's channel mean)")
    h, w = restored.shape[-2:]
    if h % 2 or w % 2:
        changes.append(f"restored.mp4 is {w + w % 2}x{h + h % 2}: H.264 (yuv420p) needs even sides, so its last "
                       f"{'row' if h % 2 else 'column'}{' and column' if h % 2 and w % 2 else ''} is repeated; "
                       f"frames/ keeps {w}x{h}")
    for change in changes:
        log.warning("output: %s", change)
    return restored, changes


def metrics_record(job: Job, cfg: SolverConfig, *, frames: int, seconds: float, model=None, noise=None,
                   input_changes: Optional[list[str]] = None, output_changes: Optional[list[str]] = None,
                   **fields) -> dict:
    """metrics.json of one run: who wrote it, every setting (`settings`; a --blind run's without the spec,
    which it estimates), INPUT, the prior and the checkpoint's architecture (`model`; None: not recorded),
    the seconds and frames per second of `frames` in `seconds`, then `fields` (what the runner alone
    measured: scores, kernels, windows, processes, the residual), the noise estimate of a measured INPUT
    (engine.realvideo.NoiseLevel) and what was changed in INPUT and in the output (None: not recorded)."""
    run_settings = settings(job, cfg)
    if job.blind:
        del run_settings["spec"]
    report = {"written_by": WRITTEN_BY, "settings": run_settings,
              "input": "demo" if job.input is None else str(job.input), "prior": prior_name(job),
              **model_record(model), "seconds": seconds, "fps": frames / seconds, **fields}
    if noise is not None:
        report["noise"] = noise.as_dict()
    if input_changes is not None:
        report["input_changes"] = input_changes
    if output_changes is not None:
        report["output_changes"] = output_changes
    return report


def settings(job: Job, cfg: SolverConfig) -> dict:
    """Every setting of the run, for metrics.json."""
    return {**cfg.to_dict(), "sigma_y": job.sigma_y, "seed": job.seed, "baselines": list(job.baselines),
            "fps": output_fps(job), "max_frames": job.max_frames, "memory_plan": job.plan}


def prior_name(job: Job) -> str:
    """The ε model named in metrics.json."""
    if job.checkpoint:
        return str(job.checkpoint)
    return "ffdnet (a small learned denoiser, not the paper's ADM)" if job.prior == "ffdnet" else "gaussian (weight-free)"


def model_record(model) -> dict:
    """The checkpoint's architecture (upstream's flags) and class label, for metrics.json; {} otherwise."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "as_flags"):
        return {}
    return {"model_config": config.as_flags(), "class_label": getattr(model, "class_label", None)}
