#!/usr/bin/env bash
# Tenth session (2026-12-01), the one-GPU machine (16 cores; .whl/ and .carry/imagenet-sample carried).
# The eighth session timed one ImageNet-size epoch on this machine (epoch 1, with the loader's start:
# 38,220 images/s, 50.3 min for 90 epochs); here two, so that epoch 2 (loader started, compiled) is
# measured at full size: the ImageNet-size JPEG-90 replica store (1,281,167 train + 10,000 val, 1,000
# classes, optimised Huffman tables), page cache warm (just written), `alexnet train --batch-size 256`
# with its defaults under MPS (auto: 11 CPU + 3 GPU workers). Table last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 1281167 430  # about 3,200 images/s on these 16 cores
REP=(--data /tmp/rep --epochs 2 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
if mps_start; then
  watch in2-1x256; train in2-1x256 150 "${ONE[@]}" "${REP[@]}" --batch-size 256
  mps_stop
fi
grep -E "^loader|rror|Traceback" "$LOG" | sort | uniq -c | cut -c1-300
cat "$OUT/cpu.txt"
python scripts/runs_table.py "in2-1x256|1|1 x 256, 16 cores, MPS (defaults)"
