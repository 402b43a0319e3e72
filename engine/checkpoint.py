"""Loading guided-diffusion ADM checkpoints into `engine.unet.ADMUNet`.

A checkpoint is untrusted input: `.pt` files are read with
`torch.load(weights_only=True)`, `.safetensors` files through the safetensors
package. A state dict that does not match the architecture exactly is a
`CheckpointError` that names what differs. There is never a fallback to random
weights (DPS's `create_model` silently falls back).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import torch

from engine.errors import CheckpointError
from engine.unet import PRESETS, ADMConfig, ADMUNet

log = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]

_WRAPPER_KEYS = ("state_dict", "model")   # {"state_dict": sd, ...} and {"model": sd, ...}
_KEY_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP and torch.compile
_SHOWN = 5                                 # keys named per kind of difference


@dataclass(frozen=True)
class StateDictDiff:
    """How a state dict's keys and shapes differ from a model's."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (key, got, expected)

    @property
    def count(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def __str__(self) -> str:
        parts = []
        for label, items in (("missing keys", self.missing), ("unexpected keys", self.unexpected)):
            if items:
                parts.append(f"{len(items)} {label} ({_first(items)})")
        if self.mismatched:
            shown = [f"{k}: checkpoint {list(got)} vs model {list(want)}"
                     for k, got, want in self.mismatched]
            parts.append(f"{len(shown)} shape mismatches ({_first(shown)})")
        return "; ".join(parts)


def _first(items) -> str:
    """The first few items, comma-separated, with '…' when there are more."""
    return ", ".join(items[:_SHOWN]) + (", …" if len(items) > _SHOWN else "")


@lru_cache(maxsize=8)
def expected_shapes(config: ADMConfig) -> Mapping[str, tuple[int, ...]]:
    """{key: shape} of `ADMUNet(config).state_dict()`, in order (built on the meta device)."""
    with torch.device("meta"):
        model = ADMUNet(config)
    return MappingProxyType({k: tuple(v.shape) for k, v in model.state_dict().items()})


def diff_state_dict(state_dict: StateDict, config: ADMConfig) -> StateDictDiff:
    """Missing keys, unexpected keys and shape mismatches of `state_dict` against `config`."""
    expected = expected_shapes(config)
    return StateDictDiff(
        missing=tuple(k for k in expected if k not in state_dict),
        unexpected=tuple(k for k in state_dict if k not in expected),
        mismatched=tuple((k, tuple(v.shape), expected[k]) for k, v in state_dict.items()
                         if k in expected and tuple(v.shape) != expected[k]),
    )


def infer_config(state_dict: StateDict) -> ADMConfig:
    """The preset whose keys and shapes `state_dict` matches exactly.

    Raises CheckpointError naming the closest preset and what differs from it.
    """
    diffs = {name: diff_state_dict(state_dict, ADMConfig.preset(name)) for name in PRESETS}
    for name, diff in diffs.items():
        if not diff.count:
            return ADMConfig.preset(name)
    closest = min(diffs, key=lambda name: diffs[name].count)
    raise CheckpointError(
        f"unknown ADM architecture: the state dict matches none of the presets "
        f"({', '.join(PRESETS)}); closest is {closest!r}: {diffs[closest]}. "
        f"For another architecture pass config=ADMConfig(...) with its flags")


def read_state_dict(source: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    """A plain {key: tensor} from a file path or an in-memory checkpoint.

    Unwraps {"state_dict": …} / {"model": …} and strips "module." / "_orig_mod."
    key prefixes. Tensors are on the CPU for files, untouched for mappings.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        obj, origin = _read_file(path), str(path)
    else:
        obj, origin = source, "the given object"
    return _normalise(obj, origin)


def _read_file(path: Path) -> object:
    """Deserialise a .safetensors or torch.save file without executing code from it."""
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise CheckpointError(
                f"reading {path} needs the safetensors package: "
                f"pip install 'video-inverse-engine[safetensors]'") from exc
        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # any parse failure of untrusted bytes
            raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt archive, foreign format, or objects weights_only refuses
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (read with weights_only=True, "
            f"which only accepts tensors and plain containers): {first_line}") from exc


def _normalise(obj: object, origin: str) -> dict[str, torch.Tensor]:
    """Unwrap, strip prefixes, and check that every value is a tensor."""
    while isinstance(obj, Mapping) and not _all_tensors(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"not a checkpoint: {origin} holds a {type(obj).__name__}, "
                              f"expected a state dict (parameter names → tensors)")
    if not obj:
        raise CheckpointError(f"not a checkpoint: {origin} holds an empty state dict")
    bad = next(((k, v) for k, v in obj.items()
                if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None:
        raise CheckpointError(f"not a checkpoint: in {origin}, key {bad[0]!r} holds a "
                              f"{type(bad[1]).__name__}, not a tensor")
    state = dict(obj)
    for prefix in _KEY_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _all_tensors(obj: Mapping) -> bool:
    return all(torch.is_tensor(v) for v in obj.values())


def _check(state_dict: StateDict, config: ADMConfig) -> None:
    """Raise CheckpointError unless `state_dict` holds exactly the real weights of `config`."""
    diff = diff_state_dict(state_dict, config)
    if diff.count:
        raise CheckpointError(f"checkpoint does not fit the ADM config: {diff}")
    for key, value in state_dict.items():
        if not value.is_floating_point():
            raise CheckpointError(f"checkpoint key {key!r} holds {value.dtype} values; "
                                  f"expected floating-point weights")
        if value.is_meta:
            raise CheckpointError(f"checkpoint key {key!r} is a meta tensor without data")


def load_adm(source: str | os.PathLike | Mapping, config: ADMConfig | str | None = None, *,
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ADMUNet:
    """An ADMUNet in eval mode holding the weights of `source` (a path or a state dict).

    `config` is an ADMConfig, a preset name, or None to infer the preset from the key
    shapes. The model is built on the meta device and takes the checkpoint's tensors
    (`load_state_dict(assign=True)`), so no random weights are allocated; tensors of
    an in-memory state dict already in `dtype` on `device` are shared, not copied.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    state = read_state_dict(source)
    if config is None:
        config = infer_config(state)
    elif isinstance(config, str):
        config = ADMConfig.preset(config)
    _check(state, config)
    with torch.device("meta"):
        model = ADMUNet(config)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval()
    log.info("loaded ADM checkpoint (%d parameters, %s) onto %s as %s",
             model.num_parameters(), source if isinstance(source, (str, os.PathLike)) else "in memory",
             device, dtype)
    return model
