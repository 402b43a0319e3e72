"""engine.evaluation.evaluate (python -m engine.evaluate) end to end on two small clips with the weight-free prior and every method;
resuming after an interruption; LPIPS / FVD columns; every refusal (one line, exit 2), each bad setting
refused by EvalJob or SolverConfig before any work."""
import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

import engine.evaluation.evaluate as evaluate
import engine.runtime
from engine.baselines import CG_RTOL, cg_converged
from engine.errors import InputError
from engine.evaluation.evaluate import METHODS, main
from engine.metrics import psnr
from engine.operators import from_spec
from engine.testclips import camera_clip
from stand_in_weights import write_i3d, write_lpips_files

SIGMAS = (0.0, 0.01)
FAST = ["--task", "temporal-k7", "--prior", "gaussian", "--nfe", "3", "--cg-iters", "2", "--frames", "8",
        "--size", "32", "--admm-iters", "3,5", "--converged-iters", "200"]
EVERYTHING = [*FAST, "--sigma-y", ",".join(map(str, SIGMAS))]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two 8-frame 32x32 clips of real textures with known camera motion, as the public code's .npy clips."""
    folder = tmp_path_factory.mktemp("clips")
    clips = {"astronaut": camera_clip("astronaut", frames=8, size=32, pan=(1.5, 0.5)),
             "coffee": camera_clip("coffee", frames=8, size=32, pan=(-1.0, 1.0), zoom=1.02)}
    for name, clip in clips.items():
        np.save(folder / f"{name}.npy", clip.permute(1, 0, 2, 3).numpy())  # [3, N, H, W]
    return folder


@pytest.fixture(scope="module")
def sampler_calls():
    """(noise images per step, γ) of every sampler run of `full_run`, in order."""
    return []


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory, sampler_calls):
    """An uninterrupted run of every method at σ_y = 0 and 0.01, recording what the sampler is given."""
    real = engine.runtime.reverse_process

    def recording(eps_model, y, op, E, *args, gamma, **kwargs):
        sampler_calls.append((E.shape[1], gamma))
        return real(eps_model, y, op, E, *args, gamma=gamma, **kwargs)

    out = tmp_path_factory.mktemp("full") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.runtime, "reverse_process", recording)
        assert main(["--data", str(data), *EVERYTHING, "--out", str(out)]) == 0
    return out


def records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def rows_without_time(out):
    return [{k: v for k, v in row.items() if k != "time_s"} for row in json.loads((out / "summary.json").read_text())["rows"]]


def test_every_method_end_to_end(full_run, sampler_calls):
    recs = records(full_run)
    assert [r["clip"] for r in recs] == ["astronaut_000", "coffee_000"]
    # per clip svi, svi-independent-noise at σ_y = 0 (plain CG), then both at 0.01 with the regularised CG at the
    # default γ = 0.04 / σ_y = 4
    assert sampler_calls == [(1, None), (8, None), (1, 4.0), (8, 4.0)] * 2
    for rec in recs:
        assert [(r["sigma_y"], r["method"]) for r in rec["runs"]] == [(s, m) for s in SIGMAS for m in METHODS]
        for run in rec["runs"]:
            assert len(run["psnr"]) == len(run["ssim"]) == 8 and run["seconds"] > 0
            assert run["psnr_mean"] == pytest.approx(np.mean(run["psnr"])) and 0 < run["ssim_mean"] <= 1
        runs = {(r["sigma_y"], r["method"]): r for r in rec["runs"]}
        assert runs[0.0, "cg"]["psnr_mean"] > 40                  # noiseless 7-frame blur of 8 frames is invertible
        assert runs[0.0, "cg-converged"]["residual"] < 1e-5
        assert runs[0.0, "cg"]["iterations"] == 3 * 2             # K·l
        for method in METHODS:                                    # σ_y = 0.01 measured noise: other scores
            assert runs[0.01, method]["psnr"] != runs[0.0, method]["psnr"]
        for sigma in SIGMAS:                                      # Fig. 7: one shared noise image makes the
            shared, independent = runs[sigma, "svi"]["interframe"], runs[sigma, "svi-independent-noise"]["interframe"]
            assert len(shared) == len(independent) == 3           # first Tweedie estimates identical across frames
            assert shared[0] == 0 and independent[0] > 0.01
    summary = (full_run / "summary.md").read_text()
    for method in METHODS:
        assert summary.count(f"| {method} |") == len(SIGMAS)
    assert "| Method | Time [s] | PSNR ↑ | SSIM ↑ | LPIPS ↓ | FVD×1e-3 ↓ |" in summary
    assert "## σ_y = 0 (noiseless" in summary and "## σ_y = 0.01 (regularised CG" in summary
    table = list(csv.DictReader((full_run / "summary.csv").open()))
    assert len(table) == len(SIGMAS) * len(METHODS)
    assert all(r["clips"] == "2" and r["lpips"] == r["fvd"] == "n/a" and float(r["psnr"]) > 10 for r in table)
    rows = json.loads((full_run / "summary.json").read_text())["rows"]
    assert all(r["lpips"] is None and r["fvd"] is None and r["time_s"] > 0 for r in rows)
    pictures = {p.name for p in (full_run / "pictures").iterdir()}
    for sigma in ("0", "0.01"):
        assert {f"astronaut_000_sigma{sigma}_grid.png", f"astronaut_000_sigma{sigma}_psnr.png",
                f"psnr_per_frame_sigma{sigma}.png", f"interframe_sigma{sigma}.png"} <= pictures
    assert not any(name.startswith("coffee") for name in pictures)  # --pictures 1


def test_resume_after_interruption(data, full_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = evaluate.evaluate_clip
    seen = []

    def killed_at_second_clip(name, *args):
        if name == "coffee_000":
            raise KeyboardInterrupt
        return real(name, *args)

    monkeypatch.setattr(evaluate, "evaluate_clip", killed_at_second_clip)
    with pytest.raises(KeyboardInterrupt):
        main(["--data", str(data), *EVERYTHING, "--out", str(out)])
    assert [r["clip"] for r in records(out)] == ["astronaut_000"]
    with open(out / "results.jsonl", "a") as f:
        f.write('{"clip": "coffee_000", "runs": [{"meth')  # a line torn by a kill while writing

    monkeypatch.setattr(evaluate, "evaluate_clip", lambda name, *args: seen.append(name) or real(name, *args))
    assert main(["--data", str(data), *EVERYTHING, "--out", str(out)]) == 0
    assert seen == ["coffee_000"]
    assert rows_without_time(out) == rows_without_time(full_run)
    for resumed, whole in zip(records(out), records(full_run)):
        assert [r["psnr"] for r in resumed["runs"]] == [r["psnr"] for r in whole["runs"]]


def test_limit_settings_and_overwrite(data, tmp_path, capsys):
    out = tmp_path / "out"
    quick = ["--data", str(data), *FAST, "--out", str(out)]
    assert main([*quick, "--methods", "cg", "--limit", "1"]) == 0
    assert len(records(out)) == 1 and "), 1 clip\n" in (out / "summary.md").read_text()
    capsys.readouterr()
    assert main([*quick, "--methods", "cg,cg-converged"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "other settings" in err and "methods" in err and "\n" not in err
    assert main([*quick, "--methods", "cg,cg-converged", "--overwrite"]) == 0
    assert len(records(out)) == 2 and len(rows_without_time(out)) == 2


def test_an_unreadable_file_is_skipped_with_a_warning_and_listed(data, tmp_path, caplog):
    """One undecodable file in --data used to abort the run after the clips before it were done."""
    folder = tmp_path / "data"
    folder.mkdir()
    for clip in data.iterdir():
        (folder / clip.name).write_bytes(clip.read_bytes())
    (folder / "broken.mp4").write_bytes(b"not a video")                   # sorted before coffee
    out = tmp_path / "out"
    assert main(["--data", str(folder), *FAST, "--methods", "cg", "--out", str(out)]) == 0
    assert [r["clip"] for r in records(out)] == ["astronaut_000", "coffee_000"]
    summary = (out / "summary.md").read_text()
    assert "), 2 clips\n" in summary and "## Skipped: 1 sequence that could not be read" in summary
    assert "- broken: " in summary and "cannot decode" in summary.split("- broken: ")[1]
    assert list(json.loads((out / "summary.json").read_text())["skipped"]) == ["broken"]
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "broken" in r.getMessage()]
    assert warnings and {r.name for r in warnings} <= {"engine.evaluation.data", "engine.evaluation.evaluate"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit writes the stand-in I3D
def test_lpips_and_fvd_columns(data, tmp_path):
    heads, backbone = write_lpips_files(tmp_path)
    i3d = write_i3d(tmp_path / "i3d_torchscript.pt")
    out = tmp_path / "out"
    assert main(["--data", str(data), *FAST, "--methods", "cg", "--lpips-weights", str(heads),
                 "--lpips-backbone", str(backbone), "--fvd-weights", str(i3d), "--out", str(out)]) == 0
    (row,) = json.loads((out / "summary.json").read_text())["rows"]
    assert row["lpips"] > 0 and np.isfinite(row["fvd"])
    assert all(len(r["lpips"]) == 8 for rec in records(out) for r in rec["runs"])
    features = np.load(out / "features" / "coffee_000.npz")
    assert set(features.files) == {"clean", "cg@0"} and features["clean"].shape == (400,)
    assert "n/a" not in (out / "summary.md").read_text().split("| cg |")[1]


@pytest.mark.parametrize("extra, words", [
    (["--lpips-weights", "alex.pth", "--lpips-backbone", "missing-alexnet.pth"], "missing-alexnet.pth not found"),
    (["--fvd-weights", "missing-i3d.pt"], "missing-i3d.pt not found"),
])
def test_missing_weight_files(data, tmp_path, capsys, extra, words):
    (tmp_path / "alex.pth").write_bytes(b"")
    extra = [str(tmp_path / e) if e.endswith((".pth", ".pt")) else e for e in extra]
    out = tmp_path / "out"
    assert main(["--data", str(data), *FAST, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and "\n" not in err
    assert not out.exists()


def test_refusals(tmp_path, capsys):
    assert main(["--data", str(tmp_path), *FAST, "--out", str(tmp_path / "out")]) == 2
    assert "no sequences" in capsys.readouterr().err
    with pytest.raises(SystemExit):                                     # argparse: not a number
        main(["--data", str(tmp_path), *FAST, "--sigma-y", "0,x", "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("extra, words", [
    (["--limit", "-1"], "--limit must be at least 1, got -1"),
    (["--limit", "0"], "--limit must be at least 1, got 0"),
    (["--sigma-y", "0,-0.01"], "--sigma-y noise levels must be finite and >= 0, got -0.01"),
    (["--sigma-y", "nan"], "--sigma-y noise levels must be finite and >= 0, got nan"),
    (["--methods", "svi,dps"], "unknown method 'dps'"),
    (["--methods", ","], "--methods must name each method once, got none"),
    (["--gamma", "0"], "--gamma must be a finite number > 0, got 0.0"),
    (["--frames", "1"], "--frames must be at least 2, got 1"),
    (["--size", "0"], "--size must be at least 1, got 0"),
    (["--crop", "0"], "--crop must be at least 1, got 0"),
    (["--converged-iters", "0"], "--converged-iters must be at least 1, got 0"),
    (["--admm-iters", "3"], "--admm-iters needs two iteration counts >= 1"),
    (["--admm-iters", "3,0"], "--admm-iters needs two iteration counts >= 1"),
    (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--pictures", "-1"], "--pictures must be at least 0, got -1"),
    (["--lpips-weights", "alex.pth"], "LPIPS needs both --lpips-weights and --lpips-backbone"),
    (["--backend", "tensorrt"], "--backend tensorrt needs --engine FILE"),
    (["--engine", "unet.plan"], "--engine is for --backend tensorrt"),
    (["--nfe", "0"], "nfe must be between 1 and 1000, got 0"),               # SolverConfig's own check
    (["--eta", "2"], "eta (DDIM stochasticity η) must lie in [0, 1], got 2.0"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, capsys, monkeypatch, extra, words):
    """Each bad value: one line, exit 2, before the model is loaded or --out is touched."""
    monkeypatch.setattr(evaluate, "build", lambda *a: pytest.fail("work started despite a bad setting"))
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path), *FAST, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and "\n" not in err
    assert not out.exists()


def test_parse_gives_the_job_and_the_task_config(tmp_path):
    job, cfg, verbose = evaluate.parse(["--data", str(tmp_path), *FAST, "--methods", "cg, svi,cg",
                                        "--sigma-y", "0.01,0,0.01", "--limit", "3", "--crop", "24",
                                        "--device", "cpu", "--out", str(tmp_path / "out"), "-v"])
    assert job.methods == ("cg", "svi") and job.sigma_ys == (0.01, 0.0)      # each once, in the given order
    assert (job.limit, job.crop, job.frames, job.size, job.admm_iters) == (3, 24, 8, 32, (3, 5))
    assert job.prepared == tmp_path / "out" / "prepared" and verbose
    assert cfg == engine.runtime.SolverConfig.from_task("temporal-k7", frames=8, size=32, nfe=3, cg_iters=2)
    assert evaluate.parse(["--data", str(tmp_path), *FAST, "--cache", str(tmp_path / "c"),
                           "--out", str(tmp_path / "out")])[0].prepared == tmp_path / "c"
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.limit = 4


def test_an_eval_job_checks_itself(tmp_path):
    """Built in code, not from the command line: the same one-line refusals."""
    good = evaluate.EvalJob(data=tmp_path, out=tmp_path / "out", task="temporal-k7")
    assert good.methods == METHODS and good.sigma_ys == (0.0,)
    for bad, words in [({"task": "deblur"}, "unknown task 'deblur'"), ({"prior": "adm"}, "unknown prior 'adm'"),
                       ({"methods": ("cg", "cg")}, "each method once"), ({"sigma_ys": ()}, "each noise level once"),
                       ({"sigma_ys": (0.0, 0.0)}, "each noise level once"), ({"gamma": float("inf")}, "--gamma")]:
        with pytest.raises(InputError, match=words):
            dataclasses.replace(good, **bad)


def test_cg_converged_inverts_noiseless_temporal_blur():
    clean = camera_clip("grass", frames=8, size=16, dtype=torch.float64)
    op = from_spec("temporal:uniform:7", clean.shape, dtype=torch.float64)
    x, iterations, residual = cg_converged(op, op.A(clean), max_iters=1000)
    assert residual <= CG_RTOL and iterations < 1000
    assert psnr(x, clean).min() > 60


def test_nfe_sweep_cold_and_warm(data, tmp_path):
    """--sweep-nfe with --start: the sampler at each K, cold and warm, one row each; the sweep's tables and plot."""
    from PIL import Image

    out = tmp_path / "out"
    assert main(["--data", str(data), *FAST, "--methods", "svi,admm-tv,cg", "--sigma-y", "0.01", "--sweep-nfe", "2,3",
                 "--start", "500", "--limit", "1", "--out", str(out)]) == 0
    (rec,) = records(out)
    labels = ["svi K=2 cold", "svi K=2 t0=500", "svi K=3 cold", "svi K=3 t0=500", "admm-tv", "cg"]
    assert [r["method"] for r in rec["runs"]] == labels
    runs = {r["method"]: r for r in rec["runs"]}
    for k in (2, 3):
        cold, warm = runs[f"svi K={k} cold"], runs[f"svi K={k} t0=500"]
        assert (cold["nfe"], cold["start"], len(cold["interframe"])) == (k, None, k)
        assert (warm["nfe"], warm["start"], len(warm["interframe"])) == (k, 500, k)
        assert warm["psnr"] != cold["psnr"]                      # two different runs, not one run twice
    assert runs["svi K=2 cold"]["psnr"] != runs["svi K=3 cold"]["psnr"]
    assert runs["cg"]["iterations"] == 3 * 2                     # the baselines at --nfe's budget, once

    points = json.loads((out / "sweep.json").read_text())["points"]
    assert [(p["method"], p["nfe"], p["start"]) for p in points] == [
        ("svi", 2, None), ("svi", 2, 500), ("svi", 3, None), ("svi", 3, 500), ("admm-tv", None, None), ("cg", None, None)]
    for p, label in zip(points, labels):
        assert p["sigma_y"] == 0.01 and p["clips"] == 1
        assert p["psnr"] == pytest.approx(runs[label]["psnr_mean"]) and p["ssim"] == pytest.approx(runs[label]["ssim_mean"])
    table = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["method"], r["nfe"], r["start"]) for r in table] == [
        ("svi", "2", "cold"), ("svi", "2", "500"), ("svi", "3", "cold"), ("svi", "3", "500"), ("admm-tv", "", ""),
        ("cg", "", "")]
    assert [float(r["psnr"]) for r in table] == pytest.approx([p["psnr"] for p in points])
    md = (out / "sweep.md").read_text()
    psnr_block = md.split("PSNR:")[1].split("SSIM:")[0]
    assert "| K | svi cold | svi warm t₀ = 500 |" in psnr_block
    assert f"| 2 | {points[0]['psnr']:.2f} | {points[1]['psnr']:.2f} |" in psnr_block
    assert f"| admm-tv | {points[4]['psnr']:.2f} |" in md
    assert "| svi K=2 t0=500 |" in (out / "summary.md").read_text()

    with Image.open(out / "pictures" / "psnr_vs_nfe_sigma0.01.png") as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape == (400, 760, 3)
    colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7]}
    assert len(colours) > 4                                      # lines and labels drawn, not a blank canvas


@pytest.mark.parametrize("extra, words", [
    (["--sweep-nfe", "2,2"], "--sweep-nfe must list each K in [1, 1000] once"),
    (["--sweep-nfe", "0,2"], "--sweep-nfe must list each K in [1, 1000] once"),
    (["--sweep-nfe", "2,4", "--methods", "cg"], "add svi or svi-independent-noise"),
    (["--sweep-nfe", "2,40", "--start", "30"], "--start must be in [40, 1000]"),
    (["--start", "2"], "--start must be in [3, 1000]"),
])
def test_bad_sweep_settings_are_refused_before_any_work(tmp_path, capsys, monkeypatch, extra, words):
    monkeypatch.setattr(evaluate, "build", lambda *a: pytest.fail("work started despite a bad setting"))
    assert main(["--data", str(tmp_path), *FAST, *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and "\n" not in err
