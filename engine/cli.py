"""What the command lines share: parse, then run, with errors a user can act on as one line.

    def main(argv=None) -> int:
        return command(argv, parse, run)

`parse(argv)` returns (job, SolverConfig, verbose) and raises InputError for a bad setting;
`run(job, cfg)` does the work and returns what to print (None: nothing). InputError, CheckpointError,
ModelError and ImportError (a missing extra) print `error: …` on one line and exit 2.
With `interruptible`, Ctrl-C or SIGTERM (a scheduler, `timeout`) unwinds the run, so its
temporary output is removed, and exits 130; otherwise the interrupt reaches the caller.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Callable

from engine.errors import CheckpointError, InputError, ModelError, PeerError

#: errors a user can act on: printed as one line, exit status 2
USER_ERRORS = (InputError, CheckpointError, ModelError, PeerError, ImportError)


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
