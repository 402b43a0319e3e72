"""Running work on a CUDA stream of one's own, ordered with the caller's current stream."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def on_stream(stream: torch.cuda.Stream, device: torch.device) -> Iterator[torch.cuda.Stream]:
    """Run the block on `stream` (on `device`), after the work already queued on the caller's current
    stream and before the work the caller queues afterwards. Yields the caller's stream: a tensor
    made in the block and used by the caller needs `record_stream(caller)`. The caller's stream waits
    for `stream` however the block ends, so work it queued before raising is ordered too."""
    with torch.cuda.device(device):
        caller = torch.cuda.current_stream(device)
        stream.wait_stream(caller)
        try:
            with torch.cuda.stream(stream):
                yield caller
        finally:                            # also when the block raises: its work is queued on `stream`
            caller.wait_stream(stream)
