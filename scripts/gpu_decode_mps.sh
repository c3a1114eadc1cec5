#!/usr/bin/env bash
# 2026-11-30, sixth session, the one-GPU machine (`nvidia-h200`, 16 cores; .whl/ and .carry/imagenet-sample
# carried). Why do GPU workers add so much less beside training than alone (the loader alone: 11 CPU + 3 GPU
# workers 45,431 images/s; `alexnet train` with them 27,710)? A GPU worker is a process of its own, so its
# kernels (colour conversion, the batch's stack) run in another CUDA context, which the GPU time-slices
# with the training process's instead of running beside it. The test: the same runs with NVIDIA's
# Multi-Process Service (MPS) daemon, which lets the contexts' kernels run together, against without.
# `alexnet train` end to end, 3 epochs, batch 256 (and 128), JPEG-90 replica store, page cache warm.
source scripts/gpu_env.sh
LIMIT=${LIMIT:-480} RUN_LIMIT=90
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store ${COUNT:-128000}
REP=(--data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
PLAIN="plain-cuda-2|1|REP|--batch-size 256 --decode cuda --gpu-workers 2
plain-128-m1|1|REP|--batch-size 128 --decode mixed --gpu-workers 1"
MPS="mps-m1|1|REP|--batch-size 256 --decode mixed --gpu-workers 1
mps-m3|1|REP|--batch-size 256 --decode mixed --gpu-workers 3
mps-cuda-2|1|REP|--batch-size 256 --decode cuda --gpu-workers 2
mps-128-m1|1|REP|--batch-size 128 --decode mixed --gpu-workers 1"
run_all "$PLAIN"
with_mps "$MPS"
grep -E "^loader|rror" "$LOG" | sort | uniq -c
python scripts/runs_table.py "$PLAIN
$MPS"
