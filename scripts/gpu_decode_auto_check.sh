#!/usr/bin/env bash
# 2026-11-30, seventh session, the two-GPU machine pinned to 16 of its 32 cores (the one-GPU machine's
# count; .whl/ and .carry/imagenet-sample carried): a plain `alexnet train` (batch 128, --decode auto,
# which picks 13 CPU + 1 GPU worker there) against `--decode cpu`, 3 epochs each, one JPEG-90 store.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 128000
REP=(--data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
train auto-16 80 taskset -c 0-15 "${ONE[@]}" "${REP[@]}"
train cpu-16 80 taskset -c 0-15 "${ONE[@]}" "${REP[@]}" --decode cpu
grep -E "^loader|rror" "$LOG" | sort | uniq -c
python scripts/runs_table.py "auto-16|1|(defaults)
cpu-16|1|--decode cpu"
