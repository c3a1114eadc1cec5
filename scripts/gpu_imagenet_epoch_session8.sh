#!/usr/bin/env bash
# 2026-11-30, eighth session, the two-GPU machine (32 cores; .whl/ and .carry/imagenet-sample carried).
# One full ImageNet-size epoch (the JPEG-90 replica store: 1,281,167 train + 10,000 val images, 1,000
# classes; page cache warm, just written) with the defaults as they now stand: `--decode auto` picks GPU
# workers under DDP with MPS at 256 per GPU and CPU decoding at 128 (measured in this session's previous
# call). (1) 2 x 256 under MPS; (2) one H200 at 256 pinned to 16 cores (the one-GPU machine's count)
# under MPS; (3) 2 x 128 without MPS. The warm-up is timed apart; the epoch includes the loader's start.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 1281167 300  # ImageNet's size (make_replica_store's default count)
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
if mps_start; then
  train in-2x256 130 "${TWO[@]}" "${REP[@]}" --batch-per-process 256
  train in-1x256 120 taskset -c 0-15 "${ONE[@]}" "${REP[@]}" --batch-size 256
  mps_stop
fi
train in-2x128 110 "${TWO[@]}" "${REP[@]}" --batch-per-process 128
grep -E "^loader|rror|Traceback" "$LOG" | sort | uniq -c | cut -c1-300
python scripts/runs_table.py "in-2x256|2|2 x 256, MPS (defaults)
in-1x256|1|1 x 256, 16 cores, MPS (defaults)
in-2x128|2|2 x 128, no MPS (defaults)"
