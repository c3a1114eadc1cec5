#!/usr/bin/env bash
# 2026-11-30, ninth session, the two-GPU machine (32 cores; .whl/ and .carry/imagenet-sample carried).
# The ImageNet-size JPEG-90 replica store (1,281,167 train + 10,000 val, 1,000 classes) written with the
# store's new optimised Huffman tables, page cache warm (just written); then two epochs each under DDP
# with the defaults, so that epoch 2 (the loader started, compiled) is measured at full size rather than
# projected from a smaller store: (1) 2 x 256 under MPS (auto: 3 GPU + 11 CPU workers per process);
# (2) 2 x 128 without MPS (auto: CPU decoding).
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 1281167 300  # ImageNet's size (make_replica_store's default count)
REP=(--data /tmp/rep --epochs 2 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
if mps_start; then
  train in2-2x256 170 "${TWO[@]}" "${REP[@]}" --batch-per-process 256
  mps_stop
fi
train in2-2x128 170 "${TWO[@]}" "${REP[@]}" --batch-per-process 128
grep -E "^loader|rror|Traceback" "$LOG" | sort | uniq -c | cut -c1-300
python scripts/runs_table.py "in2-2x256|2|2 x 256, MPS (defaults)
in2-2x128|2|2 x 128, no MPS (defaults)"
