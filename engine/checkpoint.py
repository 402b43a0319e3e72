"""Loading guided-diffusion ADM checkpoints into `engine.unet.ADMUNet`.

A checkpoint is untrusted input: `.pt` files are read with
`torch.load(weights_only=True)`, `.safetensors` files through the safetensors
package. A state dict that does not match the architecture exactly is a
`CheckpointError` that names what differs. There is never a fallback to random
weights (DPS's `create_model` silently falls back).

The architecture is read off the state dict (`read_shapes`: channels, channel
multipliers, blocks per level, attention levels, learned Σ, class embedding, resblock
up/down, scale-shift norm). What shapes cannot say — the attention head layout and
order, the training image size when channel_mult does not tell it — comes from a preset
with the same shapes or from overrides in upstream's flag names (`parse_model_config`,
the command line's `--model-config KEY=VALUE,…`). A class-conditional model takes its
class label at load time (`load_adm(…, class_label=k)`).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import torch

from engine.errors import CheckpointError, InputError
from engine.unet import DEFAULT_CHANNEL_MULT, IN_CHANNELS, PRESETS, ADMConfig, ADMUNet

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


# ---------------------------------------------------------------- --model-config: upstream's flags

#: What `parse_model_config` accepts, for help texts and error messages.
MODEL_CONFIG_SYNTAX = (
    "KEY=VALUE[,KEY=VALUE…] in guided-diffusion's flag names; a list value (channel_mult, "
    "attention_resolutions) separates its entries by '-' or ',' (channel_mult=1-1-2-2-4-4, "
    "attention_resolutions=32,16,8: a piece without '=' continues the list before it)")


def _whole_number(text: str) -> int:
    return int(text)


def _truth(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(text)


def _numbers(text: str) -> tuple:
    """'1-1-2-2-4-4', '1,2,3' or '0.5-1' → a tuple of ints (floats where not whole); '' → ()."""
    values = [float(p) for p in re.split(r"[-,]", text) if p.strip()]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(text)
    return tuple(_whole(v) for v in values)


def _whole_numbers(text: str) -> tuple:
    values = _numbers(text)
    if any(not isinstance(v, int) for v in values):
        raise ValueError(text)
    return values


#: Flag → parser of its text value: ADMConfig's fields in upstream's names.
_PARSERS = {
    "image_size": _whole_number, "num_channels": _whole_number, "num_res_blocks": _whole_number,
    "channel_mult": _numbers, "attention_resolutions": _whole_numbers,
    "num_heads": _whole_number, "num_head_channels": _whole_number, "num_heads_upsample": _whole_number,
    "learn_sigma": _truth, "use_scale_shift_norm": _truth, "resblock_updown": _truth,
    "use_new_attention_order": _truth, "class_cond": _truth, "num_classes": _whole_number,
    "dropout": float,
}
#: Upstream flags accepted without effect on the weights or the function, and why.
_IGNORED = {"use_fp16": "the precision is chosen on its own (--precision)",
            "use_checkpoint": "gradient checkpointing is for training"}
_EXPECTED = {_whole_number: "a whole number", _truth: "True or False", _numbers: "numbers joined by '-'",
             _whole_numbers: "whole numbers joined by '-'", float: "a number"}


def parse_model_config(text: str | Mapping | None) -> dict:
    """`--model-config` → {flag: value} for ADMConfig (see MODEL_CONFIG_SYNTAX).

    "num_head_channels=64,attention_resolutions=32,16,8" → {"num_head_channels": 64,
    "attention_resolutions": (32, 16, 8)}. A Mapping has its keys checked and its string
    values parsed. use_fp16 and use_checkpoint are accepted and dropped (logged). Raises
    InputError naming the bad key or value.
    """
    if text is None:
        return {}
    pairs = list(text.items()) if isinstance(text, Mapping) else _split_pairs(text)
    parsed = {}
    for key, value in pairs:
        if key in parsed:
            raise InputError(f"--model-config gives {key} twice")
        if key in _IGNORED:
            log.info("--model-config %s=%s does not change the model: %s", key, value, _IGNORED[key])
            continue
        if key not in _PARSERS:
            close = difflib.get_close_matches(key, [*_PARSERS, *_IGNORED], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InputError(f"--model-config: unknown flag {key!r}{hint}; accepted: {', '.join(_PARSERS)}")
        parsed[key] = _parse_value(key, value) if isinstance(value, str) else _plain(key, value)
    return parsed


def _plain(key: str, value):
    """A value given in Python: list flags as tuples (a single number as a one-tuple)."""
    if _PARSERS[key] in (_numbers, _whole_numbers):
        return (value,) if isinstance(value, (int, float)) else tuple(value)
    return value


def _split_pairs(text: str) -> list[tuple[str, str]]:
    """'a=1,b=2-3,c=4,5' → [(a, '1'), (b, '2-3'), (c, '4,5')]: pieces without '=' continue a list."""
    pairs: list[list[str]] = []
    for piece in (p.strip() for p in text.split(",")):
        if "=" in piece:
            key, _, value = piece.partition("=")
            pairs.append([key.strip(), value.strip()])
        elif not piece:
            continue
        elif pairs and _PARSERS.get(pairs[-1][0]) in (_numbers, _whole_numbers):
            pairs[-1][1] += "," + piece
        else:
            after = f" after {pairs[-1][0]}, which takes one value," if pairs else ""
            raise InputError(f"--model-config: {piece!r}{after} is not KEY=VALUE ({MODEL_CONFIG_SYNTAX})")
    return [(key, value) for key, value in pairs]


def _parse_value(key: str, text: str):
    parser = _PARSERS[key]
    try:
        return parser(text)
    except ValueError:
        raise InputError(f"--model-config {key}={text}: expected {_EXPECTED[parser]}") from None


# ---------------------------------------------------------------- what a state dict's shapes say

class _NotADM(Exception):
    """The keys are not laid out as an ADM UNet's; the message says where."""


def visible_flags(config: ADMConfig) -> dict:
    """The flags of `config` that its state dict's shapes show; attention as levels (0 = full size).

    resblock_updown shows only with a resampler (≥ 2 levels), num_classes only with class_cond.
    The head layout, the attention order, image_size and dropout change no shape.
    """
    flags = dict(num_channels=config.num_channels, num_res_blocks=config.num_res_blocks,
                 channel_mult=tuple(config.channel_mult), attention_levels=config.attention_levels,
                 learn_sigma=config.learn_sigma, use_scale_shift_norm=config.use_scale_shift_norm,
                 class_cond=config.class_cond)
    if len(config.channel_mult) > 1:
        flags["resblock_updown"] = config.resblock_updown
    if config.class_cond:
        flags["num_classes"] = config.num_classes
    return flags


def read_shapes(state_dict: StateDict) -> dict:
    """`visible_flags` of the ADM UNet whose state dict this is, read off its keys and shapes.

    mc from time_embed.0.weight [4mc, mc]; the output blocks come in levels of
    num_res_blocks + 1 blocks, the last of each level but the finest ending in an upsampler
    (a ResBlock with resblock_updown, else `conv`); level l's channels mc·mult_l from its first
    input ResBlock's conv [C_l, ·, 3, 3], attention where that block has a `qkv`; learned Σ
    from out.2.weight (6 output channels, else 3); scale-shift norm from emb_layers.1 (2·C_l
    wide, else C_l); class_cond and num_classes from label_emb.weight [num_classes, 4mc].
    Raises _NotADM. The caller checks every key against the config these flags make.
    """
    mc = _shape(state_dict, "time_embed.0.weight", 2)[1]
    if mc < 1:
        raise _NotADM("time_embed.0.weight has no input channels")
    blocks = _block_count(state_dict, "output_blocks")
    ups = [(i, up) for i in range(blocks) if (up := _upsampler(state_dict, f"output_blocks.{i}"))]
    per_level = ups[0][0] + 1 if ups else blocks
    levels = blocks // per_level
    if per_level < 2 or levels * per_level != blocks or [i for i, _ in ups] != [
            per_level * (k + 1) - 1 for k in range(levels - 1)]:
        raise _NotADM(f"its {blocks} output blocks do not form levels of equal size, each but the "
                      f"finest ending in an upsampler")
    first = [1 + level * per_level for level in range(levels)]           # first input block of each level
    channels = [_shape(state_dict, f"input_blocks.{b}.0.in_layers.2.weight", 4)[0] for b in first]
    out_channels = _shape(state_dict, "out.2.weight", 4)[0]
    if out_channels not in (IN_CHANNELS, 2 * IN_CHANNELS):
        raise _NotADM(f"out.2.weight has {out_channels} output channels, not 3 (ε) or 6 (ε and Σ)")
    flags = dict(
        num_channels=mc, num_res_blocks=per_level - 1,
        channel_mult=tuple(_whole(c / mc) for c in channels),
        attention_levels=frozenset(level for level, b in enumerate(first)
                                   if f"input_blocks.{b}.1.qkv.weight" in state_dict),
        learn_sigma=out_channels == 2 * IN_CHANNELS,
        use_scale_shift_norm=_shape(state_dict, "input_blocks.1.0.emb_layers.1.weight", 2)[0] == 2 * channels[0],
        class_cond="label_emb.weight" in state_dict)
    if ups:
        flags["resblock_updown"] = f"{ups[0][1]}.in_layers.2.weight" in state_dict
    if flags["class_cond"]:
        flags["num_classes"] = _shape(state_dict, "label_emb.weight", 2)[0]
    return flags


def _shape(state_dict: StateDict, key: str, ndim: int) -> tuple[int, ...]:
    if key not in state_dict:
        raise _NotADM(f"it has no {key}")
    shape = tuple(state_dict[key].shape)
    if len(shape) != ndim:
        raise _NotADM(f"{key} has shape {list(shape)}, not {ndim}-D")
    return shape


def _block_count(state_dict: StateDict, name: str) -> int:
    """How many blocks `name.0`, `name.1`, … the keys hold (they must be numbered without gaps)."""
    found = {key.split(".")[1] for key in state_dict if key.startswith(name + ".")}
    if not found or not all(i.isdigit() for i in found) or {int(i) for i in found} != set(range(len(found))):
        raise _NotADM(f"its {name} are not numbered 0, 1, 2, …" if found else f"it has no {name}")
    return len(found)


def _upsampler(state_dict: StateDict, block: str) -> str | None:
    """The prefix of `block`'s upsampling layer (its last layer: `conv`, or a ResBlock after the first), or None."""
    layers = [key[len(block) + 1:].split(".")[0] for key in state_dict if key.startswith(block + ".")]
    last = max((int(i) for i in layers if i.isdigit()), default=None)
    if last is None:
        return None
    prefix = f"{block}.{last}"
    if f"{prefix}.conv.weight" in state_dict or (last and f"{prefix}.in_layers.2.weight" in state_dict):
        return prefix
    return None


def _whole(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _config(flags: Mapping, image_size: int, **more) -> ADMConfig:
    """An ADMConfig of visible `flags` at `image_size` (attention levels → resolutions in pixels),
    any of them replaced by `more`."""
    plain = {k: v for k, v in flags.items() if k != "attention_levels"}
    attention = _pixels(flags["attention_levels"], image_size)
    return ADMConfig(**{**plain, "image_size": image_size, "attention_resolutions": attention, **more})


def _format(flags: Mapping) -> str:
    """Visible flags as --model-config spells them; attention as downsample factors."""
    shown = []
    for key, value in flags.items():
        if key == "attention_levels":
            factors = "-".join(str(2 ** level) for level in sorted(value))
            shown.append(f"attention at downsample factors {factors or 'none'}")
        else:
            shown.append(f"{key}={_spell(value)}")
    return ", ".join(shown)


# ---------------------------------------------------------------- the architecture of a state dict

#: Flags the shapes cannot say, which a preset with the same shapes supplies; the head layout among them.
_HIDDEN = ("num_heads", "num_head_channels", "num_heads_upsample", "use_new_attention_order")
_HEADS = ("num_heads", "num_head_channels", "num_heads_upsample")
_SEEN_GIVEN = ("image_size", "channel_mult", "attention_resolutions")  # once they agree, the shapes' spelling
_CLI = "--model-config KEY=VALUE,… on the command line, load_adm(…, overrides={…}) in Python"


def infer_config(state_dict: StateDict, overrides: str | Mapping | None = None) -> ADMConfig:
    """The ADMConfig of `state_dict`: what its shapes say, completed by `overrides` or a preset.

    The shapes fix `visible_flags` (read_shapes). They cannot say how attention splits into
    heads (num_heads / num_head_channels / num_heads_upsample), the attention order
    (use_new_attention_order) nor the training image size, which turns attention levels
    into upstream's attention_resolutions (image_size // downsample factor). Those come from
    `overrides` (parse_model_config); else from the preset with the same visible flags;
    else image_size from a channel_mult that is upstream's default for exactly one size,
    use_new_attention_order from upstream's default False (with a warning), and the head
    layout must be given. Overrides of visible flags must agree with the shapes.
    Raises CheckpointError naming what is missing or differs.
    """
    given = parse_model_config(overrides)
    try:
        seen = read_shapes(state_dict)
        probe = _config(seen, image_size=2 ** (len(seen["channel_mult"]) - 1), num_heads=1)
    except (_NotADM, ValueError) as exc:
        return _from_flags_alone(state_dict, given, str(exc))
    diff = diff_state_dict(state_dict, probe)
    if diff.count:
        raise CheckpointError(f"unknown ADM architecture: no configuration fits the state dict; against "
                              f"the one its shapes describe ({_format(seen)}) it has {diff}")
    preset = next((name for name in PRESETS if visible_flags(ADMConfig.preset(name)) == seen), None)
    image_size, hidden = _unseen(seen, given, ADMConfig.preset(preset) if preset else None)
    _agree(seen, given, image_size)
    try:
        config = _config(seen, image_size, **{**hidden, **{k: v for k, v in given.items() if k not in _SEEN_GIVEN}})
    except ValueError as exc:
        raise CheckpointError(f"--model-config does not make an ADM UNet: {exc}") from exc
    if preset:
        log.info("ADM architecture: the shapes of preset %r", preset)
    elif "use_new_attention_order" not in given:
        log.warning("ADM architecture from the checkpoint's shapes with use_new_attention_order=False, "
                    "upstream's default (the shapes cannot tell; give use_new_attention_order=True with "
                    "--model-config if it was trained so, as the published 64×64 model)")
    return config


def _unseen(seen: Mapping, given: Mapping, known: ADMConfig | None) -> tuple[int, dict]:
    """(image_size, head flags) the shapes cannot say: from `given`, else the preset `known`, else
    image_size from channel_mult; raises CheckpointError naming what is still missing.

    Given head flags replace the preset's head layout as a whole (num_heads=4 must not be
    overridden by a preset's num_head_channels)."""
    if "image_size" in given:
        image_size = given["image_size"]
    else:
        image_size = known.image_size if known else _size_of_mult(seen["channel_mult"])
    heads_given = any(k in given for k in _HEADS)
    missing = []
    if image_size is None:
        missing.append(f"image_size=N (the training size: channel_mult={_spell(seen['channel_mult'])} "
                       f"is not upstream's default for one size)")
    if known is None and not heads_given:
        missing.append("num_head_channels=N or num_heads=N (the published models use "
                       "num_head_channels=64, the 128×128 one num_heads=4)")
    if missing:
        raise CheckpointError(f"the checkpoint's shapes ({_format(seen)}) do not say {' nor '.join(missing)}; "
                              f"give them with {_CLI}")
    hidden = {k: getattr(known, k) for k in _HIDDEN if not (heads_given and k in _HEADS)} if known else {}
    return image_size, hidden


def _from_flags_alone(state_dict: StateDict, given: Mapping, reason: str) -> ADMConfig:
    """The config `given` describes when the shapes cannot be read; without flags, refuse naming the closest preset."""
    if given:
        try:
            return ADMConfig(**given)
        except ValueError as exc:
            raise CheckpointError(f"--model-config does not make an ADM UNet: {exc}") from exc
    diffs = {name: diff_state_dict(state_dict, ADMConfig.preset(name)) for name in PRESETS}
    closest = min(diffs, key=lambda name: diffs[name].count)
    raise CheckpointError(
        f"unknown ADM architecture: {reason}; it matches none of the presets ({', '.join(PRESETS)}), "
        f"closest is {closest!r}: {diffs[closest]}. If it is a guided-diffusion UNet, give all its "
        f"flags: {_CLI}, or config=ADMConfig(…)")


def _size_of_mult(mult: tuple) -> int | None:
    """The image size whose upstream default channel_mult is `mult`, if exactly one."""
    sizes = [size for size, default in DEFAULT_CHANNEL_MULT.items() if default == mult]
    return sizes[0] if len(sizes) == 1 else None


def _agree(seen: Mapping, given: Mapping, image_size: int) -> None:
    """Raise CheckpointError naming each flag in `given` that contradicts the shapes (`seen`)."""
    shown = []
    for key, theirs in seen.items():
        name = "attention_resolutions" if key == "attention_levels" else key
        if name not in given or (name == "channel_mult" and not given[name]):    # "": upstream's default
            continue
        ours = given[name]
        if key == "attention_levels":
            ours, theirs = tuple(sorted(ours, reverse=True)), _pixels(theirs, image_size)
        if ours != theirs:
            shown.append(f"{name} {_spell(ours)} given, the shapes say {_spell(theirs)}")
    if shown:
        raise CheckpointError(f"--model-config disagrees with the checkpoint: {'; '.join(shown)} "
                              f"(at image_size {image_size}); drop or correct those flags")


def _pixels(levels: frozenset, image_size: int) -> tuple[int, ...]:
    return tuple(image_size // 2 ** level for level in sorted(levels))


def _spell(value) -> str:
    return "-".join(map(str, value)) if isinstance(value, tuple) else str(value)




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
    _check_torch_format(path)
    try:
        with warnings.catch_warnings():     # torch's own warnings precede a refusal the next lines explain
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:   # torch's refusal of anything but tensors and plain containers
        found = _UNSAFE_GLOBAL.search(_ANSI.sub("", str(exc)))
        held = f" (it holds a pickled {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} is not a plain state dict of tensors{held}: objects other than tensors and plain "
            f"containers are not unpickled, since that can run code from the file; save the weights "
            f"alone, torch.save(model.state_dict(), …)") from exc
    except Exception as exc:  # corrupt archive or foreign format
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(exc)}") from exc


_ZIP_MAGIC = b"PK\x03\x04"                 # torch.save's archive (the default since torch 1.6)
_PICKLE_MAGIC = b"\x80"                     # a binary pickle: torch.save's legacy format
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _check_torch_format(path: Path) -> None:
    """Raise CheckpointError unless `path` starts as torch.save writes (a zip archive or a pickle)."""
    with path.open("rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: the file is empty")
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        kind = "a text file" if _is_text(head) else "of an unknown format"
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: it is {kind} (starts with "
                              f"{head!r}), neither torch.save's zip archive nor a pickle")


def _is_text(head: bytes) -> bool:
    text = head.decode("utf-8", errors="ignore")
    return bool(text) and all(ch.isprintable() or ch.isspace() for ch in text)


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message without terminal escapes, at most 200 characters."""
    text = _ANSI.sub("", str(exc)).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:199] + "…"


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
             overrides: str | Mapping | None = None, class_label: int | None = None,
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ADMUNet:
    """An ADMUNet in eval mode holding the weights of `source` (a path or a state dict).

    `config` is an ADMConfig or a preset name; None infers it from the key shapes, with
    `overrides` (upstream's flags, a "KEY=VALUE,…" string or a mapping; see
    parse_model_config and infer_config) for what shapes cannot say. A class-conditional
    checkpoint needs `class_label` (0 ≤ k < num_classes), used for every frame; an
    unconditional one takes none. The model is built on the meta device and takes the
    checkpoint's tensors (`load_state_dict(assign=True)`), so no random weights are
    allocated; tensors of an in-memory state dict already in `dtype` on `device` are
    shared, not copied.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if config is not None and overrides:
        raise ValueError("give config or overrides, not both")
    given = parse_model_config(overrides)          # a bad flag fails before a large file is read
    state = read_state_dict(source)
    if config is None:
        config = infer_config(state, given)
    elif isinstance(config, str):
        config = ADMConfig.preset(config)
    _check(state, config)
    _check_class_label(config, class_label)
    with torch.device("meta"):
        model = ADMUNet(config)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().set_class_label(class_label)
    log.info("loaded ADM checkpoint (%d parameters, %s%s) onto %s as %s",
             model.num_parameters(), source if isinstance(source, (str, os.PathLike)) else "in memory",
             "" if class_label is None else f", class {class_label}", device, dtype)
    return model


def _check_class_label(config: ADMConfig, label) -> None:
    """Raise InputError unless a class-conditional config has a label in range and an unconditional one none."""
    if not config.class_cond:
        if label is not None:
            raise InputError(f"class label {label} given, but the checkpoint is unconditional (it has no "
                             f"label_emb.weight); drop --class-label")
        return
    classes = f"{config.num_classes} classes: 0 … {config.num_classes - 1}"
    if label is None:
        raise InputError(f"the checkpoint is class-conditional ({classes}) and has no unconditional mode: "
                         f"give the class of the frames, --class-label K on the command line, "
                         f"load_adm(…, class_label=K) in Python")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < config.num_classes:
        raise InputError(f"class label {label!r} is out of range: the checkpoint has {classes}")
