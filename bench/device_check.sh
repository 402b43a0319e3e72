#!/usr/bin/env bash
# One prepared run for a lent GPU: the GPU tests, the kernel benchmark, a profile of the UNet
# and the end-to-end benchmarks. Everything lands under $OUT (at most 8 files come back):
#   env.txt        the card, driver and package versions
#   pytest_gpu.txt the `gpu` test tier (verbose, with the slowest tests)
#   kernels.txt    bench/kernel_speed.py (16 frames, then 64 frames: bandwidth without launch overhead)
#   profile.txt    bench/profile_unet.py: one ADM-256 forward's kernel time by kind, both norm paths
#   fps.txt        bench/fps.py: 16 frames 20 NFE, 100 NFE with 4× SR, 32 frames, then the cold start
#   kernels.jsonl, fps.jsonl, profile.jsonl   the raw rows, to commit under bench/results/ with the card's name
# The benchmarks write each row to $OUT the moment it is measured (BENCH_RESULTS) and log its
# numbers, so a step cut by its time limit, or the whole call cut by the device's, keeps what
# it measured. Each step has its own limit, a failing step does not stop the others, and the
# most telling steps come first; the fps steps measure the CUDA-graph backend right after the
# reference (only it, past the headline 16-frame run). The limits add up to 555 s, inside one
# 600 s device call (the lent machine starts with an empty Triton cache: the test step
# compiles the kernels first).
set -uo pipefail
: "${OUT:?set OUT to the folder where results go}"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 BENCH_RESULTS="$OUT"
PY=${PYTHON:-python3}

step() {  # step SECONDS LOGFILE CMD...: run one step, append its output and its exit status to LOGFILE
  local limit=$1 log=$2; shift 2
  echo "### $* (limit ${limit}s)" >>"$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  echo "### exit $?" >>"$log"
}

{ nvidia-smi; $PY -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__); print(torch.cuda.get_device_name())'; } >"$OUT/env.txt" 2>&1

FPS=(bench/fps.py --save --backends torch+graph,torch)
GRAPH=(bench/fps.py --save --backends torch+graph)
step 140 "$OUT/pytest_gpu.txt" $PY -m pytest -m gpu -v --durations=10 -p no:cacheprovider tests
step 80 "$OUT/kernels.txt" $PY bench/kernel_speed.py --save
step 75 "$OUT/fps.txt" $PY "${FPS[@]}" --task temporal-k7 --nfe 20 --frames 16 --repeats 3
step 30 "$OUT/profile.txt" $PY bench/profile_unet.py --save
step 25 "$OUT/kernels.txt" $PY bench/kernel_speed.py --save --frames 64 --tasks "" --no-unet
step 90 "$OUT/fps.txt" $PY "${GRAPH[@]}" --task temporal-k7-sr4 --nfe 100 --frames 16 --repeats 1
step 70 "$OUT/fps.txt" $PY "${GRAPH[@]}" --task temporal-k7 --nfe 20 --frames 32 --repeats 2
step 45 "$OUT/fps.txt" $PY "${GRAPH[@]}" --task temporal-k7 --nfe 20 --frames 16 --repeats 1 --cold-start --no-reference
exit 0
