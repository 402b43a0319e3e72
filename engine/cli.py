"""What the command lines share: the solver's flags, declared once, and parse-then-run with one-line errors.

    def main(argv=None) -> int:
        return command(argv, parse, run)

    add_solver_flag(p, "nfe", note="(default: the task's)")     # --nfe: its type and help from SOLVER_FLAGS

`SOLVER_FLAGS` declares each flag that sets a solver setting (engine.runtime.SolverConfig, the prior)
for every command line that has it (`python -m engine.solve`, `python -m engine.evaluate`,
`python -m bench.fps`): its option strings, type, choices and the help's first words. A command adds
its own default, and says it in `note`.

`parse(argv)` returns (job, SolverConfig, verbose) and raises InputError for a bad setting;
`run(job, cfg)` does the work and returns what to print (None: nothing). InputError, CheckpointError,
ModelError and ImportError (a missing extra) print `error: …` on one line and exit 2.
With `interruptible`, Ctrl-C or SIGTERM (a scheduler, `timeout`) unwinds the run, so its
temporary output is removed, and exits 130; otherwise the interrupt reaches the caller.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

import torch

from engine.backends import BACKENDS, PRECISIONS
from engine.errors import CheckpointError, InputError, ModelError, PeerError
from engine.priors import PRIORS

#: errors a user can act on: printed as one line, exit status 2
USER_ERRORS = (InputError, CheckpointError, ModelError, PeerError, ImportError)

#: the solver's flags: name → (option strings, argparse keywords, the help's first words)
SOLVER_FLAGS = {
    "checkpoint": (("--checkpoint",), {"type": Path}, "ADM checkpoint (.pt or .safetensors), e.g. "
                                                      "256x256_diffusion_uncond.pt"),
    "prior": (("--prior",), {"choices": PRIORS},
              "without --checkpoint: ffdnet (default; a small learned denoiser, FFDNet, used through Tweedie's "
              "formula; pip install 'video-inverse-engine[ffdnet]') or gaussian (weight-free)"),
    "nfe": (("--nfe",), {"type": int}, "network evaluations K, 1 to 1000"),
    "start": (("--start",), {"type": int, "metavar": "T0"},
              "warm start: begin the reverse process at t0 in [nfe, 1000] from a CG estimate of the clip instead "
              "of noise"),
    "eta": (("--eta",), {"type": float}, "DDIM stochasticity η in [0, 1]"),
    "cg_iters": (("--cg-iters",), {"type": int}, "CG iterations per step l, >= 0"),
    "batch": (("--batch",), {"type": int}, "frames (or tiles) per network call, B"),
    "device": (("--device",), {}, "cpu, cuda or cuda:N"),
    "dtype": (("--dtype",), {"choices": list(PRECISIONS)}, "network precision"),
    "backend": (("--backend",), {"choices": BACKENDS},
                "torch (eager), torch+graph (whole loop as one CUDA graph), compile, tensorrt (needs --engine)"),
    "engine": (("--engine",), {"type": Path}, "TensorRT engine from python -m engine.build (for --backend tensorrt)"),
    "cudnn_benchmark": (("--cudnn-benchmark",), {"action": "store_true"},
                        "let cuDNN time its convolution algorithms once per shape (a slower first step)"),
}


def add_solver_flag(p, name: str, *, note: str = "", flags: tuple[str, ...] = (), help: str = "",
                    **kwargs) -> argparse.Action:
    """Declare SOLVER_FLAGS[name] on `p` (a parser or a group): its option strings (`flags` instead: an alias,
    or a command's older name), type and choices; its help (`help` instead where the command's meaning is
    narrower), then `note` (the command's default); `kwargs`: the command's own default, dest or action."""
    declared_flags, declared, words = SOLVER_FLAGS[name]
    text = " ".join(part for part in (help or words, note) if part)
    return p.add_argument(*(flags or declared_flags), **{**declared, **kwargs}, help=text)


def default_device() -> str:
    """--device's default: cuda when a GPU is visible, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def command(argv, parse: Callable, run: Callable, *, interruptible: bool = False) -> int:
    """Exit status of one command: parse, configure logging, run, print the result."""
    try:
        job, cfg, verbose = parse(argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if interruptible and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run(job, cfg)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not interruptible:
            raise
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130
    if result is not None:              # None: nothing to say (a process of a torchrun job other than the first)
        print(result)
    return 0


def _interrupt(signum, frame):
    """SIGTERM unwinds like Ctrl-C."""
    raise KeyboardInterrupt(f"stopped by signal {signum}")
