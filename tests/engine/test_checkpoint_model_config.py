"""Any guided-diffusion checkpoint: the architecture read off the state dict, completed by
`--model-config` flags (upstream's names) for what shapes cannot say; class labels."""

import dataclasses

import pytest
import torch

from engine.backends import torch_eps
from engine.checkpoint import infer_config, load_adm, parse_model_config, read_shapes, visible_flags
from engine.errors import CheckpointError, InputError
from engine.unet import PRESETS, ADMConfig, ADMUNet

pytestmark = pytest.mark.usefixtures("one_thread")

# Non-preset architectures at tiny widths (channels ÷ 32), each with the flags its shapes cannot
# tell: the head layout always (no preset has these shapes), the attention order where it is the
# new one, image_size where channel_mult is not upstream's default for one size.
CASES = {
    # ImageNet-64-like: class-conditional, num_heads, new attention order, 3 blocks per level,
    # channel_mult "" → (1, 2, 3, 4), which tells image_size 64.
    "imagenet64_like": (
        ADMConfig(image_size=64, num_channels=32, num_res_blocks=3, attention_resolutions="32,16,8",
                  num_heads=2, learn_sigma=True, resblock_updown=True, use_new_attention_order=True,
                  class_cond=True),
        "num_heads=2,use_new_attention_order=True"),
    # 128-like: channel_mult (1, 1, 2, 3, 4) (→ image_size 128), attention at 32 and 16 px only.
    "imagenet128_like": (
        ADMConfig(image_size=128, num_channels=32, num_res_blocks=2, attention_resolutions="32,16",
                  num_head_channels=32, learn_sigma=True, resblock_updown=True),
        "num_head_channels=32"),
    # LSUN-256-like without learned Σ (3 output channels), dropout (which changes no shape).
    "lsun256_like_no_sigma": (
        ADMConfig(image_size=256, num_channels=32, num_res_blocks=1, attention_resolutions="32,16,8",
                  num_head_channels=32, learn_sigma=False, resblock_updown=True, dropout=0.1),
        "num_head_channels=32"),
    # One's own training: conv resamplers, additive embedding, separate upsampling heads, and a
    # channel_mult that is nobody's default, so image_size must be given.
    "own_conv_resample": (
        ADMConfig(image_size=32, num_channels=32, num_res_blocks=2, channel_mult=(1, 2, 2),
                  attention_resolutions="16,8", num_heads=2, num_heads_upsample=4,
                  resblock_updown=False, use_scale_shift_norm=False),
        "image_size=32,num_heads=2,num_heads_upsample=4"),
}
LABEL = 5


def state_dict_of(config: ADMConfig, seed: int = 0) -> dict:
    """Generated weights of `config` (PyTorch's default initialisation)."""
    torch.manual_seed(seed)
    return ADMUNet(config).state_dict()


def outputs(model: ADMUNet) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)        # a size every case's levels divide: the UNet is convolutional
    with torch.no_grad():
        return model(x, torch.tensor([3, 640]))


def label_of(config: ADMConfig):
    return LABEL if config.class_cond else None


# ---------------------------------------------------------------- non-preset checkpoints

@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_loads_with_only_the_flags_shapes_cannot_tell(case, tmp_path):
    config, flags = CASES[case]
    path = tmp_path / f"{case}.pt"
    torch.save(state_dict_of(config), path)
    inferred = load_adm(path, overrides=flags, class_label=label_of(config))
    explicit = load_adm(path, config=config, class_label=label_of(config))
    assert inferred.config == dataclasses.replace(config, dropout=0.0)  # dropout: no shape, no effect in eval
    assert torch.equal(outputs(inferred), outputs(explicit))


@pytest.mark.parametrize("case", list(CASES))
def test_read_shapes_says_every_visible_flag(case):
    config, _ = CASES[case]
    assert read_shapes(state_dict_of(config)) == visible_flags(config)


@pytest.mark.parametrize("case, missing", [
    ("imagenet64_like", "num_head_channels=N or num_heads=N"),
    ("own_conv_resample", "image_size=N (the training size: channel_mult=1-2-2"),
])
def test_missing_flags_are_named(case, missing):
    config, _ = CASES[case]
    with pytest.raises(CheckpointError) as err:
        infer_config(state_dict_of(config))
    msg = str(err.value)
    assert f"do not say {missing}" in msg and "--model-config KEY=VALUE" in msg
    assert "num_res_blocks=" in msg      # what the shapes did say


def test_flags_contradicting_the_shapes_are_named():
    config, _ = CASES["imagenet128_like"]
    flags = "num_head_channels=32,num_res_blocks=3,attention_resolutions=32,16,8,learn_sigma=True"
    with pytest.raises(CheckpointError) as err:
        infer_config(state_dict_of(config), flags)
    msg = str(err.value)
    assert "num_res_blocks 3 given, the shapes say 2" in msg
    assert "attention_resolutions 32-16-8 given, the shapes say 32-16" in msg
    assert "learn_sigma" not in msg                     # agrees with the shapes


def test_flags_that_agree_with_the_shapes_are_accepted():
    config, _ = CASES["imagenet128_like"]
    flags = ("image_size=128,num_channels=32,num_res_blocks=2,channel_mult=1,1,2,3,4,"
             "attention_resolutions=16,32,num_head_channels=32,learn_sigma=True,use_fp16=True")
    assert infer_config(state_dict_of(config), flags) == config


def test_flags_that_make_no_unet_are_refused():
    config, _ = CASES["imagenet128_like"]
    with pytest.raises(CheckpointError, match="does not make an ADM UNet: .*whole attention heads"):
        infer_config(state_dict_of(config), "num_head_channels=48")


def test_image_size_given_moves_the_attention_resolutions():
    """The same weights at another training size: attention at the same levels, named in pixels."""
    config, _ = CASES["own_conv_resample"]
    got = infer_config(state_dict_of(config), "image_size=64,num_heads=2,num_heads_upsample=4")
    assert got.image_size == 64 and got.attention_resolutions == (32, 16)
    assert got.attention_levels == config.attention_levels


# ---------------------------------------------------------------- presets

def meta_state_dict(config: ADMConfig) -> dict:
    with torch.device("meta"):
        return ADMUNet(config).state_dict()


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_recognised_without_flags(name):
    assert infer_config(meta_state_dict(ADMConfig.preset(name))) == ADMConfig.preset(name)


def test_presets_have_distinct_shapes():
    seen = [visible_flags(ADMConfig.preset(name)) for name in PRESETS]
    assert all(a != b for i, a in enumerate(seen) for b in seen[i + 1:])


def test_given_head_layout_replaces_the_presets():
    """num_heads=4 on adm256-shaped weights: the preset's num_head_channels=64 must not win."""
    got = infer_config(meta_state_dict(ADMConfig.preset("adm256_uncond")), "num_heads=4")
    assert (got.num_heads, got.num_head_channels) == (4, -1)
    assert got.use_new_attention_order is False and got.image_size == 256


# ---------------------------------------------------------------- --model-config syntax

@pytest.mark.parametrize("text, expected", [
    ("", {}),
    ("num_head_channels=64", {"num_head_channels": 64}),
    ("channel_mult=1-1-2-2-4-4", {"channel_mult": (1, 1, 2, 2, 4, 4)}),
    ("attention_resolutions=32,16,8,num_heads=4", {"attention_resolutions": (32, 16, 8), "num_heads": 4}),
    ("channel_mult=0.5-1-1-2-2-4-4", {"channel_mult": (0.5, 1, 1, 2, 2, 4, 4)}),
    (" learn_sigma=true , class_cond=False,dropout=0.1 ", {"learn_sigma": True, "class_cond": False, "dropout": 0.1}),
    ("channel_mult=,use_fp16=True,use_checkpoint=False", {"channel_mult": ()}),
    ("num_head_channels=-1,num_heads=8", {"num_head_channels": -1, "num_heads": 8}),
])
def test_model_config_syntax(text, expected):
    assert parse_model_config(text) == expected


@pytest.mark.parametrize("text, message", [
    ("num_heds=4", r"unknown flag 'num_heds' \(did you mean num_heads\?\); accepted: image_size,"),
    ("noise_schedule=cosine", "unknown flag 'noise_schedule'"),
    ("num_heads=four", "num_heads=four: expected a whole number"),
    ("learn_sigma=maybe", "learn_sigma=maybe: expected True or False"),
    ("attention_resolutions=32,16.5", "expected whole numbers joined by '-'"),
    ("channel_mult=1-x-2", "expected numbers joined by '-'"),
    ("channel_mult=1-inf", "expected numbers joined by '-'"),
    ("num_heads=4,8", "'8' after num_heads, which takes one value, is not KEY=VALUE"),
    ("64", "'64' is not KEY=VALUE"),
    ("num_heads=4,num_heads=8", "gives num_heads twice"),
])
def test_bad_model_config_is_one_clear_line(text, message):
    with pytest.raises(InputError, match=message) as err:
        parse_model_config(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["adm256_uncond", "tiny", "adm128_cond"])
def test_every_config_field_is_a_flag_that_round_trips(name):
    flags = ADMConfig.preset(name).as_flags()
    text = ",".join(f"{k}={'-'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in flags.items())
    assert parse_model_config(text) == flags


def test_bad_flag_fails_before_the_file_is_read(tmp_path):
    with pytest.raises(InputError, match="unknown flag"):
        load_adm(tmp_path / "absent.pt", overrides="bogus=1")


def test_python_mapping_overrides():
    config, _ = CASES["own_conv_resample"]
    flags = {"image_size": 32, "num_heads": 2, "num_heads_upsample": "4", "attention_resolutions": [8, 16]}
    assert infer_config(state_dict_of(config), flags) == config
    with pytest.raises(ValueError, match="config or overrides"):
        load_adm(state_dict_of(config), config, overrides=flags)


# ---------------------------------------------------------------- class labels

@pytest.fixture(scope="module")
def conditional():
    config, flags = CASES["imagenet64_like"]
    return state_dict_of(config), flags


def test_class_label_conditions_every_frame(conditional):
    sd, flags = conditional
    model = load_adm(sd, overrides=flags, class_label=LABEL)
    torch.manual_seed(2)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t, torch.tensor([LABEL, LABEL])))
        assert not torch.equal(model(x, t), model(x, t, torch.tensor([LABEL + 1, LABEL + 1])))
        assert torch.equal(torch_eps(model)(x, t), model(x, t))   # the Solver's ε(x, t) carries it


def test_conditional_checkpoint_without_a_label_is_refused(conditional):
    sd, flags = conditional
    with pytest.raises(InputError) as err:
        load_adm(sd, overrides=flags)
    msg = str(err.value)
    assert "class-conditional (1000 classes: 0 … 999) and has no unconditional mode" in msg
    assert "--class-label K" in msg and "class_label=K" in msg


@pytest.mark.parametrize("label", [1000, -1, 3.0, "7", True])
def test_label_out_of_range_is_refused(conditional, label):
    sd, flags = conditional
    with pytest.raises(InputError, match=r"out of range: the checkpoint has 1000 classes: 0 … 999"):
        load_adm(sd, overrides=flags, class_label=label)


def test_label_for_an_unconditional_checkpoint_is_refused():
    config, flags = CASES["imagenet128_like"]
    with pytest.raises(InputError, match="class label 3 given, but the checkpoint is unconditional"):
        load_adm(state_dict_of(config), overrides=flags, class_label=3)


def test_solver_runs_a_loaded_conditional_model_with_its_label(conditional):
    """The label reaches the reverse loop through the plain ε(x, t) every backend calls."""
    from engine.runtime import Solver, SolverConfig

    sd, flags = conditional
    cfg = SolverConfig(spec="temporal:uniform:3", frames=4, size=16, nfe=2, kernels="torch")
    y = torch.rand(4, 3, 16, 16)
    restored = [Solver(load_adm(sd, overrides=flags, class_label=k), cfg).solve(y, seed=0) for k in (LABEL, 0)]
    assert all(torch.isfinite(r).all() for r in restored)
    assert not torch.equal(*restored)


# ---------------------------------------------------------------- through the command line


def test_a_non_preset_checkpoint_restores_through_engine_solve(tmp_path, capsys):
    """engine.solve --checkpoint with only the flags shapes cannot tell equals the Solver on
    load_adm(config=...) (frames compared as the 8-bit PNGs the command writes)."""
    import json

    import numpy as np
    from PIL import Image

    from engine.runtime import Solver, SolverConfig
    from engine.solve import main
    from engine.testclips import camera_clip

    config, flags = CASES["own_conv_resample"]
    path = tmp_path / "own.pt"
    torch.save(state_dict_of(config), path)
    clean = camera_clip(frames=4, size=32)
    cfg = SolverConfig(spec="temporal:uniform:3:replicate", frames=4, size=32, nfe=2, cg_iters=1)
    solver = Solver(load_adm(path, config=config), cfg)
    y = solver.op.A(clean)
    np.save(tmp_path / "y.npy", y.numpy())
    out = tmp_path / "out"
    argv = [str(tmp_path / "y.npy"), "--sigma-y", "0", "--temporal-prior", "none", "--degrade", "temporal:uniform:3", "--nfe", "2", "--cg-iters", "1",
            "--device", "cpu", "--checkpoint", str(path), "--out", str(out)]
    assert main([*argv[:-2], "--out", str(tmp_path / "never")]) == 2                  # the flags are needed
    assert "image_size" in capsys.readouterr().err
    assert main([*argv, "--model-config", flags]) == 0
    expected = (solver.solve(y, seed=0) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for k in range(4):
        frame = np.asarray(Image.open(out / "frames" / f"frame_{k:04d}.png"))
        assert np.abs(frame.astype(int) - expected[k].astype(int)).max() <= 1
    report = json.loads((out / "metrics.json").read_text())
    assert report["model_config"]["num_heads_upsample"] == 4 and report["class_label"] is None
