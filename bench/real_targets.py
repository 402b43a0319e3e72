"""`python -m bench.real_targets`: the default command on a real clip degraded as a user's video is.

A clean clip (a real video, or a photo panned) is blurred over 7 frames (or by --blur), given noise σ,
rounded to 8 bit and written as an H.264 mp4 at a CRF (bench.real_clips); `python -m engine.solve
BLURRED.mp4 --degrade SPEC --out OUT` then restores it with its defaults (plus any extra flags after
`--`), in a process of its own (the row's seconds are the command's, its start included). SPEC is
the blur's own unless --degrade names another: what a user who guessed it wrong gets (the row keeps
the command's data residual and whether it warned that the restoration does not explain INPUT).
Scored against the clean clip, per frame n:

    gain[n]  = PSNR(restored[n]) − PSNR(input[n])       (input: the decoded mp4 the user has)
    dip[n]   = median(PSNR(restored[n−3 … n+3])) − PSNR(restored[n])

and the row reports mean PSNRs, the mean gain, the worst gain (the frame that came out most below
its input) and the worst dip (a ghost frame stands below its neighbours). Rows are appended to
bench/results/real_targets.jsonl with the machine.

    python -m bench.real_targets --clip carphone --frames 120 --full
    python -m bench.real_targets --clip bigbuckbunny --frames 96 --full --width 640 --height 272 --start 0
    python -m bench.real_targets --clip bikes --frames 32 --blur temporal:uniform:1     # a sharp video, told 7
    python -m bench.real_targets --clip bikes --frames 120 --crop 176 144 --start 130   # 176×144 of any clip
    python -m bench.real_targets --clip photo:camera --frames 120 --crop 176 144        # a photo panned, 176×144
    python -m bench.real_targets --clip bikes --frames 120 --crop 176 144 --light flash  # a change of light

--light changes the clean clip's light before it is blurred, as a camera records it (`relit`): a fade out
and back in, or a flash.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import git_commit
from bench.real_clips import CLIPS, CLIPS_DIR, VIDEOS, clean_clip, degrade
from engine.errors import InputError
from engine.metrics import psnr
from engine.video_io import declared_frames, read_video, stream_video

RESULTS = Path(__file__).resolve().parent / "results" / "real_targets.jsonl"
SPEC = "temporal:uniform:7"


def clean_video(name: str, frames: int, *, width: int | None, height: int | None, full: bool,
                start: int | None = None, crop: tuple[int, int] | None = None,
                at: tuple[float, float] | None = None) -> torch.Tensor:
    """The clean clip [N, 3, H, W]: a whole video's frames (`full`) from frame `start` (None: the clip's own
    first frame, bench.real_clips.VIDEOS), scaled to `width` and centre-cropped to `height` when given, else a
    square crop of bench.real_clips; with `crop` = (w, h), the `cropped_clip` of that size instead."""
    if crop is not None:
        return cropped_clip(name, frames, crop, at=at, start=start, width=width)
    if not full:
        return clean_clip(name, frames=frames, size=height or 128)
    first, path = VIDEOS[name][1] if start is None else start, CLIPS_DIR / VIDEOS[name][0]
    if (count := declared_frames(path)) is not None and first + frames > count:
        raise InputError(f"{path} has {count} frames: {frames} from frame {first} run past its end")
    decoded = itertools.islice(stream_video(path, frames=first + frames), first, None)
    video = torch.stack([scaled(frame, width) for frame in decoded])      # a frame at its own size at a time
    if height is not None and height < video.shape[-2]:
        top = (video.shape[-2] - height) // 2
        video = video[..., top:top + height, :]
    return video.clamp(0, 1).contiguous()


def scaled(frame: torch.Tensor, width: int | None) -> torch.Tensor:
    """A frame [3, H, W] scaled to `width` columns, its aspect kept (antialiased bilinear); itself for None."""
    if width is None or width == frame.shape[-1]:
        return frame
    h = round(frame.shape[-2] * width / frame.shape[-1])
    return F.interpolate(frame[None], size=(h, width), mode="bilinear", antialias=True, align_corners=False)[0]


def cropped_clip(name: str, frames: int, crop: tuple[int, int], *, at: tuple[float, float] | None = None,
                 start: int | None = None, width: int | None = None) -> torch.Tensor:
    """A w×h window `[N, 3, h, w]` of a clip, (w, h) = `crop`: of a video's whole frames (from `start`, scaled
    to `width` when given) at `at` = (top, left) as fractions of the free margin (default the clip's own,
    bench.real_clips.VIDEOS), or of a photo panned at max(w, h) pixels (default the centre)."""
    w, h = crop
    if name.startswith("photo:"):
        if start is not None or width is not None:
            raise InputError(f"{name} is a photo panned from its first frame at its own scale: no --start or --width")
        clip, place = clean_clip(name, frames=frames, size=max(w, h)), (0.5, 0.5)
    else:
        clip, place = clean_video(name, frames, width=width, height=None, full=True, start=start), VIDEOS[name][2]
    top, left = at or place
    rows, cols = clip.shape[-2:]
    if not (0 < h <= rows and 0 < w <= cols) or not (0 <= top <= 1 and 0 <= left <= 1):
        raise InputError(f"cannot take a {w}x{h} window at {top:g}, {left:g} of {name}'s {cols}x{rows} frames")
    i, j = round(top * (rows - h)), round(left * (cols - w))
    return clip[..., i:i + h, j:j + w].contiguous()


#: `relit`: the fade dims to FADE_FLOOR of the light and back; the flash brightens FLASH_FRAMES frames by FLASH_GAIN
FADE_FLOOR, FLASH_GAIN, FLASH_FRAMES = 0.2, 1.35, 3
LIGHTS = ("fade", "flash")


def relit(clip: torch.Tensor, light: str) -> torch.Tensor:
    """The clean clip [N, 3, H, W] under a change of light, as a camera records it (clipped to [0, 1]):

        fade:  x[n]·g(n), g falling linearly from 1 at n = N/3 to FADE_FLOOR at 7N/12, back to 1 at 5N/6
        flash: x[n]·FLASH_GAIN for the FLASH_FRAMES frames from n = 5N/12
    """
    n = clip.shape[0]
    t = torch.arange(n, dtype=clip.dtype)
    if light == "fade":
        down, low, up = n / 3, 7 * n / 12, 5 * n / 6
        gain = (1 - (1 - FADE_FLOOR) * ((t - down) / (low - down)).clamp(0, 1)
                + (1 - FADE_FLOOR) * ((t - low) / (up - low)).clamp(0, 1))
    elif light == "flash":
        first = 5 * n // 12
        gain = torch.where((t >= first) & (t < first + FLASH_FRAMES), FLASH_GAIN, 1.0).to(clip.dtype)
    else:
        raise InputError(f"unknown --light {light!r}; accepted: {', '.join(LIGHTS)}")
    return (clip * gain[:, None, None, None]).clamp(0, 1)


def add_clip_flags(parser, *, frames: int) -> None:
    """--clip, --frames, --full, --width, --height, --start, --crop, --at: the clean clip `clean_video` reads
    (`clip_of`)."""
    parser.add_argument("--clip", choices=CLIPS, default="carphone")
    parser.add_argument("--frames", type=int, default=frames)
    parser.add_argument("--full", action="store_true", help="the video's whole frames (else a square crop)")
    parser.add_argument("--width", type=int, help="with --full: scale the frames to this width")
    parser.add_argument("--height", type=int, help="with --full: centre-crop to this height (else: the crop's side)")
    parser.add_argument("--start", type=int,
                        help="with --full or --crop: the first frame (default: the clip's own, bench.real_clips)")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"),
                        help="a WIDTH×HEIGHT window of the video's frames (scaled to --width first when given), or "
                             "of the photo panned at the larger side")
    parser.add_argument("--at", type=float, nargs=2, metavar=("TOP", "LEFT"),
                        help="with --crop: where, as fractions of the free margin (default: the clip's own place, "
                             "a photo's centre)")


def clip_of(args) -> torch.Tensor:
    """The clean clip the flags of `add_clip_flags` name.  → [N, 3, H, W]"""
    if args.at is not None and args.crop is None:
        raise InputError("--at places a --crop window: give --crop WIDTH HEIGHT too")
    if args.crop is not None and (args.full or args.height is not None):
        raise InputError("--crop takes its window of the whole frames itself: leave out --full and --height")
    return clean_video(args.clip, args.frames, width=args.width, height=args.height, full=args.full,
                       start=args.start, crop=args.crop, at=args.at)


def frame_dips(scores: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """median(scores[n−r … n+r]) − scores[n] for every n (the window cut at the clip's ends).  [N] → [N]"""
    n = scores.numel()
    medians = torch.stack([scores[max(0, i - radius):i + radius + 1].median() for i in range(n)])
    return medians - scores


def run(args, extra: list[str]) -> dict:
    clean = clip_of(args)
    clean = relit(clean, args.light) if args.light else clean
    with tempfile.TemporaryDirectory() as tmp:
        mp4 = Path(tmp) / "blurred.mp4"
        given = degrade(clean, args.blur, sigma=args.sigma, crf=args.crf, seed=1, mp4=mp4)
        t0 = time.perf_counter()
        status = subprocess.run([sys.executable, "-m", "engine.solve", str(mp4), "--degrade", args.degrade,
                                 "--out", str(Path(tmp) / "out"), *extra]).returncode
        seconds = time.perf_counter() - t0
        if status != 0:
            raise SystemExit(f"engine.solve exited {status}")
        restored = read_video(Path(tmp) / "out" / "frames", size=None)
        report = json.loads((Path(tmp) / "out" / "metrics.json").read_text())
    p_in, p_out = psnr(given, clean), psnr(restored, clean)            # [N] float64
    gain = p_out - p_in
    guard = report.get("guard") or {}
    return {"clip": args.clip, "start": args.start, "crop": args.crop, "at": args.at, "light": args.light,
            "frames": clean.shape[0], "size": list(clean.shape[-2:]),
            "spec": args.degrade, "blur": args.blur, "residual": report.get("residual"),
            "sigma": args.sigma, "crf": args.crf, "extra": extra, "input_psnr": p_in.mean().item(),
            "restored_psnr": p_out.mean().item(), "gain": gain.mean().item(), "worst_gain": gain.min().item(),
            "worst_gain_frame": int(gain.argmin()), "worst_dip": frame_dips(p_out).max().item(),
            "worst_dip_frame": int(frame_dips(p_out).argmax()), "estimated_sigma": report.get("noise", {}).get("sigma_y"),
            "guard_kept": len(guard.get("frames_kept", [])), "guard_alpha_mean": guard.get("alpha_mean"),
            "seconds": seconds, "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                                          f"torch {torch.__version__}, {torch.get_num_threads()} threads"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m bench.real_targets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clip_flags(p, frames=16)
    p.add_argument("--sigma", type=float, default=0.0, help="Gaussian noise added before 8-bit rounding")
    p.add_argument("--crf", type=int, default=23, help="x264 CRF of the blurred mp4")
    p.add_argument("--light", choices=LIGHTS, help="a change of light in the clean clip (module docstring)")
    p.add_argument("--blur", default=SPEC, help="how the clean clip is degraded (default %(default)s)")
    p.add_argument("--degrade", default=None, help="what the command is told (default: --blur)")
    p.add_argument("--no-save", action="store_true", help="print the row only")
    args = p.parse_args(argv)
    args.degrade = args.degrade or args.blur
    try:
        row = run(args, extra)
    except InputError as err:
        print(f"{p.prog}: {err}", file=sys.stderr)
        return 2
    print(json.dumps(row))
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
