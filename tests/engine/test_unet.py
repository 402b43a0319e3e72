"""ADMUNet against upstream's manifests and an independent float64 reference.

The references below (timestep embedding, GroupNorm, legacy-layout attention, and a
whole functional forward read straight from a state dict) are written plainly here
and share no code with `engine.unet`.
"""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from engine.unet import ADMConfig, ADMUNet, AttentionBlock, GroupNorm32, timestep_embedding

DATA = Path(__file__).resolve().parents[1] / "data"   # upstream's state-dict shape manifests (tests/data/README.md)
MANIFESTS = {"adm256_uncond": "adm256_uncond_state_dict_shapes.json",
             "ffhq_dps": "ffhq_dps_state_dict_shapes.json"}
PARAMETERS = {"adm256_uncond": 552_814_086, "ffhq_dps": 93_563_910}
ADM256_FLOPS = 2_239_665_537_024  # docs/design.md, "The ADM network": FlopCounterMode, batch 1

# Max |y − y_fp32| / max |y_fp32| of the whole tiny forward on CPU (measured ≈ 2e-3 / 2e-2).
HALF_RTOL = {torch.float16: 1e-2, torch.bfloat16: 6e-2}
F64_RTOL = 1e-10


pytestmark = pytest.mark.usefixtures("one_thread")


def manifest(name: str) -> dict:
    return json.loads((DATA / MANIFESTS[name]).read_text())


def meta_model(config: ADMConfig) -> ADMUNet:
    with torch.device("meta"):
        return ADMUNet(config)


def tiny_model(dtype=torch.float64, config=None, seed=0) -> ADMUNet:
    """The tiny preset with default init plus noise on every 1-D parameter (norm γ/β, biases)."""
    torch.manual_seed(seed)
    model = ADMUNet(config or ADMConfig.preset("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model.to(dtype).eval()


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


# ---------------------------------------------------------------- plain float64 references

def ref_timestep_embedding(t, dim: int) -> torch.Tensor:
    """[cos(t·f_i) …, sin(t·f_i) …], f_i = exp(−ln(10⁴)·i/half), in Python floats."""
    half = dim // 2
    rows = []
    for ti in t.tolist():
        args = [ti * math.exp(-math.log(10000.0) * i / half) for i in range(half)]
        rows.append([math.cos(a) for a in args] + [math.sin(a) for a in args])
    return torch.tensor(rows, dtype=torch.float64)


def ref_group_norm(x, weight, bias, groups=32, eps=1e-5):
    """Biased variance over each group of C/32 channels and all positions, then affine."""
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    affine = (1, c) + (1,) * (x.dim() - 2)
    return y * weight.reshape(affine) + bias.reshape(affine)


def ref_attention(qkv, heads: int, legacy: bool):
    """softmax(QKᵀ/√c)V per head with an explicit softmax. qkv [N, 3C, T] → [N, C, T].

    Legacy: head h owns channels [3c·h, 3c·(h+1)) ordered q, k, v; new order: q, k, v
    blocks of C channels, each split into heads.
    """
    width = qkv.shape[1]
    c, C = width // (3 * heads), width // 3
    out = []
    for h in range(heads):
        if legacy:
            q, k, v = (qkv[:, 3 * c * h + j * c: 3 * c * h + (j + 1) * c] for j in range(3))
        else:
            q, k, v = (qkv[:, j * C + h * c: j * C + (h + 1) * c] for j in range(3))
        scores = torch.einsum("nct,ncs->nts", q, k) / math.sqrt(c)
        w = torch.exp(scores - scores.amax(-1, keepdim=True))
        w = w / w.sum(-1, keepdim=True)
        out.append(torch.einsum("nts,ncs->nct", w, v))
    return torch.cat(out, dim=1)


def ref_attention_block(x, sd, p, heads, legacy):
    n, c, hgt, wid = x.shape
    h = ref_group_norm(x, sd[p + "norm.weight"], sd[p + "norm.bias"]).reshape(n, c, hgt * wid)
    qkv = F.conv1d(h, sd[p + "qkv.weight"], sd[p + "qkv.bias"])
    a = ref_attention(qkv, heads, legacy)
    return x + F.conv1d(a, sd[p + "proj_out.weight"], sd[p + "proj_out.bias"]).reshape(x.shape)


def ref_resample(x, mode):
    if mode == "down":
        return (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2]) / 4
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def ref_resblock(x, emb, sd, p, mode=None):
    def gn(h, k):
        return ref_group_norm(h, sd[p + k + ".weight"], sd[p + k + ".bias"])

    h = F.silu(gn(x, "in_layers.0"))
    if mode:
        h, x = ref_resample(h, mode), ref_resample(x, mode)
    h = F.conv2d(h, sd[p + "in_layers.2.weight"], sd[p + "in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), sd[p + "emb_layers.1.weight"], sd[p + "emb_layers.1.bias"])
    cout = h.shape[1]
    if e.shape[1] == 2 * cout:  # scale-shift norm: scale first
        h = gn(h, "out_layers.0") * (1 + e[:, :cout, None, None]) + e[:, cout:, None, None]
    else:
        h = gn(h + e[:, :, None, None], "out_layers.0")
    h = F.conv2d(F.silu(h), sd[p + "out_layers.3.weight"], sd[p + "out_layers.3.bias"], padding=1)
    if p + "skip_connection.weight" in sd:
        x = F.conv2d(x, sd[p + "skip_connection.weight"], sd[p + "skip_connection.bias"])
    return x + h


def ref_forward(sd, cfg: ADMConfig, x, t, y=None):
    """The whole UNet as plain functions of the state dict, following upstream's layout.

    y [N]: class labels of a class-conditional model (their embedding rows add to the time embedding)."""
    levels, nrb = len(cfg.channel_mult), cfg.num_res_blocks
    legacy = not cfg.use_new_attention_order

    def heads(c, up):
        if cfg.num_head_channels > 0:
            return c // cfg.num_head_channels
        return cfg.num_heads_upsample if up and cfg.num_heads_upsample > 0 else cfg.num_heads

    def attn(h, p, up=False):
        return ref_attention_block(h, sd, p, heads(h.shape[1], up), legacy)

    def has_attn(level):
        return cfg.image_size // 2 ** level in cfg.attention_resolutions

    def resample(h, p, mode):
        if cfg.resblock_updown:
            return ref_resblock(h, emb, sd, p, mode)
        if mode == "down":
            return F.conv2d(h, sd[p + "op.weight"], sd[p + "op.bias"], stride=2, padding=1)
        return F.conv2d(ref_resample(h, "up"), sd[p + "conv.weight"], sd[p + "conv.bias"], padding=1)

    emb = ref_timestep_embedding(t, cfg.num_channels)
    emb = F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])
    emb = F.linear(F.silu(emb), sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    if y is not None:
        emb = emb + sd["label_emb.weight"][y]

    h = F.conv2d(x, sd["input_blocks.0.0.weight"], sd["input_blocks.0.0.bias"], padding=1)
    hs, i = [h], 1
    for level in range(levels):
        for _ in range(nrb):
            h = ref_resblock(h, emb, sd, f"input_blocks.{i}.0.")
            if has_attn(level):
                h = attn(h, f"input_blocks.{i}.1.")
            hs.append(h)
            i += 1
        if level < levels - 1:
            h = resample(h, f"input_blocks.{i}.0.", "down")
            hs.append(h)
            i += 1
    h = ref_resblock(h, emb, sd, "middle_block.0.")
    h = attn(h, "middle_block.1.")
    h = ref_resblock(h, emb, sd, "middle_block.2.")
    i = 0
    for level in reversed(range(levels)):
        for r in range(nrb + 1):
            h = ref_resblock(torch.cat([h, hs.pop()], dim=1), emb, sd, f"output_blocks.{i}.0.")
            j = 1
            if has_attn(level):
                h = attn(h, f"output_blocks.{i}.1.", up=True)
                j = 2
            if level and r == nrb:
                h = resample(h, f"output_blocks.{i}.{j}.", "up")
            i += 1
    h = F.silu(ref_group_norm(h, sd["out.0.weight"], sd["out.0.bias"]))
    return F.conv2d(h, sd["out.2.weight"], sd["out.2.bias"], padding=1)


class RecordingDict(dict):
    """A state dict that remembers which keys were read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


# ---------------------------------------------------------------- manifests and config

@pytest.mark.parametrize("name", list(MANIFESTS))
def test_state_dict_matches_upstream_manifest(name):
    expected = manifest(name)
    model = meta_model(ADMConfig.preset(name))
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(expected), "key names or order differ from upstream"
    assert got == expected
    assert model.num_parameters() == PARAMETERS[name]
    assert not list(model.buffers())


def with_attention(blocks) -> list[int]:
    return [i for i, b in enumerate(blocks) if any(isinstance(m, AttentionBlock) for m in b)]


def test_attention_placement_and_heads_match_upstream():
    model = meta_model(ADMConfig.preset("adm256_uncond"))
    assert with_attention(model.input_blocks) == [10, 11, 13, 14, 16, 17]
    assert with_attention(model.output_blocks) == list(range(9))
    heads = {m.qkv.in_channels: m.num_heads for m in model.modules() if isinstance(m, AttentionBlock)}
    assert heads == {512: 8, 1024: 16}
    ffhq = meta_model(ADMConfig.preset("ffhq_dps"))
    assert with_attention(ffhq.input_blocks) == [9] and with_attention(ffhq.output_blocks) == [2, 3]


def test_adm256_flops_match_reference():
    model = meta_model(ADMConfig.preset("adm256_uncond"))
    x = torch.empty(1, 3, 256, 256, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        y = model(x, t)
    assert y.shape == (1, 6, 256, 256)
    assert counter.get_total_flops() == ADM256_FLOPS


def test_config_parses_upstream_flags_and_derives_channel_mult():
    cfg = ADMConfig(image_size=256, num_channels=256, attention_resolutions="32,16,8",
                    channel_mult="", num_head_channels=64)
    assert cfg.channel_mult == (1, 1, 2, 2, 4, 4)
    assert cfg.attention_resolutions == (32, 16, 8)
    assert cfg.attention_levels == {3, 4, 5}
    assert ADMConfig(image_size=256, attention_resolutions=16).attention_resolutions == (16,)
    assert ADMConfig(image_size=128, channel_mult="1,1,2,3,4").channel_mult == (1, 1, 2, 3, 4)
    assert ADMConfig.preset("adm256_uncond") == dataclasses.replace(
        cfg, learn_sigma=True, resblock_updown=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.image_size = 128


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=96), "channel_mult must be given"),
    (dict(num_channels=0), "positive even"),
    (dict(num_channels=48), "divisible by 32"),
    (dict(num_res_blocks=0), "num_res_blocks"),
    (dict(dropout=1.0), "dropout"),
    (dict(channel_mult=(0.3, 1)), "whole number"),
    (dict(image_size=30, channel_mult=(1, 2, 2), attention_resolutions=()), "divisible by 4"),
    (dict(attention_resolutions=(12,)), "not a feature-map size"),
    (dict(num_heads=3), "whole attention heads"),
    (dict(num_heads_upsample=0), "num_heads_upsample"),
    (dict(num_head_channels=48), "whole attention heads"),
    (dict(num_head_channels=384), "whole attention heads"),   # 384 splits 384 channels, not the middle's 512
    (dict(num_head_channels=0), "num_head_channels"),
    (dict(attention_resolutions=object()), "comma-separated"),
])
def test_config_rejects_invalid_flags(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ADMConfig(**kwargs)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="known: adm256_uncond, ffhq_dps, .*tiny"):
        ADMConfig.preset("adm512")


# ---------------------------------------------------------------- pieces in float64

def test_timestep_embedding_is_cos_first_in_float64():
    t = torch.tensor([0, 1, 37, 500, 999])
    got = timestep_embedding(t, 64, torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref_timestep_embedding(t, 64), rtol=0, atol=1e-12)
    tf = torch.tensor([0.5, 250.25], dtype=torch.float64)  # fractional timesteps
    torch.testing.assert_close(timestep_embedding(tf, 32, torch.float64),
                               ref_timestep_embedding(tf, 32), rtol=0, atol=1e-12)


def test_group_norm_float64_and_half_in_fp32():
    torch.manual_seed(1)
    norm = GroupNorm32(64).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = 3 * torch.randn(2, 64, 5, 7, dtype=torch.float64) + 1
    ref = ref_group_norm(x, norm.weight, norm.bias)
    torch.testing.assert_close(norm(x), ref, rtol=0, atol=1e-12)
    for dtype in HALF_RTOL:  # x² ~ 1e7 would overflow fp16 statistics: they must run in fp32
        half = GroupNorm32(64).to(dtype)
        half.load_state_dict(norm.state_dict())
        xh = (x * 300).to(dtype)
        y = half(xh)
        assert y.dtype == dtype
        ref_h = ref_group_norm(xh.double(), half.weight.double(), half.bias.double())
        assert rel_err(y, ref_h) < 2 * torch.finfo(dtype).eps


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_group_norm_in_sample_chunks_is_exact(monkeypatch, dtype):
    from engine import unet

    torch.manual_seed(2)
    norm = GroupNorm32(64).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (3 * torch.randn(5, 64, 6, 6) + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    whole = norm(x)
    monkeypatch.setattr(unet, "FP32_CHUNK_BYTES", 2 * 4 * x[0].numel())          # two samples at a time
    chunked = norm(x)
    assert torch.equal(chunked, whole) and chunked.is_contiguous(memory_format=torch.channels_last)
    # graphs keep one batch-wide op: an export with a dynamic batch does not unroll the chunks
    program = torch.export.export(norm, (x,), dynamic_shapes=({0: torch.export.Dim("n", min=2)},))
    nodes = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert sum("group_norm" in str(t) for t in nodes) == 1
    torch.testing.assert_close(program.module()(x[:3]), whole[:3], rtol=0, atol=0)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "new_order"])
def test_attention_block_matches_plain_softmax_attention(legacy):
    torch.manual_seed(2)
    block = AttentionBlock(64, num_heads=4, legacy_order=legacy).double()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 64, 5, 7, dtype=torch.float64)  # non-square: catches row/column mix-ups
    sd = block.state_dict()
    ref = ref_attention_block(x, sd, "", 4, legacy)
    torch.testing.assert_close(block(x), ref, rtol=0, atol=1e-12)
    cl = block(x.to(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, ref, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- whole forward

VARIANTS = {
    "tiny": ADMConfig.preset("tiny"),
    # The other branches of every block: conv resamplers, additive embedding, new head order.
    "tiny_conv_resample_new_order": dataclasses.replace(
        ADMConfig.preset("tiny"), resblock_updown=False, use_scale_shift_norm=False,
        use_new_attention_order=True, num_head_channels=-1, num_heads=2, num_heads_upsample=4,
        learn_sigma=False),
    # A label embedding of 10 classes, conditioned on the held label.
    "tiny_class_cond": dataclasses.replace(ADMConfig.preset("tiny"), class_cond=True, num_classes=10),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_matches_functional_reference_in_float64(variant):
    cfg = VARIANTS[variant]
    model = tiny_model(torch.float64, cfg)
    torch.manual_seed(3)
    x = torch.randn(2, 3, cfg.image_size, cfg.image_size, dtype=torch.float64)
    t = torch.tensor([7, 912])
    labels = torch.tensor([7, 7]) if cfg.class_cond else None
    if cfg.class_cond:
        model.set_class_label(7)
    with torch.no_grad():
        y = model(x, t)
        sd = RecordingDict(model.state_dict())
        ref = ref_forward(sd, cfg, x, t, labels)
    assert sd.read == set(sd), f"reference skipped {sorted(set(sd) - sd.read)[:5]}"
    assert y.dtype == torch.float64 and y.shape == (2, cfg.out_channels, 32, 32)
    assert rel_err(y, ref) < F64_RTOL


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=str)
def test_each_frame_alone_equals_the_frame_in_a_batch(dtype, rtol):
    """Equal up to rounding: a batch may pick another convolution algorithm than one frame."""
    model = tiny_model(dtype)
    torch.manual_seed(4)
    x = torch.randn(3, 3, 32, 32, dtype=dtype)
    t = torch.tensor([999, 500, 0])
    with torch.no_grad():
        batch = model(x, t)
        for i in range(3):
            assert rel_err(model(x[i:i + 1], t[i:i + 1]), batch[i:i + 1]) < rtol


@pytest.mark.parametrize("dtype", list(HALF_RTOL), ids=str)
def test_half_precision_within_tolerance_of_fp32(dtype):
    model = tiny_model(torch.float32)
    half = tiny_model(dtype)
    torch.manual_seed(5)
    x = torch.randn(1, 3, 32, 32)
    t = torch.tensor([700])
    with torch.no_grad():
        ref = model(x, t)
        y = half(x.to(dtype), t)
        y_cast = half(x, t)  # an fp32 input runs in the model's dtype, returns fp32
    assert y.dtype == dtype and y_cast.dtype == torch.float32
    assert rel_err(y, ref) < HALF_RTOL[dtype]
    assert rel_err(y_cast, ref) < HALF_RTOL[dtype]


@pytest.mark.parametrize("dtype", list(HALF_RTOL), ids=str)
def test_convert_to_keeps_upstreams_fp32_modules(dtype):
    """convert_to mirrors upstream's convert_to_fp16: block convolutions in `dtype`, the rest float32."""
    model = tiny_model(torch.float32).convert_to(dtype)
    for name, p in model.named_parameters():   # float32: time MLP, emb Linears, GroupNorms, the out head
        keep32 = name.startswith(("time_embed.", "out.")) or any(
            part in name for part in ("emb_layers.", "in_layers.0.", "out_layers.0.", ".norm."))
        assert p.dtype == (torch.float32 if keep32 else dtype), name
    torch.manual_seed(5)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([700, 20])
    with torch.no_grad():
        ref, y = tiny_model(torch.float32)(x, t), model(x, t)
    assert y.dtype == torch.float32 and model.dtype == dtype
    assert rel_err(y, ref) < HALF_RTOL[dtype]


def test_channels_last_matches_contiguous():
    model = tiny_model(torch.float64)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    t = torch.tensor([100, 200])
    with torch.no_grad():
        ref = model(x, t)
        model = model.to(memory_format=torch.channels_last)
        y = model(x.to(memory_format=torch.channels_last), t)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)


def test_float_and_integer_timesteps_agree():
    model = tiny_model(torch.float32)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([500])), model(x, torch.tensor([500.0])))


# ---------------------------------------------------------------- class-conditional models

def class_cond_model() -> ADMUNet:
    return tiny_model(torch.float64, VARIANTS["tiny_class_cond"])


def test_class_label_selects_the_embedding_per_frame_or_held():
    model = class_cond_model()
    torch.manual_seed(6)
    x, t = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([300, 300])
    with torch.no_grad():
        per_frame = model(x, t, torch.tensor([2, 9]))
        held = [model.set_class_label(k)(x, t) for k in (2, 9)]
        ref = ref_forward(model.state_dict(), model.config, x, t, torch.tensor([2, 9]))
    assert torch.equal(per_frame[0], held[0][0]) and torch.equal(per_frame[1], held[1][1])
    assert rel_err(per_frame, ref) < F64_RTOL
    assert rel_err(held[0], held[1]) > 1e-3            # the label changes the output


def test_class_conditional_forward_without_a_label_is_refused():
    with torch.no_grad(), pytest.raises(ValueError, match="class-conditional .*10 classes.* no unconditional mode"):
        class_cond_model()(torch.zeros(1, 3, 32, 32, dtype=torch.float64), torch.tensor([1]))


@pytest.mark.parametrize("label, message", [
    (10, r"out of range: this model has 10 classes \(0 … 9\)"),
    (-1, "out of range"),
    (2.0, "whole number"),
    (True, "whole number"),
])
def test_bad_class_labels_are_refused(label, message):
    with pytest.raises(ValueError, match=message):
        class_cond_model().set_class_label(label)


def test_unconditional_model_takes_no_label():
    model = tiny_model(torch.float64)
    assert not hasattr(model, "label_emb") and "label_emb.weight" not in model.state_dict()
    with pytest.raises(ValueError, match="unconditional"):
        model.set_class_label(3)
    with torch.no_grad(), pytest.raises(ValueError, match="unconditional"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.float64), torch.tensor([1]), torch.tensor([3]))


def test_label_embedding_matches_upstream_key_and_shape():
    cfg = dataclasses.replace(ADMConfig.preset("adm256_uncond"), class_cond=True)
    shapes = {k: list(v.shape) for k, v in meta_model(cfg).state_dict().items()}
    assert shapes["label_emb.weight"] == [1000, 1024]     # [NUM_CLASSES, 4·mc]
    assert {k: v for k, v in shapes.items() if k != "label_emb.weight"} == manifest("adm256_uncond")
