#!/usr/bin/env bash
# 2026-11-30, eighth session, the two-GPU machine (32 cores; .whl/ and .carry/imagenet-sample carried).
# DDP from a JPEG store is held by the 32 cores' decoding (about 50,000 images/s for two GPUs that take
# 86,000 at 256 each from a raw store). Each H200 has JPEG engines of its own: GPU workers under DDP
# with MPS (`--decode mixed`: 3 GPU + 11 CPU workers per process), against CPU decoding, at 256 and 128
# per GPU, one JPEG-90 replica store of 384,000 images, 3 epochs each. First the feeder's GPU tests
# (the ring's copy events are now blocking ones).
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_feeder.py > "$OUT/feeder_gpu_tests.txt" 2>&1
stamp "feeder GPU tests: $? $(tail -1 "$OUT/feeder_gpu_tests.txt")"
jpeg_store 384000
REP=(--data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
train ddp-cpu-256 100 "${TWO[@]}" "${REP[@]}" --batch-per-process 256
if mps_start; then
  train ddp-mps-256 100 "${TWO[@]}" "${REP[@]}" --batch-per-process 256 --decode mixed
  train ddp-mps-128 100 "${TWO[@]}" "${REP[@]}" --batch-per-process 128 --decode mixed
  mps_stop
fi
train ddp-cpu-128 100 "${TWO[@]}" "${REP[@]}" --batch-per-process 128
grep -E "^loader|rror|Traceback" "$LOG" | sort | uniq -c | cut -c1-250
python scripts/runs_table.py "ddp-cpu-256|2|2 x 256, CPU decoding (defaults)
ddp-mps-256|2|2 x 256, MPS, --decode mixed
ddp-mps-128|2|2 x 128, MPS, --decode mixed
ddp-cpu-128|2|2 x 128, CPU decoding (defaults)"
