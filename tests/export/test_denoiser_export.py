"""The learned prior's denoiser (FFDNet) to ONNX: export.denoiser, python -m export.denoiser."""

import json

import numpy as np
import onnx
import pytest
import torch

from engine.ffdnet import load_ffdnet
from export import denoiser as export_denoiser
from export.contract import ErrorStats
from export.onnx import ExportError

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The command line on the shipped weights: (exit status, output folder)."""
    out = tmp_path_factory.mktemp("denoiser")
    return export_denoiser.main(["--out", str(out)]), out


def test_the_shipped_denoiser_exports_and_matches_torch(exported):
    status, out = exported
    assert status == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["parameters"] == 852_108
    assert manifest["onnx"]["parity_ok"] and len(manifest["onnx"]["parity"]) == 3
    assert all(p["rel_l2"] < 1e-5 for p in manifest["onnx"]["parity"])


def test_the_graph_has_the_declared_interface_and_dynamic_sizes(exported):
    model = onnx.load(str(exported[1] / "ffdnet.onnx"))
    dims = {t.name: [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]
            for t in [*model.graph.input, *model.graph.output]}
    assert dims == {"z": ["batch", 3, "height", "width"], "sigma": ["batch"], "x": ["batch", 3, "height", "width"]}


def test_a_size_it_was_not_checked_at_runs_as_torch_does(exported):
    """Frames of a size and count neither traced nor checked (5 frames of 36×52): the same output as torch."""
    session = onnxruntime.InferenceSession(str(exported[1] / "ffdnet.onnx"), providers=["CPUExecutionProvider"])
    z, sigma = export_denoiser.sample(5, 36, 52, seed=9)
    (out,) = session.run(["x"], {"z": z.numpy(), "sigma": sigma.numpy()})
    with torch.no_grad():
        ref = load_ffdnet()(z, sigma).numpy()
    assert np.abs(out - ref).max() < 1e-5


def test_a_corrupt_weight_file_stops_with_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "ffdnet_color.pth"
    bad.write_bytes(b"not a checkpoint")
    assert export_denoiser.main(["--weights", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a readable FFDNet weight file" in err
    assert not (tmp_path / "out").exists()


def test_a_parity_failure_is_an_error_and_the_manifest_keeps_the_numbers(tmp_path, monkeypatch):
    off = ErrorStats(batch=1, max_abs=0.5, rel_l2=0.1, ref_max=1.0, finite=True)
    monkeypatch.setattr(export_denoiser, "denoiser_parity", lambda path, denoiser: [off, off, off])
    with pytest.raises(ExportError, match="relative error 1.00e-01"):
        export_denoiser.run(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["onnx"]["parity_ok"] is False
