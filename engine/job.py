"""One restoration job: what to read, what to write, how INPUT was made, and the config fitted to it.

A run is a `Job` (its I/O half: INPUT, --out, the prior, the noise, the memory plan) and a
`SolverConfig` (the Solver's half). The config a command line builds is provisional: its frame
count, frame size and time boundary come from INPUT (`fitted_config`), its γ from the noise σ_y of
the measurement once known (`with_sigma_y`).

    job = Job(input=Path("blurred.mp4"), out=Path("out"))
    cfg = fitted_config(job, SolverConfig(spec="temporal:uniform:7"), (272, 640), frames=120)

Nothing here reads a frame (engine.job_input does) or knows of a command line; the messages name
the flags of `python -m engine.solve`, the command that fills a Job from its arguments.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engine.cg import GAMMA_NOISE, default_gamma
from engine.errors import InputError
from engine.metrics import SSIM_RADIUS
from engine.operators.spec import parse as parse_spec
from engine.operators.spec import split_temporal, sr_scale, time_boundary, with_time_boundary
from engine.runtime import SolverConfig, load_model

log = logging.getLogger(__name__)

DEFAULT_FRAMES = 16
DEFAULT_FPS = 8.0                     # for inputs that declare no frame rate (frame folders, arrays, the demo)
BASELINES = ("cg", "admm-tv")
MIN_SCORED_SIZE = 2 * SSIM_RADIUS + 1  # SSIM's window

__all__ = ["Job", "DEFAULT_FRAMES", "DEFAULT_FPS", "BASELINES", "MIN_SCORED_SIZE", "video_boundary", "clean_frame",
           "fitted_config", "with_sigma_y", "temporal_prior_for", "output_fps", "say_assumed_mask", "load_eps_model"]


@dataclass(frozen=True)
class Job:
    """The I/O half of one run (the Solver's settings are the other half, a SolverConfig)."""

    input: Optional[Path]                # None: --demo
    out: Path
    overwrite: bool = False
    measured: bool = True                # INPUT is the measurement; False: a clean clip degraded here (--simulate)
    blind: bool = False
    init: Optional[Path] = None          # first reconstruction for --blind
    checkpoint: Optional[Path] = None
    engine: Optional[Path] = None        # TensorRT engine file
    prior: str = "ffdnet"                # the ε model without a checkpoint (engine.priors.PRIORS)
    task: Optional[str] = None           # a paper --task (its clips keep the circular boundary in time)
    model_config: Optional[dict] = None  # guided-diffusion flags the checkpoint's shapes cannot tell
    class_label: Optional[int] = None    # for a class-conditional checkpoint
    frames: Optional[int] = None         # None: every frame
    max_frames: Optional[int] = None     # restore in windows of this many frames (engine.windows); None: whole
    size: Optional[int] = None           # square frame size (crop + resize, the paper's protocol); None: own size
    fps: Optional[float] = None          # None: the input's own rate, else DEFAULT_FPS
    sigma_y: Optional[float] = None      # noise added to a clean INPUT, or the stated noise of a measured one;
                                         # None: 0 for a clean INPUT, estimated from a measured one (engine.noise)
    seed: int = 0
    baselines: tuple[str, ...] = ()
    temporal_prior: str = "auto"         # engine.temporal_prior's name, or "auto" (`temporal_prior_for`)
    register: Optional[bool] = None      # --register / --no-register: the motion prior's frames moved to where y puts
                                         # them (engine.registration); None: for a measurement made here (--simulate)
    memory_budget: Optional[float] = None  # GB the run may hold (engine.memory); None: a fraction of what is free
    plan: Optional[dict] = None           # engine.memory.Plan.record() of the run, set by engine.job_checks.planned
    window_lag: Optional[int] = None      # the windows' lag and lead (engine.windows); None: the defaults. The plan
    window_lead: Optional[int] = None     # sets the least (w − 1, 0) when the default windows do not fit the budget

    def __post_init__(self):
        if self.sigma_y is not None and not (math.isfinite(self.sigma_y) and 0 <= self.sigma_y <= 1):
            raise InputError(f"--sigma-y must be a number in [0, 1], got {self.sigma_y}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"--fps must be a positive frame rate, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 2:
            raise InputError(f"--max-frames must be at least 2, got {self.max_frames}")
        if self.max_frames is not None and self.baselines:
            raise InputError("--baselines need the whole clip in memory; --max-frames streams it in windows: "
                             "give --baselines none or drop --max-frames")
        if self.max_frames is not None and self.blind:
            raise InputError("--blind fits the PSF to the whole clip at once; drop --max-frames")
        if self.memory_budget is not None and not (math.isfinite(self.memory_budget) and self.memory_budget > 0):
            raise InputError(f"--memory-budget must be a positive number of GB, got {self.memory_budget}")
        if self.frames is not None and self.frames < 1:
            raise InputError(f"--frames must be at least 1, got {self.frames}")
        if self.size is not None and self.size < 1:
            raise InputError(f"--size must be at least 1, got {self.size}")
        if self.seed < 0:
            raise InputError(f"--seed must be >= 0, got {self.seed}")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise InputError(f"unknown baseline {sorted(unknown)[0]!r}; accepted: {', '.join(BASELINES)} or none")
        if not self.measured and self.size is not None and self.size < MIN_SCORED_SIZE:
            raise InputError(f"--size {self.size} is too small to score (SSIM needs frames of at least "
                             f"{MIN_SCORED_SIZE}x{MIN_SCORED_SIZE})")


def video_boundary(job: Job, frames: Optional[int]) -> str:
    """The temporal boundary a spec without one gets: circular for a paper --task on its 16-frame clips
    (the paper's protocol and public code) and for --blind (Algorithm 2 fits circular PSFs), replicate
    (the end frames held, as a camera's exposure would) for a whole video and for a streamed one
    (`frames` None: windows cannot wrap its end onto its start)."""
    paper = job.task is not None and frames == DEFAULT_FRAMES
    return "circular" if paper or job.blind else "replicate"


def clean_frame(spec: str, measured: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the clean frames behind measured frames of `measured` (H', W'): × every SR factor."""
    scale = sr_scale(spec)
    return measured[0] * scale, measured[1] * scale


def with_sigma_y(job: Job, cfg: SolverConfig, sigma_y: float) -> tuple[Job, SolverConfig]:
    """(job, cfg) at the measurement's noise σ_y: γ of the regularised CG from σ_y unless --gamma set it, and σ_y
    for the motion prior's flow."""
    gamma = cfg.gamma if cfg.gamma is not None else default_gamma(sigma_y, diffusion=job.checkpoint is not None)
    return dataclasses.replace(job, sigma_y=sigma_y), dataclasses.replace(cfg, gamma=gamma, sigma_y=sigma_y)


def weighed_noise(job: Job, cfg: SolverConfig) -> float:
    """σ_w, the noise level the CG's γ weighs the data for: GAMMA_NOISE / γ with a learned prior (default_gamma's
    σ_y, larger than σ_y where γ is capped), 0 with the paper's ADM checkpoint or the noiseless CG."""
    return GAMMA_NOISE / cfg.gamma if cfg.gamma and job.checkpoint is None else 0.0


def fitted_config(job: Job, cfg: SolverConfig, shape: tuple[int, int], frames: Optional[int]) -> SolverConfig:
    """`cfg` fitted to INPUT: its frame count (None: streamed, not known yet: `cfg.frames` stays), the clean
    frames' (H, W) (`shape` is INPUT's frame size: the clean frames', or the measurement's), the time boundary,
    the temporal prior, and the frames' registration (engine.registration) where the motion prior runs: as
    --register / --no-register say, else on a measurement made here (--simulate: white noise; a real video's codec
    errors mislead it) or where `cfg` asks for it."""
    frame = clean_frame(cfg.spec, shape) if job.measured else shape
    if job.measured and job.size is not None and frame != (job.size, job.size):
        raise InputError(f"the measurement's frame shape {shape[1]}x{shape[0]} under {cfg.spec} comes from "
                         f"{frame[1]}x{frame[0]} frames, not the {job.size}x{job.size} of --size")
    spec = with_time_boundary(cfg.spec, video_boundary(job, frames))
    prior = temporal_prior_for(job.temporal_prior, spec)
    wanted = job.register if job.register is not None else cfg.register or not job.measured
    return dataclasses.replace(cfg, frames=frames or cfg.frames, size=frame, spec=spec, temporal_prior=prior,
                               register=prior == "motion" and wanted)


def temporal_prior_for(choice: str, spec: str) -> str:
    """--temporal-prior: "auto" is "motion" (engine.temporal_prior: the blur's free modes chosen along motion)
    for a temporal blur with held or zero ends, a real video's, and "none" (the paper's behaviour) for a
    circular one (the paper's 16-frame clips, --blind) or a spec without a temporal term."""
    if choice != "auto":
        return choice
    temporal, _ = split_temporal(spec)
    return "motion" if temporal and all(time_boundary(t) != "circular" for t in temporal) else "none"


def output_fps(job: Job) -> float:
    """--fps, else the input's declared frame rate, else DEFAULT_FPS."""
    if job.fps is not None:
        return job.fps
    from engine.video_io import frame_rate

    return (frame_rate(job.input) if job.input is not None else None) or DEFAULT_FPS


def say_assumed_mask(job: Job, cfg: SolverConfig) -> None:
    """A measured random-inpainting run names the mask it assumes (the spec's seed, else seed 0)."""
    if not job.measured:
        return
    for term in parse_spec(cfg.spec):
        if term.name == "inpaint" and not term.args.startswith("file=") and len(term.fields) == 1:
            log.warning("measured inpainting without a mask file or seed: assuming the random mask of seed %d "
                        "(%s:%d); name yours with inpaint:RATE:SEED or inpaint:file=MASK.png",
                        cfg.mask_seed, term, cfg.mask_seed)


def load_eps_model(job: Job, cfg: SolverConfig):
    """The ε model of the run (engine.runtime.load_model): the checkpoint or the prior, on the config's backend."""
    model, _ = load_model(job.checkpoint, backend=cfg.backend, engine=job.engine, size=job.size, device=cfg.device,
                          model_config=job.model_config, class_label=job.class_label, prior=job.prior)
    return model
