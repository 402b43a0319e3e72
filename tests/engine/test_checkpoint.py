"""load_adm: round trips through files, wrappers, inference of the preset, every error."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from engine.checkpoint import infer_config, load_adm, read_state_dict
from engine.errors import CheckpointError
from engine.unet import ADMConfig, ADMUNet

DATA = Path(__file__).resolve().parents[1] / "data"   # upstream's state-dict shape manifests (tests/data/README.md)
MANIFESTS = {"adm256_uncond": "adm256_uncond_state_dict_shapes.json",
             "ffhq_dps": "ffhq_dps_state_dict_shapes.json"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    """A tiny-preset model (random fp32 weights, eval) and a copy of its state dict."""
    torch.manual_seed(0)
    model = ADMUNet(ADMConfig.preset("tiny")).eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def sample():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32), torch.tensor([10, 800])


def same_output(a: ADMUNet, b: ADMUNet, sample) -> bool:
    with torch.no_grad():
        return torch.equal(a(*sample), b(*sample))


# ---------------------------------------------------------------- round trips

def test_pt_round_trip_infers_preset_and_returns_eval_model(tiny, sample, tmp_path):
    model, sd = tiny
    path = tmp_path / "tiny.pt"
    torch.save(sd, path)
    loaded = load_adm(path)
    assert loaded.config == ADMConfig.preset("tiny")
    assert not loaded.training
    assert loaded.dtype == torch.float32
    assert same_output(model, loaded, sample)


def test_safetensors_round_trip(tiny, sample, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model, sd = tiny
    path = tmp_path / "tiny.safetensors"
    safetensors_torch.save_file(sd, str(path))
    assert same_output(model, load_adm(path, "tiny"), sample)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd, "optimizer": {}},
    lambda sd: {"module." + k: v for k, v in sd.items()},
    lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
    lambda sd: {"_orig_mod." + k: v for k, v in sd.items()},
], ids=["state_dict", "model", "module_prefix", "state_dict_module_prefix", "compiled_prefix"])
def test_common_wrappers_are_unwrapped(tiny, sample, tmp_path, wrap):
    model, sd = tiny
    path = tmp_path / "wrapped.pt"
    torch.save(wrap(sd), path)
    assert same_output(model, load_adm(path), sample)


def test_in_memory_state_dict_is_used_without_copy(tiny, sample):
    model, sd = tiny
    loaded = load_adm(sd, ADMConfig.preset("tiny"))
    assert loaded.time_embed[0].weight.data_ptr() == sd["time_embed.0.weight"].data_ptr()
    assert same_output(model, loaded, sample)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_dtype_conversion(tiny, dtype):
    _, sd = tiny
    loaded = load_adm(sd, device="cpu", dtype=dtype)
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    assert torch.equal(loaded.out[2].weight, sd["out.2.weight"].to(dtype))


def test_half_checkpoint_loads_as_float32(tiny):
    _, sd = tiny
    loaded = load_adm({k: v.half() for k, v in sd.items()})
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_infer_config_recognises_the_real_checkpoints(name):
    shapes = json.loads((DATA / MANIFESTS[name]).read_text())
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert infer_config(meta) == ADMConfig.preset(name)
    with pytest.raises(CheckpointError, match="meta tensor without data"):
        load_adm(meta)


def test_read_state_dict_returns_plain_dict(tiny, tmp_path):
    _, sd = tiny
    path = tmp_path / "w.pt"
    torch.save({"model": sd}, path)
    got = read_state_dict(str(path))
    assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


# ---------------------------------------------------------------- errors

def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_adm(tmp_path / "nope.pt")


def test_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a file"):
        load_adm(tmp_path)


def one_line(err) -> str:
    """The error's message, checked to be one plain line (no newline, no terminal escape)."""
    msg = str(err.value)
    assert "\n" not in msg and "\x1b" not in msg, msg
    return msg


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(range(7, 250)) * 3)
    with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint: it is of an unknown format"):
        load_adm(path)


def test_text_file_is_named_as_such(tmp_path):
    """A text file fails inside torch's unpickler with 'list index out of range' or a bare KeyError."""
    path = tmp_path / "notes.txt"
    path.write_text("hello world\nsome notes, not weights\n")
    with pytest.raises(CheckpointError) as err:
        load_adm(path)
    msg = one_line(err)
    assert msg == (f"{path} is not a readable PyTorch checkpoint: it is a text file (starts with "
                   f"b'hello world\\nsome'), neither torch.save's zip archive nor a pickle")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint: the file is empty"):
        load_adm(path)


def test_truncated_archive(tiny, tmp_path):
    _, sd = tiny
    path = tmp_path / "cut.pt"
    torch.save(sd, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint: ") as err:
        load_adm(path)
    one_line(err)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(CheckpointError) as err:
        load_adm(path)
    msg = one_line(err)
    assert msg.startswith(f"{path} is not a plain state dict of tensors (it holds a pickled argparse.Namespace)")
    assert "weights_only" not in msg and "add_safe_globals" not in msg and "trust" not in msg
    assert msg.endswith("torch.save(model.state_dict(), …)")


@pytest.mark.parametrize("obj, message", [
    ([torch.zeros(1)], "holds a list"),
    ({}, "empty state dict"),
    ({"time_embed.0.weight": "weights"}, "holds a str, not a tensor"),
    ({"state_dict": {"a": torch.zeros(1)}, "note": "x"},         # unwrapped, then unknown arch
     "unknown ADM architecture: it has no time_embed.0.weight; it matches none of the presets"),
])
def test_not_a_state_dict(tmp_path, obj, message):
    path = tmp_path / "odd.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=message):
        load_adm(path)


def test_corrupt_safetensors(tmp_path):
    pytest.importorskip("safetensors")
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        load_adm(path)


def test_safetensors_package_missing(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(CheckpointError, match=r"needs the safetensors package"):
        load_adm(path)


def test_incomplete_state_dict_names_the_keys_against_its_own_architecture(tiny):
    _, sd = tiny
    bad = dict(sd)
    bad["out.2.weight"] = torch.zeros(3, 32, 3, 3)             # 3 output channels: learn_sigma False
    del bad["out.2.bias"]
    bad["label_emb.weight"] = torch.zeros(1000, 128)           # a class embedding: class_cond True
    with pytest.raises(CheckpointError) as err:
        load_adm(bad)
    msg = one_line(err)
    assert msg.startswith("unknown ADM architecture: no configuration fits the state dict")
    assert "learn_sigma=False" in msg and "class_cond=True" in msg and "num_classes=1000" in msg
    assert msg.endswith("it has 1 missing keys (out.2.bias)")


def test_unreadable_layout_names_closest_preset_and_the_command_line_way(tiny):
    _, sd = tiny
    bad = {k: v for k, v in sd.items() if not k.startswith("output_blocks.1.")}   # a gap in the numbering
    with pytest.raises(CheckpointError) as err:
        load_adm(bad)
    msg = one_line(err)
    assert "its output_blocks are not numbered 0, 1, 2, …" in msg
    assert "closest is 'tiny': 22 missing keys (output_blocks.1.0.in_layers.0.weight" in msg
    assert "--model-config KEY=VALUE,… on the command line" in msg and "config=ADMConfig(…)" in msg


def test_unreadable_layout_with_all_flags_given_reports_the_key_differences(tiny):
    _, sd = tiny
    bad = {k: v for k, v in sd.items() if not k.startswith("output_blocks.1.")}
    flags = ",".join(f"{k}={'-'.join(map(str, v)) if isinstance(v, tuple) else v}"
                     for k, v in ADMConfig.preset("tiny").as_flags().items())
    with pytest.raises(CheckpointError, match="does not fit the ADM config: 22 missing keys"):
        load_adm(bad, overrides=flags)


def test_missing_keys_named_first_few(tiny):
    _, sd = tiny
    keys = list(sd)[:7]
    partial = {k: v for k, v in sd.items() if k not in keys}
    with pytest.raises(CheckpointError, match="7 missing keys") as err:
        load_adm(partial, "tiny")
    msg = str(err.value)
    assert all(k in msg for k in keys[:5]) and keys[6] not in msg and "…" in msg


def test_unexpected_keys_named(tiny):
    _, sd = tiny
    with pytest.raises(CheckpointError, match=r"2 unexpected keys \(extra.a, extra.b\)"):
        load_adm({**sd, "extra.a": torch.zeros(1), "extra.b": torch.zeros(1)}, "tiny")


def test_shape_mismatch_against_explicit_config(tiny):
    _, sd = tiny
    cfg = ADMConfig.preset("tiny")
    wider = ADMConfig(**{**cfg.as_flags(), "num_channels": 64})
    expected = r"time_embed.0.weight: checkpoint \[128, 32\] vs model \[256, 64\]"
    with pytest.raises(CheckpointError, match=expected):
        load_adm(sd, wider)


def test_integer_weights_are_refused(tiny):
    _, sd = tiny
    with pytest.raises(CheckpointError, match="floating-point"):
        load_adm({**sd, "out.2.bias": torch.zeros(6, dtype=torch.int64)})


def test_bad_arguments(tiny):
    _, sd = tiny
    with pytest.raises(ValueError, match="floating-point torch.dtype"):
        load_adm(sd, dtype=torch.int64)
    with pytest.raises(ValueError, match="unknown ADM preset"):
        load_adm(sd, "adm512")
