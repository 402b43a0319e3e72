"""Errors a user can act on. The command lines print them as one line and exit 2."""


class InputError(ValueError):
    """Bad user input: a missing or corrupt file, wrong shapes, NaN values, an unknown spec."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into the requested model. Never falls back to random weights."""


class ModelError(RuntimeError):
    """An ε model that misbehaves at run time: a wrong output shape, or NaN/Inf in what it returns."""


class PeerError(RuntimeError):
    """Another process of a sharded run (torchrun) failed; the message is that process's error."""
