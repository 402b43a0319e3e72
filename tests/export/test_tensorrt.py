"""The TensorRT engine cache and runner.

Where TensorRT and a GPU are present the cache tests build real engines of the tiny UNet;
where they are absent (CI) a fake builder stands in for TensorRT, passed in through
`get_engine(builder=...)`: its "engine" is a byte string and running it runs the torch
model. The tests of real engines and the runner skip cleanly without TensorRT.
"""

import hashlib
import importlib.util
import json

import pytest
import torch

from engine.backends.engine_file import TRT_HINT, EngineError, engine_key, read_engine, record_path
from engine.fileio import atomic_write_bytes
from engine.unet import ADMConfig, ADMUNet
from export.contract import UNetContract
from export.onnx import export_onnx
from export.tensorrt import ENGINE_TOLERANCE, engine_path, get_engine, key_fields, timing_cache_path

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
REAL = HAVE_TENSORRT and torch.cuda.is_available()
BATCH = 4
ENV = {"tensorrt": "10.8.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


pytestmark = pytest.mark.usefixtures("one_thread")


class FakeBuilder:
    """TensorRT's part of the build, faked where TensorRT is absent: an engine is bytes, running it runs `model`."""

    via = "onnx"

    def __init__(self, model, environment=ENV):
        self.model, self.env, self.builds = model, dict(environment), 0

    def environment(self) -> dict:
        return dict(self.env)

    def settings(self) -> dict:
        return {"workspace_bytes": 1 << 30}

    def build(self, onnx_path, contract, precision, timing_cache) -> bytes:
        self.builds += 1
        atomic_write_bytes(timing_cache, b"timing entries")
        return b"FAKE ENGINE " + precision.encode() + hashlib.sha256(onnx_path.read_bytes()).digest()

    def load(self, blob, batch):
        if not blob.startswith(b"FAKE ENGINE "):
            raise EngineError("not a fake engine")
        return lambda x, t: self.model(x, t)


class Faulty:
    """A builder whose engines give wrong outputs: `fault` maps the true ε to the engine's."""

    def __init__(self, inner, fault):
        self.inner, self.fault, self.via = inner, fault, inner.via

    def environment(self):
        return self.inner.environment()

    def settings(self):
        return self.inner.settings()

    def build(self, *args):
        return self.inner.build(*args)

    def load(self, blob, batch):
        eps = self.inner.load(blob, batch)
        return lambda x, t: self.fault(eps(x, t))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(ONNX path, contract, fp32 model, builder factory): real TensorRT where present, else the fake."""
    torch.manual_seed(0)
    model = ADMUNet(ADMConfig.preset("tiny")).eval()
    contract = UNetContract.for_config(model.config, BATCH)
    onnx_path = tmp_path_factory.mktemp("onnx") / "unet.onnx"
    if REAL:
        from export.tensorrt import TensorRTBuilder

        export_onnx(model, contract, onnx_path)
        model = model.cuda()
        return onnx_path, contract, model, lambda: TensorRTBuilder("cuda")
    onnx_path.write_bytes(b"stand-in ONNX bytes: only their hash enters the key")
    return onnx_path, contract, model, lambda: FakeBuilder(model)


def built(setup, cache, **kw):
    onnx_path, contract, model, make = setup
    builder = kw.pop("builder", None) or make()
    return get_engine(onnx_path, contract, kw.pop("precision", "fp16"), cache, builder=builder, model=model, **kw)


def edit_record(path, **fields):
    """Change fields of an engine's record, keeping its key consistent with them."""
    rec_path = record_path(path)
    record = json.loads(rec_path.read_text())
    record["fields"].update(fields)
    record["key"] = engine_key(record["fields"])
    rec_path.write_text(json.dumps(record))


# ---------------------------------------------------------------- the key

def test_key_is_stable_and_changes_with_everything_that_changes_an_engine():
    contract = UNetContract(image_size=256, out_channels=6, batch=16)
    base = dict(onnx_sha="a" * 64, contract=contract, precision="fp16", via="onnx", environment=ENV)
    key = engine_key(key_fields(**base))
    assert key == engine_key(key_fields(**base)) and len(key) == 64
    variants = [dict(onnx_sha="b" * 64), dict(precision="bf16"), dict(via="torch-tensorrt"),
                dict(contract=UNetContract(image_size=256, out_channels=6, batch=32)),
                dict(contract=UNetContract(image_size=256, out_channels=6, batch=16, min_batch=16)),
                dict(environment={**ENV, "tensorrt": "10.9.0"}),
                dict(environment={**ENV, "gpu": "NVIDIA H200"}),
                dict(environment={**ENV, "compute_capability": "8.9"}),
                dict(settings={"fp32_islands": False})]
    keys = {engine_key(key_fields(**{**base, **v})) for v in variants}
    assert len(keys) == len(variants) and key not in keys


def test_torch_tensorrt_converter_is_checked_before_use():
    """Every option the builder passes must be a named parameter of the installed converter: one caught only
    by **kwargs (a renamed option) would be ignored silently, so it is refused with the names it does take."""
    from types import SimpleNamespace

    from export.tensorrt import _serialized_engine_converter

    def current(program, inputs=None, *, use_explicit_typing=False, workspace_size=0, timing_cache_path=None,
                **kwargs):
        return b"engine"

    def open_ended(program, **kwargs):
        return b"engine"

    def renamed(program, inputs=None, *, use_strong_typing=False, workspace_size=0, timing_cache_path=None,
                **kwargs):
        return b"engine"

    def old(program, inputs=None, *, workspace_size=0):
        return b"engine"

    module = SimpleNamespace(__version__="2.9.0", dynamo=SimpleNamespace(
        convert_exported_program_to_serialized_trt_engine=current))
    assert _serialized_engine_converter(module) is current
    for fn, message in (
            (open_ended, r"lacks use_explicit_typing, workspace_size, timing_cache_path \(its \*\*kwargs would "
                         r"swallow and ignore them\); upgrade"),
            (renamed, r"lacks use_explicit_typing \(its \*\*kwargs would swallow and ignore them\); "
                      r"use_explicit_typing: it names use_strong_typing; upgrade"),
            (old, r"lacks use_explicit_typing, timing_cache_path; upgrade")):
        dynamo = SimpleNamespace(convert_exported_program_to_serialized_trt_engine=fn)
        with pytest.raises(EngineError, match=f"torch-tensorrt 2.4.0 {message}"):
            _serialized_engine_converter(SimpleNamespace(__version__="2.4.0", dynamo=dynamo))
    with pytest.raises(EngineError, match="lacks convert_exported_program_to_serialized_trt_engine; upgrade"):
        _serialized_engine_converter(SimpleNamespace(__version__="2.4.0", dynamo=SimpleNamespace()))


@pytest.mark.parametrize("installed, opset", [("10.9.0.34", "auto"), ("10.13.3.9", "auto"), ("10.8.0.43", 17),
                                              ("10.0.1", 17), (None, "auto")])
def test_onnx_opset_follows_the_installed_tensorrt(monkeypatch, installed, opset):
    """TensorRT parses opset 21's GroupNormalization from 10.9 on: older ones get opset 17; the version is read
    from the wheel's metadata (faked here), under any of its distribution names."""
    import importlib.metadata

    from export.tensorrt import installed_tensorrt_version, onnx_opset_for

    def version(name):
        if installed is None or name != "tensorrt-cu12":
            raise importlib.metadata.PackageNotFoundError(name)
        return installed

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert installed_tensorrt_version() == installed
    chosen, why = onnx_opset_for(installed_tensorrt_version())
    assert chosen == opset and ("10.9" in why or installed is None)


class FakeLayer:
    def __init__(self, name, kind, dtype="float32"):
        self.name, self.type, self.num_outputs, self.num_inputs = name, kind, 1, 0
        self.precision, self.output_types = None, {}
        self._out = type("Out", (), {"dtype": dtype, "is_shape_tensor": False, "name": name + ":0"})()

    def get_output(self, k):
        return self._out

    def get_input(self, j):
        return None

    def set_output_type(self, k, dtype):
        self.output_types[k] = dtype


@pytest.mark.parametrize("norm_outputs_fp32", [False, True])
def test_fp32_islands_set_the_norm_layers_precision_and_their_outputs_only_when_asked(norm_outputs_fp32):
    """Normalisation layers compute in fp32 and keep the engine's output type (no reformat layers) unless
    norm_outputs_fp32; reductions always output fp32 (a sum of squares overflows fp16). TensorRT faked."""
    from types import SimpleNamespace

    from export.tensorrt import pin_fp32_islands

    kinds = SimpleNamespace(NORMALIZATION="norm", REDUCE="reduce", MATRIX_MULTIPLY="mm", CONVOLUTION="conv",
                            SHAPE="shape", CAST="cast", ELEMENTWISE="elementwise")
    trt = SimpleNamespace(LayerType=kinds, float32="float32", float16="float16", bfloat16="bfloat16")
    layers = [FakeLayer("gn", "norm"), FakeLayer("sum", "reduce"), FakeLayer("conv", "conv", "float16")]
    network = SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    assert pin_fp32_islands(trt, network, norm_outputs_fp32=norm_outputs_fp32) == 2
    gn, reduce, conv = layers
    assert gn.precision == reduce.precision == "float32" and conv.precision is None
    assert reduce.output_types == {0: "float32"}
    assert gn.output_types == ({0: "float32"} if norm_outputs_fp32 else {})


def test_builder_settings_name_the_norm_outputs():
    """The flag is part of the engine's key (through the builder's settings), so both engines can sit in one cache."""
    from export.tensorrt import TensorRTBuilder

    builder = TensorRTBuilder.__new__(TensorRTBuilder)
    builder.workspace_bytes, builder.fp32_islands, builder.norm_outputs_fp32 = 1 << 30, True, False
    plain = builder.settings()
    builder.norm_outputs_fp32 = True
    assert plain["norm_outputs_fp32"] is False and builder.settings()["norm_outputs_fp32"] is True


def test_key_needs_the_whole_environment():
    contract = UNetContract(image_size=32, out_channels=6, batch=2)
    with pytest.raises(ValueError, match="compute_capability"):
        key_fields("a" * 64, contract, "fp16", "onnx", {"tensorrt": "10", "gpu": "x"})


def test_engine_and_timing_cache_names(tmp_path):
    contract = UNetContract(image_size=256, out_channels=6, batch=16)
    path = engine_path(tmp_path, contract, "fp16", "0123456789abcdef" * 4)
    assert path.name == "unet-fp16-b16-0123456789abcdef.engine"
    assert record_path(path).name == "unet-fp16-b16-0123456789abcdef.engine.json"
    assert timing_cache_path(tmp_path, ENV) != timing_cache_path(tmp_path, {**ENV, "gpu": "other"})


# ---------------------------------------------------------------- the cache

def test_build_then_reuse(setup, tmp_path):
    first = built(setup, tmp_path)
    assert first.built and first.path.exists() and record_path(first.path).exists()
    record = first.record
    assert record["engine_sha256"] == hashlib.sha256(first.path.read_bytes()).hexdigest()
    assert record["fields"]["precision"] == "fp16" and record["fields"]["profile"]["t"] == [[1], [BATCH], [BATCH]]
    assert [e["batch"] for e in record["errors"]] == [BATCH, 1]
    assert all(e["finite"] and e["rel_l2"] <= ENGINE_TOLERANCE["fp16"] for e in record["errors"])
    assert timing_cache_path(tmp_path, {k: record["fields"][k] for k in ENV}).exists()
    second = built(setup, tmp_path)
    assert not second.built and second.path == first.path and second.record == record
    assert sorted(p.suffix for p in tmp_path.iterdir() if p.name.startswith("unet-")) == [".engine", ".json"]


def test_corrupt_engine_is_refused_or_rebuilt(setup, tmp_path):
    path = built(setup, tmp_path).path
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(EngineError, match="corrupt: its SHA-256 differs"):
        built(setup, tmp_path, rebuild=False)
    again = built(setup, tmp_path)
    assert again.built
    assert hashlib.sha256(path.read_bytes()).hexdigest() == again.record["engine_sha256"]


def test_truncated_engine_is_refused(setup, tmp_path):
    path = built(setup, tmp_path).path
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(EngineError, match="corrupt"):
        built(setup, tmp_path, rebuild=False)


def test_record_of_another_key_is_refused_naming_the_difference(setup, tmp_path):
    path = built(setup, tmp_path).path
    edit_record(path, tensorrt="9.3.0")
    with pytest.raises(EngineError, match=r"built for something else \(tensorrt: engine 9\.3\.0 vs wanted"):
        built(setup, tmp_path, rebuild=False)
    assert built(setup, tmp_path).built


@pytest.mark.parametrize("damage", ["delete", "garbage", "tampered key"])
def test_missing_unreadable_or_tampered_record(setup, tmp_path, damage):
    path = built(setup, tmp_path).path
    rec = record_path(path)
    if damage == "delete":
        rec.unlink()
        message = "has no record"
    elif damage == "garbage":
        rec.write_text('{"key": ')
        message = "unreadable"
    else:
        record = json.loads(rec.read_text())
        record["fields"]["precision"] = "bf16"
        rec.write_text(json.dumps(record))
        message = "key does not match its fields"
    with pytest.raises(EngineError, match=message):
        built(setup, tmp_path, rebuild=False)
    assert built(setup, tmp_path).built


def test_engine_missing_beside_its_record_is_rebuilt(setup, tmp_path):
    path = built(setup, tmp_path).path
    path.unlink()
    with pytest.raises(EngineError, match="not found"):
        built(setup, tmp_path, rebuild=False)
    assert built(setup, tmp_path).built and path.exists()


def test_read_engine_checks_the_runtime_environment(setup, tmp_path):
    result = built(setup, tmp_path)
    env = {k: result.record["fields"][k] for k in ENV}
    blob, record = read_engine(result.path, env)
    assert blob == result.path.read_bytes() and record == result.record
    with pytest.raises(EngineError, match="gpu: engine .* vs wanted Some Other GPU"):
        read_engine(result.path, {**env, "gpu": "Some Other GPU"})


def nan_fault(eps):
    out = eps.clone()
    out[0, 0, 0, 0] = float("nan")
    return out


def noise_fault(eps):
    return eps + 0.1 * eps.std() * torch.randn_like(eps)


@pytest.mark.parametrize("fault, message", [(nan_fault, "non-finite"), (noise_fault, "past the tolerance")])
def test_bad_engine_is_refused_and_not_cached(setup, tmp_path, fault, message):
    builder = Faulty(setup[3](), fault)
    with pytest.raises(EngineError, match=message):
        built(setup, tmp_path, builder=builder)
    assert not list(tmp_path.glob("unet-*"))


def test_unknown_precision(setup, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        built(setup, tmp_path, precision="int8")


# ---------------------------------------------------------------- without TensorRT

@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed")
def test_missing_tensorrt_names_the_extra(tmp_path):
    from engine.backends.tensorrt import TensorRTEps
    from export.tensorrt import TensorRTBuilder, TorchTensorRTBuilder

    for make in (lambda: TensorRTBuilder("cuda"), lambda: TorchTensorRTBuilder(torch.nn.Linear(1, 1)),
                 lambda: TensorRTEps(tmp_path / "unet.engine", batch=1)):
        with pytest.raises(ImportError) as exc:
            make()
        assert TRT_HINT in str(exc.value)


# ---------------------------------------------------------------- real engines (TensorRT + GPU)

@pytest.fixture(scope="module")
def real_engine(setup, tmp_path_factory):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return built(setup, tmp_path_factory.mktemp("real"))


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_runner_matches_torch_at_every_batch(setup, real_engine):
    from engine.backends.tensorrt import TensorRTEps

    _, contract, model, _ = setup
    eps = TensorRTEps(real_engine.path, batch=BATCH, device="cuda")
    outputs = {}
    for n in [*range(1, BATCH + 1), BATCH, 1]:          # each batch's graph again after the others ran
        x, t = contract.sample(n, seed=n, device="cuda")
        with torch.no_grad():
            ref = model(x, t)
        out = eps(x, t)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert ((out - ref).norm() / ref.norm()).item() < ENGINE_TOLERANCE["fp16"]
        assert torch.equal(eps(x, t), outputs.setdefault(n, out))    # graph replay: same result


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_runner_inside_a_cuda_graph_capture(setup, real_engine):
    from engine.backends.tensorrt import TensorRTEps

    _, contract, _, _ = setup
    eps = TensorRTEps(real_engine.path, batch=BATCH, device="cuda")
    x, t = contract.sample(BATCH, seed=1, device="cuda")
    expected = eps(x, t)
    static_x = torch.zeros_like(x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = eps(static_x, t) * 2
    static_x.copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected * 2)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_fp32_islands_cover_norms_and_timestep_features(setup):
    trt = pytest.importorskip("tensorrt")
    from export.tensorrt import pin_fp32_islands

    onnx_path = setup[0]
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(onnx_path))
    pinned = pin_fp32_islands(trt, network)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    norms = [layer for layer in layers if layer.type == trt.LayerType.NORMALIZATION]
    assert norms and pinned > len(norms)
    assert all(layer.precision == trt.float32 for layer in norms)
    unary = [layer for layer in layers if layer.type == trt.LayerType.UNARY and layer.precision_is_set]
    assert unary                                             # sin and cos of the timestep features
