"""The export contract, the ONNX export (both opsets, fp32 and fp16) and the build command line (export.build, python -m engine.build).

One tiny-preset export through the command line (the default opset) serves most tests;
the ADM-256 export is in the `slow` tier.
"""

import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch

from export.build import EXIT_ERROR, EXIT_STOPPED, engine_blockers, main, parse_args, parse_batches
from engine.errors import InputError
from engine.unet import ADMConfig, ADMUNet
from export.contract import BATCH_AXIS, UNetContract, error_stats, full_fp32, reference_eps
from export.onnx import (FALLBACK_OPSET, NATIVE_GROUPNORM_OPSET, PARITY_TOLERANCE, ExportError, check_parity,
                         export_onnx, native_check, onnx_parity, onnx_sha256, op_counts)

pytest.importorskip("onnxruntime")
BATCH = 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ADMUNet(ADMConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def contract(tiny):
    return UNetContract.for_config(tiny.config, BATCH)


@pytest.fixture(scope="module")
def cli_export(tiny, tmp_path_factory):
    """`python -m engine.build --onnx-only` on a tiny checkpoint, default opset: (out dir, manifest)."""
    root = tmp_path_factory.mktemp("cli")
    ckpt = root / "tiny.pt"
    torch.save(tiny.state_dict(), ckpt)
    out = root / "out"
    code = main(["--batch", str(BATCH), "--checkpoint", str(ckpt), "--out", str(out), "--onnx-only", "--device", "cpu"])
    assert code == 0
    return out, json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def opset17(tiny, contract, tmp_path_factory):
    """The TorchScript opset-17 export of the tiny model."""
    return export_onnx(tiny, contract, tmp_path_factory.mktemp("o17") / "unet.onnx", opset=FALLBACK_OPSET)


def io_dims(model: onnx.ModelProto) -> dict:
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*model.graph.input, *model.graph.output)}


# ---------------------------------------------------------------- the contract

def test_contract_names_dtypes_profile_and_sample():
    c = UNetContract(image_size=32, out_channels=6, batch=16)
    assert c.input_names == ["x", "t"] and c.output_names == ["eps"]
    assert [s.dtype for s in c.inputs] == [torch.float32, torch.int64]
    assert c.profile() == {"x": ((1, 3, 32, 32), (16, 3, 32, 32), (16, 3, 32, 32)), "t": ((1,), (16,), (16,))}
    assert c.dynamic_axes() == {"x": {0: BATCH_AXIS}, "t": {0: BATCH_AXIS}, "eps": {0: BATCH_AXIS}}
    x, t = c.sample(5, seed=3)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32
    assert t.shape == (5,) and t.dtype == torch.int64 and 0 <= int(t.min()) and int(t.max()) < 1000
    assert torch.equal(c.sample(5, seed=3)[0], x)
    assert json.loads(json.dumps(c.as_dict()))["batch"] == {"min": 1, "opt": 16, "max": 16}


@pytest.mark.parametrize("kwargs", [dict(batch=0), dict(batch=4, min_batch=5), dict(batch=4, min_batch=0)])
def test_contract_rejects_bad_batches(kwargs):
    with pytest.raises(ValueError, match="batch"):
        UNetContract(image_size=32, out_channels=6, **kwargs)


def test_error_stats_relative_and_non_finite():
    ref = torch.ones(2, 6, 4, 4)
    stats = error_stats(ref * 1.01, ref)
    assert stats.finite and stats.rel_l2 == pytest.approx(0.01) and stats.max_abs == pytest.approx(0.01)
    bad = ref.clone()
    bad[0, 0, 0, 0] = float("nan")
    assert not error_stats(bad, ref).finite and error_stats(bad, ref).rel_l2 == float("inf")


# ---------------------------------------------------------------- default export (via the command line)

def test_default_export_is_opset21_with_native_groupnorm(cli_export):
    out, manifest = cli_export
    section = manifest["onnx"]
    assert section["opset"] == NATIVE_GROUPNORM_OPSET and section["exporter"] == "dynamo"
    assert section["groupnorm"] == "GroupNormalization" and section["fallback_reason"] is None
    model = onnx.load(str(out / "unet.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert op_counts(model)["GroupNormalization"] == 35   # every GroupNorm32 of the tiny UNet
    assert op_counts(model)["InstanceNormalization"] == 0
    assert native_check(out / "unet.onnx") is None


def test_export_has_dynamic_batch_and_contract_dtypes(cli_export):
    out, _ = cli_export
    model = onnx.load(str(out / "unet.onnx"))
    assert io_dims(model) == {"x": [BATCH_AXIS, 3, 32, 32], "t": [BATCH_AXIS], "eps": [BATCH_AXIS, 6, 32, 32]}
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    assert types == {"x": onnx.TensorProto.FLOAT, "t": onnx.TensorProto.INT64, "eps": onnx.TensorProto.FLOAT}


def test_manifest_records_parity_at_1_3_and_n(cli_export):
    out, manifest = cli_export
    parity = manifest["onnx"]["parity"]
    assert [p["batch"] for p in parity] == [1, 3, BATCH]
    assert manifest["onnx"]["parity_ok"] and all(p["rel_l2"] < 1e-5 and p["finite"] for p in parity)
    assert manifest["onnx"]["sha256"] == onnx_sha256(out / "unet.onnx")
    assert manifest["engine"] is None and manifest["stopped"] is None
    assert manifest["model"]["random_weights"] is False and manifest["model"]["checkpoint"].endswith("tiny.pt")
    assert manifest["contract"]["profile"]["x"] == [[1, 3, 32, 32], [BATCH, 3, 32, 32], [BATCH, 3, 32, 32]]


@pytest.mark.parametrize("batches", [[1, 2, 5]])
def test_onnxruntime_matches_torch_at_other_batches(cli_export, tiny, contract, batches):
    out, _ = cli_export
    results = onnx_parity(out / "unet.onnx", tiny, contract, batches, seed=7)
    assert [r.batch for r in results] == batches
    assert max(r.rel_l2 for r in results) < 1e-5
    assert max(r.max_abs for r in results) < 1e-4


# ---------------------------------------------------------------- opset 17, fp16, failures

def test_opset17_torchscript_export(opset17, tiny, contract):
    assert opset17.opset == FALLBACK_OPSET and opset17.exporter == "torchscript"
    assert opset17.groupnorm.startswith("InstanceNormalization")
    model = onnx.load(str(opset17.path))
    onnx.checker.check_model(model, full_check=True)
    assert "Identity" not in op_counts(model)            # cleaned by the onnxscript optimizer
    assert io_dims(model)["x"] == [BATCH_AXIS, 3, 32, 32]
    results = onnx_parity(opset17.path, tiny, contract, [1, 3])
    check_parity(results, "fp32")
    assert max(r.rel_l2 for r in results) < 1e-5


def test_native_check_names_the_lowered_groupnorm(opset17):
    assert "InstanceNormalization" in native_check(opset17.path)


def test_fp16_export_keeps_fp32_interface_and_groupnorm(tiny, contract, tmp_path):
    exported = export_onnx(tiny, contract, tmp_path / "unet.onnx", dtype="fp16", opset=FALLBACK_OPSET)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported.path)))
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*model.graph.input, *model.graph.output, *model.graph.value_info)}
    assert types["x"] == types["eps"] == onnx.TensorProto.FLOAT
    norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert norms and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in norms)   # the fp32 islands
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    fp32_convs = [n for n in convs if types[n.output[0]] != onnx.TensorProto.FLOAT16]
    assert fp32_convs == [convs[-1]] and types[convs[-1].output[0]] == onnx.TensorProto.FLOAT  # the out head, as upstream
    assert tiny.dtype == torch.float32                                              # the model is not touched
    results = onnx_parity(exported.path, tiny, contract, [1, 3])
    check_parity(results, "fp16")
    assert 1e-5 < max(r.rel_l2 for r in results) < PARITY_TOLERANCE["fp16"]


def test_the_reference_runs_in_full_fp32_and_restores_the_flags():
    """TF32 (PyTorch's default for cuDNN convolutions) would swamp the fp32 parity tolerance on a GPU."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, matmul.allow_tf32
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x, t):
            seen.append((cudnn.allow_tf32, matmul.allow_tf32, torch.is_grad_enabled(), self.training))
            return 2 * x

    probe = Probe().train()
    x = torch.ones(2, 3, 4, 4)
    assert torch.equal(reference_eps(probe, x, torch.zeros(2)), 2 * x)
    assert seen == [(False, False, False, False)] and (cudnn.allow_tf32, matmul.allow_tf32) == before
    with pytest.raises(RuntimeError), full_fp32():
        raise RuntimeError("the flags come back after an error too")
    assert (cudnn.allow_tf32, matmul.allow_tf32) == before


def test_check_parity_refuses_large_or_non_finite_error():
    ref = torch.ones(1, 6, 4, 4)
    with pytest.raises(ExportError, match="does not match"):
        check_parity([error_stats(ref * 1.1, ref)], "fp32")
    bad = ref.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ExportError, match="tolerance"):
        check_parity([error_stats(bad, ref)], "fp16")


class Broken(torch.nn.Module):
    """An ε model whose forward fails, so the export fails half-way."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, t):
        raise RuntimeError("broken on purpose")


def test_failed_export_leaves_the_old_file_and_no_staging(contract, tmp_path):
    path = tmp_path / "unet.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(RuntimeError, match="broken on purpose"):
        export_onnx(Broken(), contract, path, opset=FALLBACK_OPSET)
    assert path.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx"]


def test_forced_opset21_failure_is_an_error_not_a_fallback(contract, tmp_path):
    with pytest.raises(ExportError, match="opset 21"):
        export_onnx(Broken(), contract, tmp_path / "unet.onnx", opset=NATIVE_GROUPNORM_OPSET)
    assert not (tmp_path / "unet.onnx").exists()


# ---------------------------------------------------------------- the command line

def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--batch", "--checkpoint", "--random-weights", "--preset", "--precision", "--via", "--out",
                 "--onnx-only", "--opset", "--onnx-dtype", "--parity-batches", "--device", "--seed", "--verbose",
                 "--norm-outputs-fp32"):
        assert flag in text
    assert "adm256_uncond" in text and "torch-tensorrt" in text and "fp8" in text


@pytest.mark.parametrize("installed, opset, via, chosen", [
    ("10.8.0.43", "auto", "onnx", 17), ("10.9.0.34", "auto", "onnx", "auto"), (None, "auto", "onnx", "auto"),
    ("10.8.0.43", "17", "onnx", 17), ("10.8.0.43", "auto", "torch-tensorrt", "auto")])
def test_build_exports_the_opset_the_installed_tensorrt_parses(monkeypatch, installed, opset, via, chosen):
    import export.build as build

    monkeypatch.setattr(build, "installed_tensorrt_version", lambda: installed)
    args = parse_args(["--random-weights", "--opset", opset, "--via", via])
    assert build.export_opset(args)[0] == chosen


def test_build_refuses_opset_21_for_a_tensorrt_that_cannot_parse_it(monkeypatch):
    import export.build as build

    monkeypatch.setattr(build, "installed_tensorrt_version", lambda: "10.3.0")
    with pytest.raises(InputError, match="TensorRT 10.3.0 parses opset 21's GroupNormalization only from 10.9"):
        build.export_opset(parse_args(["--random-weights", "--opset", "21"]))
    monkeypatch.setattr(build, "installed_tensorrt_version", lambda: "10.9.0")
    assert build.export_opset(parse_args(["--random-weights", "--opset", "21"]))[0] == 21


def test_weights_must_be_chosen_explicitly(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--batch", "2"])
    assert exc.value.code == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_parse_batches():
    assert parse_batches("1,3,N", 16) == [1, 3, 16]
    assert parse_batches("n, 2, 2", 4) == [2, 4]
    with pytest.raises(ValueError):
        parse_batches("0,2", 4)
    with pytest.raises(ValueError):
        parse_batches("a", 4)


def test_bad_checkpoint_stops_with_its_message(tmp_path, capsys):
    ckpt = tmp_path / "junk.pt"
    ckpt.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    code = main(["--batch", "2", "--checkpoint", str(ckpt), "--preset", "tiny", "--out", str(out), "--onnx-only"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert err.startswith("error:") and "junk.pt" in err and "not a readable PyTorch checkpoint" in err
    assert len(err.strip().splitlines()) == 1
    assert not (out / "unet.onnx").exists()


def test_without_tensorrt_the_onnx_is_checked_then_the_command_stops(tmp_path, capsys):
    if not engine_blockers(torch.device("cuda" if torch.cuda.is_available() else "cpu")):
        pytest.skip("TensorRT and a GPU are here: the command would build the engine")
    out = tmp_path / "out"
    code = main(["--batch", "2", "--random-weights", "--preset", "tiny", "--opset", "17", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_STOPPED != 0
    assert err.startswith("stopped:") and len(err.strip().splitlines()) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["onnx"]["parity_ok"] and manifest["engine"] is None
    assert "video-inverse-engine[tensorrt]" in manifest["stopped"] or "GPU" in manifest["stopped"]
    assert manifest["model"]["random_weights"] and (out / "unet.onnx").exists()


def test_blockers_name_torch_tensorrt_for_that_path():
    if importlib.util.find_spec("torch_tensorrt") is not None:
        pytest.skip("torch-tensorrt is installed here")
    reasons = engine_blockers(torch.device("cpu"), "torch-tensorrt")
    assert any("torch-tensorrt is not installed" in r for r in reasons)
    assert not any("torch-tensorrt" in r for r in engine_blockers(torch.device("cpu"), "onnx"))


# ---------------------------------------------------------------- ADM-256 (slow)

@pytest.mark.slow
def test_adm256_export_checker_and_parity(tmp_path):
    torch.manual_seed(0)
    model = ADMUNet(ADMConfig.preset("adm256_uncond")).eval()
    contract = UNetContract.for_config(model.config, 16)
    exported = export_onnx(model, contract, tmp_path / "unet.onnx")
    assert exported.opset == NATIVE_GROUPNORM_OPSET and exported.groupnorm == "GroupNormalization"
    assert (tmp_path / "unet.onnx.data").stat().st_size > 2e9        # 552 M fp32 weights, external
    onnx.checker.check_model(str(exported.path), full_check=True)
    results = onnx_parity(exported.path, model, contract, [1, 2])
    check_parity(results, "fp32")
    print("ADM-256 parity:", [r.as_dict() for r in results], f"export {exported.seconds:.0f} s")
    assert np.isfinite([r.max_abs for r in results]).all()
