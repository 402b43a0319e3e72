"""bench/device_check.sh, the prepared run for a lent GPU: its dry run on the CPU writes every step's rows,
a failing step makes it exit non-zero, and the real run's command lines parse."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench import check_rows

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "device_check.sh"
STEPS = ["env", "profile", "headline", "sweep", "720p", "sr", "kernels", "length", "tests", "env-after"]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_script(out: Path, *args, python=sys.executable, timeout=400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": str(python)}
    env.pop("BENCH_RESULTS", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_runs_every_step_on_the_cpu_and_writes_its_rows(tmp_path):
    """`OUT=DIR bash bench/device_check.sh --dry-run`: every step at toy size, no error row, exit status 0;
    each benchmark's rows under $OUT, the extrapolated ones saying so, and one merged log."""
    done = run_script(tmp_path, "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr + (tmp_path / "log.txt").read_text()[-3000:]
    assert "no error row" in done.stdout
    steps = rows(tmp_path / "steps.jsonl")
    assert [s["step"] for s in steps] == STEPS and all(s["kind"] == "step" and s["dry_run"] for s in steps)
    assert [r["when"] for r in rows(tmp_path / "environment.jsonl")] == ["before", "after"]
    (profile,) = rows(tmp_path / "profile.jsonl")
    assert profile["preset"] == "tiny" and profile["forward_ms"] > 0
    fps = rows(tmp_path / "fps.jsonl")
    assert [(r["backend"], r["frames"], r["nfe"]) for r in fps] == [
        ("torch", 8, 2), ("reference", 8, 2),                                       # headline, reference last
        ("torch", 8, 1), ("torch", 12, 1),                                          # sweep
        ("torch", 8, 1),                                                            # the 720p step's tiles
        ("torch", 8, 1)]                                                            # SR
    assert set(fps[1]["speedups"]) == {"torch"} and fps[3]["extrapolated"]["to_nfe"] == 20
    assert fps[4]["tiles"] == 4 and fps[5]["task"] == "temporal-k7-sr4" and fps[5]["extrapolated"]["to_nfe"] == 100
    assert all("linear" in r["extrapolated"]["method"] for r in fps[2:])
    assert all(r["peak_mem_solve_bytes"] <= r["peak_mem_bytes"] for r in fps)
    kernels = rows(tmp_path / "kernels.jsonl")
    assert {r["kind"] for r in kernels} == {"copy", "kernel", "unet", "task"}
    length = rows(tmp_path / "length.jsonl")
    assert [(r["frames"], r["returncode"]) for r in length] == [(8, 0), (12, 0)]
    assert all(r["peak_bytes"] > 0 and r["seconds_per_frame"] > 0 for r in length)
    log = (tmp_path / "log.txt").read_text()
    assert all(f"### [{name}] exit 0" in log for name in STEPS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["environment.jsonl", "fps.jsonl", "kernels.jsonl",
                                                           "length.jsonl", "log.txt", "profile.jsonl", "steps.jsonl"]


def fake_python(tmp_path: Path, fail: str | None = None) -> Path:
    """A PYTHON for the script that records each command line instead of running it (and fails the one naming
    `fail`); `-m bench.check_rows` runs for real."""
    record = tmp_path / "commands.txt"
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1 $2" = "-m bench.check_rows" ]; then exec {shlex.quote(sys.executable)} "$@"; fi\n'
        f'printf "%q " "$@" >>{shlex.quote(str(record))}; echo >>{shlex.quote(str(record))}\n'
        + (f'case "$*" in *{fail}*) echo "planted failure" >&2; exit 1;; esac\n' if fail else "")
        + "exit 0\n")
    fake.chmod(0o755)
    return fake


def test_a_failing_step_is_an_error_row_and_the_run_exits_non_zero(tmp_path):
    out = tmp_path / "out"
    done = run_script(out, python=fake_python(tmp_path, fail="kernel_speed.py"), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    steps = {s["step"]: s for s in rows(out / "steps.jsonl")}
    assert list(steps) == STEPS
    assert steps["kernels"]["kind"] == "error" and steps["kernels"]["error"] == "exit status 1"
    assert all(s["kind"] == "step" for name, s in steps.items() if name != "kernels")
    assert "error row: kernels: exit status 1" in done.stdout
    assert "planted failure" in (out / "log.txt").read_text()


def test_the_real_runs_command_lines_parse(tmp_path):
    """The real run's steps (recorded, not run) name only flags their programs take, with the sizes the issue
    asks for: the headline at 20 NFE with torch+graph before eager and the reference last, the sweep, 720p
    and SR rows at a few NFE extrapolated, the length rows on the carried clip, every test under a time limit."""
    from bench import fps, kernel_speed, profile_unet
    from bench import length as bench_length

    out = tmp_path / "out"
    done = run_script(out, python=fake_python(tmp_path), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    commands = [shlex.split(line) for line in (tmp_path / "commands.txt").read_text().splitlines()]
    parsers = {"bench/fps.py": fps.parse_args, "bench/kernel_speed.py": kernel_speed.parse_args,
               "bench/profile_unet.py": profile_unet.parse_args}
    parsed = []
    for argv in commands:
        if argv[0] == "-c":                        # whether imageio-ffmpeg imports (where wheels/ was carried)
            assert argv[1] == "import imageio_ffmpeg"
        elif argv[:2] == ["-m", "bench.environment"]:
            assert argv[2] == "--when"
        elif argv[:2] == ["-m", "pytest"]:
            assert "--test-timeout" in argv and argv[-1] == "tests" and "gpu" in argv
        elif argv[:2] == ["-m", "bench.length"]:
            length, extra = bench_length.parse_args(argv[2:])
            assert length.clip == Path("bench/clips/bigbuckbunny.mp4") and length.frames == "64,160" and length.save
            assert length.size == "640x272" and extra == ["--prior", "gaussian", "--nfe", "2"]
        else:
            parsed.append((argv[0], parsers[argv[0]](argv[1:])))
    assert [name for name, _ in parsed] == ["bench/profile_unet.py"] + ["bench/fps.py"] * 4 + ["bench/kernel_speed.py"]
    headline, sweep, hd, sr = (args for name, args in parsed if name == "bench/fps.py")
    assert headline.backends == "torch+graph,torch" and headline.reference_last and headline.nfe == 20
    assert headline.frames == [16] and headline.repeats == 2
    assert sweep.frames == [16, 64, 256] and sweep.extrapolate_nfe == 20 and sweep.nfe < 20
    assert hd.size == (720, 1280) and hd.extrapolate_nfe == 20 and sr.extrapolate_nfe == 100 and sr.nfe <= 10
    assert all(a.backends == "torch+graph" and a.save for a in (sweep, hd, sr))


def test_check_rows_names_error_rows_and_cut_lines(tmp_path, capsys):
    (tmp_path / "fps.jsonl").write_text('{"backend": "torch", "seconds_per_clip": 1.0}\n'
                                        '{"kind": "error", "backend": "reference", "error": "OOM (planted)"}\n')
    (tmp_path / "kernels.jsonl").write_text('{"kind": "copy", "name": "copy"}\n{"kind": "ker')
    assert check_rows.main([str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "error row: reference: OOM (planted)" in text and "line 2 is not JSON" in text and "2 error rows" in text
    (tmp_path / "fps.jsonl").unlink()
    (tmp_path / "kernels.jsonl").write_text('{"kind": "copy", "name": "copy"}\n')
    assert check_rows.main([str(tmp_path)]) == 0 and "no error row" in capsys.readouterr().out
    assert check_rows.main([str(tmp_path / "missing")]) == 2


def test_test_timeout_fails_a_stuck_test_and_the_run_goes_on(tmp_path):
    (tmp_path / "test_stuck.py").write_text("import time\n\ndef test_stuck():\n    time.sleep(30)\n\n"
                                            "def test_after():\n    assert True\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "per_test_timeout", "-p", "no:cacheprovider",
                           "--test-timeout", "1", str(tmp_path / "test_stuck.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "tests" / "helpers")})
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed" in done.stdout and "ran past --test-timeout 1 s" in done.stdout


@pytest.mark.parametrize("args", [["--bogus"]])
def test_unknown_arguments_are_refused(tmp_path, args):
    done = run_script(tmp_path, *args, timeout=30)
    assert done.returncode == 2 and "usage" in done.stderr


def test_the_length_bench_without_its_clip_says_where_to_get_one(tmp_path, capsys):
    """The device step's clip is carried, not shipped: without it bench.length stops in one line that says how."""
    from bench import length as bench_length

    assert bench_length.main(["--clip", str(tmp_path / "none.mp4"), "--frames", "8"]) == 2
    assert "carry one in bench/clips/" in capsys.readouterr().err
